"""Lineage (`shared.services.lineage.LineageReader`) on the in-memory adapters, over real flows.

The models are promoted and rolled out by the real Promoter (the rig of `test_promotion.py`); the data
versions and the retraining job live in the in-memory workspace; retention's audit record has the shape
`RetentionRunner._apply_one` writes. Both directions: from a data version forward, from a model back.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from shared.adapters.memory.azureml import MemoryWorkspace
from shared.cli.lineage import render_lineage, run_lineage
from shared.domain.audit import AuditRecord
from shared.domain.lineage import parse_subject
from shared.domain.retrain import PipelineSubmission
from shared.domain.rollout import deployment_name
from shared.domain.vocabulary import Phase, PromotionAction, Tag
from shared.domain.workspace import DataVersionSpec
from shared.services.lineage import LineageReader
from tests.services.test_promotion import ENDPOINT, MODEL, Rig, first_model

REPO = Path(__file__).resolve().parents[2]
SNAPSHOT = "_evergreen/snapshots/d/{}/churn.csv"


class World:
    """A promoted champion churn:1 trained on d:1, and a candidate churn:2 trained on d:2 that was rolled back."""

    def __init__(self) -> None:
        self.rig = Rig()
        self.workspace = MemoryWorkspace()
        for n in (1, 2):
            self.data_version(n)
        self.job1, self.job2 = self.job(1), self.job(2)
        self.workspace.set_step_status(self.job1, "train", "Completed")
        first_model(self.rig, self.rig.register("0.80", **self.lineage(1, self.job1)))
        v2 = self.rig.register("0.90", **self.lineage(2, self.job2))
        self.rig.endpoints.fail_scoring(deployment_name(MODEL, v2.version))
        assert self.rig.deliver(v2).action is PromotionAction.STARTED
        assert self.rig.run().phase is Phase.ROLLED_BACK
        self.reader = LineageReader(policy=self.rig.policy, data=self.workspace, jobs=self.workspace,
                                    models=self.rig.endpoints, endpoints=self.rig.endpoints, audit=self.rig.audit,
                                    ledger=self.rig.ledger, clock=self.rig.clock, days=7)

    def data_version(self, n: int) -> None:
        self.workspace.register_data_version(DataVersionSpec(
            name="d", asset_type="uri_file", uri=f"azureml://datastores/landing/paths/{SNAPSHOT.format(n)}",
            description="", tags={Tag.SOURCE_URL.value: f"https://acct.blob.core.windows.net/landing/d/churn-{n}.csv",
                                  Tag.SHA256.value: f"{n}" * 64}))

    def job(self, n: int) -> str:
        name = f"evergreen-d-{n}"
        self.workspace.submit_pipeline(PipelineSubmission(
            yaml_path=REPO / "ml/pipeline.yml", job_name=name, experiment="exp", data_input=f"azureml:d:{n}",
            data_type="uri_file", inputs={}, tags={Tag.DATA_ASSET.value: "d", Tag.DATA_VERSION.value: str(n)}))
        self.workspace.set_job_status(name, "Completed")
        return name

    @staticmethod
    def lineage(n: int, job: str) -> dict[str, str]:
        return {"evergreen.data_asset": "d", "evergreen.data_version": str(n), "evergreen.job_name": job}


@pytest.fixture
def world() -> World:
    return World()


def test_from_a_data_version_forward_to_the_model_trained_on_it_and_where_it_serves(world: World) -> None:
    lineage = world.reader.of("d", "1")

    assert lineage is not None and lineage.subject.kind == "data"
    assert [f"{m.name}:{m.version}" for m in lineage.models] == [f"{MODEL}:1"]  # not churn:2 (trained on d:2)
    (data,) = lineage.data
    assert [(b.role, b.path) for b in data.blobs] == [("source", "landing/d/churn-1.csv"),
                                                       ("snapshot", "landing/" + SNAPSHOT.format(1))]
    (job,) = lineage.jobs
    assert job.name == world.job1 and job.status == "Completed"
    assert [(s.name, s.status) for s in job.steps] == [("prep", ""), ("train", "Completed"), ("evaluate", ""),
                                                       ("register", "")]
    (deployment,) = lineage.deployments
    assert (deployment.endpoint, deployment.model, deployment.traffic) == (ENDPOINT, f"{MODEL}:1", 100)
    phases = [p.kind.removeprefix("rollout.") for p in deployment.phases]
    assert phases == ["deploy", "provisioning", "smoke", "shift", "shifting", "grace", "succeeded"], phases
    assert [d.kind for d in lineage.decisions] == ["promotion.started"]


def test_from_a_rolled_back_model_back_to_its_blobs_and_forward_to_its_gone_deployment(world: World) -> None:
    lineage = world.reader.of(MODEL, "2")

    assert lineage is not None and lineage.subject.kind == "model"
    assert [f"{d.name}:{d.version}" for d in lineage.data] == ["d:2"]
    assert lineage.data[0].blobs[0].path == "landing/d/churn-2.csv"
    assert [j.name for j in lineage.jobs] == [world.job2]
    (deployment,) = lineage.deployments
    assert deployment.deployment == deployment_name(MODEL, "2")
    assert deployment.state == "gone" and deployment.traffic is None and deployment.rollout_phase == "rolled_back"
    phases = [p.kind for p in deployment.phases]
    assert "rollout.rollback" in phases and phases[-1] == "rollout.rolled_back", phases
    assert all(d.assets["model"] == f"{MODEL}:2" for d in lineage.decisions) and lineage.decisions


def test_a_retention_action_on_an_asset_of_the_chain_is_shown_and_others_are_not(world: World) -> None:
    for target in ("data:d:1", "data:d:2", f"blob:landing/{SNAPSHOT.format(1)}"):
        world.rig.audit.record(AuditRecord(  # the shape RetentionRunner._apply_one writes
            kind="retention.delete_data", decision=f"delete_data {target}", reason="older than 30 days",
            event_id="retention-run-1", assets={"target": target, "action": "k-" + target, "rule": "old-data"},
            at=world.rig.clock()))

    lineage = world.reader.of("d", "1")

    assert lineage is not None
    assert sorted(r.assets["target"] for r in lineage.retention) == [f"blob:landing/{SNAPSHOT.format(1)}", "data:d:1"]
    assert "Retention actions" in render_lineage(lineage) and "delete_data data:d:1" in render_lineage(lineage)


def test_the_table_and_the_json_name_every_link(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_lineage(argparse.Namespace(ref=f"{MODEL}:2", days=7, json=False), world.reader) == 0
    text = capsys.readouterr().out
    for title in ("Blobs", "Data versions", "Retraining jobs", "Model versions", "Gate decisions", "Deployments",
                  "Rollout history", "Retention actions"):
        assert f"\n{title}\n" in f"\n{text}", title
    assert run_lineage(argparse.Namespace(ref="d:1", days=7, json=True), world.reader) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["subject"] == {"kind": "data", "name": "d", "version": "1"}
    assert doc["deployments"][0]["traffic"] == 100 and doc["jobs"][0]["steps"][1] == {"name": "train",
                                                                                      "status": "Completed"}


@pytest.mark.parametrize("ref", ["churn", "churn:", ":3", "churn:3:4", ""])
def test_a_malformed_reference_exits_2_with_one_line(ref: str, world: World,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    assert run_lineage(argparse.Namespace(ref=ref, days=7, json=False), world.reader) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "NAME:VERSION" in err
    with pytest.raises(ValueError):
        parse_subject(ref)


def test_an_unknown_version_exits_1(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    assert world.reader.of(MODEL, "9") is None and world.reader.of("d", "9") is None
    assert run_lineage(argparse.Namespace(ref=f"{MODEL}:9", days=7, json=True), world.reader) == 1
    assert capsys.readouterr().err.startswith("not found:")


def test_a_data_version_whose_retraining_failed_shows_the_failed_job_and_no_model(world: World) -> None:
    world.data_version(3)
    job = world.job(3)
    world.workspace.set_job_status(job, "Failed")
    world.rig.audit.record(AuditRecord(  # the shape Retrainer._record writes for a submission
        "retrain.submitted", "submitted", f"submitted {job}", "evt-d-3", {"data": "d:3", "job": job},
        at=world.rig.clock()))

    lineage = world.reader.of("d", "3")

    assert lineage is not None and lineage.models == () and lineage.deployments == ()
    assert [(j.name, j.status) for j in lineage.jobs] == [(job, "Failed")]
    assert "Failed" in render_lineage(lineage)
