"""Gate + blue/green rollout (`shared.services.promotion.Promoter`) on the in-memory adapters.

The Promoter is wired as in production but over `MemoryTable` (ledger, audit), `MemoryEndpoints`
(operations take `OPERATION_SECONDS` of the fake clock) and `MemoryDelayedQueue`. The test drives the
queue as the platform does: it receives what is due, runs `on_tick`, completes the message only if
the run returned (an exception leaves it to reappear with a higher dequeue count), and moves the
clock on when nothing is due. So steps can run twice, concurrently, or through a second Promoter
(a restarted instance), in well under a second of wall-clock time.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import threading
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import pytest

from shared.adapters.memory.endpoints import MemoryEndpoints
from shared.adapters.memory.queues import MemoryDelayedQueue, QueuedMessage
from shared.adapters.memory.tables import MemoryTable
from shared.config.policy import Policy
from shared.domain.audit import AuditRecord
from shared.domain.events import ModelVersionEvent
from shared.domain.records import RolloutRecord, Row
from shared.domain.rollout import CandidateRetry, RolloutTick, candidate_retry_from_json, deployment_name
from shared.domain.vocabulary import Phase, PromotionAction, Tag, TickAction, metric_tag
from shared.domain.workspace import DeploymentSpec, ModelInfo
from shared.errors import OperationFailedError, TransientError
from shared.services.audit import TableAuditLog
from shared.services.ledger import Ledger
from shared.services.promotion import (
    MAX_STEP_ATTEMPTS,
    RETRY_DELAY_SECONDS,
    STALL_FLOOR,
    STALL_POLL_INTERVALS,
    Promoter,
    TickOutcome,
)

REPO = Path(__file__).resolve().parents[2]
MODEL, ENDPOINT = "churn", "churn-online"
OPERATION_SECONDS = 3.0
SAMPLE = {"input_data": [{"tenure_months": 3}, {"tenure_months": 60}]}
START = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)


class FakeClock:
    def __init__(self) -> None:
        self.now = START
        self._lock = threading.Lock()

    def __call__(self) -> datetime:
        with self._lock:
            return self.now

    def advance(self, seconds: float) -> None:
        with self._lock:
            self.now += timedelta(seconds=seconds)


def policy_for(**promotion: Any) -> Policy:
    return Policy.model_validate({
        "datasets": [{"name": "d", "container": "landing", "prefix": "d/", "type": "uri_file", "datastore": "landing"}],
        "models": [{"name": MODEL, "promotion": {
            "metric": "roc_auc", "direction": "higher_is_better", "endpoint": ENDPOINT, "min_improvement": 0.01,
            "deployment": {"instance_type": "Standard_DS3_v2", "code": "ml/src", "scoring_script": "score.py"},
            "smoke_test": {"request": SAMPLE, "expect_keys": ["predictions"]},
            "canary_steps": [50, 100], "canary_interval_seconds": 2, "grace_period_seconds": 5,
            "poll_interval_seconds": 1, **promotion,
        }}],
    })


class Rig:
    """One Promoter as a Function instance builds it, on in-memory adapters, plus the platform's queue loop."""

    def __init__(self, endpoints: type[MemoryEndpoints] = MemoryEndpoints, policy: Policy | None = None) -> None:
        self.clock = FakeClock()
        self.table = MemoryTable()
        self.ledger = Ledger(self.table, clock=self.clock)
        self.audit = TableAuditLog(MemoryTable())
        self.endpoints = endpoints(operation_ticks=0, clock=self.clock, operation_seconds=OPERATION_SECONDS)
        self.queue: MemoryDelayedQueue[RolloutTick] = MemoryDelayedQueue(clock=self.clock)
        self.policy = policy or policy_for()
        self.promoter = self.instance()
        self.versions = 0

    def instance(self) -> Promoter:
        """A Promoter as a fresh Function instance builds it: new Ledger, same stores."""
        return Promoter(policy=self.policy, endpoints=self.endpoints, ledger=Ledger(self.table, clock=self.clock),
                        ticks=self.queue, audit=self.audit, app_root=REPO, clock=self.clock)

    def register(self, auc: str | None, **tags: str) -> ModelInfo:
        self.versions += 1
        all_tags = {**tags, **({metric_tag("roc_auc"): auc} if auc is not None else {})}
        return self.endpoints.add_model(MODEL, str(self.versions), all_tags)

    def deliver(self, model: ModelInfo, promoter: Promoter | None = None) -> Any:
        return (promoter or self.promoter).on_model_version(event(model.name, model.version))

    def next_due(self, limit_seconds: float = 3600) -> QueuedMessage[RolloutTick] | None:
        """The next message, moving the clock on (one second at a time) until one is due; None if the queue is empty."""
        waited = 0.0
        while len(self.queue):
            message = self.queue.receive()
            if message is not None:
                return message
            assert waited < limit_seconds, "no message became due"
            self.clock.advance(1)
            waited += 1
        return None

    def run(self, *, promoter: Promoter | None = None, on_tick: Callable[[TickOutcome], None] | None = None,
            max_ticks: int = 300) -> RolloutRecord:
        """Deliver ticks until the queue is empty; returns the endpoint's rollout row."""
        for _ in range(max_ticks):
            message = self.next_due()
            if message is None:
                record = self.ledger.get_rollout(ENDPOINT)
                assert record is not None
                return record
            outcome = (promoter or self.promoter).on_tick(message.item, message.dequeue_count)
            self.queue.complete(message)
            if on_tick:
                on_tick(outcome)
        raise AssertionError(f"the rollout did not finish: {self.ledger.get_rollout(ENDPOINT)}")

    def serving_model(self) -> str | None:
        view = self.endpoints.endpoint(ENDPOINT)
        live = view.serving() if view else None
        return ":".join(live.model) if live and live.model else None


