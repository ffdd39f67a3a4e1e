"""The `ModelRegistry` and `JobInspector` contracts (what `python -m shared.cli lineage` reads): the in-memory
adapters and Azure ML (the emulator, with the real SDK) behave alike.

Lineage finds the models trained on a data version by their lineage tags, newest first and bounded, and
shows a retraining job with its status, tags and the steps its pipeline defines.
"""

from __future__ import annotations

import uuid
from pathlib import Path

from shared.domain.retrain import PipelineSubmission
from shared.domain.vocabulary import Tag
from shared.ports import JobInspector, ModelRegistry
from tests.contract import test_data_registry as data_contract
from tests.contract import test_endpoints as endpoints_contract
from tests.contract.test_data_registry import PIPELINE_YAML, spec
from tests.contract.test_data_registry import Workspace as DataWorkspace
from tests.contract.test_endpoints import Workspace

# The same adapters as those suites (memory, and Azure ML on the emulator): their fixtures, reused.
workspace = data_contract.workspace
ws = endpoints_contract.ws
model_uri = endpoints_contract.model_uri


def test_model_versions_are_found_by_their_lineage_tags_newest_first_and_bounded(ws: Workspace) -> None:
    registry: ModelRegistry = ws.endpoints  # type: ignore[assignment]  # both adapters implement it
    name = f"contract-{uuid.uuid4().hex[:8]}"
    versions = [ws.register(name, {Tag.DATA_ASSET.value: "d", Tag.DATA_VERSION.value: str(n % 2)}) for n in range(3)]

    tagged = registry.list_model_versions(name, tags={Tag.DATA_ASSET.value: "d", Tag.DATA_VERSION.value: "0"})
    assert [m.version for m in tagged] == [versions[2], versions[0]]  # newest first, only those tags
    assert tagged[0].tags[Tag.DATA_VERSION.value] == "0"
    assert [m.version for m in registry.list_model_versions(name, limit=2)] == [versions[2], versions[1]]
    assert registry.list_model_versions(name, tags={Tag.DATA_ASSET.value: "other"}) == []
    assert registry.list_model_versions(f"nothing-{uuid.uuid4().hex[:8]}") == []


def test_a_job_reads_back_with_its_status_tags_and_the_steps_its_pipeline_defines(workspace: DataWorkspace,
                                                                                  tmp_path: Path) -> None:
    jobs: JobInspector = workspace  # type: ignore[assignment]  # both adapters implement it
    name = f"contract-{uuid.uuid4().hex[:8]}"
    data = workspace.register_data_version(spec(name, 1))
    (tmp_path / "pipeline.yml").write_text(PIPELINE_YAML)
    submission = PipelineSubmission(
        yaml_path=tmp_path / "pipeline.yml", job_name=f"evergreen-{name}", experiment="contract",
        data_input=f"azureml:{data.name}:{data.version}", data_type="uri_folder",
        inputs={"model_name": "m", "data_asset": data.name, "data_version": data.version},
        tags={Tag.DATA_ASSET.value: name, Tag.DATA_VERSION.value: data.version},
    )
    assert jobs.get_job(submission.job_name) is None
    workspace.submit_pipeline(submission)

    job = jobs.get_job(submission.job_name)

    assert job is not None and job.name == submission.job_name and job.status
    assert job.tags[Tag.DATA_ASSET.value] == name and job.tags[Tag.DATA_VERSION.value] == data.version
    assert [s.name for s in job.steps] == ["echo"]
    assert all(isinstance(s.status, str) for s in job.steps)
