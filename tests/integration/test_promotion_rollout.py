"""Gate + blue/green rollout against the Azure ML emulator (real MLClient, real local serving) and Azurite.

What only the real adapters can show: no scoring request fails while traffic moves or rolls back,
the emulator's provisioning and scoring faults surface through the SDK as a rollback, and the
azure-ai-ml sticky deployment header is undone. The rollout's behaviour (gate skips, lock contention,
concurrent and lost ticks, restarts, hand-over) is tested on the in-memory adapters in
`tests/services/test_promotion.py`. The queue here is an in-memory pump the test drives.
"""

from __future__ import annotations

import heapq
import itertools
import json
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from azure.data.tables import TableServiceClient
from azure.identity import DefaultAzureCredential

from devstack.testing.aml import AmlInfo, bearer
from devstack.testing.azurite import AzuriteInfo
from shared.adapters.azure.azureml import AzureML, OnlineEndpoints
from shared.adapters.azure.tables import AzureTable
from shared.config.policy import Policy
from shared.domain.events import ModelVersionEvent
from shared.domain.records import RolloutRecord
from shared.domain.rollout import RolloutTick, deployment_name
from shared.domain.vocabulary import Phase, PromotionAction, Tag
from shared.domain.workspace import DeploymentSpec
from shared.errors import OperationFailedError
from shared.services.audit import TableAuditLog
from shared.services.ledger import Ledger
from shared.services.promotion import Promoter, TickOutcome
from tests.fixtures.models import register, train_model_folder, upload_model_folder

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
SAMPLE = {"input_data": [{"tenure_months": 3, "monthly_charges": 99.5, "support_calls": 7, "contract": "monthly"},
                         {"tenure_months": 60, "monthly_charges": 35.0, "support_calls": 0, "contract": "annual"}]}


class Pump:
    """The rollout queue, in memory: ticks become runnable after their delay (scaled down)."""

    def __init__(self, scale: float = 0.05) -> None:
        self._heap: list[tuple[float, int, RolloutTick]] = []
        self._order = itertools.count()
        self._scale = scale
        self._lock = threading.Lock()
        self.sent: list[RolloutTick] = []

    def send(self, tick: RolloutTick, delay_seconds: float) -> None:
        with self._lock:
            self.sent.append(tick)
            heapq.heappush(self._heap, (time.monotonic() + delay_seconds * self._scale, next(self._order), tick))

    def pop(self) -> RolloutTick | None:
        with self._lock:
            if self._heap and self._heap[0][0] <= time.monotonic():
                return heapq.heappop(self._heap)[2]
            return None

    def __len__(self) -> int:
        return len(self._heap)


def policy_for(model: str, endpoint: str, **promotion: Any) -> Policy:
    return Policy.model_validate({
        "datasets": [{"name": "d", "container": "landing", "prefix": "d/", "type": "uri_file", "datastore": "landing"}],
        "models": [{"name": model, "promotion": {
            "metric": "roc_auc", "direction": "higher_is_better", "endpoint": endpoint, "min_improvement": 0.01,
            "deployment": {"instance_type": "Standard_DS3_v2", "environment": "azureml:AzureML-sklearn-1.5@latest",
                           "code": "ml/src", "scoring_script": "score.py"},
            "smoke_test": {"request": SAMPLE, "expect_keys": ["predictions"]},
            "canary_steps": [50, 100], "canary_interval_seconds": 0, "grace_period_seconds": 1,
            "poll_interval_seconds": 0.5, **promotion,
        }}],
    })


class Rig:
    """One Promoter as a Function instance would build it, plus the test's pump and readers."""

    def __init__(self, aml: AmlInfo, azurite: AzuriteInfo, policy: Policy, tables: str, pump: Pump) -> None:
        service = TableServiceClient.from_connection_string(azurite.connection_string)
        self.ledger = Ledger(AzureTable(service.create_table_if_not_exists(f"ledger{tables}")))
        self.audit = TableAuditLog(AzureTable(service.create_table_if_not_exists(f"audit{tables}")))
        azureml = AzureML(DefaultAzureCredential(), aml.subscription_id, aml.resource_group, aml.workspace)
        self.endpoints = OnlineEndpoints(azureml)
        self.pump = pump
        self.promoter = Promoter(policy=policy, endpoints=self.endpoints, ledger=self.ledger, ticks=pump,
                                 audit=self.audit, app_root=REPO)

    def run(self, endpoint: str, timeout: float = 120, on_tick: Callable[[TickOutcome], None] | None = None,
            promoter: Promoter | None = None) -> RolloutRecord:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            tick = self.pump.pop()
            if tick is None:
                record = self.ledger.get_rollout(endpoint)
                if record is not None and not record.active and not len(self.pump):
                    return record
                time.sleep(0.05)
                continue
            outcome = (promoter or self.promoter).on_tick(tick, 1)
            if on_tick:
                on_tick(outcome)
        raise AssertionError(f"rollout on {endpoint} did not finish: {self.ledger.get_rollout(endpoint)}")


