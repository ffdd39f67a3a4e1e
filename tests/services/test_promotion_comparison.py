"""The fair gate's flow (`promotion.evaluation`) on the in-memory adapters: ModelRegistered submits a
comparison job, its RunCompleted decides from comparison.json, and the rollout starts from there.

The compare step itself is not run here (it has its own tests): the test writes the comparison.json
the step would write, for the job the Promoter submitted, and delivers the job's RunFinished.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from shared.adapters.memory.azureml import MemoryWorkspace
from shared.domain.retrain import RunFinished
from shared.domain.vocabulary import ComparisonPurpose, Phase, PromotionAction, Tag
from shared.domain.workspace import DataVersionSpec, ModelInfo
from shared.services.ledger import COMPARISON_WORK
from shared.services.promotion import (
    COMPARE_EXPERIMENT,
    STALL_FLOOR,
    Promoter,
    PromotionOutcome,
    comparison_job_name,
)
from tests.services.test_promotion import ENDPOINT, MODEL, REPO, Rig, event, policy_for

HOLDOUT = "churn-holdout"
EVALUATION = {"data": f"{HOLDOUT}@latest", "label_column": "churned", "min_rows": 500, "slices": ["region"],
              "min_slice_rows": 100, "max_slice_regression": 0.02, "resamples": 200}


def comparison(challenger: str, champion: str | None, *, low: float = 0.01, high: float = 0.05,
               rows: int = 2000, auc: float = 0.80, data_version: str = "1",
               slices: list[dict[str, Any]] | None = None) -> str:
    """comparison.json as `ml/src/compare.py` writes it (`evergreen.comparison/1`)."""
    estimate = (low + high) / 2
    return json.dumps({
        "schema": "evergreen.comparison/1",
        "evaluation": {"data_asset": HOLDOUT, "data_version": data_version, "rows": rows, "label_column": "churned"},
        "seed": 7, "resamples": 200, "confidence": 0.95, "metric": "roc_auc", "direction": "higher_is_better",
        "challenger": {"model": challenger, "metrics": {"roc_auc": auc}},
        "champion": None if champion is None else {"model": champion, "metrics": {"roc_auc": auc - estimate}},
        "difference": None if champion is None else {"metric": "roc_auc", "estimate": estimate, "low": low,
                                                     "high": high},
        "slices": slices or [],
    })


class CompareRig(Rig):
    """The promotion rig plus Azure ML's job runner and data registry, with an evaluation policy."""

    def __init__(self, **evaluation: Any) -> None:
        self.workspace = MemoryWorkspace()
        super().__init__(policy=policy_for(evaluation={**EVALUATION, **evaluation}))
        self.new_holdout()

    def instance(self) -> Promoter:
        return Promoter(policy=self.policy, endpoints=self.endpoints, ledger=self.ledger, ticks=self.queue,
                        audit=self.audit, app_root=REPO, clock=self.clock, jobs=self.workspace, data=self.workspace)

    def new_holdout(self) -> str:
        return self.workspace.register_data_version(DataVersionSpec(
            name=HOLDOUT, uri="azureml://datastores/landing/paths/holdout/x.csv", asset_type="uri_file",
            description="", tags={})).version

    def job_of(self, challenger: str, champion: str = "", version: str = "1") -> str:
        return comparison_job_name(challenger, champion, HOLDOUT, version)

    def finish(self, job: str, text: str | None, status: str = "Completed", event_id: str = "run-evt") -> \
            PromotionOutcome:
        """The compare step ends: its output is written and its RunCompleted (or RunStatusChanged) delivered."""
        found = next(j for j in self.workspace.jobs() if j.name == job)
        self.workspace.set_job_status(job, status)
        if text is not None:
            self.workspace.write_comparison(job, text)
        return self.promoter.on_comparison_finished(
            RunFinished(job, status, COMPARE_EXPERIMENT, dict(found.submission.tags)), event_id)

    def tags(self, model: ModelInfo) -> dict[str, str]:
        info = self.endpoints.get_model(model.name, model.version)
        assert info is not None
        return dict(info.tags)

    def champion_first(self) -> ModelInfo:
        """Version 1 scored alone, promoted and rolled out; it serves."""
        first = self.register("0.70")
        assert self.deliver(first).action is PromotionAction.COMPARING
        assert self.finish(self.job_of(first.name + ":1"), comparison(f"{MODEL}:1", None)).action \
            is PromotionAction.STARTED
        assert self.run().phase is Phase.SUCCEEDED
        return first


