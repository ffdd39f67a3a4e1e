"""The emulator executes command and pipeline jobs submitted with the unmodified azure-ai-ml SDK."""

from __future__ import annotations

import sys
import textwrap
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from azure.ai.ml import Input, Output, command, load_job
from azure.ai.ml.entities import Data
from azure.core.exceptions import HttpResponseError
from azure.storage.blob import BlobServiceClient

from devstack.aml.store import Store
from devstack.procs import REPO_ROOT
from devstack.testing.aml import AmlInfo, bearer
from devstack.testing.workloads import CURATED, PIPELINE, SCALE, SCALE_PY, TOTAL, TOTAL_PY, upload_landing

pytestmark = pytest.mark.integration

TERMINAL = {"Completed", "Failed", "Canceled"}


def unique(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:10]}"


def wait_status(ml_client: Any, name: str, wanted: set[str], timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while True:
        raw = ml_client.jobs.get(name).status
        status = str(getattr(raw, "value", raw))
        if status in wanted:
            return status
        assert status not in TERMINAL, f"job {name} ended {status}, waited for {wanted}"
        assert time.monotonic() < deadline, f"job {name} still {status} after {timeout}s"
        time.sleep(0.2)


def job_logs(aml: AmlInfo, name: str) -> dict[str, Any]:
    with httpx.Client(verify=aml.env["REQUESTS_CA_BUNDLE"], headers=bearer(aml), timeout=10) as client:
        resp = client.get(f"{aml.base_url}/_emulator/jobs/{name}/logs")
    resp.raise_for_status()
    return dict(resp.json())


def run_events(aml: AmlInfo, name: str) -> list[dict[str, Any]]:
    store = Store(aml.state_dir / "aml.sqlite")
    try:
        with store.read() as tx:
            return [e for e in tx.events() if e["data"].get("runId") == name]
    finally:
        store.close()


def blob_text(azurite: Any, container: str, path: str) -> str:
    service = BlobServiceClient.from_connection_string(azurite.connection_string)
    return service.get_blob_client(container, path).download_blob().readall().decode()


@pytest.fixture
def code_dir(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    src.mkdir()
    (src / "main.py").write_text(textwrap.dedent("""
        import argparse, os, pathlib
        p = argparse.ArgumentParser()
        p.add_argument("--greeting"); p.add_argument("--out")
        a = p.parse_args()
        pathlib.Path(a.out, "hello.txt").write_text(f"{a.greeting} from {os.environ['AZUREML_RUN_ID']}")
        print("uri", os.environ["AZUREML_OUTPUT_URI_result"])
    """))
    return src


def test_command_job_uploads_code_runs_and_completes(ml_client, aml: AmlInfo, azurite, code_dir: Path) -> None:
    name = unique("cmd")
    job = command(
        name=name, code=str(code_dir),
        command="python main.py --greeting ${{inputs.greeting}} --out ${{outputs.result}}",
        inputs={"greeting": "hello"}, outputs={"result": Output(type="uri_folder")},
        environment=CURATED, compute="cpu-cluster", experiment_name="evergreen-tests",
    )
    created = ml_client.jobs.create_or_update(job)
    assert created.status == "NotStarted"
    assert wait_status(ml_client, name, {"Completed"}) == "Completed"

    done = ml_client.jobs.get(name)
    assert done.outputs["result"].path == f"azureml://datastores/workspaceblobstore/paths/azureml/{name}/result/"
    assert blob_text(azurite, "azureml-blobstore", f"azureml/{name}/result/hello.txt") == f"hello from {name}"
    logs = job_logs(aml, name)
    assert f"uri azureml://datastores/workspaceblobstore/paths/azureml/{name}/result/" in logs["log"]
    assert "hello from" not in logs["log"]
    assert "uri azureml://" in blob_text(azurite, "azureml", f"ExperimentRun/dcid.{name}/user_logs/std_log.txt")

    # the code snapshot is a code asset found again by content hash (no second upload)
    code_id = done.code
    assert "/codes/" in code_id
    again = ml_client.jobs.create_or_update(job)  # same name: the service's idempotency key
    assert again.code == code_id
    events = run_events(aml, name)
    assert [e["eventType"] for e in events] == ["Microsoft.MachineLearningServices.RunCompleted"]
    data = events[0]["data"]
    assert data["experimentName"] == "evergreen-tests" and data["runType"] == "azureml.scriptrun"
    assert events[0]["subject"] == f"experiments/{data['experimentId']}/runs/{name}"
    assert set(data) == {"experimentId", "experimentName", "runId", "runType", "runTags", "runProperties"}

    changed = command(name=name, command="echo different", environment=CURATED, compute="cpu-cluster",
                      experiment_name="evergreen-tests")
    with pytest.raises(HttpResponseError, match="A job with this name already exists"):
        ml_client.jobs.create_or_update(changed)
    time.sleep(0.5)
    assert len(run_events(aml, name)) == 1, "a second PUT must never start a second run"
    assert name in {j.name for j in ml_client.jobs.list()}


def test_failing_command_fails_with_logs(ml_client, aml: AmlInfo) -> None:
    name = unique("fail")
    job = command(name=name, command="python -c \"import sys; print('boom: bad data'); sys.exit(3)\"",
                  environment=CURATED, experiment_name="evergreen-tests")
    assert ml_client.jobs.create_or_update(job).status == "Starting"
    assert wait_status(ml_client, name, {"Failed"}) == "Failed"
    logs = job_logs(aml, name)
    assert "boom: bad data" in logs["log"]
    assert "exited with code 3" in logs["error"]
    events = run_events(aml, name)
    assert [e["eventType"] for e in events] == ["Microsoft.MachineLearningServices.RunStatusChanged"]
    assert events[0]["data"]["runStatus"] == "Failed"


def test_cancel_kills_the_running_step(ml_client, aml: AmlInfo, tmp_path: Path) -> None:
    name = unique("cancel")
    marker = tmp_path / "still-running"
    job = command(name=name, environment=CURATED, experiment_name="evergreen-tests",
                  command=f"python -c \"import time, pathlib; time.sleep(3); pathlib.Path('{marker}').touch()\"")
    ml_client.jobs.create_or_update(job)
    wait_status(ml_client, name, {"Running"})
    started = time.monotonic()
    assert ml_client.jobs.begin_cancel(name).result() is None
    assert time.monotonic() - started < 15
    assert ml_client.jobs.get(name).status == "Canceled"
    time.sleep(3.5)
    assert not marker.exists(), "the step process survived the cancel"
    events = run_events(aml, name)
    assert [e["data"].get("runStatus") for e in events] == ["Canceled"]


def test_pipeline_from_yaml_passes_outputs_along(ml_client, aml: AmlInfo, azurite, tmp_path: Path) -> None:
    data_name = unique("numbers")
    drop = f"drops/{data_name}"
    upload_landing(azurite, drop, {"a.csv": "1 2 3", "sub/b.csv": "10"})
    ml_client.data.create_or_update(Data(name=data_name, version="1", type="uri_folder",
                                         path=f"azureml://datastores/landing/paths/{drop}/"))
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "scale.py").write_text(SCALE_PY)
    (tmp_path / "src" / "total.py").write_text(TOTAL_PY)
    (tmp_path / "scale.yml").write_text(SCALE)
    (tmp_path / "total.yml").write_text(TOTAL)
    (tmp_path / "pipeline.yml").write_text(PIPELINE.format(data=data_name))
    job = load_job(tmp_path / "pipeline.yml")
    job.name = unique("pipe")
    created = ml_client.jobs.create_or_update(job)
    assert created.status == "Preparing"
    assert wait_status(ml_client, job.name, {"Completed"}) == "Completed"

    final = ml_client.jobs.get(job.name).outputs["final"].path
    assert final.startswith("azureml://datastores/workspaceblobstore/paths/azureml/")
    total_text = blob_text(azurite, "azureml-blobstore", final.split("/paths/", 1)[1] + "total.txt")
    total, uri = total_text.split(" ", 1)
    assert total == str((1 + 2 + 3 + 10) * 3)
    assert uri.startswith("azureml://datastores/workspaceblobstore/paths/azureml/") and "_double_" in uri

    logs = job_logs(aml, job.name)
    assert set(logs["steps"]) == {"double", "total"}
    assert all(s["status"] == "Completed" for s in logs["steps"].values())
    assert "total 48" in logs["steps"]["total"]["log"]
    with httpx.Client(verify=aml.env["REQUESTS_CA_BUNDLE"], headers=bearer(aml), timeout=10) as client:
        child = client.get(f"{aml.workspace_url}/jobs/{logs['steps']['double']['jobName']}",
                           params={"api-version": "2024-01-01-preview"}).json()
    assert child["properties"] is None  # as the service answers for pipeline step jobs
    assert [e["eventType"] for e in run_events(aml, job.name)] == ["Microsoft.MachineLearningServices.RunCompleted"]
    assert run_events(aml, job.name)[0]["data"]["runType"] == "azureml.PipelineRun"


def test_evergreen_retraining_pipeline_registers_a_model(ml_client, aml: AmlInfo, azurite, tmp_path: Path) -> None:
    """ml/pipeline.yml (prep → train → evaluate → register) on a tiny generated churn drop."""
    import subprocess

    drop = tmp_path / "drop"
    subprocess.run([sys.executable, str(REPO_ROOT / "ml/src/make_churn_data.py"), "--out_dir", str(drop),
                    "--rows", "300", "--seed", "7"], check=True)
    data_name, model_name = unique("churn"), unique("churn_model").replace("_", "-")
    prefix = f"drops/{data_name}"
    upload_landing(azurite, prefix, {p.name: p.read_text() for p in drop.glob("*.csv")})
    ml_client.data.create_or_update(Data(name=data_name, version="1", type="uri_folder",
                                         path=f"azureml://datastores/landing/paths/{prefix}/"))
    job: Any = load_job(REPO_ROOT / "ml/pipeline.yml")
    job.name = unique("retrain")
    job.inputs.training_data = Input(type="uri_folder", path=f"azureml:{data_name}:1")
    job.inputs.data_asset = data_name
    job.inputs.data_version = "1"
    job.inputs.model_name = model_name
    ml_client.jobs.create_or_update(job)
    assert wait_status(ml_client, job.name, {"Completed"}, timeout=120) == "Completed"
    model = ml_client.models.get(model_name, version="1")
    assert model.path.endswith(f"/paths/azureml/{job_logs(aml, job.name)['steps']['train']['jobName']}/model/")
    assert any(k.startswith("evergreen.") for k in model.tags)


def test_job_running_when_the_emulator_stops_is_failed_after_restart(aml: AmlInfo, azurite, tmp_path: Path) -> None:
    import shutil

    from devstack.testing.aml import start_emulator

    shutil.copytree(aml.state_dir / "certs", tmp_path / "state" / "certs")  # the CA the session trusts
    info = start_emulator(tmp_path / "state", azurite.connection_string)
    name = unique("orphan")
    body = {"properties": {"jobType": "Command", "command": "python -c \"import time; time.sleep(4)\"",
                           "environmentId": CURATED, "experimentName": "evergreen-tests"}}
    params = {"api-version": "2025-01-01-preview"}
    try:
        with httpx.Client(verify=aml.env["REQUESTS_CA_BUNDLE"], headers=bearer(aml), timeout=10) as client:
            assert client.put(f"{info.workspace_url}/jobs/{name}", json=body, params=params).status_code == 201
            deadline = time.monotonic() + 20
            while client.get(f"{info.workspace_url}/jobs/{name}", params=params).json()["properties"]["status"] \
                    != "Running":
                assert time.monotonic() < deadline
                time.sleep(0.1)
            info.service.stop()
            info = start_emulator(info.state_dir, azurite.connection_string, port=info.port)
            job = client.get(f"{info.workspace_url}/jobs/{name}", params=params).json()
            assert job["properties"]["status"] == "Failed"
            logs = client.get(f"{info.base_url}/_emulator/jobs/{name}/logs").json()
            # Stopping the emulator stops its process group: either the runner saw the job's process end
            # (SIGTERM, exit -15) before the emulator died, or the restart found the job orphaned. Both
            # must leave it Failed with a reason, never Running forever.
            assert "restarted" in logs["error"] or "exited with code -15" in logs["error"], logs["error"]
            again = client.put(f"{info.workspace_url}/jobs/{name}", json=body, params=params)
            assert again.status_code == 200 and again.json()["properties"]["status"] == "Failed"
    finally:
        info.service.stop()
    events = run_events(info, name)
    assert [e["data"].get("runStatus") for e in events] == ["Failed"]