def event(name: str, version: str, event_id: str | None = None) -> ModelVersionEvent:
    return ModelVersionEvent(model_name=name, version=str(version), source="eventgrid",
                             event_id=event_id or f"evt-{name}-{version}",
                             event_type="Microsoft.MachineLearningServices.ModelRegistered")


@pytest.fixture
def rig() -> Rig:
    return Rig()


def first_model(rig: Rig, model: ModelInfo | None = None) -> RolloutRecord:
    assert rig.deliver(model or rig.register("0.80")).action is PromotionAction.STARTED
    record = rig.run()
    assert record.phase is Phase.SUCCEEDED, record.failure
    return record


# -- the happy path -------------------------------------------------------------------------------------
def test_first_model_then_a_better_one_rolls_out_blue_green_to_all_traffic(rig: Rig) -> None:
    first = first_model(rig)
    assert first.champion_deployment == ""  # the endpoint was created by the rollout
    assert rig.serving_model() == f"{MODEL}:1"
    view = rig.endpoints.endpoint(ENDPOINT)
    assert view is not None and view.traffic == {first.deployment: 100}

    v2 = rig.register("0.85")
    assert rig.deliver(v2).action is PromotionAction.STARTED
    seen_split: list[dict[str, int]] = []
    phases: list[str] = []

    def watch(_: TickOutcome) -> None:
        now = rig.endpoints.endpoint(ENDPOINT)
        assert now is not None
        seen_split.append(dict(now.traffic))
        record = rig.ledger.get_rollout(ENDPOINT)
        assert record is not None
        phases.append(record.state)

    second = rig.run(on_tick=watch)
    assert second.phase is Phase.SUCCEEDED, second.failure
    assert second.champion_deployment == first.deployment
    assert {first.deployment: 50, second.deployment: 50} in seen_split  # the canary step happened
    assert Phase.GRACE.value in phases and Phase.ROLLBACK.value not in phases
    view = rig.endpoints.endpoint(ENDPOINT)
    assert view is not None
    assert view.traffic == {second.deployment: 100}
    assert [d.name for d in view.deployments] == [second.deployment]  # the old one is deleted after grace
    kinds = [r.kind for r in rig.audit.query(kind_prefix="rollout.", now=rig.clock())]
    assert "rollout.shifting" in kinds and "rollout.succeeded" in kinds
    tags = view.deployments[0].tags
    assert tags[Tag.MODEL.value] == f"{MODEL}:2" and tags[Tag.ROLLOUT.value] == second.rollout_id


def test_the_candidates_lineage_tags_reach_its_deployment(rig: Rig) -> None:
    lineage = {Tag.DATA_ASSET.value: "churn-data", Tag.DATA_VERSION.value: "4", Tag.JOB_NAME.value: "job-1",
               "team": "not copied"}
    model = rig.register("0.80", **lineage)
    record = first_model(rig, model)
    view = rig.endpoints.endpoint(ENDPOINT)
    assert view is not None
    (deployment,) = view.deployments
    assert deployment.name == record.deployment == deployment_name(MODEL, "1")
    assert {k: deployment.tags[k] for k in lineage if k in deployment.tags} == {
        k: v for k, v in lineage.items() if k != "team"}
    assert deployment.tags[Tag.EVENT.value] == "evt-churn-1"