@pytest.fixture
def rig() -> CompareRig:
    return CompareRig()


def test_the_first_model_is_scored_alone_and_deployed(rig: CompareRig) -> None:
    first = rig.register("0.70")
    outcome = rig.deliver(first)
    assert outcome.action is PromotionAction.COMPARING, outcome.detail
    [job] = rig.workspace.jobs()
    submission = job.submission
    assert job.name == rig.job_of(f"{MODEL}:1")
    assert submission.model_inputs == {"challenger_model": f"azureml:{MODEL}:1"}  # no champion: scored alone
    assert submission.inputs["challenger_name"] == f"{MODEL}:1" and "compare.champion_name" not in submission.inputs
    assert submission.data_input == f"azureml:{HOLDOUT}:1" and submission.data_input_name == "evaluation_data"
    assert submission.inputs["slices"] == "region" and submission.inputs["label_column"] == "churned"
    assert submission.tags[Tag.COMPARISON.value] == ComparisonPurpose.CHALLENGER.value
    assert submission.yaml_path == REPO / "ml/compare.yml" and submission.experiment == COMPARE_EXPERIMENT

    decided = rig.finish(job.name, comparison(f"{MODEL}:1", None))
    assert decided.action is PromotionAction.STARTED, decided.detail
    assert rig.run().phase is Phase.SUCCEEDED
    assert rig.serving_model() == f"{MODEL}:1"
    assert rig.tags(first)[Tag.DECISION.value] == "first_model"
    assert rig.tags(first)[Tag.COMPARED_WITH.value] == ""


def test_a_first_model_below_threshold_is_not_deployed() -> None:
    rig = CompareRig()
    rig.policy = policy_for(evaluation=EVALUATION, threshold=0.75)
    rig.promoter = rig.instance()
    first = rig.register("0.90")  # its own holdout says 0.90; the shared evaluation data says 0.70
    rig.deliver(first)
    outcome = rig.finish(rig.job_of(f"{MODEL}:1"), comparison(f"{MODEL}:1", None, auc=0.70))
    assert outcome.action is PromotionAction.SKIPPED and "0.75" in outcome.detail
    assert rig.tags(first)[Tag.DECISION.value] == "below_threshold"
    assert rig.ledger.get_rollout(ENDPOINT) is None


def test_a_clearly_better_challenger_is_compared_with_the_champion_and_rolled_out(rig: CompareRig) -> None:
    rig.champion_first()
    second = rig.register("0.60")  # its own holdout metric plays no part any more
    assert rig.deliver(second).action is PromotionAction.COMPARING
    job = rig.job_of(f"{MODEL}:2", f"{MODEL}:1")
    [submitted] = [j for j in rig.workspace.jobs() if j.name == job]
    assert submitted.submission.model_inputs == {"challenger_model": f"azureml:{MODEL}:2",
                                                 "compare.champion_model": f"azureml:{MODEL}:1"}
    assert submitted.submission.inputs["compare.champion_name"] == f"{MODEL}:1"

    outcome = rig.finish(job, comparison(f"{MODEL}:2", f"{MODEL}:1", low=0.012, high=0.047))
    assert outcome.action is PromotionAction.STARTED, outcome.detail
    assert rig.run().phase is Phase.SUCCEEDED
    assert rig.serving_model() == f"{MODEL}:2"
    tags = rig.tags(second)
    assert tags[Tag.COMPARED_WITH.value] == f"{MODEL}:1" and tags[Tag.COMPARISON_JOB.value] == job
    assert tags[Tag.INTERVAL.value] == "[0.012, 0.047]" and tags[Tag.DECISION.value] == "improved"
    [compared] = [r for r in rig.audit.query(kind_prefix="promotion.compared", now=rig.clock())
                  if r.assets["model"] == f"{MODEL}:2"]
    assert json.loads(compared.assets["comparison"])["difference"]["low"] == 0.012  # the whole comparison


