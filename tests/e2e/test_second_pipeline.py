"""Bring your own pipeline, end to end: the second example of evergreen.yaml runs the whole loop on the local stack.

A CSV lands under `landing/houses/` → a `house-prices` data version (uri_file) → its own pipeline
(`ml/regression/pipeline.yml`: a gradient-boosted regressor) registers `house-price-model` with
`evergreen.metric.rmse` → its own gate (`lower_is_better`) promotes the first model onto
`house-price-endpoint` → rollout to 100 % → the endpoint answers with the new model's predictions.
Then a drop with a noisy target trains a model with a higher RMSE, and the gate rejects it as `not_better`.
Nothing here is specific to churn: the same Evergreen, a second set of policy entries.
"""

from __future__ import annotations

import importlib.util
import uuid
from functools import cache
from typing import Any

import httpx
import pytest
from azure.data.tables import TableServiceClient

from devstack.procs import REPO_ROOT
from devstack.stack import Stack
from shared.adapters.azure.tables import AzureTable
from shared.domain.audit import AuditRecord
from shared.domain.records import RolloutRecord
from shared.domain.retrain import job_name_for
from shared.domain.vocabulary import Phase, Tag
from shared.services.audit import AUDIT_TABLE, TableAuditLog
from shared.services.ledger import LEDGER_TABLE, Ledger
from tests.e2e.helpers import wait_for, with_tag

pytestmark = pytest.mark.e2e

DATASET, MODEL, ENDPOINT = "house-prices", "house-price-model", "house-price-endpoint"
REQUEST = {"input_data": [{"area_m2": 85.0, "rooms": 3, "age_years": 12, "distance_km": 2.5, "neighbourhood": "centre"},
                          {"area_m2": 60.0, "rooms": 2, "age_years": 70, "distance_km": 14.0,
                           "neighbourhood": "industrial"}]}


