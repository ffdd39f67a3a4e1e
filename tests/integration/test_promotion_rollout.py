"""Gate + blue/green rollout against the Azure ML emulator (real MLClient, real local serving) and Azurite.

The Promoter is wired as in production except for the queue: its ticks go to an in-memory pump the
test drives, so a test can run steps in any order, twice, concurrently, or through a second
Promoter (a restarted instance) — the situations the ledger's conditional writes must survive.
"""

from __future__ import annotations

import heapq
import itertools
import json
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

from shared.aml import AzureML, OnlineEndpoints
from shared.audit import AuditLog
from shared.ledger import Ledger, RolloutRecord
from shared.policy import Policy
from shared.promotion import Promoter, TickOutcome
from shared.rollout import Phase, RolloutTick
from shared.webhooks import ModelVersionEvent
from tests.fixtures.aml import AmlInfo
from tests.fixtures.azurite import AzuriteInfo
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
        self.ledger = Ledger(service.create_table_if_not_exists(f"ledger{tables}"))
        self.audit = AuditLog(service.create_table_if_not_exists(f"audit{tables}"))
        azureml = AzureML(DefaultAzureCredential(), aml.subscription_id, aml.resource_group, aml.workspace)
        self.endpoints = OnlineEndpoints(azureml)
        self.pump = pump
        self.promoter = Promoter(policy, self.endpoints, self.ledger, pump, self.audit, REPO)

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
    from tests.integration.test_aml_sdk import bearer

    return httpx.Client(base_url=aml.base_url, verify=aml.env["REQUESTS_CA_BUNDLE"], headers=bearer(aml), timeout=10)


def serving_model(rig: Rig, endpoint: str) -> str | None:
    view = rig.endpoints.endpoint(endpoint)
    live = view.serving() if view else None
    return ":".join(live.model) if live and live.model else None


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
    assert rig.promoter.on_model_version(event(v1)).action == "started"
    first = rig.run(endpoint)
    assert first.state == Phase.SUCCEEDED.value, first.failure
    assert serving_model(rig, endpoint) == f"{model}:{v1.version}"
    assert first.champion_deployment == ""  # the endpoint was created by the rollout

    results = scorer(endpoint)
    time.sleep(0.5)
    v2 = register(ml_client, model, model_uri, "0.85")
    assert rig.promoter.on_model_version(event(v2)).action == "started"
    seen_split: list[dict[str, int]] = []

    def watch(_: TickOutcome) -> None:
        view = rig.endpoints.endpoint(endpoint)
        if view is not None:
            seen_split.append(dict(view.traffic))

    second = rig.run(endpoint, on_tick=watch)
    assert second.state == Phase.SUCCEEDED.value, second.failure
    assert second.champion_deployment == first.deployment
    assert {first.deployment: 50, second.deployment: 50} in seen_split  # the canary step happened
    view = rig.endpoints.endpoint(endpoint)
    assert view is not None
    assert view.traffic.get(second.deployment) == 100
    assert [d.name for d in view.deployments] == [second.deployment]  # the old one is deleted after grace
    time.sleep(0.5)
    assert results["ok"] > 20 and results["failed"] == 0

    kinds = [r.kind for r in rig.audit.query(kind_prefix="rollout.")]
    assert "rollout.shifting" in kinds and "rollout.succeeded" in kinds
    deployment = ml_client.online_deployments.get(name=second.deployment, endpoint_name=endpoint)
    assert deployment.tags["evergreen.model"] == f"{model}:{v2.version}"