@pytest.mark.parametrize(("text", "code", "fragment"), [
    (comparison(f"{MODEL}:2", f"{MODEL}:1", low=-0.004, high=0.03), "not_significant", "[-0.004, 0.03]"),
    (comparison(f"{MODEL}:2", f"{MODEL}:1", slices=[
        {"column": "region", "value": "north", "rows": 400, "challenger": 0.70, "champion": 0.75, "difference": -0.05},
        {"column": "region", "value": "tiny", "rows": 20, "challenger": 0.1, "champion": 0.9, "difference": -0.8}]),
     "slice_regressed", "region=north (400 rows)"),
    (comparison(f"{MODEL}:2", f"{MODEL}:1", rows=120), "evaluation_too_small", "120 rows"),
    ("{not json", "invalid_comparison", "not JSON"),
])
def test_a_challenger_without_evidence_is_skipped_with_a_coded_reason(rig: CompareRig, text: str, code: str,
                                                                     fragment: str) -> None:
    rig.champion_first()
    second = rig.register("0.99")
    rig.deliver(second)
    outcome = rig.finish(rig.job_of(f"{MODEL}:2", f"{MODEL}:1"), text)
    assert outcome.action is PromotionAction.SKIPPED
    assert fragment in outcome.detail
    assert rig.tags(second)[Tag.DECISION.value] == code
    assert rig.serving_model() == f"{MODEL}:1"
    skipped = [r for r in rig.audit.query(kind_prefix="promotion.skipped", now=rig.clock())
               if r.assets.get("model") == f"{MODEL}:2"]
    assert [r.decision for r in skipped] == [f"skip:{code}"]


@pytest.mark.parametrize("status", ["Failed", "Canceled"])
def test_a_failed_comparison_job_skips_the_candidate_once(rig: CompareRig, status: str) -> None:
    rig.champion_first()
    second = rig.register("0.99")
    rig.deliver(second)
    job = rig.job_of(f"{MODEL}:2", f"{MODEL}:1")
    first = rig.finish(job, None, status=status)
    again = rig.finish(job, None, status=status)  # Event Grid redelivers the same event
    assert first.action is again.action is PromotionAction.SKIPPED
    assert rig.tags(second)[Tag.DECISION.value] == "comparison_failed"
    assert len(rig.workspace.jobs()) == 2  # nothing resubmitted
    skipped = [r for r in rig.audit.query(kind_prefix="promotion.skipped", now=rig.clock())
               if r.assets.get("model") == f"{MODEL}:2"]
    assert [r.decision for r in skipped] == ["skip:comparison_failed"]  # the redelivery rewrote the same record


def test_redelivered_events_submit_one_comparison_and_start_one_rollout(rig: CompareRig) -> None:
    rig.champion_first()
    second = rig.register("0.60")
    for _ in range(3):
        assert rig.deliver(second).action is PromotionAction.COMPARING
    assert len(rig.workspace.jobs()) == 2  # the champion's own, and one for the challenger
    job = rig.job_of(f"{MODEL}:2", f"{MODEL}:1")
    text = comparison(f"{MODEL}:2", f"{MODEL}:1")
    assert rig.finish(job, text).action is PromotionAction.STARTED
    started = rig.ledger.get_rollout(ENDPOINT)
    # A redelivered RunCompleted (before the first step: it re-sends that step, idempotently) and a late
    # ModelRegistered find the same rollout.
    assert rig.finish(job, text).action in (PromotionAction.STARTED, PromotionAction.DUPLICATE)
    assert rig.deliver(second).action in (PromotionAction.STARTED, PromotionAction.DUPLICATE)
    creates = rig.endpoints.calls.count("begin_create_deployment")
    finished = rig.run()
    assert finished.phase is Phase.SUCCEEDED and started is not None and finished.rollout_id == started.rollout_id
    assert rig.endpoints.calls.count("begin_create_deployment") == creates + 1
    assert rig.finish(job, text).action is PromotionAction.SKIPPED  # after the rollout: it is the champion
    assert len(rig.workspace.jobs()) == 2


