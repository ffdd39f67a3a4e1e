"""HTTP surface of the local host: HTTP triggers, admin and status routes."""

from __future__ import annotations

import itertools
import json
import threading
import time

import httpx
import pytest

from devstack.testing.host import SampleHost, wait_for

pytestmark = pytest.mark.integration


def test_http_trigger_gets_route_query_body_headers_and_local_settings(sample_host: SampleHost) -> None:
    response = httpx.post(
        f"{sample_host.url}/api/hello/Wörld?x=1", content=b"payload", headers={"x-test": "yes"}
    )
    assert response.status_code == 200
    assert response.headers["x-sample"] == "yes"
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    # GREETING comes from local.settings.json; the fixture's env does not set it
    assert body == {"greeting": "hello Wörld", "method": "POST", "params": {"x": "1"}, "body": "payload",
                    "header": "yes"}


def test_route_literals_are_case_insensitive(sample_host: SampleHost) -> None:
    assert httpx.get(f"{sample_host.url}/API/HELLO/x").status_code == 200
    assert httpx.get(f"{sample_host.url}/api/HELLO/x").json()["greeting"] == "hello x"


def test_method_not_in_binding_is_not_routed(sample_host: SampleHost) -> None:
    assert httpx.delete(f"{sample_host.url}/api/hello/x").status_code == 404


def test_unknown_route_is_404(sample_host: SampleHost) -> None:
    assert httpx.get(f"{sample_host.url}/api/nothing/here").status_code == 404


def test_async_function_with_context_constraint_and_optional_parameter(sample_host: SampleHost) -> None:
    first = httpx.get(f"{sample_host.url}/api/items/42")
    second = httpx.get(f"{sample_host.url}/api/items/42/extra")
    assert first.status_code == second.status_code == 201
    assert first.json()["rest"] is None
    assert second.json()["rest"] == "extra"
    assert first.json()["function_name"] == "items"
    assert first.json()["invocation_id"] != second.json()["invocation_id"]
    assert httpx.get(f"{sample_host.url}/api/items/not-a-number").status_code == 404


def test_function_exception_is_500_and_logged(sample_host: SampleHost) -> None:
    response = httpx.get(f"{sample_host.url}/api/boom")
    assert response.status_code == 500
    wait_for(lambda: "boom on purpose" in sample_host.info.log_text(), message="the traceback in the log")
    log = sample_host.info.log_text()
    assert "Executed 'Functions.boom' (Failed" in log
    lines = log[log.index("Executed 'Functions.boom' (Failed") :].splitlines()
    block = "\n".join([lines[0], *itertools.takewhile(lambda line: not line.startswith("20"), lines[1:])])
    assert 'function_app.py", line' in block  # the user's frame is shown ...
    assert "devstack/host" not in block  # ... without the host's own frames
    assert block.rstrip().endswith("RuntimeError: boom on purpose")


def test_options_reaches_function_that_allows_it(sample_host: SampleHost) -> None:
    response = httpx.options(
        f"{sample_host.url}/api/webhook", headers={"WebHook-Request-Origin": "eventgrid.azure.net"}
    )
    assert response.status_code == 200
    assert response.headers["webhook-allowed-origin"] == "eventgrid.azure.net"
    assert httpx.post(f"{sample_host.url}/api/webhook").status_code == 202


def test_status_root_and_function_listing(sample_host: SampleHost) -> None:
    status = httpx.get(f"{sample_host.url}/admin/host/status").json()
    assert status["state"] == "Running"
    assert httpx.get(f"{sample_host.url}/").status_code == 200
    listing = {f["name"]: f for f in httpx.get(f"{sample_host.url}/admin/functions").json()}
    assert {name: f["trigger"] for name, f in listing.items()} == {
        "hello": "httpTrigger", "boom": "httpTrigger", "items": "httpTrigger", "webhook": "httpTrigger",
        "slow": "httpTrigger", "enqueue": "httpTrigger", "on_event": "eventGridTrigger", "on_landing": "blobTrigger",
        "on_stream": "blobTrigger", "on_name": "blobTrigger", "on_work": "queueTrigger", "tick": "timerTrigger",
    }
    assert listing["hello"]["invoke_url_template"].endswith("/api/hello/{name}")
    # %SETTING% expressions are resolved from the app settings
    landing = listing["on_landing"]["config"]["bindings"][0]
    assert landing["path"] == f"{sample_host.landing_container}/{{name}}"


def test_admin_unknown_function_is_404(sample_host: SampleHost) -> None:
    assert httpx.post(f"{sample_host.url}/admin/functions/nope", json={"input": ""}).status_code == 404
    assert httpx.get(f"{sample_host.url}/admin/functions/nope").status_code == 404


def test_admin_refuses_http_functions(sample_host: SampleHost) -> None:
    assert httpx.post(f"{sample_host.url}/admin/functions/hello", json={"input": ""}).status_code == 400


def test_host_keeps_serving_while_a_slow_function_runs(sample_host: SampleHost) -> None:
    outcome: dict[str, object] = {}

    def call_slow() -> None:
        outcome["response"] = httpx.get(f"{sample_host.url}/api/slow?seconds=5", timeout=30)

    caller = threading.Thread(target=call_slow)
    caller.start()
    wait_for(lambda: httpx.get(f"{sample_host.url}/admin/host/status").json()["runningInvocations"] >= 1,
             message="the slow invocation to start")
    status = httpx.get(f"{sample_host.url}/admin/host/status", timeout=5)
    assert status.status_code == 200
    assert httpx.get(f"{sample_host.url}/api/hello/quick", timeout=5).status_code == 200
    # the property, judged without a clock: both answers came while the slow invocation (5 s, under the
    # sample's 6 s functionTimeout) was still running
    assert caller.is_alive(), "the host answered only after the slow function finished"
    caller.join(timeout=30)
    response = outcome["response"]
    assert isinstance(response, httpx.Response)
    assert response.status_code == 200
    assert response.text == "slept 5.0"


def test_function_timeout_from_host_json_fails_the_invocation(sample_host: SampleHost) -> None:
    # host.json sets functionTimeout to 6 seconds
    started = time.monotonic()
    response = httpx.get(f"{sample_host.url}/api/slow?seconds=9", timeout=30)
    assert response.status_code == 500
    assert 5.5 < time.monotonic() - started < 8.5
    assert "Timeout value of 0:00:06 exceeded by function 'Functions.slow'" in sample_host.info.log_text()


def test_admin_invocation_returns_202_before_the_function_runs(sample_host: SampleHost) -> None:
    event = {"id": "admin-evt", "subject": "s", "eventType": "Test.Admin", "eventTime": "2024-01-01T00:00:00Z",
             "data": {"via": "admin"}, "dataVersion": "1"}
    response = httpx.post(f"{sample_host.url}/admin/functions/ON_EVENT", json={"input": json.dumps(event)})
    assert response.status_code == 202
    from devstack.testing.host import read_results

    recorded = wait_for(lambda: read_results(sample_host, "on_event").get("admin-evt"), message="admin event")
    assert isinstance(recorded, dict)
    assert recorded["data"] == {"via": "admin"}