# -- the gate -----------------------------------------------------------------------------------------------
def test_worse_tied_unscored_small_unknown_and_foreign_models_are_skipped_with_reasons(rig: Rig) -> None:
    first_model(rig)
    worse, tie, unscored, small = (rig.register(m) for m in ("0.70", "0.80", None, "0.805"))
    outcomes = {v.version: rig.deliver(v) for v in (worse, tie, unscored, small)}
    assert all(o.action is PromotionAction.SKIPPED for o in outcomes.values())
    assert "is worse" in outcomes[worse.version].detail
    assert "ties" in outcomes[tie.version].detail
    assert "carries no 'roc_auc' metric" in outcomes[unscored.version].detail
    assert "below the required" in outcomes[small.version].detail
    other = rig.promoter.on_model_version(event("someone-elses-model", "1"))
    assert other.action is PromotionAction.SKIPPED and "no promotion policy" in other.detail
    foreign = rig.register("0.99", **{Tag.ENDPOINT.value: "another-endpoint"})
    assert "belongs to endpoint 'another-endpoint'" in rig.deliver(foreign).detail
    missing = rig.promoter.on_model_version(event(MODEL, "99"))
    assert missing.action is PromotionAction.SKIPPED and "not in the workspace's model registry" in missing.detail
    assert not len(rig.queue)  # nothing was started
    assert rig.serving_model() == f"{MODEL}:1"
    skipped = list(rig.audit.query(kind_prefix="promotion.skipped", now=rig.clock()))
    assert len(skipped) == 7
    assert {r.decision for r in skipped} >= {"skip:not_better", "skip:missing_metric", "skip:improvement_too_small",
                                             "skip:other_endpoint"}


# -- failures roll back, the champion keeps serving --------------------------------------------------------------
@pytest.mark.parametrize("fault", ["provisioning", "smoke"])
def test_a_failing_candidate_is_rolled_back_and_the_champion_keeps_serving(rig: Rig, fault: str) -> None:
    champion = first_model(rig)
    v2 = rig.register("0.90")
    candidate = deployment_name(MODEL, v2.version)
    if fault == "provisioning":
        rig.endpoints.fail_provisioning(candidate)
    else:
        rig.endpoints.fail_scoring(candidate)
    assert rig.deliver(v2).action is PromotionAction.STARTED
    served: list[str | None] = []
    failed = rig.run(on_tick=lambda _: served.append(rig.serving_model()))
    assert failed.phase is Phase.ROLLED_BACK
    assert (fault == "provisioning") == ("provisioning ended Failed" in failed.failure), failed.failure
    assert (fault == "provisioning") == ("last log lines: " in failed.failure), failed.failure
    assert (fault == "smoke") == ("smoke test" in failed.failure), failed.failure
    assert set(served) == {f"{MODEL}:1"}  # the champion served at every step
    view = rig.endpoints.endpoint(ENDPOINT)
    assert view is not None
    assert view.traffic == {champion.deployment: 100}
    assert [d.name for d in view.deployments] == [champion.deployment]  # the failed deployment is deleted
    (rolled,) = rig.audit.query(kind_prefix="rollout.rolled_back", now=rig.clock())
    assert rolled.reason
    # the same registration delivered again does not try again
    again = rig.deliver(v2)
    assert again.action is PromotionAction.DUPLICATE and "rolled back" in again.detail
    assert not len(rig.queue)


def test_a_first_model_that_fails_leaves_the_endpoint_without_traffic(rig: Rig) -> None:
    v1 = rig.register("0.80")
    rig.endpoints.fail_scoring(deployment_name(MODEL, v1.version))
    assert rig.deliver(v1).action is PromotionAction.STARTED
    failed = rig.run()
    assert failed.phase is Phase.ROLLED_BACK and "smoke test" in failed.failure
    view = rig.endpoints.endpoint(ENDPOINT)
    assert view is not None and view.deployments == () and not any(view.traffic.values())


class FailingCreates(MemoryEndpoints):
    """Azure ML refuses every deployment creation (e.g. quota): a transient error that never clears."""

    def begin_create_deployment(self, spec: DeploymentSpec) -> None:
        self.calls.append("begin_create_deployment")
        raise OperationFailedError(f"creating deployment {spec.name}: (QuotaExceeded) not enough quota")


def test_an_action_that_keeps_failing_is_retried_with_backoff_then_rolled_back() -> None:
    rig = Rig(FailingCreates)
    v1 = rig.register("0.80")
    rig.deliver(v1)
    failed = rig.run()
    assert failed.phase is Phase.ROLLED_BACK
    assert f"CreateDeployment failed {MAX_STEP_ATTEMPTS} times" in failed.failure
    assert "QuotaExceeded" in failed.failure
    assert rig.endpoints.calls.count("begin_create_deployment") == MAX_STEP_ATTEMPTS


