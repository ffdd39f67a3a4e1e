"""A candidate registered before its evaluation data has a version (`promotion.evaluation`), on the in-memory
adapters: it is skipped (`evaluation_data_missing`) and indexed as waiting; the first DataVersionRegistered of
that data gates it again (`Promoter.on_evaluation_data`), or the reconciler does when that event is lost.

Only the newest waiting version of a model is gated; the entry leaves the index only after the gate decided
durably, so a failure in between is re-driven to the same end state with one comparison job.
"""

from __future__ import annotations

from typing import Any

import pytest

from shared.adapters.memory.azureml import MemoryWorkspace
from shared.domain.events import DataVersionRegistered
from shared.domain.gate import SkipCode
from shared.domain.vocabulary import Phase, PromotionAction, TickAction
from shared.errors import TransientError
from shared.services.ledger import EVALUATION_WAIT_WORK, Ledger
from tests.services.test_promotion import MODEL, FailOnce, FlakyAudit, FlakyTable, Rig, event, policy_for
from tests.services.test_promotion_comparison import EVALUATION, HOLDOUT, CompareRig, comparison


class WaitRig(CompareRig):
    """The comparison rig before any evaluation data was uploaded."""

    def __init__(self, **evaluation: Any) -> None:
        self.workspace = MemoryWorkspace()
        Rig.__init__(self, policy=policy_for(evaluation={**EVALUATION, **evaluation}))

    def land(self) -> DataVersionRegistered:
        """A labelled drop of the evaluation data is registered; the event its registration publishes."""
        version = self.new_holdout()
        return DataVersionRegistered(dataset=HOLDOUT, asset_name=HOLDOUT, version=version,
                                     uri="azureml://datastores/landing/paths/holdout/x.csv", asset_type="uri_file",
                                     sha256="a" * 64, file_count=1)

    def waiting(self) -> list[str]:
        return [w.model for w in self.ledger.waiting_candidates()]

    def skipped_as(self, code: SkipCode) -> list[str]:
        return [r.assets["model"] for r in self.audit.query(kind_prefix="promotion.skipped", now=self.clock())
                if r.decision == f"skip:{code.value}"]

    def regated(self) -> list[str]:
        return [r.reason for r in self.audit.query(kind_prefix="promotion.regated", now=self.clock())]

    def skip_early(self) -> str:
        """A model registers before the evaluation data: skipped, and waiting."""
        model = self.register("0.70")
        outcome = self.deliver(model)
        assert outcome.action is PromotionAction.SKIPPED and outcome.code == SkipCode.EVALUATION_DATA_MISSING.value
        return f"{model.name}:{model.version}"


@pytest.fixture
def rig() -> WaitRig:
    return WaitRig()


def test_a_candidate_skipped_for_missing_evaluation_data_is_gated_once_when_it_lands(rig: WaitRig) -> None:
    first = rig.skip_early()
    assert rig.waiting() == [first] and rig.workspace.jobs() == []

    [outcome] = rig.promoter.on_evaluation_data(rig.land(), "data-evt-1")
    assert outcome.action is PromotionAction.COMPARING, outcome.detail
    assert [j.name for j in rig.workspace.jobs()] == [rig.job_of(first)]
    assert rig.waiting() == []
    [reason] = rig.regated()
    assert f"{HOLDOUT}:1 is there now" in reason and "data-evt-1" in reason

    decided = rig.finish(rig.job_of(first), comparison(first, None))
    assert decided.action is PromotionAction.STARTED, decided.detail
    assert rig.run().phase is Phase.SUCCEEDED and rig.serving_model() == first


def test_a_redelivered_data_version_event_submits_one_comparison(rig: WaitRig) -> None:
    first = rig.skip_early()
    landed = rig.land()
    assert [o.action for o in rig.promoter.on_evaluation_data(landed, "data-evt-1")] == [PromotionAction.COMPARING]
    assert rig.promoter.on_evaluation_data(landed, "data-evt-1") == []  # Event Grid delivers it again
    assert rig.instance().on_evaluation_data(landed, "data-evt-1") == []  # ...to another instance
    assert [j.name for j in rig.workspace.jobs()] == [rig.job_of(first)]
    assert len(rig.regated()) == 1


def test_data_of_another_asset_and_a_pinned_version_not_yet_there_leave_it_waiting() -> None:
    rig = WaitRig(data=f"{HOLDOUT}:2")
    first = rig.skip_early()
    other = DataVersionRegistered(dataset="churn", asset_name="churn", version="1", uri="azureml://x",
                                  asset_type="uri_folder", sha256="b" * 64, file_count=1)
    assert rig.promoter.on_evaluation_data(other, "training-evt") == []
    assert rig.promoter.on_evaluation_data(rig.land(), "data-evt-1") == []  # version 1; the policy pins 2
    assert rig.waiting() == [first] and rig.workspace.jobs() == []
    [outcome] = rig.promoter.on_evaluation_data(rig.land(), "data-evt-2")
    assert outcome.action is PromotionAction.COMPARING
    assert [j.name for j in rig.workspace.jobs()] == [rig.job_of(first, version="2")]
    assert rig.waiting() == []


def test_the_reconciler_gates_a_candidate_whose_data_event_was_lost(rig: WaitRig) -> None:
    first = rig.skip_early()
    assert rig.promoter.reconcile(rig.clock()) == []  # no data yet: it waits on
    assert rig.waiting() == [first]
    rig.land()  # ...and its DataVersionRegistered never comes
    [outcome] = rig.promoter.reconcile(rig.clock())
    assert outcome.action is TickAction.REDRIVEN and "comparing" in outcome.detail, outcome.detail
    assert "found by the reconciler" in outcome.detail
    assert [j.name for j in rig.workspace.jobs()] == [rig.job_of(first)]
    assert rig.waiting() == [] and rig.promoter.reconcile(rig.clock()) == []


