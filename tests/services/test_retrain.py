"""Data version → retraining run on the in-memory adapters: duplicate events, concurrent instances,
coalescing into one follow-up on the newest version, failed runs, interrupted and refused submissions,
the minimum interval, ETag conflicts, and the reconciler."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from shared.adapters.memory.azureml import MemoryWorkspace
from shared.adapters.memory.queues import MemoryDelayedQueue
from shared.adapters.memory.tables import MemoryTable
from shared.config.policy import parse_policy
from shared.domain.events import DataVersionRegistered
from shared.domain.keys import digest
from shared.domain.records import DEFAULT_LEASES, RECHECK_GRACE, SUBMIT_LEASE, Leases, Row
from shared.domain.retrain import PipelineSubmission, RetrainCheck, RunFinished, job_name_for, run_key
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
    def __init__(self, clock: FakeClock, jobs: MemoryWorkspace | None = None,
                 leases: Leases = DEFAULT_LEASES) -> None:
        self.clock = clock
        self.leases = leases  # EVERGREEN_LEASE_SECONDS, as the composition root passes it
        self.table = MemoryTable()
        self.jobs = jobs or MemoryWorkspace()
        self.audit = TableAuditLog(MemoryTable())
        self.ledger = Ledger(self.table, clock=clock, leases=leases)
        self.rechecks: MemoryDelayedQueue[RetrainCheck] = MemoryDelayedQueue(clock=clock)
        self.slept: list[float] = []

    def instance(self) -> Retrainer:
        return Retrainer(policy=POLICY, app_root=Path("/app"),
                         ledger=Ledger(self.table, clock=self.clock, leases=self.leases), jobs=self.jobs,
                         audit=self.audit, rechecks=self.rechecks, clock=self.clock, sleep=self.slept.append,
                         leases=self.leases)

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


def test_a_status_change_that_is_no_end_leaves_the_run_active(world: World) -> None:
    """RunStatusChanged reports every status, and late: a 'Running' after the fact must not end the run."""
    r = world.instance()
    r.on_data_version_registered(event("1"), "e1")
    r.on_data_version_registered(event("2"), "e2")
    running = r.on_run_finished(finished(job_name_for("churn", "1"), "Running", "1"), "status-1")
    assert running.action is RetrainAction.SKIPPED and "not finished" in running.detail
    state = world.ledger.get_retrain_state("churn")
    assert state is not None and state.active_job == job_name_for("churn", "1") and state.pending_version == "2"
    assert world.submitted() == [job_name_for("churn", "1")]


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


class ProcessDied(BaseException):
    """The instance dies mid-call: nothing of ours runs after it (no `except Exception`, no clean-up)."""


class DiesOnce(MemoryWorkspace):
    """The first submit kills the process before Azure ML got the job."""

    def __init__(self) -> None:
        super().__init__()
        self.die = True

    def submit_pipeline(self, submission: PipelineSubmission) -> str:
        if self.die:
            self.die = False
            raise ProcessDied
        return super().submit_pipeline(submission)


class FaultyTable(MemoryTable):
    """A table whose next write to a partition (by prefix) fails once, or is preceded by another writer's."""

    def __init__(self) -> None:
        super().__init__()
        self.fail_upsert: str | None = None
        self.before_replace: Callable[[], None] | None = None

    def upsert(self, entity: Mapping[str, Any], *, merge: bool = False) -> Row:
        if self.fail_upsert and str(entity["PartitionKey"]).startswith(self.fail_upsert):
            self.fail_upsert = None
            raise ConnectionError("Table Storage is unavailable")
        return super().upsert(entity, merge=merge)

    def replace_if(self, row: Row, entity: Mapping[str, Any]) -> Row | None:
        racer, self.before_replace = self.before_replace, None
        if racer is not None and row.data.get("PartitionKey") == "retrain":
            racer()  # another instance writes the row between our read and our conditional write
        return super().replace_if(row, entity)