def event(model: Any) -> ModelVersionEvent:
    return ModelVersionEvent(model_name=model.name, version=str(model.version), source="eventgrid",
                             event_id=str(uuid.uuid4()), event_type="Microsoft.MachineLearningServices.ModelRegistered")


@pytest.fixture(scope="module")
def model_uri(aml: AmlInfo, tmp_path_factory: pytest.TempPathFactory) -> str:
    return upload_model_folder(aml.storage_connection_string, train_model_folder(tmp_path_factory.mktemp("train")))


@pytest.fixture
def names() -> tuple[str, str]:
    suffix = uuid.uuid4().hex[:8]
    return f"churn-{suffix}", f"ep-{suffix}"


@pytest.fixture
def rig(aml: AmlInfo, azurite: AzuriteInfo, names: tuple[str, str]) -> Rig:
    model, endpoint = names
    return Rig(aml, azurite, policy_for(model, endpoint), uuid.uuid4().hex[:8], Pump())


def admin(aml: AmlInfo) -> httpx.Client:
    return httpx.Client(base_url=aml.base_url, verify=aml.env["REQUESTS_CA_BUNDLE"], headers=bearer(aml), timeout=10)


def serving_model(rig: Rig, endpoint: str) -> str | None:
    view = rig.endpoints.endpoint(endpoint)
    live = view.serving() if view else None
    return ":".join(live.model) if live and live.model else None


def deployment_state(rig: Rig, endpoint: str, deployment: str) -> str:
    view = rig.endpoints.endpoint(endpoint)
    found = view.deployment(deployment) if view else None
    return found.state if found else ""


@pytest.fixture
def scorer(ml_client: Any) -> Iterator[Callable[[str], dict[str, int]]]:
    """Continuous scoring through the endpoint's URI (key auth, no deployment header) in a thread."""
    stop = threading.Event()
    threads: list[threading.Thread] = []
    results: dict[str, int] = {"ok": 0, "failed": 0}
    errors: list[str] = []

    def start(endpoint: str) -> dict[str, int]:
        ep = ml_client.online_endpoints.get(endpoint)
        key = ml_client.online_endpoints.get_keys(endpoint).primary_key

        def loop() -> None:
            with httpx.Client(verify=False, timeout=10) as http:  # local emulator, self-signed
                while not stop.is_set():
                    reply = http.post(ep.scoring_uri, json=SAMPLE, headers={"Authorization": f"Bearer {key}"})
                    if reply.status_code == 200 and "predictions" in reply.json():
                        results["ok"] += 1
                    else:
                        results["failed"] += 1
                        errors.append(f"{reply.status_code} {reply.text[:200]}")
                    time.sleep(0.02)

        thread = threading.Thread(target=loop, daemon=True)
        thread.start()
        threads.append(thread)
        return results

    yield start
    stop.set()
    for thread in threads:
        thread.join(timeout=15)
    assert not errors, errors[:5]


def test_first_model_then_a_better_one_rolls_out_blue_green_with_zero_failed_requests(
        rig: Rig, ml_client: Any, model_uri: str, names: tuple[str, str], scorer: Any) -> None:
    model, endpoint = names
    v1 = register(ml_client, model, model_uri, "0.80")
    assert rig.promoter.on_model_version(event(v1)).action is PromotionAction.STARTED
    first = rig.run(endpoint)
    assert first.phase is Phase.SUCCEEDED, first.failure
    assert serving_model(rig, endpoint) == f"{model}:{v1.version}"
    assert first.champion_deployment == ""  # the endpoint was created by the rollout

    results = scorer(endpoint)
    time.sleep(0.5)
    v2 = register(ml_client, model, model_uri, "0.85")
    assert rig.promoter.on_model_version(event(v2)).action is PromotionAction.STARTED
    seen_split: list[dict[str, int]] = []

    def watch(_: TickOutcome) -> None:
        view = rig.endpoints.endpoint(endpoint)
        if view is not None:
            seen_split.append(dict(view.traffic))

    second = rig.run(endpoint, on_tick=watch)
    assert second.phase is Phase.SUCCEEDED, second.failure
    assert second.champion_deployment == first.deployment
    assert {first.deployment: 50, second.deployment: 50} in seen_split  # the canary step happened
    view = rig.endpoints.endpoint(endpoint)
    assert view is not None
    assert view.traffic.get(second.deployment) == 100
    assert [d.name for d in view.deployments] == [second.deployment]  # the old one is deleted after grace
    time.sleep(0.5)
    assert results["ok"] > 20 and results["failed"] == 0

    kinds = [r.kind for r in rig.audit.query(days=2, kind_prefix="rollout.")]
    assert "rollout.shifting" in kinds and "rollout.succeeded" in kinds
    deployment = ml_client.online_deployments.get(name=second.deployment, endpoint_name=endpoint)
    assert deployment.tags[Tag.MODEL.value] == f"{model}:{v2.version}"


