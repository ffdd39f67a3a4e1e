"""Retraining on the real ledger (Azurite tables through AzureTable), with the in-memory job runner and
with the Azure ML adapter on the emulator.

The behaviour is covered, fast, by tests/services/test_retrain.py; this proves that concurrent
instances start one run, and that a submission's lease is resumed, on Table Storage's real ETag
semantics, and that the Azure ML adapter reports a job that can never run as refused (defect 2)."""

from __future__ import annotations

import dataclasses
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from azure.data.tables import TableServiceClient

from shared.adapters.azure.tables import AzureTable
from shared.adapters.memory.azureml import MemoryWorkspace
from shared.adapters.memory.queues import MemoryDelayedQueue
from shared.adapters.memory.tables import MemoryTable
from shared.config.policy import parse_policy
from shared.domain.events import DataVersionRegistered
from shared.domain.records import SUBMIT_LEASE
from shared.domain.retrain import PipelineSubmission, RetrainCheck, RunFinished, job_name_for
from shared.domain.vocabulary import RetrainAction, RunStatus, Tag
from shared.errors import JobRejectedError
from shared.ports import JobRunner
from shared.services.audit import TableAuditLog
from shared.services.ledger import Ledger
from shared.services.retrain import Retrainer
from tests.services.test_retrain import DiesOnce, ProcessDied

pytestmark = pytest.mark.integration

POLICY = parse_policy({
    "datasets": [{"name": "churn", "container": "landing", "prefix": "churn/", "type": "uri_folder",
                  "datastore": "landing", "batch": {"marker": "_SUCCESS"}}],
    "retraining": [{"dataset": "churn", "pipeline": "ml/pipeline.yml", "experiment": "exp", "model_name": "m"}],
})


def event(version: str) -> DataVersionRegistered:
    return DataVersionRegistered("churn", "churn", version, "azureml://x", "uri_folder", version * 8, 1)


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 11, 27, 12, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


def new_table(azurite: Any) -> Any:
    return TableServiceClient.from_connection_string(azurite.connection_string).create_table(
        f"retrain{uuid.uuid4().hex[:8]}")


def retrainer(table: Any, jobs: JobRunner, *, clock: Any = None, root: Path = Path("."),
              rechecks: MemoryDelayedQueue[RetrainCheck] | None = None) -> Retrainer:
    clock = clock or (lambda: datetime.now(UTC))
    queue = MemoryDelayedQueue[RetrainCheck](clock=clock) if rechecks is None else rechecks  # (an empty queue is falsy)
    return Retrainer(policy=POLICY, app_root=root, ledger=Ledger(AzureTable(table), clock=clock), jobs=jobs,
                     audit=TableAuditLog(MemoryTable()), rechecks=queue, clock=clock, sleep=lambda _seconds: None)


def test_concurrent_instances_and_coalescing_start_one_run_then_one_follow_up_on_the_newest(azurite: Any) -> None:
    """Racing duplicates settle in-process: no ETag conflict reaches the platform as an error."""
    table, jobs = new_table(azurite), MemoryWorkspace()
    events = [event(str(v)) for v in range(1, 7)]
    with ThreadPoolExecutor(6) as pool:
        list(pool.map(lambda e: retrainer(table, jobs).on_data_version_registered(e, f"evt-{e.version}"),
                      events + events))
    (first,) = [j.name for j in jobs.jobs()]  # one run, whichever version won the claim
    state = Ledger(AzureTable(table)).get_retrain_state("churn")
    assert state is not None and state.active_job == first and state.active_status is RunStatus.SUBMITTED
    assert state.pending_version == "6" or state.active_version == "6"
    done = retrainer(table, jobs).on_run_finished(
        RunFinished(first, "Completed", "exp", {Tag.DATASET.value: "churn"}), "run-1")
    submitted = [j.name for j in jobs.jobs()]
    if state.active_version == "6":
        assert done.action is RetrainAction.FINISHED and submitted == [first]
    else:
        assert done.action is RetrainAction.SUBMITTED and submitted == [first, job_name_for("churn", "6")]