def recheck_due(world: World) -> list[RetrainOutcome]:
    """Like the queue trigger: deliver every re-check that is due now, completing each one handled."""
    outcomes = []
    for message in world.rechecks.due():
        outcomes.append(world.instance().on_recheck(message.item, f"check-{message.id}"))
        world.rechecks.complete(message)
    return outcomes


def ref_done(world: World, version: str) -> None:
    done = RunFinished(job_name_for("ref", version), "Completed", "exp",
                       {Tag.DATASET.value: "ref", Tag.DATA_VERSION.value: version})
    assert world.instance().on_run_finished(done, f"run-{version}").action is RetrainAction.FINISHED


# -- defect 2: the retrain stall -------------------------------------------------------------------
def test_defect2_a_failure_between_claim_and_submit_is_resumed_by_the_redelivery(clock: FakeClock) -> None:
    """Before: the claim named the job active, the run row was never written, and the redelivery was
    skipped as 'not newer than the running 1' – no job, and every later version coalesced behind it."""
    world = World(clock)
    world.table = table = FaultyTable()
    world.ledger = Ledger(table, clock=clock)
    table.fail_upsert = "retrainrun-"
    with pytest.raises(ConnectionError):
        world.instance().on_data_version_registered(event("1"), "e1")
    resumed = world.instance().on_data_version_registered(event("1"), "e1")  # Event Grid redelivers
    assert resumed.action is RetrainAction.SUBMITTED and "resuming" in resumed.detail
    assert world.submitted() == [job_name_for("churn", "1")]
    state = world.ledger.get_retrain_state("churn")
    assert state is not None and state.active_status is RunStatus.SUBMITTED and state.lease_until is None
    assert world.instance().on_data_version_registered(event("2"), "e2").action is RetrainAction.COALESCED


def test_defect2_a_submitter_that_died_is_resumed_when_its_lease_ends_and_never_twice(clock: FakeClock) -> None:
    world = World(clock, DiesOnce())
    with pytest.raises(ProcessDied):
        world.instance().on_data_version_registered(event("1"), "e1")
    state = world.ledger.get_retrain_state("churn")
    assert state is not None and state.submitting and state.lease_owner
    clock.advance(60)
    waited = world.instance().on_data_version_registered(event("1"), "e1")  # redelivered while the lease lives
    assert waited.action is RetrainAction.DEFERRED and "re-check at" in waited.detail
    assert 0 < sum(world.slept) <= 3  # waited briefly for the holder, through the injected sleeper
    assert world.submitted() == [] and recheck_due(world) == []  # nothing due before the lease ends
    clock.advance(SUBMIT_LEASE.total_seconds())
    (resumed,) = recheck_due(world)
    assert resumed.action is RetrainAction.SUBMITTED and "resuming" in resumed.detail
    (job,) = world.jobs.jobs()
    assert job.name == job_name_for("churn", "1") and job.submission.tags[Tag.TRIGGER_EVENT.value] == "e1"
    assert world.instance().on_data_version_registered(event("1"), "e1").action is RetrainAction.SKIPPED
    assert world.ledger.retrain_run_status("churn", "1") is RunStatus.SUBMITTED


def test_defect2_a_follow_up_whose_submit_failed_is_resumed_by_the_redelivered_run_event(clock: FakeClock) -> None:
    """Before: the follow-up was claimed, its submit failed, and the redelivered RunCompleted was
    skipped as 'not the active run': the follow-up job never existed and the dataset was stuck."""
    world = World(clock, FailingOnce())
    world.jobs.fail = False  # type: ignore[attr-defined]
    r = world.instance()
    r.on_data_version_registered(event("1"), "e1")
    r.on_data_version_registered(event("2"), "e2")
    world.jobs.fail = True  # type: ignore[attr-defined]
    run_1 = finished(job_name_for("churn", "1"), version="1")
    with pytest.raises(ConnectionError):
        r.on_run_finished(run_1, "run-1")
    again = r.on_run_finished(run_1, "run-1")
    assert (again.action, again.job_name) == (RetrainAction.SUBMITTED, job_name_for("churn", "2"))
    assert world.submitted() == [job_name_for("churn", "1"), job_name_for("churn", "2")]
    assert world.ledger.retrain_run_status("churn", "1") is RunStatus.COMPLETED