@pytest.mark.parametrize("fault", ["provisioning", "smoke"])
def test_a_failing_candidate_is_rolled_back_and_the_champion_keeps_serving(
        rig: Rig, aml: AmlInfo, ml_client: Any, model_uri: str, names: tuple[str, str], fault: str,
        scorer: Any) -> None:
    model, endpoint = names
    v1 = register(ml_client, model, model_uri, "0.80")
    rig.promoter.on_model_version(event(v1))
    champion = rig.run(endpoint)
    results = scorer(endpoint)
    v2 = register(ml_client, model, model_uri, "0.90")
    with admin(aml) as http:
        http.post("/_emulator/faults", json={"model": model, "version": str(v2.version), "fault": fault}
                  ).raise_for_status()
    assert rig.promoter.on_model_version(event(v2)).action is PromotionAction.STARTED
    failed = rig.run(endpoint)
    assert failed.phase is Phase.ROLLED_BACK
    assert (fault == "provisioning") == ("provisioning ended Failed" in failed.failure), failed.failure
    assert (fault == "smoke") == ("smoke test" in failed.failure), failed.failure
    view = rig.endpoints.endpoint(endpoint)
    assert view is not None
    assert view.traffic == {champion.deployment: 100}
    assert [d.name for d in view.deployments] == [champion.deployment]  # the failed deployment is deleted
    assert serving_model(rig, endpoint) == f"{model}:{v1.version}"
    (rolled,) = [r for r in rig.audit.query(days=2, kind_prefix="rollout.rolled_back")]
    assert failed.failure in rolled.reason or rolled.reason
    # the same registration delivered again does not try again
    again = rig.promoter.on_model_version(event(v2))
    assert again.action is PromotionAction.DUPLICATE and "rolled back" in again.detail
    time.sleep(0.3)
    assert results["failed"] == 0 and results["ok"] > 0


def provisioned(rig: Rig, endpoint: str, deployment: str, model: str, version: str, *,
                tags: dict[str, str] | None = None, timeout: float = 180) -> None:
    """Create `deployment` of model:version on `endpoint` and wait until it is Succeeded."""
    rig.endpoints.begin_create_deployment(DeploymentSpec(
        endpoint=endpoint, name=deployment, model_name=model, model_version=version,
        instance_type="Standard_DS3_v2", instance_count=1, environment="azureml:AzureML-sklearn-1.5@latest",
        code_path=str(REPO / "ml" / "src"), scoring_script="score.py", tags=tags or {}))
    deadline = time.monotonic() + timeout
    while deployment_state(rig, endpoint, deployment) != "Succeeded":
        assert time.monotonic() < deadline, f"{deployment} on {endpoint} never provisioned"
        time.sleep(0.25)


