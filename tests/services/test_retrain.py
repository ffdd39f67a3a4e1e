"""Data version → retraining run on the in-memory adapters: duplicate events, concurrent instances,
coalescing into one follow-up on the newest version, failed runs, interrupted submissions."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from shared.adapters.memory.azureml import MemoryWorkspace
from shared.adapters.memory.tables import MemoryTable
from shared.config.policy import parse_policy
from shared.domain.events import DataVersionRegistered
from shared.domain.retrain import PipelineSubmission, RunFinished, job_name_for
from shared.domain.vocabulary import RetrainAction, RunStatus, Tag
from shared.errors import ClaimInProgressError
from shared.services.audit import TableAuditLog
from shared.services.ledger import Ledger
from shared.services.retrain import Retrainer, RetrainOutcome
from tests.services.conftest import FakeClock

POLICY = parse_policy({
    "datasets": [{"name": "churn", "container": "landing", "prefix": "churn/", "type": "uri_folder",
                  "datastore": "landing", "batch": {"marker": "_SUCCESS"}},
                 {"name": "ref", "container": "landing", "prefix": "ref/", "type": "uri_file",
                  "datastore": "landing"}],
    "retraining": [{"dataset": "churn", "pipeline": "ml/pipeline.yml", "experiment": "exp", "model_name": "m"},
                   {"dataset": "ref", "pipeline": "ml/pipeline.yml", "experiment": "exp", "model_name": "r",
                    "min_interval_minutes": 30}],
})


class FailingOnce(MemoryWorkspace):
    """The first submit fails (Azure ML answering 503, or the instance dying mid-call)."""

    def __init__(self) -> None:
        super().__init__()
        self.fail = True

    def submit_pipeline(self, submission: PipelineSubmission) -> str:
        if self.fail:
            self.fail = False
            raise ConnectionError("Azure ML is unavailable")
        return super().submit_pipeline(submission)


class World:
    def __init__(self, clock: FakeClock, jobs: MemoryWorkspace | None = None) -> None:
        self.clock = clock
        self.table = MemoryTable()
        self.jobs = jobs or MemoryWorkspace()
        self.audit = TableAuditLog(MemoryTable())
        self.ledger = Ledger(self.table, clock=clock)

    def instance(self) -> Retrainer:
        return Retrainer(policy=POLICY, app_root=Path("/app"), ledger=Ledger(self.table, clock=self.clock),
                         jobs=self.jobs, audit=self.audit, clock=self.clock)

    def submitted(self) -> list[str]:
        return [j.name for j in self.jobs.jobs()]

    def kinds(self) -> list[str]:
        return [r.kind for r in sorted(self.audit.query(now=self.clock()), key=lambda r: r.at)]


@pytest.fixture
def world(clock: FakeClock) -> World:
    return World(clock)


def event(version: str, dataset: str = "churn") -> DataVersionRegistered:
    return DataVersionRegistered(dataset, dataset, version, "azureml://x", "uri_folder", version * 8, 1)


def finished(job: str, status: str = "Completed", version: str | None = None) -> RunFinished:
    tags = {Tag.DATASET.value: "churn", **({Tag.DATA_VERSION.value: version} if version else {})}
    return RunFinished(job, status, "exp", tags)


def deliver(retrainer: Retrainer, ev: DataVersionRegistered, event_id: str) -> RetrainOutcome:
    """Like Event Grid: a ClaimInProgressError means 'retry later'."""
    for _ in range(50):
        try:
            return retrainer.on_data_version_registered(ev, event_id)
        except ClaimInProgressError:
            continue
    raise AssertionError("never settled")


def test_duplicate_events_start_one_run_with_lineage(world: World) -> None:
    r = world.instance()
    assert r.on_data_version_registered(event("1"), "e1").action is RetrainAction.SUBMITTED
    world.clock.advance(1)
    again = r.on_data_version_registered(event("1"), "e1")
    assert again.action is RetrainAction.SKIPPED and "already exists" in again.detail
    (job,) = world.jobs.jobs()
    assert job.name == job_name_for("churn", "1")
    assert job.submission.yaml_path == Path("/app/ml/pipeline.yml")
    assert job.submission.data_input == "azureml:churn:1"
    assert job.submission.tags == {Tag.DATASET.value: "churn", Tag.DATA_ASSET.value: "churn",
                                   Tag.DATA_VERSION.value: "1", Tag.TRIGGER_EVENT.value: "e1"}
    assert world.ledger.retrain_run_status("churn", "1") is RunStatus.SUBMITTED
    assert world.kinds() == ["retrain.submitted", "retrain.skipped"]


def test_concurrent_instances_and_coalescing_start_one_run_then_one_follow_up_on_the_newest(world: World) -> None:
    events = [event(str(v)) for v in range(1, 7)]
    with ThreadPoolExecutor(6) as pool:
        list(pool.map(lambda e: deliver(world.instance(), e, f"evt-{e.version}"), events + events))
    (first,) = world.submitted()  # one run, whichever version won the claim
    state = world.ledger.get_retrain_state("churn")
    assert state is not None and state.active_job == first
    assert state.pending_version == "6" or state.active_version == "6"
    done = world.instance().on_run_finished(finished(first), "run-1")
    if state.active_version == "6":
        assert done.action is RetrainAction.FINISHED and world.submitted() == [first]
    else:
        assert done.action is RetrainAction.SUBMITTED and world.submitted() == [first, job_name_for("churn", "6")]


def test_the_follow_up_runs_once_on_the_newest_version_and_then_the_dataset_is_idle(world: World) -> None:
    r = world.instance()
    r.on_data_version_registered(event("1"), "e1")
    assert r.on_data_version_registered(event("3"), "e3").action is RetrainAction.COALESCED
    assert r.on_data_version_registered(event("2"), "e2").action is RetrainAction.SKIPPED  # 3 is queued already
    follow = r.on_run_finished(finished(job_name_for("churn", "1"), version="1"), "run-1")
    assert (follow.action, follow.job_name) == (RetrainAction.SUBMITTED, job_name_for("churn", "3"))
    assert world.ledger.retrain_run_status("churn", "1") is RunStatus.COMPLETED
    assert r.on_run_finished(finished(job_name_for("churn", "1")), "run-1").action is RetrainAction.SKIPPED
    last = r.on_run_finished(finished(job_name_for("churn", "3"), version="3"), "run-3")
    assert last.action is RetrainAction.FINISHED
    state = world.ledger.get_retrain_state("churn")
    assert state is not None and state.active_job is None
    assert world.submitted() == [job_name_for("churn", "1"), job_name_for("churn", "3")]


def test_a_non_numeric_version_counts_as_newer_than_numeric_ones(world: World) -> None:
    r = world.instance()
    r.on_data_version_registered(event("2"), "e2")
    assert r.on_data_version_registered(event("latest"), "e-latest").action is RetrainAction.COALESCED
    skipped = r.on_data_version_registered(event("10"), "e10")
    assert skipped.action is RetrainAction.SKIPPED and "latest is already queued" in skipped.detail


def test_a_failed_run_is_recorded_and_the_next_version_retrains(world: World) -> None:
    r = world.instance()
    r.on_data_version_registered(event("1"), "e1")
    world.jobs.set_job_status(job_name_for("churn", "1"), "Failed")
    world.clock.advance(1)
    failed = r.on_run_finished(finished(job_name_for("churn", "1"), "Failed", "1"), "run-1")
    assert failed.action is RetrainAction.FAILED
    assert world.ledger.retrain_run_status("churn", "1") is RunStatus.FAILED
    records = list(world.audit.query(now=world.clock(), kind_prefix="retrain.failed"))
    assert len(records) == 1 and "Failed" in records[0].reason
    world.clock.advance(1)
    assert r.on_data_version_registered(event("2"), "e2").action is RetrainAction.SUBMITTED
    assert world.submitted() == [job_name_for("churn", "1"), job_name_for("churn", "2")]


def test_a_canceled_run_is_recorded_as_canceled(world: World) -> None:
    r = world.instance()
    r.on_data_version_registered(event("1"), "e1")
    assert r.on_run_finished(finished(job_name_for("churn", "1"), "Canceled", "1"), "run-1").action \
        is RetrainAction.FAILED
    assert world.ledger.retrain_run_status("churn", "1") is RunStatus.CANCELED


def test_foreign_runs_are_ignored(world: World) -> None:
    out = world.instance().on_run_finished(RunFinished("someone-elses", "Completed", "x", {}), "r")
    assert out.action is RetrainAction.SKIPPED and "not an Evergreen" in out.detail
    other = world.instance().on_run_finished(finished("not-active"), "r")
    assert other.action is RetrainAction.SKIPPED and "not the active run" in other.detail


def test_an_interrupted_submission_is_resumed_by_the_redelivery_and_runs_once(clock: FakeClock) -> None:
    world = World(clock, FailingOnce())
    r = world.instance()
    with pytest.raises(ConnectionError):
        r.on_data_version_registered(event("1"), "e1")
    assert world.ledger.retrain_run_status("churn", "1") is RunStatus.SUBMITTING
    resumed = r.on_data_version_registered(event("1"), "e1")  # Event Grid redelivers
    assert resumed.action is RetrainAction.SUBMITTED and "resuming" in resumed.detail
    assert world.submitted() == [job_name_for("churn", "1")]
    assert r.on_data_version_registered(event("1"), "e1").action is RetrainAction.SKIPPED


def test_a_resubmission_of_an_existing_job_returns_it_and_runs_nothing_new(world: World) -> None:
    r = world.instance()
    r.on_data_version_registered(event("1"), "e1")
    world.jobs.set_job_status(job_name_for("churn", "1"), "Running")
    # the ledger lost the 'submitted' write: the redelivery resumes and finds the job already there
    world.ledger.set_retrain_run_status("churn", "1", RunStatus.SUBMITTING)
    again = r.on_data_version_registered(event("1"), "e1")
    assert again.action is RetrainAction.SUBMITTED and "(Running)" in again.detail
    assert world.submitted() == [job_name_for("churn", "1")]


def test_versions_inside_the_minimum_interval_are_skipped(world: World) -> None:
    r = world.instance()
    assert r.on_data_version_registered(event("1", "ref"), "e1").action is RetrainAction.SUBMITTED
    done = RunFinished(job_name_for("ref", "1"), "Completed", "exp", {Tag.DATASET.value: "ref"})
    assert r.on_run_finished(done, "run-1").action is RetrainAction.FINISHED
    world.clock.advance(10 * 60)
    early = r.on_data_version_registered(event("2", "ref"), "e2")
    assert early.action is RetrainAction.SKIPPED and "minimum interval of 30 min" in early.detail
    world.clock.advance(21 * 60)
    assert r.on_data_version_registered(event("3", "ref"), "e3").action is RetrainAction.SUBMITTED