@cache
def _generator() -> Any:
    """ml/src/make_house_price_data.py, the generator the pipeline's own tests use (one place for the rows)."""
    spec = importlib.util.spec_from_file_location("evergreen_make_house_price_data",
                                                  REPO_ROOT / "ml" / "src" / "make_house_price_data.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def ledger(local_stack: Stack) -> Ledger:
    tables = TableServiceClient.from_connection_string(local_stack.env["AzureWebJobsStorage"])
    return Ledger(AzureTable(tables.create_table_if_not_exists(LEDGER_TABLE)))


@pytest.fixture(scope="module")
def audit(local_stack: Stack) -> TableAuditLog:
    tables = TableServiceClient.from_connection_string(local_stack.env["AzureWebJobsStorage"])
    return TableAuditLog(AzureTable(tables.create_table_if_not_exists(AUDIT_TABLE)))


def retrain_on(ml: Any, landing: Any, content: str) -> tuple[Any, str, Any]:
    """Upload one CSV under houses/; wait for its data version, its pipeline job and the model that job registered."""
    from azure.core.exceptions import ResourceNotFoundError

    blob = landing.upload_blob(f"houses/listings-{uuid.uuid4().hex[:8]}.csv", content.encode(), overwrite=True)
    (data,) = wait_for(lambda: with_tag(ml, DATASET, Tag.SOURCE_URL.value, blob.url), "the CSV's data version")
    job_name = job_name_for(DATASET, str(data.version))

    def job_done() -> Any:
        try:
            job = ml.jobs.get(job_name)
        except ResourceNotFoundError:
            return None
        return job if job.status in ("Completed", "Failed", "Canceled") else None

    job = wait_for(job_done, f"pipeline job {job_name}", timeout=240)
    assert job.status == "Completed", f"{job_name} ended {job.status}"
    assert job.display_name == "evergreen-house-price-retrain"

    def model_of_job() -> list[Any] | None:
        try:
            return [m for m in ml.models.list(name=MODEL) if (m.tags or {}).get(Tag.JOB_NAME.value) == job_name] or None
        except ResourceNotFoundError:
            return None

    (listed,) = wait_for(model_of_job, f"the model registered by {job_name}")
    return data, job_name, ml.models.get(MODEL, listed.version)


def finished_rollout(ledger: Ledger, model: Any) -> RolloutRecord | None:
    record = ledger.get_rollout(ENDPOINT)
    wanted = f"{model.name}:{model.version}"
    return record if record and record.candidate == wanted and not record.active else None


def score(ml: Any, env: dict[str, str]) -> httpx.Response:
    endpoint = ml.online_endpoints.get(ENDPOINT)
    key = ml.online_endpoints.get_keys(ENDPOINT).primary_key
    uri = str(endpoint.scoring_uri)
    verify: Any = env["REQUESTS_CA_BUNDLE"] if uri.startswith("https") else True
    return httpx.post(uri, json=REQUEST, headers={"Authorization": f"Bearer {key}"}, verify=verify, timeout=30)


def test_the_second_pipeline_retrains_gates_on_rmse_and_rolls_out(
        local_stack: Stack, ml: Any, landing: Any, ledger: Ledger, audit: TableAuditLog) -> None:
    data, job_name, first = retrain_on(ml, landing, _generator().house_csv(1200, seed=11))

    # the contract: lineage and metrics, as tags and (immutable) properties, written by the shared register step
    assert first.tags[Tag.DATA_ASSET.value] == DATASET
    assert first.tags[Tag.DATA_VERSION.value] == str(data.version)
    assert len(first.tags["evergreen.code_sha256"]) == 64
    assert first.tags["evergreen.metric_primary"] == "rmse"
    assert first.properties["evergreen.metric.rmse.higher_is_better"] == "false"
    first_rmse = float(first.properties["evergreen.metric.rmse"])
    assert 0 < first_rmse < 40, first_rmse  # the generator's noise is 15 (thousands)

    # its own gate: the first model on an empty endpoint wins; rolled out to 100 %
    record = wait_for(lambda: finished_rollout(ledger, first), "the first regression model's rollout", timeout=240)
    assert record.phase is Phase.SUCCEEDED, record.failure
    endpoint = ml.online_endpoints.get(ENDPOINT)
    assert endpoint.traffic == {record.deployment: 100}
    deployment = ml.online_deployments.get(name=record.deployment, endpoint_name=ENDPOINT)
    assert deployment.tags[Tag.MODEL.value] == f"{MODEL}:{first.version}"
    assert deployment.tags[Tag.DATA_VERSION.value] == str(data.version)
    assert deployment.tags[Tag.JOB_NAME.value] == job_name

    # scoring is answered by the regressor, through score_regression.py
    reply = score(ml, local_stack.env)
    assert reply.status_code == 200, reply.text
    assert reply.headers.get("azureml-model-deployment") == record.deployment
    predictions = reply.json()["predictions"]
    assert len(predictions) == 2 and all(isinstance(p, float) for p in predictions)
    assert predictions[0] > predictions[1]  # a central flat beats an old, remote, industrial one

    # a noisy drop trains a worse model (higher RMSE); the gate rejects it with its coded reason
    _, _, worse = retrain_on(ml, landing, _generator().house_csv(1200, seed=12, target_noise=150.0))
    assert float(worse.properties["evergreen.metric.rmse"]) > first_rmse + 0.5

    def rejected() -> list[AuditRecord] | None:
        return [r for r in audit.query(days=2, kind_prefix="promotion.skipped")
                if r.assets.get("model") == f"{MODEL}:{worse.version}"] or None

    (skip,) = wait_for(rejected, "the gate's verdict on the worse model", timeout=90)
    assert skip.decision == "skip:not_better", skip
    assert "rmse" in skip.reason
    assert ml.online_endpoints.get(ENDPOINT).traffic == {record.deployment: 100}
    assert ledger.get_rollout(ENDPOINT).candidate == f"{MODEL}:{first.version}"
