"""The `DataRegistry` and `JobRunner` contracts: the in-memory workspace and Azure ML (the emulator, with
the real SDK) behave alike.

Ingest relies on the registry numbering versions itself and on finding a version by its content
tag (to adopt a registration whose ledger write was lost); retraining relies on a job name being
submitted at most once.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from shared.adapters.memory.azureml import MemoryWorkspace
from shared.domain.retrain import PipelineSubmission
from shared.domain.vocabulary import Tag
from shared.domain.workspace import DataVersionSpec
from shared.ports import DataRegistry, JobRunner

PIPELINE_YAML = """
$schema: https://azuremlschemas.azureedge.net/latest/pipelineJob.schema.json
type: pipeline
settings:
  default_compute: azureml:cpu-cluster
inputs:
  training_data:
    type: uri_folder
  model_name: m
  data_asset: d
  data_version: "1"
jobs:
  echo:
    type: command
    command: echo ${{inputs.data}}
    environment: azureml:AzureML-sklearn-1.5@latest
    inputs:
      data: ${{parent.inputs.training_data}}
"""


class Workspace(DataRegistry, JobRunner):
    """Both ports, as both adapters provide them."""


@pytest.fixture(params=["memory", pytest.param("azure", marks=pytest.mark.integration)])
def workspace(request: pytest.FixtureRequest) -> Iterator[Workspace]:
    if request.param == "memory":
        yield MemoryWorkspace()  # type: ignore[misc]
        return
    from azure.identity import DefaultAzureCredential

    from shared.adapters.azure.azureml import AzureML

    aml = request.getfixturevalue("aml")
    from azure.storage.blob import BlobServiceClient

    def blobs(_account: str, _endpoint: str) -> BlobServiceClient:  # the emulator's datastores live in Azurite
        return BlobServiceClient.from_connection_string(aml.storage_connection_string)

    yield AzureML(DefaultAzureCredential(), aml.subscription_id, aml.resource_group, aml.workspace,  # type: ignore[misc]
                  workspace_blobs=blobs)


def spec(name: str, n: int, **tags: str) -> DataVersionSpec:
    return DataVersionSpec(name, "uri_folder", f"azureml://datastores/landing/paths/{name}/drop{n}/", "", tags)


def same_path(returned: str, registered: str) -> bool:
    """Azure ML answers with the workspace-qualified form (azureml://subscriptions/…/datastores/…) of a
    short `azureml://datastores/…` URI; both name the same datastore path."""
    return returned.endswith(registered.removeprefix("azureml://"))


def test_registering_twice_gives_two_versions_numbered_in_order(workspace: Workspace) -> None:
    name = f"contract-{uuid.uuid4().hex[:8]}"
    first = workspace.register_data_version(spec(name, 1))
    second = workspace.register_data_version(spec(name, 2))
    assert (first.name, first.version, second.version) == (name, "1", "2")
    assert same_path(first.uri, spec(name, 1).uri)


def test_a_version_is_found_by_its_tag(workspace: Workspace) -> None:
    name = f"contract-{uuid.uuid4().hex[:8]}"
    workspace.register_data_version(spec(name, 1, **{Tag.SHA256.value: "aa"}))
    workspace.register_data_version(spec(name, 2, **{Tag.SHA256.value: "bb"}))
    found = workspace.find_data_version(name, Tag.SHA256.value, "bb")
    assert found is not None and found.version == "2" and same_path(found.uri, spec(name, 2).uri)
    assert workspace.find_data_version(name, Tag.SHA256.value, "cc") is None


def test_a_version_is_read_back_by_number_or_as_the_latest(workspace: Workspace) -> None:
    name = f"contract-{uuid.uuid4().hex[:8]}"
    workspace.register_data_version(spec(name, 1, **{Tag.SHA256.value: "aa"}))
    workspace.register_data_version(spec(name, 2, **{Tag.SHA256.value: "bb"}))
    first, latest = workspace.get_data_version(name, "1"), workspace.get_data_version(name)
    assert first is not None and first.version == "1" and first.tags[Tag.SHA256.value] == "aa"
    assert latest is not None and latest.version == "2" and latest.asset_type == "uri_folder"
    assert same_path(latest.uri, spec(name, 2).uri)
    assert workspace.get_data_version(name, "9") is None
    assert workspace.get_data_version(f"nothing-{uuid.uuid4().hex[:8]}") is None


def test_finding_in_an_unknown_asset_is_none(workspace: Workspace) -> None:
    assert workspace.find_data_version(f"nothing-{uuid.uuid4().hex[:8]}", Tag.SHA256.value, "aa") is None


def test_submitting_one_job_name_twice_creates_one_job(workspace: Workspace, tmp_path: Path) -> None:
    name = f"contract-{uuid.uuid4().hex[:8]}"
    data = workspace.register_data_version(spec(name, 1))
    (tmp_path / "pipeline.yml").write_text(PIPELINE_YAML)
    submission = PipelineSubmission(
        yaml_path=tmp_path / "pipeline.yml", job_name=f"evergreen-{name}", experiment="contract",
        data_input=f"azureml:{data.name}:{data.version}", data_type="uri_folder",
        inputs={"model_name": "m", "data_asset": data.name, "data_version": data.version},
        tags={Tag.DATASET.value: name},
    )
    assert workspace.job_status(submission.job_name) is None
    first = workspace.submit_pipeline(submission)
    assert first
    again = workspace.submit_pipeline(submission)
    assert again  # the existing job's status (it may have moved on meanwhile)
    assert workspace.job_status(submission.job_name) is not None
    assert workspace.job_status(f"evergreen-{name}-other") is None


COMPARE_YAML = """
$schema: https://azuremlschemas.azureedge.net/latest/pipelineJob.schema.json
type: pipeline
settings:
  default_compute: azureml:cpu-cluster
inputs:
  evaluation_data:
    type: uri_folder
  challenger_name: m
outputs:
  comparison:
    type: uri_folder
jobs:
  compare:
    type: command
    command: >-
      echo '{"schema": "evergreen.comparison/1", "champion": "${{inputs.champion_name}}"}'
      > ${{outputs.comparison}}/comparison.json
    environment: azureml:AzureML-sklearn-1.5@latest
    inputs:
      data: ${{parent.inputs.evaluation_data}}
      champion_name: none
    outputs:
      comparison: ${{parent.outputs.comparison}}
"""


def test_a_node_input_is_set_and_an_unwritten_comparison_reads_as_none(workspace: Workspace, tmp_path: Path) -> None:
    """`<node>.<input>` binds an input of one node (the compare pipeline's optional champion); a comparison
    that no job wrote (an unknown job, or one that has not written it yet) reads as None."""
    name = f"contract-{uuid.uuid4().hex[:8]}"
    data = workspace.register_data_version(spec(name, 1))
    (tmp_path / "compare.yml").write_text(COMPARE_YAML)
    submission = PipelineSubmission(
        yaml_path=tmp_path / "compare.yml", job_name=f"evergreen-compare-{name}", experiment="contract",
        data_input=f"azureml:{data.name}:{data.version}", data_type="uri_folder", data_input_name="evaluation_data",
        inputs={"challenger_name": "m:2", "compare.champion_name": "m:1"}, tags={Tag.COMPARISON.value: "challenger"},
    )
    assert workspace.read_comparison(submission.job_name) is None
    assert workspace.submit_pipeline(submission)
    assert workspace.submit_pipeline(submission)  # one job: the second submission adopts it
    assert workspace.read_comparison(f"evergreen-compare-{name}-other") is None
