"""The register step without a workspace: lineage tags/properties, workspace and job-name
resolution, the choice between datastore URI and upload, the code hash, and the whole main()
against a hand-written stub of `MLClient.models`."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from azure.core.exceptions import ResourceNotFoundError

from tests.unit.test_ml_steps import ML, SRC, component_command, step_module

register = step_module("register")
steplib = step_module("steplib")

MODEL_URI = (
    "azureml://subscriptions/00000000-0000-0000-0000-000000000000/resourcegroups/evergreen-local/workspaces/"
    "evergreen-ws/datastores/workspaceblobstore/paths/azureml/abc123/model/"
)
METRICS = {
    "primary_metric": "roc_auc",
    "requested_metrics": ["roc_auc"],
    "metrics": {
        "roc_auc": {"value": 0.812345, "higher_is_better": True},
        "log_loss": {"value": 0.48, "higher_is_better": False},
    },
}


class StubModels:
    """Records what would be sent to the registry; `versions` are what list() returns."""

    def __init__(self, versions: list[Any] | None = None) -> None:
        self.versions = versions
        self.created: list[Any] = []

    def list(self, name: str) -> list[Any]:
        if self.versions is None:
            raise ResourceNotFoundError(f"Model container with name: {name} not found.")
        return self.versions

    def create_or_update(self, model: Any) -> Any:
        self.created.append(model)
        model.version = "3"
        return model


class StubJobs:
    """The pipeline job the step reads its tags from; None: there is no such job."""

    def __init__(self, tags: dict[str, str] | None) -> None:
        self.tags = tags

    def get(self, name: str) -> Any:
        if self.tags is None:
            raise ResourceNotFoundError(f"Job {name} not found.")
        return SimpleNamespace(name=name, tags=self.tags)


class StubClient:
    def __init__(self, versions: list[Any] | None = None, job_tags: dict[str, str] | None = None) -> None:
        self.models = StubModels(versions)
        self.jobs = StubJobs(job_tags)


@pytest.fixture
def step_folders(tmp_path: Path) -> dict[str, Path]:
    model = tmp_path / "model"
    model.mkdir()
    (model / "model.joblib").write_bytes(b"model")
    (model / "score.py").write_text("def init(): ...\n")
    (model / "model_meta.json").write_text(json.dumps({"code_sha256": "c0de" * 16}))
    metrics = tmp_path / "metrics"
    metrics.mkdir()
    (metrics / "metrics.json").write_text(json.dumps(METRICS))
    return {"model": model, "metrics": metrics, "out": tmp_path / "registered"}


def register_argv(folders: dict[str, Path], model_uri: str | Path, **inputs: str) -> list[str]:
    """The register component's command line, as the pipeline binds it."""
    values = {
        "model_dir": folders["model"],
        "model_uri": model_uri,
        "metrics": folders["metrics"],
        "model_name": "churn-model",
        "data_asset": "churn-training",
        "data_version": "7",
        **inputs,
    }
    argv = component_command(ML / "components" / "register.yml", values, {"registered_model": folders["out"]})
    return argv[2:]


AZURE_ML_ENV = {"AZUREML_ROOT_RUN_ID": "olive_pipeline_42", "AZUREML_RUN_ID": "step_7"}


def test_registers_by_datastore_uri_with_lineage(step_folders):
    client = StubClient()
    register.main(register_argv(step_folders, MODEL_URI), client=client, env=AZURE_ML_ENV)
    (model,) = client.models.created
    assert model.name == "churn-model"
    assert model.path == MODEL_URI
    assert model.type == "custom_model"
    assert model.tags == {
        "evergreen.data_asset": "churn-training",
        "evergreen.data_version": "7",
        "evergreen.job_name": "olive_pipeline_42",
        "evergreen.code_sha256": "c0de" * 16,
        "evergreen.metric_primary": "roc_auc",
        "evergreen.metric.roc_auc": "0.812345",
        "evergreen.metric.log_loss": "0.48",
    }
    assert model.properties["evergreen.metric.log_loss.higher_is_better"] == "false"
    assert model.properties.items() >= model.tags.items()
    result = json.loads((step_folders["out"] / "registered_model.json").read_text())
    assert (result["name"], result["version"]) == ("churn-model", "3")
    assert result["registered_by"] == "datastore_uri"
    assert result["metrics"] == {"roc_auc": 0.812345, "log_loss": 0.48}