def test_a_comparison_whose_champion_changed_meanwhile_is_submitted_again(rig: CompareRig) -> None:
    rig.champion_first()
    second, third = rig.register("0.60"), rig.register("0.60")
    rig.deliver(second)
    rig.deliver(third)  # both compared with version 1
    assert rig.finish(rig.job_of(f"{MODEL}:2", f"{MODEL}:1"), comparison(f"{MODEL}:2", f"{MODEL}:1")).action \
        is PromotionAction.STARTED
    assert rig.run().phase is Phase.SUCCEEDED  # version 2 serves now

    stale = rig.finish(rig.job_of(f"{MODEL}:3", f"{MODEL}:1"), comparison(f"{MODEL}:3", f"{MODEL}:1"))
    assert stale.action is PromotionAction.COMPARING, stale.detail  # against the new champion
    again = rig.job_of(f"{MODEL}:3", f"{MODEL}:2")
    [resubmitted] = [j for j in rig.workspace.jobs() if j.name == again]
    assert resubmitted.submission.model_inputs["compare.champion_model"] == f"azureml:{MODEL}:2"
    assert rig.finish(again, comparison(f"{MODEL}:3", f"{MODEL}:2", low=-0.01, high=0.01)).action \
        is PromotionAction.SKIPPED
    assert rig.serving_model() == f"{MODEL}:2"


def test_a_candidate_queued_behind_a_rollout_is_compared_when_its_turn_comes(rig: CompareRig) -> None:
    rig.champion_first()
    second, third = rig.register("0.60"), rig.register("0.60")
    rig.deliver(second)
    rig.deliver(third)
    rig.finish(rig.job_of(f"{MODEL}:2", f"{MODEL}:1"), comparison(f"{MODEL}:2", f"{MODEL}:1"))
    queued = rig.finish(rig.job_of(f"{MODEL}:3", f"{MODEL}:1"), comparison(f"{MODEL}:3", f"{MODEL}:1"))
    assert queued.action is PromotionAction.QUEUED, queued.detail  # version 2 is rolling out
    assert rig.run().phase is Phase.SUCCEEDED
    # The hand-over put version 3 through the gate: a comparison against version 2, the new champion.
    assert any(j.name == rig.job_of(f"{MODEL}:3", f"{MODEL}:2") for j in rig.workspace.jobs())


def test_a_newer_evaluation_drop_is_used_at_submit_time(rig: CompareRig) -> None:
    rig.champion_first()
    assert rig.new_holdout() == "2"
    rig.deliver(rig.register("0.60"))
    assert any(j.name == rig.job_of(f"{MODEL}:2", f"{MODEL}:1", version="2") for j in rig.workspace.jobs())


def test_no_evaluation_data_skips_with_a_code() -> None:
    rig = CompareRig(data="churn-holdout:9")
    outcome = rig.deliver(rig.register("0.70"))
    assert outcome.action is PromotionAction.SKIPPED and "churn-holdout:9" in outcome.detail
    assert rig.workspace.jobs() == []


def test_runs_that_are_not_challenger_comparisons_are_ignored(rig: CompareRig) -> None:
    other = rig.promoter.on_comparison_finished(RunFinished("someone-else", "Completed", "x", {}), "e1")
    step = rig.promoter.on_comparison_finished(RunFinished("step-1", "Completed", COMPARE_EXPERIMENT, {
        Tag.COMPARISON.value: "challenger", Tag.MODEL.value: f"{MODEL}:1", Tag.COMPARED_WITH.value: "",
        Tag.DATA_ASSET.value: HOLDOUT, Tag.DATA_VERSION.value: "1"}), "e2")
    assert other.action is step.action is PromotionAction.SKIPPED
    assert "not the comparison job" in step.detail