def test_worse_tied_unscored_and_foreign_models_are_skipped_with_reasons(
        rig: Rig, ml_client: Any, model_uri: str, names: tuple[str, str]) -> None:
    model, endpoint = names
    v1 = register(ml_client, model, model_uri, "0.80")
    rig.promoter.on_model_version(event(v1))
    assert rig.run(endpoint).state == Phase.SUCCEEDED.value
    worse = register(ml_client, model, model_uri, "0.70")
    tie = register(ml_client, model, model_uri, "0.80")
    unscored = register(ml_client, model, model_uri, None)
    small = register(ml_client, model, model_uri, "0.805")
    outcomes = {v.version: rig.promoter.on_model_version(event(v)) for v in (worse, tie, unscored, small)}
    assert all(o.action == "skipped" for o in outcomes.values())
    assert "is worse" in outcomes[worse.version].detail
    assert "ties" in outcomes[tie.version].detail
    assert "carries no 'roc_auc' metric" in outcomes[unscored.version].detail
    assert "below the required" in outcomes[small.version].detail
    other = rig.promoter.on_model_version(ModelVersionEvent(
        model_name="someone-elses-model", version="1", source="mlflow", event_id="e1", event_type="x"))
    assert other.action == "skipped" and "no promotion policy" in other.detail
    foreign = register(ml_client, model, model_uri, "0.99", tags={"evergreen.endpoint": "another-endpoint"})
    assert "belongs to endpoint 'another-endpoint'" in rig.promoter.on_model_version(event(foreign)).detail
    assert not len(rig.pump)  # nothing was started
    assert serving_model(rig, endpoint) == f"{model}:{v1.version}"
    skipped = [r for r in rig.audit.query(kind_prefix="promotion.skipped")]
    assert len(skipped) >= 6


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
    assert rig.promoter.on_model_version(event(v2)).action == "started"
    failed = rig.run(endpoint)
    assert failed.state == Phase.ROLLED_BACK.value
    assert (fault == "provisioning") == ("provisioning ended Failed" in failed.failure), failed.failure
    assert (fault == "smoke") == ("smoke test" in failed.failure), failed.failure
    view = rig.endpoints.endpoint(endpoint)
    assert view is not None
    assert view.traffic == {champion.deployment: 100}
    assert [d.name for d in view.deployments] == [champion.deployment]  # the failed deployment is deleted
    assert serving_model(rig, endpoint) == f"{model}:{v1.version}"
    (rolled,) = [r for r in rig.audit.query(kind_prefix="rollout.rolled_back")]
    assert failed.failure in rolled.reason or rolled.reason
    # the same registration delivered again does not try again
    again = rig.promoter.on_model_version(event(v2))
    assert again.action == "duplicate" and "rolled back" in again.detail
    time.sleep(0.3)
    assert results["failed"] == 0 and results["ok"] > 0