def test_only_the_newest_waiting_version_is_kept_whatever_order_the_events_come_in(rig: WaitRig) -> None:
    older, newer = rig.register("0.70"), rig.register("0.71")
    rig.deliver(newer)
    rig.deliver(older)  # a late ModelRegistered of the older version
    assert rig.waiting() == [f"{MODEL}:2"]
    assert rig.skipped_as(SkipCode.SUPERSEDED) == [f"{MODEL}:1"]
    rig.deliver(rig.register("0.72"))
    assert rig.waiting() == [f"{MODEL}:3"]
    [outcome] = rig.promoter.on_evaluation_data(rig.land(), "data-evt-1")
    assert outcome.action is PromotionAction.COMPARING
    assert [j.name for j in rig.workspace.jobs()] == [rig.job_of(f"{MODEL}:3")]


def test_a_waiting_candidate_is_superseded_by_a_newer_version_gated_meanwhile(rig: WaitRig) -> None:
    first = rig.skip_early()
    rig.land()  # its event is lost...
    second = rig.register("0.71")
    assert rig.deliver(second).action is PromotionAction.COMPARING  # ...and the next model is gated normally
    assert rig.waiting() == [first]
    [outcome] = rig.promoter.reconcile(rig.clock())
    assert "newer" in outcome.detail and f"{MODEL}:2" in outcome.detail, outcome.detail
    assert rig.skipped_as(SkipCode.SUPERSEDED) == [first]
    assert [j.name for j in rig.workspace.jobs()] == [rig.job_of(f"{MODEL}:2")]
    assert rig.waiting() == [] and rig.regated() == []


@pytest.mark.parametrize("where", ["delete", "audit:promotion.regated"])
def test_a_failure_between_the_gate_and_finishing_the_entry_is_re_driven_to_the_same_end(where: str) -> None:
    """The gate submitted the comparison, then finishing the entry (or auditing the re-gate) fails: the entry
    stays, and the redelivered event (or the reconciler) gates it again: the same job, one rollout."""
    fault = FailOnce(where)
    for redrive in ("event", "reconciler"):
        fault.fired = False
        rig = WaitRig()
        rig.table = FlakyDeletes(fault)
        rig.ledger = Ledger(rig.table, clock=rig.clock)
        rig.audit = FlakyAudit(fault)
        rig.promoter = rig.instance()
        first = rig.skip_early()
        landed = rig.land()
        with pytest.raises(TransientError):
            rig.promoter.on_evaluation_data(landed, "data-evt-1")
        assert fault.fired and rig.waiting() == [first]
        assert [j.name for j in rig.workspace.jobs()] == [rig.job_of(first)]
        outcomes: list[Any] = (rig.promoter.on_evaluation_data(landed, "data-evt-1") if redrive == "event"
                               else rig.promoter.reconcile(rig.clock()))
        assert len(outcomes) == 1 and "comparing" in outcomes[0].detail, outcomes
        assert rig.waiting() == [] and [j.name for j in rig.workspace.jobs()] == [rig.job_of(first)]
        assert rig.finish(rig.job_of(first), comparison(first, None)).action is PromotionAction.STARTED
        assert rig.run().phase is Phase.SUCCEEDED and rig.serving_model() == first
        assert rig.promoter.on_evaluation_data(landed, "data-evt-1") == []


def test_a_waiting_model_without_a_policy_any_more_is_dropped_with_a_reason(rig: WaitRig) -> None:
    first = rig.skip_early()
    rig.land()
    rig.policy = rig.policy.model_copy(update={"models": ()})  # the model left evergreen.yaml meanwhile
    rig.promoter = rig.instance()
    [outcome] = rig.promoter.reconcile(rig.clock())
    assert "no promotion policy for model" in outcome.detail, outcome.detail
    assert rig.workspace.jobs() == []
    assert rig.skipped_as(SkipCode.SUPERSEDED) == [first] and rig.waiting() == []


def test_the_reconciler_gates_the_others_then_fails_on_an_entry_it_cannot_read(rig: WaitRig) -> None:
    first = rig.skip_early()
    rig.ledger.track_work(EVALUATION_WAIT_WORK, "0-garbled", {"Model": MODEL})  # no version, no data asset
    rig.land()
    with pytest.raises(ValueError, match="waiting candidate entry 0-garbled cannot be read: it has no Version"):
        rig.promoter.reconcile(rig.clock())
    assert [j.name for j in rig.workspace.jobs()] == [rig.job_of(first)]  # the readable one was gated
    assert [w.key for w in rig.ledger.waiting_candidates()] == ["0-garbled"]


def test_a_redelivered_model_event_of_a_waiting_candidate_keeps_one_entry(rig: WaitRig) -> None:
    first = rig.skip_early()
    again = rig.promoter.on_model_version(event(MODEL, "1"))
    assert again.code == SkipCode.EVALUATION_DATA_MISSING.value
    assert rig.waiting() == [first]


class FlakyDeletes(FlakyTable):
    """A ledger table whose delete of an open-work entry can fail once (`delete`)."""

    def delete(self, partition: str, row: str) -> None:
        self.fault.hit("delete" if partition == f"work-{EVALUATION_WAIT_WORK}" else "other",
                       lambda: super(FlakyDeletes, self).delete(partition, row))
