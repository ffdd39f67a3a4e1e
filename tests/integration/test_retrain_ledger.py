"""Retraining decisions executed against the real ledger (Azurite tables), with a hand-written job runner:
duplicate events, concurrent instances, coalescing, failures."""

from __future__ import annotations

import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from azure.data.tables import TableServiceClient

from shared.errors import ClaimInProgressError
from shared.events import DataVersionRegistered
from shared.ledger import Ledger
from shared.policy import parse_policy
from shared.retrain import Retrainer, RunFinished, job_name_for

pytestmark = pytest.mark.integration

POLICY = parse_policy({
    "datasets": [{"name": "churn", "container": "landing", "prefix": "churn/", "type": "uri_folder",
                  "datastore": "landing", "batch": {"marker": "_SUCCESS"}}],
    "retraining": [{"dataset": "churn", "pipeline": "ml/pipeline.yml", "experiment": "exp", "model_name": "m"}],
})


class FakeJobs:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.submitted: list[str] = []

    def submit_pipeline(self, submission) -> str:
        with self.lock:
            self.submitted.append(submission.job_name)
        return "Preparing"


class Audit:
    def __init__(self) -> None:
        self.records = []

    def record(self, rec) -> None:
        self.records.append(rec)


@pytest.fixture
def world(azurite):
    table = TableServiceClient.from_connection_string(azurite.connection_string).create_table(
        f"retrain{uuid.uuid4().hex[:8]}")
    jobs, audit = FakeJobs(), Audit()

    def instance() -> Retrainer:
        return Retrainer(policy=POLICY, app_root=Path("."), ledger=Ledger(table), jobs=jobs, audit=audit)

    instance.ledger = Ledger(table)
    return instance, jobs, audit


def event(version: str) -> DataVersionRegistered:
    return DataVersionRegistered("churn", "churn", version, "azureml://x", "uri_folder", version * 8, 1)


def deliver(retrainer: Retrainer, ev: DataVersionRegistered, event_id: str):
    """Like Event Grid: a ClaimInProgressError means 'retry later'."""
    for _ in range(20):
        try:
            return retrainer.on_data_version_registered(ev, event_id)
        except ClaimInProgressError:
            continue
    raise AssertionError("never settled")


def test_duplicate_events_start_one_run(world):
    instance, jobs, audit = world
    r = instance()
    assert r.on_data_version_registered(event("1"), "e1").action == "submitted"
    again = r.on_data_version_registered(event("1"), "e1")
    assert again.action == "skipped" and "already exists" in again.detail
    assert jobs.submitted == [job_name_for("churn", "1")]
    assert [a.kind for a in audit.records] == ["retrain.submitted", "retrain.skipped"]


def test_concurrent_instances_and_coalescing_start_one_run_then_one_follow_up_on_the_newest(world):
    instance, jobs, _ = world
    events = [event(str(v)) for v in range(1, 7)]
    with ThreadPoolExecutor(6) as pool:
        outcomes = list(pool.map(lambda e: deliver(instance(), e, f"evt-{e.version}"), events + events))
    assert len(jobs.submitted) == 1, outcomes  # one run, whichever version won the claim
    first = jobs.submitted[0]
    state = instance.ledger.get_retrain_state("churn")
    assert state is not None and state.active_job == first
    assert state.pending_version == "6" or state.active_version == "6"
    done = instance().on_run_finished(RunFinished(first, "Completed", "exp", {"evergreen.dataset": "churn"}), "run-1")
    if state.active_version == "6":
        assert done.action == "finished" and jobs.submitted == [first]
    else:
        assert done.action == "submitted" and jobs.submitted == [first, job_name_for("churn", "6")]


def test_a_failed_run_is_recorded_and_the_next_version_retrains(world):
    instance, jobs, audit = world
    r = instance()
    r.on_data_version_registered(event("1"), "e1")
    failed = r.on_run_finished(RunFinished(job_name_for("churn", "1"), "Failed", "exp",
                                           {"evergreen.dataset": "churn", "evergreen.data_version": "1"}), "run-1")
    assert failed.action == "failed"
    assert any(a.kind == "retrain.failed" and "Failed" in a.reason for a in audit.records)
    assert r.on_data_version_registered(event("2"), "e2").action == "submitted"
    assert jobs.submitted == [job_name_for("churn", "1"), job_name_for("churn", "2")]


def test_foreign_runs_are_ignored(world):
    instance, _, _ = world
    out = instance().on_run_finished(RunFinished("someone-elses", "Completed", "x", {}), "r")
    assert out.action == "skipped"
