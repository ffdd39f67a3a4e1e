"""Data version → retraining, end to end: the drop's DataVersionRegistered event starts the pipeline
(ml/pipeline.yml) under a deterministic job name; the emulator runs prep → train → evaluate → register;
the model carries its lineage; RunCompleted reaches on_run_event. A re-check message on the
retraining queue reaches `retrain_due` through the host (the minimum interval's and the leases' path)."""

from __future__ import annotations

import uuid

import pytest

from devstack.demo import churn_rows
from shared.composition import RETRAIN_QUEUE
from shared.domain.retrain import RetrainCheck, job_name_for, retrain_check_to_json
from tests.e2e.helpers import wait_for, with_tag

pytestmark = pytest.mark.e2e


def test_a_new_data_version_retrains_and_registers_a_model_with_lineage(local_stack, ml, landing):
    from azure.core.exceptions import ResourceNotFoundError

    folder = f"churn/retrain-{uuid.uuid4().hex[:8]}/"
    for part in range(3):
        landing.upload_blob(f"{folder}part-{part}.csv", churn_rows(300, seed=part), overwrite=True)
    landing.upload_blob(f"{folder}_SUCCESS", b"", overwrite=True)
    (data,) = wait_for(lambda: with_tag(ml, "churn-training", "evergreen.source_folder", f"landing/{folder}"),
                       "the data version")
    job_name = job_name_for("churn-training", str(data.version))

    def job_done():
        try:
            job = ml.jobs.get(job_name)
        except ResourceNotFoundError:
            return None
        return job if job.status in ("Completed", "Failed", "Canceled") else None

    job = wait_for(job_done, f"pipeline job {job_name}", timeout=240)
    assert job.status == "Completed"
    assert job.tags["evergreen.data_version"] == str(data.version)

    def model_for_job():
        try:
            models = ml.models.list(name="churn-model")
            return [m for m in models if (m.tags or {}).get("evergreen.job_name") == job_name]
        except ResourceNotFoundError:
            return None

    (model,) = wait_for(model_for_job, "the registered model")
    assert model.tags["evergreen.data_asset"] == "churn-training"
    assert model.tags["evergreen.data_version"] == str(data.version)
    assert float(model.tags["evergreen.metric.roc_auc"]) > 0.5


def test_a_retrain_recheck_message_is_handled_by_the_host_and_audited(local_stack):
    """The queue trigger is wired: name, encoding, parser and service (a dataset with nothing waiting)."""
    from azure.data.tables import TableServiceClient
    from azure.storage.queue import QueueClient, TextBase64EncodePolicy

    from shared.adapters.azure.tables import AzureTable
    from shared.services.audit import AUDIT_TABLE, TableAuditLog

    storage = local_stack.env["AzureWebJobsStorage"]
    dataset = f"nothing-{uuid.uuid4().hex[:8]}"
    queue = QueueClient.from_connection_string(storage, RETRAIN_QUEUE, message_encode_policy=TextBase64EncodePolicy())
    sent = queue.send_message(retrain_check_to_json(RetrainCheck(dataset, "e2e")))
    audit = TableAuditLog(AzureTable(TableServiceClient.from_connection_string(storage).get_table_client(AUDIT_TABLE)))

    def audited():
        return [r for r in audit.query(days=2, kind_prefix="retrain.skipped") if r.event_id == sent.id] or None

    (record,) = wait_for(audited, "the re-check's audit record")
    assert record.assets["data"] == dataset and "nothing is known" in record.reason
