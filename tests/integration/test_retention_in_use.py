"""What is in use, listed through the real SDK from the emulator: running jobs' inputs and outputs, and
deployments with their traffic and idle time; retention protects the first and deletes idle deployments.
"""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import joblib
import pytest
import yaml
from azure.ai.ml import Input, Output, command
from azure.ai.ml.entities import Data, ManagedOnlineEndpoint
from azure.identity import DefaultAzureCredential
from azure.storage.blob import BlobServiceClient
from sklearn.linear_model import LogisticRegression

from devstack.testing.aml import AmlInfo
from devstack.testing.workloads import CURATED, deployment, register_model
from shared.adapters.azure.aml_retention import AmlRetention
from shared.adapters.azure.azureml import AzureML
from shared.domain.retention import (
    ActionKind,
    BlobPath,
    DataKey,
    DeploymentKey,
    Inventory,
    parse_retention,
    plan_retention,
)
from shared.domain.retention.addresses import AddressBook

pytestmark = pytest.mark.integration


def adapter(aml: AmlInfo) -> AmlRetention:
    return AmlRetention(AzureML(DefaultAzureCredential(), aml.subscription_id, aml.resource_group, aml.workspace))


def test_a_running_jobs_inputs_and_outputs_are_listed_and_protected(ml_client: Any, aml: AmlInfo) -> None:
    uid = uuid.uuid4().hex[:8]
    data = f"inuse-{uid}"
    landing = BlobServiceClient.from_connection_string(aml.storage_connection_string).get_container_client("landing")
    if not landing.exists():
        landing.create_container()
    for version in ("1", "2"):
        landing.upload_blob(f"inuse/{uid}/{version}/part-0.csv", b"a\n1\n", overwrite=True)
        ml_client.data.create_or_update(Data(name=data, version=version, type="uri_folder",
                                             path=f"azureml://datastores/landing/paths/inuse/{uid}/{version}/"))
    name = f"inuse-job-{uid}"
    ml_client.jobs.create_or_update(command(
        name=name, command="python -c \"import time; time.sleep(60)\" ${{inputs.train}} ${{outputs.model}}",
        inputs={"train": Input(type="uri_folder", path=f"azureml:{data}:1")},
        outputs={"model": Output(type="uri_folder")},
        environment=CURATED, compute="cpu-cluster", experiment_name="evergreen-tests"))
    try:
        aml_side = adapter(aml)
        containers = AddressBook.of(aml_side.datastores(), ["devstoreaccount1"])  # Azurite's account
        jobs = {j.name: j for j in aml_side.jobs(containers)}
        job = jobs[name]
        assert not job.finished and job.finished_at is None
        assert DataKey(data, "1") in job.inputs
        assert job.outputs["model"] == BlobPath("azureml-blobstore", f"azureml/{name}/model/")
        versions = tuple(v for v in aml_side.data_versions(containers) if v.name == data)
        rules = parse_retention(yaml.safe_load(f"""
rules:
  - name: all-{uid}
    type: dataVersions
    filters: {{names: [{data}]}}
    actions: {{archive: {{daysAfterCreationGreaterThan: 0}}}}
""")).rules
        plan = plan_retention(Inventory(now=datetime.now(UTC) + timedelta(days=1), data_versions=versions,
                                        jobs=tuple(jobs.values())), rules)
        assert [a.target for a in plan.actions] == [DataKey(data, "2")]
        assert [(p.target, p.reason) for p in plan.protected] == [
            (DataKey(data, "1"), f"used by {job.status.lower()} job {name}")]
    finally:
        ml_client.jobs.begin_cancel(name).result()


@pytest.fixture
def pickle(tmp_path: Path) -> Path:
    clf = LogisticRegression().fit([[0, 0], [0, 1], [5, 5], [6, 5]], [0, 0, 1, 1])
    joblib.dump(clf, tmp_path / "model.pkl")
    return tmp_path / "model.pkl"


