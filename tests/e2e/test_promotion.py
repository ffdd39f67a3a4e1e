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

from devstack.stack import Stack
from shared.adapters.azure.tables import AzureTable
from shared.domain.records import RolloutRecord
from shared.domain.vocabulary import Phase, Tag
from shared.services.ledger import LEDGER_TABLE, Ledger
from tests.e2e.helpers import emulator_admin, kill_and_restart_host, wait_for
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


# A host killed while a rollout step runs keeps that step's `evergreen-rollout` message hidden for the host's
# message lease (600 s, `devstack/host/queues.py`, like Azure's queue trigger); the reconciler re-sends the
# step once it is overdue by min(STALL_FLOOR, EVERGREEN_LEASE_SECONDS). With the production defaults that is
# 3 min plus up to one 5-minute timer period; the restarted host here runs with a 30 s lease and the timer
# every 5 s (settings any deployment can choose), so the bound is about 40 s plus the rest of the rollout.
FAST_RECOVERY = {"EVERGREEN_LEASE_SECONDS": "30", "EVERGREEN_AZUREML_TIMEOUT_SECONDS": "10",
                 "EVERGREEN_RECONCILE_SCHEDULE": "*/5 * * * * *"}
STEP_HANG_SECONDS = 20.0  # the deployment PUT answers this late: the host dies before the reply (a lost reply)


def test_a_host_killed_during_a_rollout_step_does_not_lose_the_rollout(
        local_stack: Stack, ml: Any, ledger: Ledger, model_uri: str, continuous_scoring: dict[str, Any]) -> None:
    """The kill lands while the step that creates the candidate's deployment waits for Azure ML (its queue
    message is in flight, the PUT takes effect after the host is gone): the reconciler re-sends the step and
    the rollout ends as it would have, with the candidate serving and no failed scoring request."""
    rule = emulator_admin(local_stack.env, "POST", "/_emulator/request-faults", {
        "fault": "hang", "method": "PUT", "pathContains": f"/onlineEndpoints/{ENDPOINT}/deployments/",
        "times": 1, "hangSeconds": STEP_HANG_SECONDS, "then": "process"})
    try:
        candidate = register(ml, MODEL, model_uri, "0.980")
        wanted = f"{MODEL}:{candidate.version}"

        def step_in_flight() -> bool:  # a rule with `times: 1` is removed when it fires
            rules = emulator_admin(local_stack.env, "GET", "/_emulator/request-faults")["value"]
            return all(r["id"] != rule["id"] for r in rules)

        wait_for(step_in_flight, "the deployment step to call Azure ML", timeout=120)
        seen = ledger.get_rollout(ENDPOINT)
        assert seen is not None and seen.candidate == wanted and seen.phase is Phase.DEPLOY, seen
        log_path = Path(next(s for s in local_stack.services if s.name == "functions-host").log_path)
        log_offset = log_path.stat().st_size if log_path.exists() else 0
        restarted = kill_and_restart_host(local_stack, env={**local_stack.env, **FAST_RECOVERY})
        record = wait_for(lambda: rolled_out(ledger, candidate), "the rollout after the restart", timeout=240)
        assert record.phase is Phase.SUCCEEDED, record.failure
        assert record.seq > seen.seq
        assert serving(ml) == wanted
        assert continuous_scoring["errors"] == []
        with open(restarted.log_path, "rb") as log:
            log.seek(log_offset)
            after = log.read().decode(errors="replace")
        assert f"step {seen.seq} ({Phase.DEPLOY.value}) of {wanted}" in after, "the reconciler did not re-send it"
    finally:
        emulator_admin(local_stack.env, "DELETE", "/_emulator/request-faults")
        kill_and_restart_host(local_stack, kill=False)  # the rest of the session: the stack's settings