def test_defect2_a_refused_job_fails_the_run_audited_and_the_pending_version_runs(clock: FakeClock) -> None:
    """A permanent error (HTTP 400, a YAML that does not load) marks the run failed and frees the dataset."""
    world = World(clock, FailingOnce())
    r = world.instance()
    with pytest.raises(ConnectionError):
        r.on_data_version_registered(event("1"), "e1")
    assert r.on_data_version_registered(event("2"), "e2").action is RetrainAction.COALESCED
    world.jobs.reject_job(job_name_for("churn", "1"), "(UserError) pipeline.yml: unknown component 'trian'")
    outcome = r.on_data_version_registered(event("1"), "e1")  # the redelivery resumes; Azure ML refuses it
    assert (outcome.action, outcome.job_name) == (RetrainAction.SUBMITTED, job_name_for("churn", "2"))
    assert world.submitted() == [job_name_for("churn", "2")]
    assert world.ledger.retrain_run_status("churn", "1") is RunStatus.FAILED
    (failed,) = world.audit.query(now=clock(), kind_prefix="retrain.failed")
    assert "unknown component 'trian'" in failed.reason and failed.assets["job"] == job_name_for("churn", "1")
    assert r.on_data_version_registered(event("1"), "e1").action is RetrainAction.SKIPPED


def test_defect2_a_refused_job_with_nothing_pending_leaves_the_dataset_free_for_the_next_version(
        world: World) -> None:
    world.jobs.reject_job(job_name_for("churn", "1"))
    refused = world.instance().on_data_version_registered(event("1"), "e1")
    assert refused.action is RetrainAction.FAILED and "BadRequest" in refused.detail
    state = world.ledger.get_retrain_state("churn")
    assert state is not None and state.active_job is None
    assert world.instance().on_data_version_registered(event("2"), "e2").action is RetrainAction.SUBMITTED
    assert world.kinds() == ["retrain.failed", "retrain.submitted"]


# -- defect 9: the minimum interval coalesces, it never drops ----------------------------------------
def test_defect9_versions_inside_the_minimum_interval_run_once_on_the_newest_when_the_window_ends(
        world: World) -> None:
    """Before: a version inside the window was skipped for good, so the newest data was never trained on."""
    r = world.instance()
    assert r.on_data_version_registered(event("1", "ref"), "e1").action is RetrainAction.SUBMITTED
    ref_done(world, "1")
    world.clock.advance(10 * 60)
    early = r.on_data_version_registered(event("2", "ref"), "e2")
    assert early.action is RetrainAction.COALESCED and "minimum interval of 30 min" in early.detail
    world.clock.advance(5 * 60)
    assert r.on_data_version_registered(event("3", "ref"), "e3").action is RetrainAction.COALESCED
    assert r.on_data_version_registered(event("2", "ref"), "e2").action is not RetrainAction.SUBMITTED
    assert len(world.rechecks) == 1  # one re-check for the window's end, however many versions came
    assert recheck_due(world) == [] and world.submitted() == [job_name_for("ref", "1")]
    world.clock.advance(15 * 60 + 1)
    (run,) = recheck_due(world)
    assert (run.action, run.job_name) == (RetrainAction.SUBMITTED, job_name_for("ref", "3"))
    assert world.submitted() == [job_name_for("ref", "1"), job_name_for("ref", "3")]
    state = world.ledger.get_retrain_state("ref")
    assert state is not None and state.pending_version is None and state.recheck_at is None


def test_defect9_a_version_arriving_after_the_window_runs_at_once(world: World) -> None:
    r = world.instance()
    r.on_data_version_registered(event("1", "ref"), "e1")
    ref_done(world, "1")
    world.clock.advance(31 * 60)
    assert r.on_data_version_registered(event("2", "ref"), "e2").action is RetrainAction.SUBMITTED
    assert len(world.rechecks) == 0


