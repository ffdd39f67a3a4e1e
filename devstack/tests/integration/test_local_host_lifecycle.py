"""Indexing from the app's own metadata, indexing errors, and graceful shutdown."""

from __future__ import annotations

import os
import shutil
import signal
import textwrap
import threading
import time
import uuid
from pathlib import Path

import httpx
import pytest

from devstack.procs import ServiceStartError
from devstack.testing.azurite import AzuriteInfo
from devstack.testing.host import SAMPLE_APP, HostInfo, StartFunctionHost, sample_app_env, wait_for

pytestmark = pytest.mark.integration

EXTRA_FUNCTIONS = textwrap.dedent(
    '''

    @app.route(route="added/{word}", methods=["GET"])
    def added_later(req: func.HttpRequest) -> str:
        return f"added {req.route_params['word']}"


    @app.queue_trigger(arg_name="msg", queue_name="%WORK_QUEUE%-typed", connection="AzureWebJobsStorage")
    def wrongly_typed(msg: str) -> None:
        raise AssertionError("never runs: a queue trigger cannot bind to str")
    '''
)


def _copy_app(tmp_path: Path, extra: str = "") -> Path:
    app_dir = tmp_path / "app"
    shutil.copytree(SAMPLE_APP, app_dir, ignore=shutil.ignore_patterns("__pycache__"))
    if extra:
        with (app_dir / "function_app.py").open("a") as handle:
            handle.write(extra)
    return app_dir


@pytest.fixture(scope="module")
def extended_host(
    tmp_path_factory: pytest.TempPathFactory, azurite: AzuriteInfo, start_function_host: StartFunctionHost
) -> HostInfo:
    """The sample app plus functions added only in this copy; TICK_SCHEDULE deliberately unset."""
    app_dir = _copy_app(tmp_path_factory.mktemp("extended"), EXTRA_FUNCTIONS)
    env = sample_app_env(azurite, uuid.uuid4().hex[:8])
    del env["TICK_SCHEDULE"]
    return start_function_host(app_dir, env)


def test_function_added_to_the_app_appears_and_runs(extended_host: HostInfo) -> None:
    names = {f["name"] for f in httpx.get(f"{extended_host.url}/admin/functions").json()}
    assert "added_later" in names
    assert "added_later" not in {p.stem for p in SAMPLE_APP.iterdir()}  # only the copy has it
    response = httpx.get(f"{extended_host.url}/api/added/words")
    assert response.status_code == 200
    assert response.text == "added words"


def test_unresolved_setting_puts_only_that_function_in_error(extended_host: HostInfo) -> None:
    listing = {f["name"]: f for f in httpx.get(f"{extended_host.url}/admin/functions").json()}
    assert "'%TICK_SCHEDULE%' does not resolve to a value" in listing["tick"]["error"]
    assert "error" not in listing["hello"]
    assert httpx.post(f"{extended_host.url}/admin/functions/tick", json={"input": ""}).status_code == 404
    status = httpx.get(f"{extended_host.url}/admin/host/status").json()
    assert status["state"] == "Running"
    assert any(error.startswith("tick:") for error in status["errors"])


def test_trigger_annotation_mismatch_is_an_indexing_error(extended_host: HostInfo) -> None:
    listing = {f["name"]: f for f in httpx.get(f"{extended_host.url}/admin/functions").json()}
    assert "does not match its Python annotation 'str'" in listing["wrongly_typed"]["error"]


def test_app_that_fails_to_import_stops_the_host(tmp_path: Path, start_function_host: StartFunctionHost) -> None:
    app_dir = _copy_app(tmp_path, "\nraise RuntimeError('broken at import')\n")
    with pytest.raises(ServiceStartError):
        start_function_host(app_dir, {}, timeout=30)
    log = next(tmp.read_text() for tmp in tmp_path.parent.glob("host*/logs/host.log")
               if "broken at import" in tmp.read_text())
    assert "Worker failed to index functions" in log
    assert "Traceback" in log


def test_sigterm_waits_for_running_invocations(
    tmp_path: Path, azurite: AzuriteInfo, start_function_host: StartFunctionHost
) -> None:
    env = sample_app_env(azurite, uuid.uuid4().hex[:8])
    del env["TICK_SCHEDULE"]
    host = start_function_host(_copy_app(tmp_path), env)
    outcome: dict[str, httpx.Response] = {}
    caller = threading.Thread(
        target=lambda: outcome.setdefault("r", httpx.get(f"{host.url}/api/slow?seconds=4", timeout=30))
    )
    caller.start()
    wait_for(lambda: httpx.get(f"{host.url}/admin/host/status").json()["runningInvocations"] >= 1,
             message="the slow invocation")
    os.killpg(host.service.process.pid, signal.SIGTERM)
    started = time.monotonic()
    # uvicorn re-raises the signal after its graceful shutdown, so the exit status reports SIGTERM
    assert host.service.process.wait(timeout=30) in {0, -signal.SIGTERM}
    caller.join(timeout=5)
    assert outcome["r"].status_code == 200
    assert time.monotonic() - started >= 1.0
    log = host.log_text()
    assert log.index("Executed 'Functions.slow' (Succeeded") < log.index("Host stopped")
    # listeners were told to stop when the signal came, before the running invocation ended
    assert log.index("Stop requested") < log.index("Executed 'Functions.slow' (Succeeded")