def test_a_local_model_uri_falls_back_to_uploading_the_folder(step_folders):
    client = StubClient(versions=[])
    # an executor without direct mode substitutes the mounted path for model_uri as well
    register.main(register_argv(step_folders, step_folders["model"]), client=client, env=AZURE_ML_ENV)
    assert client.models.created[0].path == str(step_folders["model"])
    result = json.loads((step_folders["out"] / "registered_model.json").read_text())
    assert result["registered_by"] == "local_upload"


def test_a_retried_step_reuses_the_version_its_job_registered(step_folders):
    class Existing:
        name, version, id = "churn-model", "2", "azureml:churn-model:2"
        tags = {"evergreen.job_name": "olive_pipeline_42"}

    other = type("Other", (), {"tags": {"evergreen.job_name": "another_job"}})()
    client = StubClient(versions=[other, Existing()])
    register.main(register_argv(step_folders, MODEL_URI), client=client, env=AZURE_ML_ENV)
    assert client.models.created == []
    assert json.loads((step_folders["out"] / "registered_model.json").read_text())["version"] == "2"


def test_invalid_inputs_are_named(step_folders):
    with pytest.raises(steplib.StepInputError, match="model_name 'churn model' is not a valid"):
        register.main(register_argv(step_folders, MODEL_URI, model_name="churn model"), client=StubClient(), env={})
    (step_folders["model"] / "score.py").unlink()
    with pytest.raises(steplib.StepInputError, match=r"score\.py missing from"):
        register.main(register_argv(step_folders, MODEL_URI), client=StubClient(), env=AZURE_ML_ENV)


def test_metrics_must_name_a_computed_primary_metric():
    with pytest.raises(steplib.StepInputError, match="primary_metric 'f1' is not one of roc_auc, log_loss"):
        register.build_lineage(
            {**METRICS, "primary_metric": "f1"}, data_asset="d", data_version="1", job_name="j", code_hash="h"
        )


def test_workspace_explicit_variables_win_over_the_run_context():
    env = {
        "AZURE_SUBSCRIPTION_ID": "sub-explicit",
        "AZUREML_ARM_SUBSCRIPTION": "sub-run",
        "AZUREML_ARM_RESOURCEGROUP": "rg-run",
        "AZUREML_WORKSPACE_NAME": "ws-explicit",
        "AZUREML_ARM_WORKSPACE_NAME": "ws-run",
    }
    assert register.resolve_workspace(env) == register.WorkspaceCoords("sub-explicit", "rg-run", "ws-explicit")


def test_workspace_names_every_missing_variable():
    with pytest.raises(steplib.StepInputError) as caught:
        register.resolve_workspace({"AZUREML_ARM_SUBSCRIPTION": "s"})
    assert str(caught.value) == (
        "workspace: set AZURE_RESOURCE_GROUP (or AZUREML_ARM_RESOURCEGROUP), "
        "AZUREML_WORKSPACE_NAME (or AZUREML_ARM_WORKSPACE_NAME)"
    )


def test_job_name_prefers_explicit_then_pipeline_run_then_step_run():
    assert register.resolve_job_name(" manual ", AZURE_ML_ENV) == "manual"
    assert register.resolve_job_name(None, AZURE_ML_ENV) == "olive_pipeline_42"
    assert register.resolve_job_name(None, {"AZUREML_RUN_ID": "step_7"}) == "step_7"
    with pytest.raises(steplib.StepInputError, match="AZUREML_ROOT_RUN_ID or AZUREML_RUN_ID"):
        register.resolve_job_name(None, {})