def test_defect9_a_lost_recheck_is_redriven_by_the_reconciler(world: World) -> None:
    r = world.instance()
    r.on_data_version_registered(event("1", "ref"), "e1")
    ref_done(world, "1")
    world.clock.advance(10 * 60)
    r.on_data_version_registered(event("2", "ref"), "e2")
    (lost,) = world.rechecks.due(world.clock() + timedelta(minutes=21))
    world.rechecks.complete(lost)  # the message is lost (poisoned, or its queue was cleared)
    world.clock.advance(20 * 60 + 1)
    assert r.reconcile(world.clock()) == []  # its re-check may still be in flight
    world.clock.advance(RECHECK_GRACE.total_seconds())
    (redriven,) = r.reconcile(world.clock())
    assert (redriven.action, redriven.job_name) == (RetrainAction.REDRIVEN, job_name_for("ref", "2"))
    assert world.submitted() == [job_name_for("ref", "1"), job_name_for("ref", "2")]
    assert len(list(world.audit.query(now=world.clock(), kind_prefix="retrain.redriven"))) == 1


# -- ETag conflicts are decided again, never "someone else is working on it" ----------------------------
def test_an_etag_conflict_is_decided_again_in_process_not_raised(clock: FakeClock) -> None:
    """Before: any conditional write that lost raised ClaimInProgressError (a failed execution, a retry)."""
    world = World(clock)
    world.table = table = FaultyTable()
    world.ledger = Ledger(table, clock=clock)
    r = world.instance()
    r.on_data_version_registered(event("1"), "e1")
    table.before_replace = lambda: world.instance().on_data_version_registered(event("3"), "e3")
    assert r.on_data_version_registered(event("2"), "e2").action is RetrainAction.SKIPPED  # 3 won meanwhile
    table.before_replace = lambda: world.instance().on_data_version_registered(event("5"), "e5")
    follow = r.on_run_finished(finished(job_name_for("churn", "1"), version="1"), "run-1")
    assert (follow.action, follow.job_name) == (RetrainAction.SUBMITTED, job_name_for("churn", "5"))


def test_racing_duplicates_never_raise(world: World) -> None:
    events = [event(str(v)) for v in (1, 2, 3)] * 4
    with ThreadPoolExecutor(8) as pool:
        outcomes = list(pool.map(lambda e: world.instance().on_data_version_registered(e, f"evt-{e.version}"),
                                 events))
    assert sum(o.action is RetrainAction.SUBMITTED for o in outcomes) == 1
    assert len(world.submitted()) == 1


# -- the reconciler ---------------------------------------------------------------------------------------
def test_reconcile_resumes_a_submission_whose_lease_expired(clock: FakeClock) -> None:
    world = World(clock, DiesOnce())
    with pytest.raises(ProcessDied):
        world.instance().on_data_version_registered(event("1"), "e1")
    assert world.instance().reconcile(clock()) == []  # the holder may still be at work
    clock.advance(SUBMIT_LEASE.total_seconds() + 1)
    (redriven,) = world.instance().reconcile(clock())
    assert redriven.action is RetrainAction.REDRIVEN and "lease expired" in redriven.detail
    assert world.submitted() == [job_name_for("churn", "1")]
    assert world.instance().reconcile(clock()) == []  # idempotent: nothing is stuck any more
    (record,) = world.audit.query(now=clock(), kind_prefix="retrain.redriven")
    assert record.assets["job"] == job_name_for("churn", "1")