def test_one_rollout_per_endpoint_the_newest_queued_candidate_goes_next(
        rig: Rig, ml_client: Any, model_uri: str, names: tuple[str, str]) -> None:
    model, endpoint = names
    v1, v2, v3 = (register(ml_client, model, model_uri, m) for m in ("0.80", "0.85", "0.90"))
    barrier = threading.Barrier(2)
    outcomes: dict[str, str] = {}

    def deliver(version: Any) -> None:
        barrier.wait()
        outcomes[str(version.version)] = rig.promoter.on_model_version(event(version)).action

    threads = [threading.Thread(target=deliver, args=(v,)) for v in (v1, v2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes.values()) == ["queued", "started"], outcomes
    current = rig.ledger.get_rollout(endpoint)
    assert current is not None and current.active
    queued_first = current.queued_version
    # a newer candidate supersedes the queued one; an older one is refused; a duplicate is recognised
    assert rig.promoter.on_model_version(event(v3)).action == "queued"
    assert rig.promoter.on_model_version(event(v1 if queued_first == str(v1.version) else v2)).action in (
        "skipped", "duplicate")
    assert rig.promoter.on_model_version(event(v3)).action == "duplicate"
    first = rig.run(endpoint)
    # the first rollout finished and started the queued v3 (it beats whichever won the race)
    assert first.candidate_version == str(v3.version), first
    assert first.state == Phase.SUCCEEDED.value, first.failure
    assert serving_model(rig, endpoint) == f"{model}:{v3.version}"


def test_duplicate_and_concurrent_ticks_take_each_step_once(
        rig: Rig, ml_client: Any, model_uri: str, names: tuple[str, str]) -> None:
    model, endpoint = names
    v1 = register(ml_client, model, model_uri, "0.80")
    rig.promoter.on_model_version(event(v1))
    outcomes: list[str] = []
    lock = threading.Lock()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        tick = rig.pump.pop()
        if tick is None:
            record = rig.ledger.get_rollout(endpoint)
            if record is not None and not record.active and not len(rig.pump):
                break
            time.sleep(0.05)
            continue

        def run(t: RolloutTick = tick) -> None:
            result = rig.promoter.on_tick(t, 1)
            with lock:
                outcomes.append(result.action)

        pair = [threading.Thread(target=run) for _ in range(3)]  # the same message delivered thrice at once
        for t in pair:
            t.start()
        for t in pair:
            t.join()
    record = rig.ledger.get_rollout(endpoint)
    assert record is not None and record.state == Phase.SUCCEEDED.value, record
    steps = [o for o in outcomes if o in ("advanced", "finished")]
    others = [o for o in outcomes if o not in ("advanced", "finished", "waiting")]
    assert len(steps) == record.seq - 1  # exactly one instance took each step
    assert set(others) <= {"lost_race", "stale"} and others
    # a stale message from the past does nothing
    assert rig.promoter.on_tick(RolloutTick(endpoint, record.rollout_id, 1, "old"), 1).action == "stale"


def test_a_restarted_instance_resumes_a_rollout_mid_flight(
        rig: Rig, aml: AmlInfo, azurite: AzuriteInfo, ml_client: Any, model_uri: str,
        names: tuple[str, str]) -> None:
    model, endpoint = names
    v1 = register(ml_client, model, model_uri, "0.80")
    rig.promoter.on_model_version(event(v1))
    # the first instance takes steps until the deployment is provisioning, then "dies" (is dropped)
    deadline = time.monotonic() + 60
    while (record := rig.ledger.get_rollout(endpoint)) is None or record.state != Phase.PROVISIONING.value:
        assert time.monotonic() < deadline
        tick = rig.pump.pop()
        if tick is not None:
            rig.promoter.on_tick(tick, 1)
        time.sleep(0.02)
    # its last tick was written to the queue; a new instance (fresh clients, same tables) carries on
    fresh = Promoter(rig.promoter._policy, OnlineEndpoints(AzureML(
        DefaultAzureCredential(), aml.subscription_id, aml.resource_group, aml.workspace)),
        rig.ledger, rig.pump, rig.audit, REPO)
    done = rig.run(endpoint, promoter=fresh)
    assert done.state == Phase.SUCCEEDED.value, done.failure


def test_a_lost_tick_is_resent_when_its_message_is_redelivered(
        rig: Rig, ml_client: Any, model_uri: str, names: tuple[str, str]) -> None:
    """An instance wrote the next state but died before sending the next tick: the redelivered
    message (dequeue count 2) notices and sends it, so the rollout does not stall."""
    model, endpoint = names
    v1 = register(ml_client, model, model_uri, "0.80")
    rig.promoter.on_model_version(event(v1))
    first = rig.pump.pop()
    assert first is not None
    rig.promoter.on_tick(first, 1)
    lost = rig.pump.pop() or (time.sleep(0.2), rig.pump.pop())[1]
    assert lost is not None  # drop it: "the instance died before it was sent"
    assert rig.promoter.on_tick(first, 2).action == "resent"
    done = rig.run(endpoint)
    assert done.state == Phase.SUCCEEDED.value


def test_ledger_rows_are_json_safe_for_retention(rig: Rig, ml_client: Any, model_uri: str,
                                                 names: tuple[str, str]) -> None:
    model, endpoint = names
    v1 = register(ml_client, model, model_uri, "0.80")
    rig.promoter.on_model_version(event(v1))
    rows = [r for r in rig.ledger.rollouts() if r.endpoint == endpoint]
    assert len(rows) == 1 and rows[0].active and rows[0].candidate == f"{model}:{v1.version}"
    json.dumps(rows[0].row.data, default=str)
    assert rig.run(endpoint).state == Phase.SUCCEEDED.value


def test_the_queued_candidate_is_not_lost_when_the_hand_over_fails(
        rig: Rig, ml_client: Any, model_uri: str, names: tuple[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    """The last step commits `succeeded`, then gating the queued candidate fails (Azure ML unreachable):
    the message is redelivered, and the redelivery hands over instead of calling the tick stale."""
    from azure.core.exceptions import ServiceRequestError

    model, endpoint = names
    v1, v2 = register(ml_client, model, model_uri, "0.80"), register(ml_client, model, model_uri, "0.90")
    assert rig.promoter.on_model_version(event(v1)).action == "started"
    assert rig.promoter.on_model_version(event(v2)).action == "queued"
    real_get_model = rig.endpoints.get_model
    failing = {"left": 1}

    def flaky_get_model(name: str, version: str) -> Any:
        if version == str(v2.version) and failing["left"]:
            failing["left"] -= 1
            raise ServiceRequestError("workspace unreachable")
        return real_get_model(name, version)

    monkeypatch.setattr(rig.endpoints, "get_model", flaky_get_model)
    deadline = time.monotonic() + 120
    failed_tick: RolloutTick | None = None
    while failed_tick is None:
        assert time.monotonic() < deadline
        tick = rig.pump.pop()
        if tick is None:
            time.sleep(0.05)
            continue
        try:
            rig.promoter.on_tick(tick, 1)
        except ServiceRequestError:
            failed_tick = tick
    record = rig.ledger.get_rollout(endpoint)
    assert record is not None and record.state == Phase.SUCCEEDED.value and record.queued_version == str(v2.version)
    assert rig.promoter.on_tick(failed_tick, 2).action == "resumed"
    done = rig.run(endpoint)
    assert done.candidate_version == str(v2.version) and done.state == Phase.SUCCEEDED.value, done
