"""Retraining on the real ledger (Azurite tables through AzureTable) with the in-memory job runner.

The behaviour is covered, fast, by tests/services/test_retrain.py; this proves that concurrent
instances start one run on Table Storage's real ETag semantics."""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from azure.data.tables import TableServiceClient

from shared.adapters.azure.tables import AzureTable
from shared.adapters.memory.azureml import MemoryWorkspace
from shared.adapters.memory.tables import MemoryTable
from shared.config.policy import parse_policy
from shared.domain.events import DataVersionRegistered
from shared.domain.retrain import RunFinished, job_name_for
from shared.domain.vocabulary import RetrainAction, Tag
from shared.errors import ClaimInProgressError
from shared.services.audit import TableAuditLog
from shared.services.ledger import Ledger
from shared.services.retrain import Retrainer, RetrainOutcome

pytestmark = pytest.mark.integration

POLICY = parse_policy({
    "datasets": [{"name": "churn", "container": "landing", "prefix": "churn/", "type": "uri_folder",
                  "datastore": "landing", "batch": {"marker": "_SUCCESS"}}],
    "retraining": [{"dataset": "churn", "pipeline": "ml/pipeline.yml", "experiment": "exp", "model_name": "m"}],
})


def event(version: str) -> DataVersionRegistered:
    return DataVersionRegistered("churn", "churn", version, "azureml://x", "uri_folder", version * 8, 1)


def deliver(retrainer: Retrainer, ev: DataVersionRegistered, event_id: str) -> RetrainOutcome:
    """Like Event Grid: a ClaimInProgressError means 'retry later'."""
    for _ in range(20):
        try:
            return retrainer.on_data_version_registered(ev, event_id)
        except ClaimInProgressError:
            continue
    raise AssertionError("never settled")


def test_concurrent_instances_and_coalescing_start_one_run_then_one_follow_up_on_the_newest(azurite: Any) -> None:
    table = TableServiceClient.from_connection_string(azurite.connection_string).create_table(
        f"retrain{uuid.uuid4().hex[:8]}")
    jobs, audit = MemoryWorkspace(), TableAuditLog(MemoryTable())

    def instance() -> Retrainer:
        return Retrainer(policy=POLICY, app_root=Path("."), ledger=Ledger(AzureTable(table)), jobs=jobs, audit=audit)

    events = [event(str(v)) for v in range(1, 7)]
    with ThreadPoolExecutor(6) as pool:
        list(pool.map(lambda e: deliver(instance(), e, f"evt-{e.version}"), events + events))
    (first,) = [j.name for j in jobs.jobs()]  # one run, whichever version won the claim
    state = Ledger(AzureTable(table)).get_retrain_state("churn")
    assert state is not None and state.active_job == first
    assert state.pending_version == "6" or state.active_version == "6"
    done = instance().on_run_finished(RunFinished(first, "Completed", "exp", {Tag.DATASET.value: "churn"}), "run-1")
    submitted = [j.name for j in jobs.jobs()]
    if state.active_version == "6":
        assert done.action is RetrainAction.FINISHED and submitted == [first]
    else:
        assert done.action is RetrainAction.SUBMITTED and submitted == [first, job_name_for("churn", "6")]
