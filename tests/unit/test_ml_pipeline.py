"""ml/pipeline.yml and its components load and validate with azure-ai-ml (no network), and the
wiring between the YAML and the scripts is consistent."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from azure.ai.ml import Input, load_component, load_job
from azure.ai.ml.entities import CommandComponent, PipelineJob

ML = Path(__file__).resolve().parents[2] / "ml"
COMPONENTS = ["prep", "train", "evaluate", "register"]
EXPRESSION = re.compile(r"\$\{\{\s*(inputs|outputs)\.(\w+)\s*\}\}")


def test_pipeline_loads_and_validates():
    job = load_job(ML / "pipeline.yml")
    assert isinstance(job, PipelineJob)
    result = job._validate()
    assert result.passed, result.error_messages
    assert job.settings.default_compute == "cpu-cluster"
    assert list(job.jobs) == COMPONENTS
    assert set(job.inputs) == {"training_data", "target_column", "metric", "model_name", "data_asset", "data_version"}
    assert job.inputs.training_data.result()["type"] == "uri_folder"
    assert job.inputs.target_column.result() == "churned"
    assert job.inputs.metric.result() == "roc_auc"


def test_evergreen_can_override_the_inputs_as_it_submits():
    """What Evergreen does before `ml_client.jobs.create_or_update(job)`."""
    job = load_job(ML / "pipeline.yml")
    job.inputs.training_data = Input(type="uri_folder", path="azureml:churn-training:7")
    job.inputs.data_asset = "churn-training"
    job.inputs.data_version = "7"
    job.inputs.model_name = "churn-model"
    job.experiment_name = "evergreen-churn-training"
    assert job._validate().passed
    rest = job._to_rest_object().as_dict()["properties"]
    assert rest["inputs"]["training_data"] == {"uri": "azureml:churn-training:7", "jobInputType": "uri_folder"}
    assert rest["inputs"]["data_version"] == {"value": "7", "jobInputType": "literal"}
    assert rest["experimentName"] == "evergreen-churn-training"


def test_register_gets_the_model_output_twice_once_by_uri():
    register = load_job(ML / "pipeline.yml").jobs["register"]
    assert register.inputs["model_uri"].mode == "direct"
    rest = register._to_rest_object()["inputs"]
    assert rest["model_uri"]["mode"] == "Direct"
    assert rest["model_dir"]["value"] == rest["model_uri"]["value"] == "${{parent.jobs.train.outputs.model}}"


@pytest.mark.parametrize("name", COMPONENTS)
def test_component_loads_and_its_command_matches_its_interface(name: str):
    component = load_component(ML / "components" / f"{name}.yml")
    assert isinstance(component, CommandComponent)
    assert component._validate().passed
    spec = yaml.safe_load((ML / "components" / f"{name}.yml").read_text())
    assert spec["$schema"].endswith("/commandComponent.schema.json")
    assert spec["code"] == "../src"
    used = {(kind, n) for kind, n in EXPRESSION.findall(spec["command"])}
    declared = {("inputs", n) for n in spec["inputs"]} | {("outputs", n) for n in spec["outputs"]}
    assert used == declared, "every input/output is on the command line, and nothing else"
    script = spec["command"].split()[1]
    assert spec["command"].split()[0] == "python"
    assert (ML / "src" / script).is_file()
    # every --flag on the command line is an argument the script defines
    source = (ML / "src" / script).read_text()
    for flag in re.findall(r"(--\w+)", spec["command"]):
        assert f'"{flag}"' in source, f"{script} has no {flag} argument"


def test_sklearn_steps_use_the_curated_environment_and_register_can_reach_the_registry():
    for name in ("prep", "train", "evaluate"):
        assert load_component(ML / "components" / f"{name}.yml").environment == "AzureML-sklearn-1.5@latest"
    environment = load_component(ML / "components" / "register.yml").environment
    pip = environment.conda_file["dependencies"][-1]["pip"]
    assert any(p.startswith("azure-ai-ml==") for p in pip)
    assert any(p.startswith("azure-identity==") for p in pip)


def test_every_node_binds_the_inputs_without_defaults():
    pipeline = yaml.safe_load((ML / "pipeline.yml").read_text())
    for node_name, node in pipeline["jobs"].items():
        spec = yaml.safe_load((ML / node["component"]).read_text())
        required = {n for n, decl in spec["inputs"].items() if "default" not in decl and not decl.get("optional")}
        assert required <= set(node["inputs"]), f"{node_name} leaves {required - set(node['inputs'])} unbound"
        assert set(node["inputs"]) <= set(spec["inputs"]), f"{node_name} binds unknown inputs"