@pytest.mark.parametrize(
    ("uri", "remote"),
    [
        (MODEL_URI, True),
        ("azureml://datastores/workspaceblobstore/paths/models/x/", True),
        ("https://acct.blob.core.windows.net/c/models/x", True),
        ("/mnt/azureml/cr/j/abc/cap/data-capability/wd/INPUT_model_uri", False),
        (None, False),
    ],
)
def test_model_source_prefers_a_remote_uri(tmp_path, uri, remote):
    source = register.choose_model_source(uri, tmp_path)
    assert source.remote is remote
    assert source.path == (uri if remote else str(tmp_path))


def test_code_hash_is_deterministic_and_ignores_caches_and_line_endings(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for folder in (a, b):
        (folder / "pkg").mkdir(parents=True)
    (a / "train.py").write_bytes(b"print(1)\n")
    (a / "pkg" / "util.py").write_bytes(b"X = 1\n")
    (b / "pkg" / "util.py").write_bytes(b"X = 1\r\n")  # written in another order, CRLF
    (b / "train.py").write_bytes(b"print(1)\n")
    (b / "__pycache__").mkdir()
    (b / "__pycache__" / "train.cpython-311.pyc").write_bytes(b"\0")
    (b / "outputs").mkdir()
    (b / "outputs" / "notes.txt").write_text("Azure ML run folder noise")
    assert steplib.code_sha256(a) == steplib.code_sha256(b)
    (b / "train.py").write_bytes(b"print(2)\n")
    assert steplib.code_sha256(a) != steplib.code_sha256(b)
    (b / "train.py").write_bytes(b"print(1)\n")
    (b / "pkg" / "util.py").rename(b / "pkg" / "other.py")
    assert steplib.code_sha256(a) != steplib.code_sha256(b)
    assert steplib.code_sha256(SRC) == steplib.code_sha256(SRC)


def test_ml_client_is_built_from_explicit_variables_and_a_managed_identity(monkeypatch):
    monkeypatch.setenv("AZUREML_DEV_URL_MFE", "https://127.0.0.1:5443/")
    monkeypatch.setenv("IDENTITY_ENDPOINT", "https://127.0.0.1:5443/msi/token")
    monkeypatch.setenv("IDENTITY_HEADER", "evergreen-local-identity")
    env = {
        "AZURE_SUBSCRIPTION_ID": "00000000-0000-0000-0000-000000000000",
        "AZURE_RESOURCE_GROUP": "evergreen-local",
        "AZUREML_WORKSPACE_NAME": "evergreen-ws",
    }
    client = register.build_ml_client(register.resolve_workspace(env), env)  # sends no request
    assert (client.subscription_id, client.resource_group_name, client.workspace_name) == (
        "00000000-0000-0000-0000-000000000000",
        "evergreen-local",
        "evergreen-ws",
    )


TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def test_the_jobs_trace_context_is_copied_onto_the_model(step_folders):
    client = StubClient(job_tags={"evergreen.traceparent": TRACEPARENT, "evergreen.trigger_event": "e1",
                                  "team": "ml"})
    register.main(register_argv(step_folders, MODEL_URI), client=client, env=AZURE_ML_ENV)
    (model,) = client.models.created
    assert model.tags["evergreen.traceparent"] == TRACEPARENT
    assert model.properties["evergreen.traceparent"] == TRACEPARENT
    assert "team" not in model.tags  # only the tags the step knows are copied


def test_a_job_that_cannot_be_read_registers_the_model_without_its_trace(step_folders):
    client = StubClient(job_tags=None)
    register.main(register_argv(step_folders, MODEL_URI), client=client, env=AZURE_ML_ENV)
    (model,) = client.models.created
    assert "evergreen.traceparent" not in model.tags