def test_a_rerun_whose_submission_failed_is_resumed_as_the_same_rerun(clock: FakeClock) -> None:
    """Found by the chaos harness (champion re-score flow): a rerun (a decayed champion's retrain) whose submit
    failed was resumed by the reconciler as a plain run of its version: its own run row stayed `submitting`
    for good, and the job lost its rerun tag. The retraining row now keeps the rerun key."""
    world = World(clock, FailingOnce())
    rerun = "degraded-abc"
    with pytest.raises(ConnectionError):
        world.instance().on_data_version_registered(event("1"), "e1", rerun=rerun)
    clock.advance(SUBMIT_LEASE.total_seconds() + 1)
    (redriven,) = world.instance().reconcile(clock())
    assert redriven.action is RetrainAction.REDRIVEN, redriven.detail
    (job,) = world.jobs.jobs()
    assert job.name == job_name_for("churn", "1", rerun) and job.submission.tags[Tag.RERUN.value] == rerun
    assert world.ledger.retrain_run_status("churn", run_key("1", rerun)) is RunStatus.SUBMITTED
    assert world.ledger.retrain_run_status("churn", "1") is None  # no plain run of 1 was recorded
    done = RunFinished(job.name, "Completed", "exp", dict(job.submission.tags))
    assert world.instance().on_run_finished(done, "run-1").action is RetrainAction.FINISHED
    assert world.ledger.retrain_run_status("churn", run_key("1", rerun)) is RunStatus.COMPLETED


def test_reconcile_runs_the_follow_up_of_a_run_whose_event_was_lost(world: World) -> None:
    r = world.instance()
    r.on_data_version_registered(event("1"), "e1")
    r.on_data_version_registered(event("4"), "e4")
    world.jobs.set_job_status(job_name_for("churn", "1"), "Running")
    assert r.reconcile(world.clock()) == []
    world.jobs.set_job_status(job_name_for("churn", "1"), "Completed")  # RunCompleted never arrives
    (redriven,) = r.reconcile(world.clock())
    assert redriven.action is RetrainAction.REDRIVEN and "never arrived" in redriven.detail
    assert world.ledger.retrain_run_status("churn", "1") is RunStatus.COMPLETED
    assert world.submitted() == [job_name_for("churn", "1"), job_name_for("churn", "4")]
    late = r.on_run_finished(finished(job_name_for("churn", "1"), version="1"), "run-1")  # the event, late
    assert late.action is RetrainAction.SKIPPED and world.submitted()[-1] == job_name_for("churn", "4")


def test_reconcile_submits_an_active_job_that_does_not_exist(world: World) -> None:
    """A state row left by the old code's stall: the job is named active but was never created."""
    world.table.upsert({"PartitionKey": "retrain", "RowKey": digest("churn"), "Dataset": "churn",
                        "ActiveJob": job_name_for("churn", "1"), "ActiveVersion": "1", "PendingVersion": "2",
                        "PendingAsset": "churn", "PendingAssetType": "uri_folder"})
    (redriven,) = world.instance().reconcile(world.clock())
    assert "does not exist" in redriven.detail and world.submitted() == [job_name_for("churn", "1")]
    world.jobs.set_job_status(job_name_for("churn", "1"), "Failed")
    (follow,) = world.instance().reconcile(world.clock())
    assert follow.job_name == job_name_for("churn", "2")
    assert world.ledger.retrain_run_status("churn", "1") is RunStatus.FAILED


def test_defect2_a_submitter_that_died_costs_one_configured_lease_not_five_minutes(clock: FakeClock) -> None:
    """EVERGREEN_LEASE_SECONDS=30: the submission is resumed, by its re-check and by the reconciler, after 30 s."""
    short = Leases.of(30)
    world = World(clock, DiesOnce(), leases=short)
    with pytest.raises(ProcessDied):
        world.instance().on_data_version_registered(event("1"), "e1")
    state = world.ledger.get_retrain_state("churn")
    assert state is not None and state.lease_until == clock() + short.submit  # before: now + 5 minutes
    waited = world.instance().on_data_version_registered(event("1"), "e1")  # redelivered while the lease lives
    assert waited.action is RetrainAction.DEFERRED
    clock.advance(short.submit.total_seconds() - 1)
    assert world.instance().reconcile(clock()) == [] and recheck_due(world) == []  # still its holder's
    clock.advance(2)
    (redriven,) = world.instance().reconcile(clock())
    assert redriven.action is RetrainAction.REDRIVEN and "lease expired" in redriven.detail
    assert world.submitted() == [job_name_for("churn", "1")]
    assert all(o.action is RetrainAction.SKIPPED for o in recheck_due(world))  # the re-check finds it done
    assert world.submitted() == [job_name_for("churn", "1")]