def test_without_evaluation_the_reason_says_different_holdouts() -> None:
    plain = Rig()
    plain.deliver(plain.register("0.80"))
    plain.run()
    outcome = plain.promoter.on_model_version(event(MODEL, plain.register("0.90").version))
    assert outcome.action is PromotionAction.STARTED
    record = plain.ledger.get_rollout(ENDPOINT)
    assert record is not None and "compared on different holdouts" in record.reason


# -- recovery: the reconciler re-drives comparisons whose RunCompleted never came ----------------------------
def test_reconcile_decides_a_comparison_whose_run_completed_never_came(rig: CompareRig) -> None:
    rig.champion_first()
    second = rig.register("0.60")
    rig.deliver(second)
    job = rig.job_of(f"{MODEL}:2", f"{MODEL}:1")
    rig.workspace.set_job_status(job, "Completed")  # ...but Event Grid gave up on its RunCompleted
    rig.workspace.write_comparison(job, comparison(f"{MODEL}:2", f"{MODEL}:1"))
    assert rig.promoter.reconcile(rig.clock()) == []  # not stale yet: its event may still come
    rig.clock.advance(STALL_FLOOR.total_seconds() + 1)
    [outcome] = rig.promoter.reconcile(rig.clock())
    assert "started" in outcome.detail, outcome.detail
    assert rig.run().phase is Phase.SUCCEEDED and rig.serving_model() == f"{MODEL}:2"
    assert rig.ledger.open_comparisons() == []
    assert rig.promoter.reconcile(rig.clock()) == []  # nothing left to re-drive
    assert len(rig.workspace.jobs()) == 2


def test_reconcile_leaves_a_running_comparison_alone_and_drops_a_decided_one(rig: CompareRig) -> None:
    first = rig.register("0.70")
    rig.deliver(first)
    job = rig.job_of(f"{MODEL}:1")
    rig.workspace.set_job_status(job, "Running")
    rig.clock.advance(STALL_FLOOR.total_seconds() + 1)
    assert rig.promoter.reconcile(rig.clock()) == []
    assert [work.job for work in rig.ledger.open_comparisons()] == [job]
    rig.finish(job, comparison(f"{MODEL}:1", None))
    assert rig.ledger.open_comparisons() == []


def test_reconcile_submits_a_comparison_whose_submission_died(rig: CompareRig) -> None:
    rig.register("0.70")
    job = rig.job_of(f"{MODEL}:1")
    # The process died between indexing the comparison and submitting it: the index row is all there is.
    rig.ledger.track_comparison(job, {Tag.MODEL.value: f"{MODEL}:1", Tag.TRIGGER_EVENT.value: "evt-1"})
    assert rig.workspace.jobs() == []
    rig.clock.advance(STALL_FLOOR.total_seconds() + 1)
    [outcome] = rig.promoter.reconcile(rig.clock())
    assert "comparing" in outcome.detail, outcome.detail
    assert [j.name for j in rig.workspace.jobs()] == [job]


def test_reconcile_re_drives_the_others_then_fails_on_an_entry_it_cannot_read(rig: CompareRig) -> None:
    """A garbled index entry is never guessed at: once stale it fails the pass (a bug to look at), but only after
    every other comparison was re-driven; it stays indexed, so retention keeps failing closed on it too."""
    rig.register("0.70")
    job = rig.job_of(f"{MODEL}:1")
    rig.ledger.track_comparison(job, {Tag.MODEL.value: f"{MODEL}:1", Tag.TRIGGER_EVENT.value: "evt-1"})
    rig.ledger.track_work(COMPARISON_WORK, "cmp-garbled", {"Tags": "{not json"})  # sorts before `job`
    assert rig.promoter.reconcile(rig.clock()) == []  # neither is stale yet
    rig.clock.advance(STALL_FLOOR.total_seconds() + 1)
    with pytest.raises(ValueError, match="open comparison entry cmp-garbled cannot be read: its tags are not JSON"):
        rig.promoter.reconcile(rig.clock())
    assert [j.name for j in rig.workspace.jobs()] == [job]  # the readable one was submitted again
    assert [work.job for work in rig.ledger.open_comparisons()] == ["cmp-garbled", job]