def test_defect2_a_died_submitter_is_resumed_after_its_lease_on_table_storage(azurite: Any) -> None:
    table, jobs, clock = new_table(azurite), DiesOnce(), Clock()
    rechecks: MemoryDelayedQueue[RetrainCheck] = MemoryDelayedQueue(clock=clock)
    with pytest.raises(ProcessDied):
        retrainer(table, jobs, clock=clock).on_data_version_registered(event("1"), "e1")
    held = retrainer(table, jobs, clock=clock, rechecks=rechecks).on_data_version_registered(event("1"), "e1")
    assert held.action is RetrainAction.DEFERRED and jobs.jobs() == []
    clock.now += SUBMIT_LEASE + timedelta(seconds=2)
    (check,) = rechecks.due()
    resumed = retrainer(table, jobs, clock=clock).on_recheck(check.item, "check-1")
    assert resumed.action is RetrainAction.SUBMITTED
    assert [j.name for j in jobs.jobs()] == [job_name_for("churn", "1")]
    assert retrainer(table, jobs, clock=clock).reconcile(clock.now) == []


BAD_PIPELINE = "type: pipeline\njobs: [this is not a mapping\n"


def test_defect2_the_azure_ml_adapter_refuses_a_pipeline_that_cannot_run_and_the_next_version_runs(
        azurite: Any, aml: Any, tmp_path: Path) -> None:
    from azure.identity import DefaultAzureCredential

    from shared.adapters.azure.azureml import AzureML
    from tests.contract.test_data_registry import PIPELINE_YAML

    workspace = AzureML(DefaultAzureCredential(), aml.subscription_id, aml.resource_group, aml.workspace)
    (tmp_path / "ml").mkdir()
    pipeline = tmp_path / "ml" / "pipeline.yml"
    pipeline.write_text(BAD_PIPELINE)
    table = new_table(azurite)
    with pytest.raises(JobRejectedError, match="cannot be submitted"):
        workspace.submit_pipeline(PipelineSubmission(
            yaml_path=pipeline, job_name=f"evergreen-bad-{uuid.uuid4().hex[:8]}", experiment="exp",
            data_input="azureml:churn:1", data_type="uri_folder", inputs={}, tags={}))
    refused = retrainer(table, workspace, root=tmp_path).on_data_version_registered(event("1"), "e1")
    assert refused.action is RetrainAction.FAILED and "cannot be submitted" in refused.detail
    assert workspace.job_status(job_name_for("churn", "1")) is None
    pipeline.write_text(PIPELINE_YAML)  # the YAML is fixed; the next version retrains
    nxt = retrainer(table, workspace, root=tmp_path).on_data_version_registered(event("2"), "e2")
    assert nxt.action is RetrainAction.SUBMITTED
    assert workspace.job_status(job_name_for("churn", "2")) is not None


def test_a_job_created_by_a_racing_submitter_is_adopted_not_rejected(aml: Any, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Two submitters of one job name (a holder whose lease ran out mid-submit, and its taker): the loser's
    PUT is refused by the service with a 400, which must be read as "the job exists", never as a rejection
    that would mark a running job's run failed."""
    from azure.core.exceptions import ResourceNotFoundError
    from azure.identity import DefaultAzureCredential

    from shared.adapters.azure.azureml import AzureML
    from tests.contract.test_data_registry import PIPELINE_YAML

    workspace = AzureML(DefaultAzureCredential(), aml.subscription_id, aml.resource_group, aml.workspace)
    pipeline = tmp_path / "pipeline.yml"
    pipeline.write_text(PIPELINE_YAML)
    submission = PipelineSubmission(yaml_path=pipeline, job_name=f"evergreen-race-{uuid.uuid4().hex[:8]}",
                                    experiment="exp", data_input="azureml:churn:1", data_type="uri_folder",
                                    inputs={}, tags={})
    assert workspace.submit_pipeline(submission)  # the other submitter got there first
    real_get = workspace.client.jobs.get
    reads = {"n": 0}

    def stale_get(name: str, *args: Any, **kwargs: Any) -> Any:
        reads["n"] += 1
        if reads["n"] == 1:  # our read happened before the other submitter's PUT
            raise ResourceNotFoundError("not yet")
        return real_get(name, *args, **kwargs)

    monkeypatch.setattr(workspace.client.jobs, "get", stale_get)
    # the racing PUT differs (e.g. a new deploy's YAML): the service answers 400 "A job with this name exists"
    racing = dataclasses.replace(submission, inputs={"model_name": "other-model"})
    status = workspace.submit_pipeline(racing)  # no JobRejectedError: the job is adopted
    assert status and reads["n"] >= 2  # it looked again after the refusal and answered the job's status

