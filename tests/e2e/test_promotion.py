"""Model registered → gate → blue/green rollout, end to end through the local Functions host.

Models are registered with the real SDK; the emulator's ModelRegistered event goes through the local
Event Grid to `on_model_registered`, and the rollout advances through the `evergreen-rollout` queue
(`advance_rollout`). The repo's evergreen.yaml is the policy: churn-model onto churn-endpoint.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from azure.data.tables import TableServiceClient

from devstack.host import start_host
from devstack.procs import REPO_ROOT
from devstack.stack import Stack
from shared.adapters.azure.tables import AzureTable
from shared.domain.records import RolloutRecord
from shared.domain.vocabulary import Phase, Tag
from shared.services.ledger import LEDGER_TABLE, Ledger
from tests.e2e.helpers import wait_for
from tests.fixtures.models import register, train_model_folder, upload_model_folder

pytestmark = pytest.mark.e2e

MODEL, ENDPOINT = "churn-model", "churn-endpoint"
REQUEST = {"input_data": [{"tenure_months": 3, "monthly_charges": 99.5, "support_calls": 7,
                           "contract": "month-to-month"}]}


@pytest.fixture(scope="module")
def model_uri(local_stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> str:
    folder = train_model_folder(tmp_path_factory.mktemp("train"))
    return upload_model_folder(local_stack.env["AzureWebJobsStorage"], folder)


@pytest.fixture(scope="module")
def ledger(local_stack: Stack) -> Ledger:
    tables = TableServiceClient.from_connection_string(local_stack.env["AzureWebJobsStorage"])
    return Ledger(AzureTable(tables.create_table_if_not_exists(LEDGER_TABLE)))


def rolled_out(ledger: Ledger, model: Any) -> RolloutRecord | None:
    record = ledger.get_rollout(ENDPOINT)
    wanted = f"{model.name}:{model.version}"
    return record if record and record.candidate == wanted and not record.active else None


def serving(ml: Any) -> str:
    endpoint = ml.online_endpoints.get(ENDPOINT)
    live = max((w, n) for n, w in (endpoint.traffic or {}).items())[1]
    return str(ml.online_deployments.get(name=live, endpoint_name=ENDPOINT).tags[Tag.MODEL.value])


@pytest.fixture
def continuous_scoring(ml: Any, local_stack: Stack) -> Iterator[dict[str, Any]]:
    endpoint = ml.online_endpoints.get(ENDPOINT)
    key = ml.online_endpoints.get_keys(ENDPOINT).primary_key
    stats: dict[str, Any] = {"ok": 0, "errors": [], "deployments": set()}
    stop = threading.Event()
    uri = str(endpoint.scoring_uri)
    verify: Any = local_stack.env["REQUESTS_CA_BUNDLE"] if uri.startswith("https") else True

    def loop() -> None:
        with httpx.Client(verify=verify, timeout=10) as http:
            while not stop.is_set():
                try:
                    reply = http.post(uri, json=REQUEST, headers={"Authorization": f"Bearer {key}"})
                except httpx.HTTPError as exc:
                    stats["errors"].append(repr(exc))
                    continue
                if reply.status_code == 200 and "predictions" in reply.json():
                    stats["ok"] += 1
                    stats["deployments"].add(reply.headers.get("azureml-model-deployment"))
                else:
                    stats["errors"].append(f"{reply.status_code} {reply.text[:200]}")
                time.sleep(0.02)

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    yield stats
    stop.set()
    thread.join(timeout=15)


def test_registered_models_are_gated_and_rolled_out_through_the_host(
        local_stack: Stack, ml: Any, ledger: Ledger, model_uri: str) -> None:
    first = register(ml, MODEL, model_uri, "0.960")
    record = wait_for(lambda: rolled_out(ledger, first), "the first model's rollout", timeout=180)
    assert record.phase is Phase.SUCCEEDED, record.failure
    assert serving(ml) == f"{MODEL}:{first.version}"
    worse = register(ml, MODEL, model_uri, "0.950")
    host_log = next(s for s in local_stack.services if s.name == "functions-host").log_path

    def rejected() -> bool:
        return f"subject={MODEL}:{worse.version} outcome=skipped" in host_log.read_text(errors="replace")

    wait_for(rejected, "the gate to reject the worse model", timeout=60)
    assert serving(ml) == f"{MODEL}:{first.version}"


def test_zero_failed_requests_during_a_rollout(local_stack: Stack, ml: Any, ledger: Ledger, model_uri: str,
                                               continuous_scoring: dict[str, Any]) -> None:
    better = register(ml, MODEL, model_uri, "0.970")
    record = wait_for(lambda: rolled_out(ledger, better), "the rollout", timeout=180)
    assert record.phase is Phase.SUCCEEDED, record.failure
    time.sleep(1)
    assert continuous_scoring["ok"] > 20
    assert continuous_scoring["errors"] == []
    assert {record.champion_deployment, record.deployment} <= continuous_scoring["deployments"]


def test_a_host_restart_mid_rollout_does_not_lose_the_rollout(
        local_stack: Stack, ml: Any, ledger: Ledger, model_uri: str, continuous_scoring: dict[str, Any]) -> None:
    candidate = register(ml, MODEL, model_uri, "0.980")
    wanted = f"{MODEL}:{candidate.version}"

    def mid_rollout() -> RolloutRecord | None:
        record = ledger.get_rollout(ENDPOINT)
        return record if record and record.candidate == wanted and record.phase in (
            Phase.PROVISIONING, Phase.SMOKE, Phase.SHIFT, Phase.SHIFTING) else None

    seen = wait_for(mid_rollout, "the rollout to be under way", timeout=120)
    index, host = next((i, s) for i, s in enumerate(local_stack.services) if s.name == "functions-host")
    host.process.kill()  # no drain: the function may die between its state write and its next message
    host.process.wait(timeout=10)
    time.sleep(2)
    restarted = start_host(REPO_ROOT, local_stack.ports.host, state_dir=local_stack.state_dir, env=local_stack.env)
    local_stack.services[index] = restarted
    restarted.wait_ready(timeout=60)
    record = wait_for(lambda: rolled_out(ledger, candidate), "the rollout after the restart", timeout=240)
    assert record.phase is Phase.SUCCEEDED, record.failure
    assert record.seq > seen.seq
    assert serving(ml) == wanted
    assert continuous_scoring["errors"] == []
    assert Path(restarted.log_path).exists()
