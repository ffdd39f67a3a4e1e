"""ml/pipeline.yml submitted the way Evergreen submits it, executed by the local Azure ML emulator:
the model is registered by its datastore URI with the lineage tags the gate reads."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from azure.ai.ml import Input, load_job
from azure.ai.ml.entities import Data
from azure.storage.blob import BlobServiceClient

from devstack.testing.aml import AmlInfo, bearer
from tests.unit.test_ml_steps import SRC, make_drop, step_module

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
TERMINAL = {"Completed", "Failed", "Canceled"}


def emulator_logs(aml: AmlInfo, name: str) -> str:
    with httpx.Client(verify=aml.env["REQUESTS_CA_BUNDLE"], headers=bearer(aml), timeout=10) as client:
        resp = client.get(f"{aml.base_url}/_emulator/jobs/{name}/logs")
    return f"{resp.text[-3000:]}\n--- emulator log ---\n{aml.service.log_tail(60)}"


def job_status(ml_client: Any, name: str) -> str:
    """The status as Azure ML spells it: JobStatus members stringify as "JobStatus.FAILED"."""
    status = ml_client.jobs.get(name).status
    return str(getattr(status, "value", status))


def wait_terminal(ml_client: Any, aml: AmlInfo, name: str, timeout: float = 180) -> str:
    deadline = time.monotonic() + timeout
    while (status := job_status(ml_client, name)) not in TERMINAL:
        assert time.monotonic() < deadline, f"{name} still {status} after {timeout}s: {emulator_logs(aml, name)}"
        time.sleep(0.3)
    return status


def upload_drop(azurite: Any, drop: Path, prefix: str) -> None:
    container = BlobServiceClient.from_connection_string(azurite.connection_string).get_container_client("landing")
    if not container.exists():
        container.create_container()
    for path in sorted(drop.iterdir()):
        container.upload_blob(f"{prefix}/{path.name}", path.read_bytes(), overwrite=True)


def test_pipeline_registers_the_model_by_reference_with_lineage(ml_client, aml: AmlInfo, azurite, tmp_path):
    asset, model_name = f"churn-{uuid.uuid4().hex[:8]}", f"churn-model-{uuid.uuid4().hex[:8]}"
    drop = make_drop(tmp_path / "drop", rows=600, seed=3, files=2, success_marker=True)
    upload_drop(azurite, drop, f"churn/{asset}")
    ml_client.data.create_or_update(
        Data(name=asset, version="4", type="uri_folder", path=f"azureml://datastores/landing/paths/churn/{asset}/")
    )

    job = load_job(REPO / "ml" / "pipeline.yml")  # as Evergreen does (see ml/README.md)
    job.inputs.training_data = Input(type="uri_folder", path=f"azureml:{asset}:4")
    job.inputs.data_asset = asset
    job.inputs.data_version = "4"
    job.inputs.model_name = model_name
    submitted = ml_client.jobs.create_or_update(job, experiment_name="evergreen-ml-test")
    status = wait_terminal(ml_client, aml, submitted.name)
    assert status == "Completed", emulator_logs(aml, submitted.name)

    model = ml_client.models.get(model_name, version="1")
    assert model.type == "custom_model"
    assert "/datastores/workspaceblobstore/paths/azureml/" in model.path  # by reference: the train output
    assert model.path.rstrip("/").endswith("/model")
    tags = model.tags
    assert tags["evergreen.data_asset"] == asset
    assert tags["evergreen.data_version"] == "4"
    assert tags["evergreen.job_name"] == submitted.name
    assert tags["evergreen.code_sha256"] == step_module("steplib").code_sha256(SRC)
    assert tags["evergreen.metric_primary"] == "roc_auc"
    assert float(tags["evergreen.metric.roc_auc"]) > 0.7
    assert model.properties["evergreen.metric.log_loss.higher_is_better"] == "false"
    json.dumps(tags)