# -- one rollout per endpoint ------------------------------------------------------------------------------
def test_one_rollout_per_endpoint_the_newest_queued_candidate_goes_next(rig: Rig) -> None:
    v1, v2, v3 = (rig.register(m) for m in ("0.80", "0.85", "0.90"))
    barrier = threading.Barrier(2)
    outcomes: dict[str, PromotionAction] = {}

    def deliver(model: ModelInfo) -> None:
        promoter = rig.instance()
        barrier.wait()
        outcomes[model.version] = rig.deliver(model, promoter).action

    threads = [threading.Thread(target=deliver, args=(v,)) for v in (v1, v2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes.values()) == [PromotionAction.QUEUED, PromotionAction.STARTED], outcomes
    current = rig.ledger.get_rollout(ENDPOINT)
    assert current is not None and current.active
    queued_first = current.queued_version
    # a newer candidate supersedes the queued one; an older one is refused; a duplicate is recognised
    superseding = rig.deliver(v3)
    assert superseding.action is PromotionAction.QUEUED and "supersedes the queued" in superseding.detail
    older = rig.deliver(v1 if queued_first == v1.version else v2)
    assert older.action in (PromotionAction.SKIPPED, PromotionAction.DUPLICATE)
    assert rig.deliver(v3).action is PromotionAction.DUPLICATE
    final = rig.run()
    # the first rollout finished and started the queued v3 (it beats whichever won the race)
    assert final.candidate_version == v3.version, final
    assert final.phase is Phase.SUCCEEDED, final.failure
    assert final.queued_name == "" and final.queued_version == ""
    assert rig.serving_model() == f"{MODEL}:{v3.version}"


def test_duplicate_and_concurrent_deliveries_of_each_tick_take_each_step_once(rig: Rig) -> None:
    rig.deliver(rig.register("0.80"))
    outcomes: list[TickAction] = []
    lock = threading.Lock()
    instances = [rig.instance() for _ in range(3)]
    while (message := rig.next_due()) is not None:
        barrier = threading.Barrier(len(instances))

        def run(promoter: Promoter, tick: RolloutTick = message.item,
                barrier: threading.Barrier = barrier) -> None:
            barrier.wait()
            result = promoter.on_tick(tick, 1)
            with lock:
                outcomes.append(result.action)

        threads = [threading.Thread(target=run, args=(p,)) for p in instances]  # one message, three deliveries
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        rig.queue.complete(message)
    record = rig.ledger.get_rollout(ENDPOINT)
    assert record is not None and record.phase is Phase.SUCCEEDED, record
    steps = [o for o in outcomes if o in (TickAction.ADVANCED, TickAction.FINISHED)]
    others = [o for o in outcomes if o not in (TickAction.ADVANCED, TickAction.FINISHED, TickAction.WAITING)]
    assert len(steps) == record.seq - 1  # exactly one instance took each step
    assert set(others) <= {TickAction.LOST_RACE, TickAction.STALE} and others
    # a stale message from the past does nothing
    assert rig.promoter.on_tick(RolloutTick(ENDPOINT, record.rollout_id, 1, "old"), 1).action is TickAction.STALE
    assert rig.promoter.on_tick(RolloutTick(ENDPOINT, "another", record.seq, "x"), 1).action is TickAction.STALE


# -- recovery ---------------------------------------------------------------------------------------------------
def test_a_restarted_instance_resumes_a_rollout_mid_flight(rig: Rig) -> None:
    rig.deliver(rig.register("0.80"))
    # the first instance takes steps until the deployment is provisioning, then "dies" (is dropped)
    while (record := rig.ledger.get_rollout(ENDPOINT)) is None or record.phase is not Phase.PROVISIONING:
        message = rig.next_due()
        assert message is not None
        rig.promoter.on_tick(message.item, message.dequeue_count)
        rig.queue.complete(message)
    # its last tick is in the queue; a new instance (fresh ledger, same stores) carries on
    done = rig.run(promoter=rig.instance())
    assert done.phase is Phase.SUCCEEDED, done.failure


def test_a_lost_tick_is_resent_when_its_message_is_redelivered(rig: Rig) -> None:
    """An instance wrote the next state but died before sending the next tick: the redelivered
    message (dequeue count 2) notices and sends it, so the rollout does not stall."""
    rig.deliver(rig.register("0.80"))
    first = rig.next_due()
    assert first is not None
    assert rig.promoter.on_tick(first.item, 1).action is TickAction.ADVANCED
    lost = rig.next_due()
    assert lost is not None and rig.queue.complete(lost)  # dropped: "the instance died before it was sent"
    assert rig.queue.items() == [first.item]  # only the (hidden) message being handled
    assert rig.promoter.on_tick(first.item, 2).action is TickAction.RESENT
    rig.queue.complete(first)
    done = rig.run()
    assert done.phase is Phase.SUCCEEDED


class FlakyRegistry(MemoryEndpoints):
    """Reading one model version fails once (Azure ML unreachable)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.fail_once: str | None = None

    def get_model(self, name: str, version: str) -> ModelInfo | None:
        if version == self.fail_once:
            self.fail_once = None
            raise OperationFailedError(f"reading model {name}:{version}: workspace unreachable")
        return super().get_model(name, version)


def test_the_queued_candidate_is_not_lost_when_the_hand_over_fails() -> None:
    """The last step commits `succeeded`, then gating the queued candidate fails: the message is not
    completed, reappears with dequeue count 2, and the redelivery hands over instead of calling the tick stale."""
    rig = Rig(FlakyRegistry)
    endpoints = rig.endpoints
    assert isinstance(endpoints, FlakyRegistry)
    v1, v2 = rig.register("0.80"), rig.register("0.90")
    assert rig.deliver(v1).action is PromotionAction.STARTED
    assert rig.deliver(v2).action is PromotionAction.QUEUED
    endpoints.fail_once = v2.version
    outcomes: list[TickAction] = []
    failed = 0
    while (message := rig.next_due()) is not None:
        try:
            outcomes.append(rig.promoter.on_tick(message.item, message.dequeue_count).action)
        except OperationFailedError:
            failed += 1  # not completed: the queue shows it again after the visibility timeout
            record = rig.ledger.get_rollout(ENDPOINT)
            assert record is not None and record.phase is Phase.SUCCEEDED and record.queued_version == v2.version
            continue
        rig.queue.complete(message)
    assert failed == 1 and TickAction.RESUMED in outcomes
    done = rig.ledger.get_rollout(ENDPOINT)
    assert done is not None and done.candidate_version == v2.version and done.phase is Phase.SUCCEEDED, done


# -- the ledger's rollout rows -------------------------------------------------------------------------------
def test_rollout_rows_are_json_safe_and_store_the_phase_by_value(rig: Rig) -> None:
    rig.deliver(rig.register("0.80"))
    (row,) = rig.ledger.rollouts()
    assert row.active and row.candidate == f"{MODEL}:1" and row.phase is Phase.ENDPOINT
    assert row.row is not None
    stored = json.loads(json.dumps(row.row.data))
    assert stored["State"] == "endpoint" and stored["DueAt"] == ""
    assert rig.run().phase is Phase.SUCCEEDED


def test_the_ledger_writes_only_records_it_read_and_only_known_phases(rig: Rig) -> None:
    rig.deliver(rig.register("0.80"))
    record = rig.ledger.get_rollout(ENDPOINT)
    assert record is not None
    with pytest.raises(ValueError, match="not read from the ledger"):
        rig.ledger.update_rollout(dataclasses.replace(record, row=None))
    with pytest.raises(ValueError, match="not a valid Phase"):
        rig.ledger.update_rollout(dataclasses.replace(record, state="grase"))
    moved = rig.ledger.update_rollout(dataclasses.replace(record, seq=record.seq + 1))
    assert moved is not None and moved.seq == record.seq + 1
    assert rig.ledger.update_rollout(dataclasses.replace(record, seq=record.seq + 5)) is None  # stale ETag
    assert rig.ledger.create_rollout(record) is None  # the row exists: insert conflicts


# -- recovery from any single failure (issue 11) ---------------------------------------------------------------
class FailOnce:
    """A switch for one injected failure: `hit(where)` raises once when `where` is armed.

    `after=True` models a lost reply: the call takes effect, then the caller sees the error.
    """

    def __init__(self, where: str, *, after: bool = False) -> None:
        self.where, self.after, self.fired = where, after, False

    def hit(self, where: str, call: Callable[[], Any]) -> Any:
        if where != self.where or self.fired:
            return call()
        self.fired = True
        if self.after:
            call()
        raise TransientError(f"injected failure at {where}" + (" (after it took effect)" if self.after else ""))


class FlakyTable(MemoryTable):
    def __init__(self, fault: FailOnce) -> None:
        super().__init__()
        self.fault = fault

    def insert(self, entity: Mapping[str, Any]) -> Row | None:
        return cast("Row | None", self.fault.hit(f"insert:{entity['PartitionKey']}", lambda: super(
            FlakyTable, self).insert(entity)))

    def upsert(self, entity: Mapping[str, Any], *, merge: bool = False) -> Row:
        return cast(Row, self.fault.hit(f"upsert:{entity['PartitionKey']}", lambda: super(
            FlakyTable, self).upsert(entity, merge=merge)))


class FlakyAudit(TableAuditLog):
    def __init__(self, fault: FailOnce) -> None:
        super().__init__(MemoryTable())
        self.fault = fault

    def record(self, rec: AuditRecord) -> None:
        self.fault.hit(f"audit:{rec.kind}", lambda: super(FlakyAudit, self).record(rec))


class FlakyQueue(MemoryDelayedQueue[RolloutTick]):
    def __init__(self, fault: FailOnce, clock: FakeClock) -> None:
        super().__init__(clock=clock)
        self.fault = fault

    def send(self, item: RolloutTick, delay_seconds: float) -> None:
        self.fault.hit("send", lambda: super(FlakyQueue, self).send(item, delay_seconds))


def flaky_rig(fault: FailOnce, policy: Policy | None = None) -> Rig:
    """A Rig whose ledger table, audit log and rollout queue fail where `fault` says, once."""
    rig = Rig(policy=policy)
    rig.table = FlakyTable(fault)
    rig.ledger = Ledger(rig.table, clock=rig.clock)
    rig.audit = FlakyAudit(fault)
    rig.queue = FlakyQueue(fault, rig.clock)
    rig.promoter = rig.instance()
    return rig


START_FAULTS = [
    pytest.param("audit:promotion.started", False, id="audit-fails"),
    pytest.param("audit:promotion.started", True, id="audit-lost-reply"),
    pytest.param("send", False, id="first-step-not-queued"),
    pytest.param("send", True, id="first-step-queued-lost-reply"),
    pytest.param("upsert:promotion", False, id="promotion-record-fails"),
    pytest.param("insert:rollout", True, id="rollout-row-lost-reply"),
]


@pytest.mark.parametrize(("where", "after"), START_FAULTS)
def test_defect3_a_start_that_fails_after_taking_the_row_is_resumed_by_the_redelivered_event(
        where: str, after: bool) -> None:
    """The row is written active before the first step is queued; a failure after it used to leave the
    endpoint held forever (the redelivery answered "duplicate"). The redelivery now re-sends the first step,
    and the audit and promotion records are rewritten, never duplicated."""
    rig = flaky_rig(FailOnce(where, after=after))
    v1 = rig.register("0.80")
    with pytest.raises(TransientError):
        rig.deliver(v1)
    held = rig.ledger.get_rollout(ENDPOINT)
    assert held is not None and held.active and held.due_at is None  # the row is taken, no step taken yet

    again = rig.deliver(v1)  # Event Grid redelivers the same event
    assert again.action is PromotionAction.STARTED, again
    done = rig.run()
    assert done.phase is Phase.SUCCEEDED, done.failure
    assert rig.serving_model() == f"{MODEL}:1"
    assert rig.endpoints.calls.count("begin_create_deployment") == 1  # a second first step was stale
    started = list(rig.audit.query(kind_prefix="promotion.started", now=rig.clock()))
    assert len(started) == 1, started
    assert rig.ledger.promotion_outcome(done.rollout_id) == (Phase.SUCCEEDED.value, done.reason)
    # the endpoint is free: the next better candidate starts (it is not merely "queued" behind a dead rollout)
    assert rig.deliver(rig.register("0.90")).action is PromotionAction.STARTED


def test_defect3_a_hand_over_that_dies_before_the_first_step_is_resumed_by_the_redelivered_tick() -> None:
    """The last step hands over to the queued candidate, whose start dies before its first step is queued:
    the redelivered last tick (now foreign to the row) re-sends that first step."""
    rig = flaky_rig(FailOnce("never"))
    v1, v2 = rig.register("0.80"), rig.register("0.90")
    rig.deliver(v1)
    assert rig.deliver(v2).action is PromotionAction.QUEUED
    fault = FailOnce("audit:promotion.started")
    outcomes: list[TickAction] = []
    while (message := rig.next_due()) is not None:
        record = rig.ledger.get_rollout(ENDPOINT)
        if record is not None and record.phase is Phase.GRACE and record.candidate_version == v1.version:
            assert isinstance(rig.audit, FlakyAudit)
            rig.audit.fault = fault  # the hand-over's audit write fails once
        try:
            outcomes.append(rig.promoter.on_tick(message.item, message.dequeue_count).action)
        except TransientError:
            continue  # not completed: it reappears with dequeue count 2
        rig.queue.complete(message)
    assert fault.fired and TickAction.RESUMED in outcomes
    done = rig.ledger.get_rollout(ENDPOINT)
    assert done is not None and done.candidate_version == v2.version and done.phase is Phase.SUCCEEDED, done


def drop_next_tick(rig: Rig) -> RolloutTick:
    """Take the next due message off the queue without handling it: it was poisoned (or lost)."""
    message = rig.next_due()
    assert message is not None
    assert rig.queue.complete(message)
    return message.item


def test_defect4_a_poisoned_step_is_redriven_by_reconcile_and_the_rollout_finishes(rig: Rig) -> None:
    rig.deliver(rig.register("0.80"))
    for _ in range(3):  # endpoint, deploy, provisioning: a few steps go well
        message = rig.next_due()
        assert message is not None
        rig.promoter.on_tick(message.item, message.dequeue_count)
        rig.queue.complete(message)
    lost = drop_next_tick(rig)
    stuck = rig.ledger.get_rollout(ENDPOINT)
    assert stuck is not None and stuck.active and stuck.seq == lost.seq and not len(rig.queue)

    assert rig.promoter.reconcile(rig.clock()) == []  # merely late is not stalled
    rig.clock.advance(STALL_FLOOR.total_seconds() + 1)
    (outcome,) = rig.promoter.reconcile(rig.clock())
    assert outcome.action is TickAction.REDRIVEN and f"step {stuck.seq}" in outcome.detail
    (audited,) = rig.audit.query(kind_prefix="rollout.redriven", now=rig.clock())
    assert audited.event_id == stuck.event_id and audited.assets["endpoint"] == ENDPOINT
    done = rig.run()
    assert done.phase is Phase.SUCCEEDED, done.failure
    assert rig.promoter.reconcile(rig.clock()) == []  # nothing left to re-drive


def test_defect4_reconcile_leaves_a_waiting_rollout_alone() -> None:
    rig = Rig(policy=policy_for(grace_period_seconds=3600))
    first_model(rig)
    rig.deliver(rig.register("0.90"))
    while (record := rig.ledger.get_rollout(ENDPOINT)) is not None and record.phase is not Phase.GRACE:
        message = rig.next_due()
        assert message is not None
        rig.promoter.on_tick(message.item, message.dequeue_count)
        rig.queue.complete(message)
    rig.clock.advance(1800)  # half the grace period: its step is due in the future
    assert rig.promoter.reconcile(rig.clock()) == []
    assert rig.run(max_ticks=5000).phase is Phase.SUCCEEDED


def test_defect4_a_first_step_that_was_never_queued_is_sent_by_reconcile() -> None:
    """The start failed after taking the row and its event was never redelivered (dead-lettered)."""
    rig = flaky_rig(FailOnce("send"))
    with pytest.raises(TransientError):
        rig.deliver(rig.register("0.80"))
    assert not len(rig.queue)
    assert rig.promoter.reconcile(rig.clock()) == []
    rig.clock.advance(STALL_FLOOR.total_seconds() + 1)
    (outcome,) = rig.promoter.reconcile(rig.clock())
    assert outcome.action is TickAction.REDRIVEN and "never queued" in outcome.detail
    assert rig.run().phase is Phase.SUCCEEDED


def test_defect4_reconcile_hands_over_to_the_queued_candidate_when_the_last_step_was_poisoned() -> None:
    rig = Rig(FlakyRegistry)
    endpoints = rig.endpoints
    assert isinstance(endpoints, FlakyRegistry)
    v1, v2 = rig.register("0.80"), rig.register("0.90")
    rig.deliver(v1)
    assert rig.deliver(v2).action is PromotionAction.QUEUED
    while (message := rig.next_due()) is not None:
        record = rig.ledger.get_rollout(ENDPOINT)
        if record is not None and record.phase is Phase.GRACE:
            endpoints.fail_once = v2.version  # gating the queued candidate fails...
        with contextlib.suppress(OperationFailedError):
            rig.promoter.on_tick(message.item, message.dequeue_count)
        rig.queue.complete(message)  # ...and the message is poisoned (here: dropped at once)
    finished = rig.ledger.get_rollout(ENDPOINT)
    assert finished is not None and finished.phase is Phase.SUCCEEDED and finished.queued_version == v2.version
    (outcome,) = rig.promoter.reconcile(rig.clock())
    assert outcome.action is TickAction.REDRIVEN
    done = rig.run()
    assert done.candidate_version == v2.version and done.phase is Phase.SUCCEEDED, done
    assert rig.serving_model() == f"{MODEL}:{v2.version}"


class BusyTable(MemoryTable):
    """Another instance writes the rollout row between every read and conditional write of ours."""

    def __init__(self) -> None:
        super().__init__()
        self.busy = True

    def replace_if(self, row: Row, entity: Mapping[str, Any]) -> Row | None:
        if self.busy and entity.get("PartitionKey") == "rollout":
            self.upsert(dict(row.data))  # the same data, a new ETag: our write loses
        return super().replace_if(row, entity)


def test_defect5_a_row_that_keeps_changing_reschedules_the_candidate_instead_of_failing() -> None:
    rig = Rig()
    table = BusyTable()
    rig.table, rig.ledger = table, Ledger(table, clock=rig.clock)
    retries: MemoryDelayedQueue[CandidateRetry] = MemoryDelayedQueue(clock=rig.clock)
    promoter = Promoter(policy=rig.policy, endpoints=rig.endpoints, ledger=rig.ledger, ticks=rig.queue,
                        audit=rig.audit, app_root=REPO, clock=rig.clock, retries=retries)
    assert promoter.on_model_version(event(MODEL, rig.register("0.80").version)).action is PromotionAction.STARTED
    v2 = rig.register("0.90")
    outcome = promoter.on_model_version(event(MODEL, v2.version))  # used to raise ClaimInProgressError
    assert outcome.action is PromotionAction.RESCHEDULED, outcome
    assert retries.items() == [CandidateRetry(MODEL, v2.version, f"evt-{MODEL}-{v2.version}")]
    table.busy = False
    message = retries.receive(now=rig.clock() + timedelta(seconds=RETRY_DELAY_SECONDS))
    assert message is not None
    assert candidate_retry_from_json(message.item.to_json()) == message.item
    assert promoter.on_candidate_retry(message.item).action is PromotionAction.QUEUED
    done = rig.run(promoter=promoter)
    assert done.candidate_version == v2.version and done.phase is Phase.SUCCEEDED, done


def test_defect5_concurrent_racing_deliveries_never_raise() -> None:
    rig = Rig()
    retries: MemoryDelayedQueue[CandidateRetry] = MemoryDelayedQueue(clock=rig.clock)
    models = [rig.register(f"0.{80 + i}") for i in range(8)]
    barrier = threading.Barrier(len(models) * 2)
    errors: list[BaseException] = []
    actions: list[PromotionAction] = []

    def deliver(model: ModelInfo) -> None:
        promoter = Promoter(policy=rig.policy, endpoints=rig.endpoints, ledger=Ledger(rig.table, clock=rig.clock),
                            ticks=rig.queue, audit=rig.audit, app_root=REPO, clock=rig.clock, retries=retries)
        barrier.wait()
        try:
            actions.append(promoter.on_model_version(event(MODEL, model.version)).action)
        except Exception as exc:  # the assertion below reports it
            errors.append(exc)

    threads = [threading.Thread(target=deliver, args=(m,)) for m in models for _ in range(2)]  # each twice
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert actions.count(PromotionAction.STARTED) >= 1
    for message in retries.due(rig.clock() + timedelta(seconds=RETRY_DELAY_SECONDS)):
        rig.promoter.on_candidate_retry(message.item)
    final = rig.run()
    assert final.phase is Phase.SUCCEEDED and final.candidate_version == models[-1].version, final


def test_defect6_an_unscored_champion_is_kept_unless_the_policy_allows_replacing_it() -> None:
    for allow in (False, True):
        rig = Rig(policy=policy_for(replace_unscored_champion=allow))
        first_model(rig)
        rig.endpoints.add_model(MODEL, "1", {})  # the champion's metric tag was removed
        outcome = rig.deliver(rig.register("0.90"))
        if allow:
            assert outcome.action is PromotionAction.STARTED and "replace_unscored_champion" in outcome.detail
            assert rig.run().phase is Phase.SUCCEEDED and rig.serving_model() == f"{MODEL}:2"
        else:
            assert outcome.action is PromotionAction.SKIPPED and "carries no 'roc_auc' metric" in outcome.detail
            (skipped,) = rig.audit.query(kind_prefix="promotion.skipped", now=rig.clock())
            assert skipped.decision == "skip:champion_unscored"
            assert rig.serving_model() == f"{MODEL}:1" and not len(rig.queue)


class OneFailedScore(MemoryEndpoints):
    """The first scoring request fails (a 503 while the deployment warms up); later ones are answered."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.failed = False

    def score(self, endpoint: str, deployment: str, request: dict[str, Any]) -> Any:
        if not self.failed:
            self.failed = True
            raise OperationFailedError(f"scoring deployment {deployment} of {endpoint}: (503) upstream not ready")
        return super().score(endpoint, deployment, request)


def test_one_failed_smoke_request_is_retried_and_does_not_roll_back_a_good_candidate() -> None:
    """A single transient failure must not change the outcome: one lost scoring request used to roll back."""
    rig = Rig(OneFailedScore)
    rig.deliver(rig.register("0.80"))
    done = rig.run()
    assert done.phase is Phase.SUCCEEDED, done.failure
    assert isinstance(rig.endpoints, OneFailedScore) and rig.endpoints.failed  # the failure did happen
    assert rig.endpoints.calls.count("score") >= 1 and rig.serving_model() == f"{MODEL}:1"


def test_defect4_a_short_claim_lease_re_drives_a_step_whose_host_died_mid_step_sooner() -> None:
    """A host killed mid-step hides the step's message for minutes; the reconciler re-sends the step once it
    is overdue by the configured lease (`stall_after`) instead of the fixed three-minute floor."""
    rig = flaky_rig(FailOnce("send"))
    with pytest.raises(TransientError):
        rig.deliver(rig.register("0.80"))
    quick = Promoter(policy=rig.policy, endpoints=rig.endpoints, ledger=Ledger(rig.table, clock=rig.clock),
                     ticks=rig.queue, audit=rig.audit, app_root=REPO, clock=rig.clock,
                     stall_after=timedelta(seconds=30))
    patience = max(30.0, rig.policy.models[0].promotion.poll_interval_seconds * STALL_POLL_INTERVALS)
    rig.clock.advance(patience + 1)
    assert patience + 1 < STALL_FLOOR.total_seconds()
    assert rig.promoter.reconcile(rig.clock()) == []  # the default floor still waits
    (outcome,) = quick.reconcile(rig.clock())
    assert outcome.action is TickAction.REDRIVEN
    assert rig.run().phase is Phase.SUCCEEDED