def test_defect7_concurrent_smoke_tests_on_two_endpoints_each_reach_the_deployment_asked_for(
        rig: Rig, ml_client: Any, model_uri: str, names: tuple[str, str]) -> None:
    """azure-ai-ml's `invoke` keeps the deployment and key headers in one class-level dict, so two smoke tests
    in one process raced: a request could go out without its header (routed by traffic, to the champion)
    or with the other endpoint's. On each of two endpoints the champion (all traffic) answers every request
    with an error and the candidate (no traffic) answers correctly: a request that reaches anything but the
    candidate it names fails."""
    model, endpoint = names
    endpoints = (endpoint, f"{endpoint}-b")
    champion = register(ml_client, model, model_uri, "0.80")
    candidate = register(ml_client, model, model_uri, "0.90")
    for name in endpoints:
        rig.endpoints.begin_create_endpoint(name, {Tag.MANAGED.value: "true"})
    for name in endpoints:
        deadline = time.monotonic() + 60
        while (view := rig.endpoints.endpoint(name)) is None or view.state != "Succeeded":
            assert time.monotonic() < deadline, f"endpoint {name} never became ready"
            time.sleep(0.25)
        provisioned(rig, name, "champion", model, str(champion.version), tags={"EVERGREEN_FAULT": "smoke"})
        provisioned(rig, name, f"candidate-{name[-1]}", model, str(candidate.version))
        rig.endpoints.begin_set_traffic(name, {"champion": 100})
    for name in endpoints:
        deadline = time.monotonic() + 60
        while (view := rig.endpoints.endpoint(name)) is None or view.busy or view.traffic.get("champion") != 100:
            assert time.monotonic() < deadline, f"traffic of {name} never settled"
            time.sleep(0.25)
        with pytest.raises(OperationFailedError):  # the champion really is broken: misrouting would show
            rig.endpoints.score(name, "champion", SAMPLE)

    rounds, per_endpoint = 30, 2
    barrier = threading.Barrier(len(endpoints) * per_endpoint)
    failures: list[str] = []
    answered: dict[str, int] = {}
    lock = threading.Lock()

    def smoke(name: str) -> None:
        deployment = f"candidate-{name[-1]}"
        barrier.wait()
        for _ in range(rounds):
            try:
                reply = rig.endpoints.score(name, deployment, SAMPLE)
            except OperationFailedError as exc:
                failures.append(str(exc).splitlines()[0])
                continue
            with lock:
                if isinstance(reply, dict) and len(reply.get("predictions", ())) == len(SAMPLE["input_data"]):
                    answered[name] = answered.get(name, 0) + 1
                else:
                    failures.append(f"{name}: unexpected reply {str(reply)[:200]}")

    threads = [threading.Thread(target=smoke, args=(name,)) for name in endpoints for _ in range(per_endpoint)]
    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible: a shared header dict cannot hide
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=300)
    finally:
        sys.setswitchinterval(switch)
    assert not failures, failures[:5]
    assert answered == {name: rounds * per_endpoint for name in endpoints}


def test_scoring_one_deployment_does_not_make_later_invokes_stick_to_it(
        rig: Rig, aml: AmlInfo, ml_client: Any, model_uri: str, names: tuple[str, str], tmp_path: Path) -> None:
    """azure-ai-ml keeps the `azureml-model-deployment` header in a class-level dict: the adapter never uses
    `invoke`, so a smoke test's header cannot route any later invoke in the process to the candidate."""
    from azure.ai.ml.constants._endpoint import EndpointInvokeFields

    model, endpoint = names
    v1 = register(ml_client, model, model_uri, "0.80")
    rig.promoter.on_model_version(event(v1))
    assert rig.run(endpoint).phase is Phase.SUCCEEDED
    v2 = register(ml_client, model, model_uri, "0.90")
    with admin(aml) as http:
        http.post("/_emulator/faults", json={"model": model, "version": str(v2.version), "fault": "smoke"}
                  ).raise_for_status()
    faulty = deployment_name(model, str(v2.version))
    rig.endpoints.begin_create_deployment(DeploymentSpec(
        endpoint=endpoint, name=faulty, model_name=model, model_version=str(v2.version),
        instance_type="Standard_DS3_v2", instance_count=1, environment="azureml:AzureML-sklearn-1.5@latest",
        code_path=str(REPO / "ml" / "src"), scoring_script="score.py", tags={}))
    deadline = time.monotonic() + 120
    while deployment_state(rig, endpoint, faulty) != "Succeeded":
        assert time.monotonic() < deadline, "the faulty deployment never provisioned"
        time.sleep(0.25)

    with pytest.raises(OperationFailedError, match=faulty):  # the header did route to the faulty deployment
        rig.endpoints.score(endpoint, faulty, SAMPLE)
    assert EndpointInvokeFields.MODEL_DEPLOYMENT not in EndpointInvokeFields.DEFAULT_HEADER
    request = tmp_path / "request.json"
    request.write_text(json.dumps(SAMPLE), encoding="utf-8")
    reply = json.loads(ml_client.online_endpoints.invoke(endpoint_name=endpoint, request_file=str(request)))
    assert len(reply["predictions"]) == len(SAMPLE["input_data"])  # traffic routing: the champion answered