def test_idle_deployments_are_listed_with_their_idle_time_and_deleted(ml_client: Any, aml: AmlInfo,
                                                                      pickle: Path) -> None:
    endpoint = f"ret-{uuid.uuid4().hex[:8]}"
    ml_client.online_endpoints.begin_create_or_update(ManagedOnlineEndpoint(name=endpoint, auth_mode="key")).result()
    blue_model, green_model = register_model(ml_client, aml, pickle, "blue"), register_model(ml_client, aml, pickle,
                                                                                             "green")
    ml_client.online_deployments.begin_create_or_update(deployment("blue", endpoint, blue_model)).result()
    ml_client.online_deployments.begin_create_or_update(deployment("green", endpoint, green_model)).result()
    ep = ml_client.online_endpoints.get(endpoint)
    ep.traffic = {"blue": 100, "green": 0}
    ml_client.online_endpoints.begin_create_or_update(ep).result()
    traffic_set = datetime.now(UTC)

    aml_side = adapter(aml)
    listed = {d.name: d for d in aml_side.deployments() if d.endpoint == endpoint}
    assert listed["blue"].traffic_percent == 100 and listed["blue"].zero_traffic_since is None
    assert (listed["blue"].model_name, listed["blue"].model_version) == (blue_model.name, "1")
    green = listed["green"]
    assert green.traffic_percent == 0 and green.zero_traffic_since is not None
    assert abs((green.zero_traffic_since - traffic_set).total_seconds()) < 30  # the endpoint's last change

    rules = parse_retention(yaml.safe_load(f"""
rules:
  - name: idle
    type: deployments
    filters: {{names: [{endpoint}]}}
    actions: {{deleteIdle: {{hoursAtZeroTrafficGreaterThan: 24}}}}
""")).rules
    soon = plan_retention(Inventory(now=datetime.now(UTC) + timedelta(hours=1), deployments=tuple(listed.values())),
                          rules)
    assert soon.is_empty  # idle for an hour only
    later = plan_retention(Inventory(now=datetime.now(UTC) + timedelta(hours=25),
                                     deployments=tuple(listed.values())), rules)
    assert [(a.kind, a.target) for a in later.actions] == [
        (ActionKind.DELETE_DEPLOYMENT, DeploymentKey(endpoint, "green"))]
    assert aml_side.execute(later.actions[0]) == "done"
    deadline = time.monotonic() + 30
    while {d.name for d in ml_client.online_deployments.list(endpoint)} != {"blue"}:
        assert time.monotonic() < deadline, "green was not deleted"
        time.sleep(0.2)
    # deleting it again (a re-run after a crash) is harmless, and says so (ARM itself answers 204 when gone)
    assert aml_side.execute(later.actions[0]) == "already"


def test_a_pipeline_jobs_data_input_is_recognised_next_to_its_literal_inputs(ml_client: Any, aml: AmlInfo,
                                                                            azurite: Any, tmp_path: Path) -> None:
    from azure.ai.ml import load_job

    from devstack.testing.workloads import PIPELINE, SCALE, SCALE_PY, TOTAL, TOTAL_PY, upload_landing

    uid = uuid.uuid4().hex[:8]
    data = f"inuse-pipe-{uid}"
    upload_landing(azurite, f"drops/{data}", {"a.csv": "1 2 3"})
    ml_client.data.create_or_update(Data(name=data, version="1", type="uri_folder",
                                         path=f"azureml://datastores/landing/paths/drops/{data}/"))
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "scale.py").write_text(SCALE_PY)
    (tmp_path / "src" / "total.py").write_text(TOTAL_PY)
    (tmp_path / "scale.yml").write_text(SCALE)
    (tmp_path / "total.yml").write_text(TOTAL)
    (tmp_path / "pipeline.yml").write_text(PIPELINE.format(data=data))  # inputs: raw (data) and factor: 3
    job = load_job(tmp_path / "pipeline.yml")
    job.name = f"inuse-pipe-job-{uid}"
    ml_client.jobs.create_or_update(job)
    aml_side = adapter(aml)
    listed = {j.name: j for j in aml_side.jobs(AddressBook.of(aml_side.datastores(), ["devstoreaccount1"]))}[job.name]
    assert listed.inputs == (DataKey(data, "1"),)  # the literal `factor` references nothing
    assert set(listed.outputs) == {"final"}
