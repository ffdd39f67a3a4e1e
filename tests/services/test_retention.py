"""The retention service on the in-memory adapters: plan, apply, audit, crash-resume, failures, dry run.

The same behaviour is proven once more on the real SDKs against the local stack in
tests/integration/test_retention_apply.py; here every case runs in milliseconds, so each one
failure at one call gets its own test.
"""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import pytest
import yaml

from shared.adapters.memory.retention import MemoryRetentionBlobs, MemoryRetentionWorkspace, ThrottledError
from shared.adapters.memory.tables import MemoryTable
from shared.config.retention import parse_retention
from shared.domain.approval import ApprovalRecord
from shared.domain.audit import AuditRecord
from shared.domain.retention.addresses import Datastore
from shared.domain.retention.inventory import (
    Blob,
    BlobKey,
    BlobPath,
    BlobTier,
    DataKey,
    DataVersion,
    Deployment,
    DeploymentKey,
    Job,
    ModelKey,
    ModelVersion,
)
from shared.domain.retention.planner import Action, ActionKind, RetentionPlan
from shared.domain.vocabulary import ApplyStatus, ApprovalState, Tag
from shared.errors import EvergreenError
from shared.services.audit import TableAuditLog
from shared.services.ledger import COMPARISON_WORK, EVALUATION_WAIT_WORK, Ledger
from shared.services.retention import (
    SKIPPED_NEWER,
    RetentionIncomplete,
    RetentionRunner,
    comparisons_from,
    waiting_from,
)

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
LATER = NOW + timedelta(days=10)

RULES = """
rules:
  - name: data
    type: dataVersions
    filters: {names: [churn]}
    actions: {keepLatest: 1, archive: {daysAfterCreationGreaterThan: 30}}
  - name: models
    type: modelVersions
    filters: {names: [churn-model]}
    actions: {keepLatest: 1, keepTopK: {k: 1, metric: auc}, archive: {daysAfterCreationGreaterThan: 30}}
  - name: raw
    type: blobs
    filters: {prefixes: [landing/churn/d]}
    actions: {delete: {daysAfterModificationGreaterThan: 5}}
  - name: stray
    type: blobs
    filters: {prefixes: [landing/churn/stray/]}
    actions: {tierToCool: {daysAfterModificationGreaterThan: 1}}
"""


def ago(days: float) -> datetime:
    return NOW - timedelta(days=days)


def data(version: str, days: float, *, archived: bool = False, keep: bool = False) -> DataVersion:
    return DataVersion("churn", version, ago(days), archived=archived, tags={"evergreen.keep": "true"} if keep else {},
                       blob_paths=(BlobPath("landing", f"churn/d{version}/"),))


def model(version: str, days: float, auc: float) -> ModelVersion:
    return ModelVersion("churn-model", version, ago(days), metrics={"auc": auc},
                        blob_paths=(BlobPath("azureml-blobstore", f"models/{version}/"),))


@dataclass
class World:
    workspace: MemoryRetentionWorkspace = field(default_factory=MemoryRetentionWorkspace)
    blobs: MemoryRetentionBlobs = field(default_factory=lambda: MemoryRetentionBlobs(clock=lambda: NOW))
    audit: TableAuditLog = field(default_factory=lambda: TableAuditLog(MemoryTable()))
    ledger: Ledger = field(default_factory=lambda: Ledger(MemoryTable()))

    def runner(self, rules: str = RULES, **kwargs: object) -> RetentionRunner:
        return RetentionRunner(policy=parse_retention(yaml.safe_load(rules)), workspace=self.workspace,
                               blobs=self.blobs, rollouts=self.ledger.rollouts,
                               approvals=self.ledger.open_approvals, audit=self.audit, clock=lambda: LATER,
                               comparisons=self.ledger.open_comparisons, waiting=self.ledger.waiting_candidates,
                               **kwargs)  # type: ignore[arg-type]

    def archived(self, *keys: DataKey | ModelKey) -> set[str]:
        out = set()
        for key in keys:
            asset = (self.workspace.data_version(key) if isinstance(key, DataKey)
                     else self.workspace.model_version(key))
            if asset is not None and asset.archived:
                out.add(str(key))
        return out

    def records(self, kind: str = "") -> list[AuditRecord]:
        return [r for r in self.audit.query(kind_prefix=f"retention.{kind}", now=datetime.now(UTC))]


@pytest.fixture
def world() -> Iterator[World]:
    """Data: 1, 3 old; 2 old but tagged keep; 4 new (latest); 5 archived long ago. Models: 1 best, 2-3 old, 4 new."""
    w = World()
    w.workspace.put(data("5", 300, archived=True), data("1", 200), data("2", 150, keep=True), data("3", 100),
                    data("4", 5))
    w.workspace.put(model("1", 100, 0.91), model("2", 90, 0.70), model("3", 80, 0.60), model("4", 1, 0.50))
    for name in ("churn/d1/part-0.csv", "churn/d5/part-0.csv", "churn/d5/part-1.csv", "churn/stray/notes.csv"):
        w.blobs.put("landing", name)
    yield w


ALL_DATA = tuple(DataKey("churn", v) for v in "12345")
ALL_MODELS = tuple(ModelKey("churn-model", v) for v in "1234")


def test_dry_run_plans_with_reasons_and_changes_nothing(world: World) -> None:
    summary = world.runner().run(run_id="dry", dry_run=True)
    targets = {a.target for a in summary.plan.actions}
    assert targets == {DataKey("churn", "1"), DataKey("churn", "3"), ModelKey("churn-model", "2"),
                       ModelKey("churn-model", "3"), BlobKey("landing", "churn/d5/part-0.csv"),
                       BlobKey("landing", "churn/d5/part-1.csv"), BlobKey("landing", "churn/stray/notes.csv")}
    spared = {p.target: p.reason for p in summary.plan.protected}
    assert "tagged evergreen.keep" in spared[DataKey("churn", "2")]
    assert "top 1" in spared[ModelKey("churn-model", "1")]
    assert "referenced by non-archived" in spared[BlobKey("landing", "churn/d1/part-0.csv")]
    assert "Dry run: nothing was changed." in summary.render()
    assert world.archived(*ALL_DATA, *ALL_MODELS) == {"data:churn:5"}
    assert len(world.blobs.names("landing")) == 4
    assert world.workspace.faults.calls["execute"] == 0 and world.blobs.faults.calls["execute"] == 0
    assert world.records() == []


def test_apply_archives_deletes_tiers_and_records_each_action(world: World) -> None:
    summary = world.runner().run(run_id="run-1", dry_run=False)
    assert summary.outcomes and {o.status for o in summary.outcomes} == {"done"}
    assert world.archived(*ALL_DATA, *ALL_MODELS) == {"data:churn:1", "data:churn:3", "data:churn:5",
                                                      "model:churn-model:2", "model:churn-model:3"}
    assert world.blobs.names("landing") == ["churn/d1/part-0.csv", "churn/stray/notes.csv"]
    stray = world.blobs.blob("landing", "churn/stray/notes.csv")
    assert stray is not None and stray.tier is BlobTier.COOL
    recorded = {r.assets["target"]: r for r in world.records() if r.kind != "retention.run"}
    assert set(recorded) == {str(o.action.target) for o in summary.outcomes}
    archive = recorded["data:churn:1"]
    assert archive.kind == "retention.archive_data" and "created 210 days ago" in archive.reason
    assert archive.event_id == "run-1" and archive.assets["rule"] == "data"
    [run] = world.records("run")
    assert run.reason == "7 done" and run.assets["protected"] == str(len(summary.plan.protected))
    # the next run: the version archived now frees its blobs; the run before never counted on its own actions
    again = world.runner().run(run_id="run-2", dry_run=False)
    assert [str(a.target) for a in again.plan.actions] == ["blob:landing/churn/d1/part-0.csv"]
    assert world.blobs.names("landing") == ["churn/stray/notes.csv"]


class _Recording:
    """An audit log that notes, at each execute of the wrapped adapter, whether the decision was recorded first."""

    def __init__(self, audit: TableAuditLog) -> None:
        self.audit = audit
        self.keys: set[str] = set()
        self.lock = threading.Lock()

    def record(self, rec: AuditRecord) -> None:
        with self.lock:
            self.keys.add(rec.assets.get("action", ""))
        self.audit.record(rec)

    def query(self, **kwargs: object) -> Iterator[AuditRecord]:
        return self.audit.query(**kwargs)  # type: ignore[arg-type]


def test_each_decision_is_recorded_before_it_is_executed(world: World) -> None:
    recording = _Recording(world.audit)
    seen: list[bool] = []

    class Checking(MemoryRetentionBlobs):
        def execute(self, action: Action) -> str:
            seen.append(action.key in recording.keys)
            return super().execute(action)

    blobs = Checking(clock=lambda: NOW)
    for name in world.blobs.names("landing"):
        blobs.put("landing", name)
    runner = RetentionRunner(policy=parse_retention(yaml.safe_load(RULES)), workspace=world.workspace, blobs=blobs,
                             rollouts=world.ledger.rollouts,
                             approvals=world.ledger.open_approvals, comparisons=lambda: [], waiting=lambda: [],
                             audit=recording,
                             clock=lambda: LATER)
    runner.run(run_id="ordered", dry_run=False)
    assert seen == [True, True, True]  # two deletes and a tier, each recorded before it ran


def test_a_crash_half_way_resumes_without_failing_or_recording_twice(world: World) -> None:
    runner = world.runner()
    first = runner.run(run_id="plan", dry_run=True).plan
    assert len(first.actions) == 7  # 2 data + 2 model archives, 2 blob deletes, 1 tier
    runner.apply(RetentionPlan(first.now, first.actions[:3], ()), "crashed")  # the run "crashes" after three

    resumed = runner.run(run_id="resumed", dry_run=False)
    freed = BlobKey("landing", "churn/d1/part-0.csv")  # v1 was archived before the crash: its blob is free
    assert resumed.plan.targets() == {a.target for a in first.actions[3:]} | {freed}
    assert {o.status for o in resumed.outcomes} == {"done"}
    # re-running the *original* plan too (a crashed run restarted from its own plan) is harmless
    replay = runner.apply(first, "replay")
    assert {o.status for o in replay} == {"already"}
    keys = [r.assets["action"] for r in world.records() if r.kind != "retention.run"]
    cascade = [a.key for a in resumed.plan.actions if a.target == freed]
    assert sorted(keys) == sorted([a.key for a in first.actions] + cascade)  # each decision recorded exactly once


def test_a_failing_action_does_not_stop_the_others_is_recorded_and_fails_the_run(world: World) -> None:
    world.workspace.faults.throttle(100, operation="execute", target="data:churn:1")
    runner = world.runner()
    with pytest.raises(RetentionIncomplete) as failure:
        runner.run(run_id="failing", dry_run=False)
    assert isinstance(failure.value, EvergreenError)
    summary = failure.value.summary
    assert [str(o.action.target) for o in summary.failed] == ["data:churn:1"]
    assert "429" in summary.failed[0].error and ThrottledError.__name__ in summary.failed[0].error
    assert world.archived(*ALL_DATA) == {"data:churn:3", "data:churn:5"}
    assert world.blobs.names("landing") == ["churn/d1/part-0.csv", "churn/stray/notes.csv"]
    assert [r.decision for r in world.records("failed")] == ["failed archive_data data:churn:1"]
    assert world.records("run")[0].reason == "6 done, 1 failed"
    world.workspace.faults.clear()
    retried = runner.run(run_id="retry", dry_run=False)  # the next run finishes the job
    assert [(str(o.action.target), o.status) for o in retried.outcomes] == [("data:churn:1", "done")]


def test_a_throttled_action_fails_only_while_throttled(world: World) -> None:
    world.blobs.faults.throttle(1, operation="execute")
    with pytest.raises(RetentionIncomplete) as failure:
        world.runner().run(run_id="t1", dry_run=False)
    assert len(failure.value.summary.failed) == 1
    assert {o.status for o in world.runner().run(run_id="t2", dry_run=False).outcomes} == {"done"}


@pytest.mark.parametrize("operation", ["datastores", "data_versions", "model_versions", "deployments",
                                       "jobs"])
def test_a_failed_listing_plans_and_changes_nothing(world: World, operation: str) -> None:
    world.workspace.faults.throttle(1, operation=operation)
    with pytest.raises(ThrottledError):
        world.runner().run(run_id="half", dry_run=False)
    assert world.workspace.faults.calls["execute"] == 0 and world.blobs.faults.calls["execute"] == 0
    assert world.records() == []


def test_a_failed_blob_listing_plans_and_changes_nothing(world: World) -> None:
    world.blobs.faults.throttle(1, operation="list")
    with pytest.raises(ThrottledError):
        world.runner().run(run_id="half", dry_run=False)
    assert world.workspace.faults.calls == {}  # blobs are listed first: nothing else was even read


def test_apply_runs_at_most_max_workers_actions_at_once(world: World) -> None:
    class Counting(MemoryRetentionBlobs):
        def __init__(self) -> None:
            super().__init__(clock=lambda: NOW)
            self.lock, self.running, self.peak = threading.Lock(), 0, 0

        def execute(self, action: Action) -> str:
            with self.lock:
                self.running += 1
                self.peak = max(self.peak, self.running)
            try:
                time.sleep(0.01)
                return super().execute(action)
            finally:
                with self.lock:
                    self.running -= 1

    counting = Counting()
    for i in range(24):
        counting.put("landing", f"churn/stray/{i}.csv")
    runner = RetentionRunner(policy=parse_retention(yaml.safe_load(RULES)), workspace=world.workspace,
                             blobs=counting, rollouts=world.ledger.rollouts,
                             approvals=world.ledger.open_approvals, comparisons=lambda: [], waiting=lambda: [],
                             audit=world.audit, clock=lambda: LATER, max_workers=3)
    summary = runner.run(run_id="bounded", dry_run=False)
    assert len([o for o in summary.outcomes if o.action.kind is ActionKind.TIER_BLOB]) == 24
    assert counting.peak == 3


def test_an_active_rollout_in_the_ledger_protects_its_candidate_and_its_data(world: World) -> None:
    world.workspace.put(dataclasses.replace(model("3", 80, 0.60), data_asset="churn", data_version="1"))
    table = MemoryTable()
    table.insert({"PartitionKey": "rollout", "RowKey": "churn-ep", "Endpoint": "churn-ep", "State": "shifting",
                  "CandidateName": "churn-model", "CandidateVersion": "3", "Deployment": "green"})
    table.insert({"PartitionKey": "rollout", "RowKey": "old-ep", "Endpoint": "old-ep", "State": "succeeded",
                  "CandidateName": "churn-model", "CandidateVersion": "2", "Deployment": "blue"})
    world.ledger = Ledger(table)
    summary = world.runner().run(run_id="rollout", dry_run=False)
    spared = {p.target: p.reason for p in summary.plan.protected}
    assert spared[ModelKey("churn-model", "3")] == "candidate of the shifting rollout on churn-ep"
    assert "trained model:churn-model:3" in spared[DataKey("churn", "1")]
    assert world.archived(ModelKey("churn-model", "2"), ModelKey("churn-model", "3")) == {"model:churn-model:2"}


def test_idle_deployments_and_finished_job_outputs_are_deleted_and_what_serves_is_kept() -> None:
    w = World()
    w.workspace.put(Deployment("ep", "blue", 100, None, "churn-model", "1"),
                    Deployment("ep", "green", 0, ago(3), "churn-model", "2"),
                    Job("old-job", "Completed", outputs={"out": BlobPath("azureml-blobstore", "azureml/old-job/out/")},
                        finished_at=ago(90)),
                    Job("running", "Running", outputs={"out": BlobPath("azureml-blobstore", "azureml/running/out/")}))
    for name in ("azureml/old-job/out/a.bin", "azureml/old-job/out/b.bin"):
        w.blobs.put("azureml-blobstore", name, last_modified=ago(91))  # written while the job ran
    w.blobs.put("azureml-blobstore", "azureml/running/out/a.bin")
    rules = """
rules:
  - {name: idle, type: deployments, actions: {deleteIdle: {hoursAtZeroTrafficGreaterThan: 24}}}
  - {name: outputs, type: jobOutputs, actions: {delete: {daysAfterCompletionGreaterThan: 60}}}
"""
    summary = w.runner(rules).run(run_id="serving", dry_run=False)
    assert sorted(str(o.action.target) for o in summary.outcomes) == ["deployment:ep/green", "job-output:old-job/out"]
    assert w.workspace.deployment(DeploymentKey("ep", "green")) is None
    assert w.workspace.deployment(DeploymentKey("ep", "blue")) is not None
    assert w.blobs.names("azureml-blobstore") == ["azureml/running/out/a.bin"]


# -- issue 12: retention fails closed ---------------------------------------------------------------------
RAW_BLOBS = """
rules:
  - {name: raw, type: blobs, filters: {prefixes: [landing/]}, actions: {delete: {daysAfterModificationGreaterThan: 5}}}
  - {name: idle, type: deployments, actions: {deleteIdle: {hoursAtZeroTrafficGreaterThan: 24}}}
"""


def test_defect1_training_data_on_adls_gen2_and_every_url_form_keeps_its_blobs() -> None:
    w = World()
    account = "devstoreaccount1"
    w.workspace.add_datastore(Datastore("lake", "AzureDataLakeGen2", account, "landing"))
    forms = [f"abfss://landing@{account}.dfs.core.windows.net/t/abfss/",
             f"wasbs://landing@{account}.blob.core.windows.net/t/wasbs/",
             f"https://{account}.dfs.core.windows.net/landing/t/dfs/", "azureml://datastores/lake/paths/t/lake/"]
    for i, address in enumerate(forms, start=1):
        w.workspace.put_addressed(DataVersion("churn", str(i), ago(90)), address)
        w.workspace.put(ModelVersion("m", str(i), ago(90), data_asset="churn", data_version=str(i)),
                        Deployment(f"ep{i}", "blue", 100, None, "m", str(i)))
        w.blobs.put("landing", f"{address.rstrip('/').rsplit('/', 1)[1]}.csv")  # a raw drop nobody uses
        w.blobs.put("landing", f"t/{address.rstrip('/').rsplit('/', 1)[1]}/part-0.csv")
    w.workspace.put_addressed(DataVersion("elsewhere", "1", ago(1)), "azureml://datastores/nowhere/paths/t/")
    summary = w.runner(RAW_BLOBS).run(run_id="fail-closed", dry_run=False)
    assert summary.outcomes == () and [s.rule for s in summary.plan.suspended] == ["raw"]
    [suspended] = w.records("suspended")
    assert "datastore nowhere is not in the workspace" in suspended.reason and suspended.assets["rule"] == "raw"
    w.workspace.put(DataVersion("elsewhere", "1", ago(1), archived=True))  # archived: it no longer protects
    summary = w.runner(RAW_BLOBS).run(run_id="known", dry_run=False)
    assert sorted(str(o.action.target) for o in summary.outcomes) == [
        "blob:landing/abfss.csv", "blob:landing/dfs.csv", "blob:landing/lake.csv", "blob:landing/wasbs.csv"]
    assert w.blobs.names("landing", "t/") == [f"t/{f}/part-0.csv" for f in ("abfss", "dfs", "lake", "wasbs")]


def test_defect5_a_blob_overwritten_after_it_was_listed_is_skipped_reported_and_audited(world: World) -> None:
    class Racing(MemoryRetentionBlobs):
        """A new upload of the blob lands between the listing and the apply."""

        def list(self, containers: Iterable[str]) -> list[Blob]:
            listed = super().list(containers)
            self.put("landing", "churn/d5/part-0.csv")
            return listed

    racing = Racing(clock=lambda: NOW)
    for name in world.blobs.names("landing"):
        racing.put("landing", name)
    world.blobs = racing
    summary = world.runner().run(run_id="race", dry_run=False)
    outcome = {str(o.action.target): o for o in summary.outcomes}["blob:landing/churn/d5/part-0.csv"]
    assert (outcome.status, outcome.error) == ("skipped", "changed since listed")
    assert "churn/d5/part-0.csv" in racing.names("landing")  # the new upload survives
    assert "churn/d5/part-1.csv" not in racing.names("landing")
    [skipped] = world.records("skipped")
    assert skipped.reason == "changed since listed" and skipped.assets["target"] == "blob:landing/churn/d5/part-0.csv"
    assert "skipped delete_blob        blob:landing/churn/d5/part-0.csv  (changed since listed)" in summary.render()


def test_defect6_the_previous_champion_survives_the_grace_period_of_an_in_flight_rollout(world: World) -> None:
    world.workspace.put(Deployment("churn-ep", "green", 100, None, "churn-model", "4"),
                        Deployment("churn-ep", "blue", 0, ago(3), "churn-model", "1"))
    table = MemoryTable()
    row = {"PartitionKey": "rollout", "RowKey": "churn-ep", "Endpoint": "churn-ep", "State": "grace",
           "CandidateName": "churn-model", "CandidateVersion": "4", "Deployment": "green",
           "ChampionDeployment": "blue", "ChampionModel": "churn-model:1"}
    table.insert(row)
    world.ledger = Ledger(table)
    summary = world.runner(RAW_BLOBS).run(run_id="grace", dry_run=False)
    assert world.workspace.deployment(DeploymentKey("churn-ep", "blue")) is not None
    spared = {p.target: p.reason for p in summary.plan.protected}
    assert spared[DeploymentKey("churn-ep", "blue")] == "rollback target of the grace rollout on churn-ep"
    table.upsert({**row, "State": "succeeded"})
    world.runner(RAW_BLOBS).run(run_id="after", dry_run=False)
    assert world.workspace.deployment(DeploymentKey("churn-ep", "blue")) is None


# -- session 5: candidates awaiting approval; job outputs written to after the listing -------------------------
def test_a_candidate_awaiting_approval_keeps_its_model_its_training_data_and_that_datas_blobs(world: World) -> None:
    """`promotion.approval: manual`: the gate passed model 3 (old, not the latest, not the best) and it waits for a
    person. Until then no rule archives it or its training data, and no blob rule deletes that data's snapshot;
    once rejected it is ordinary again."""
    world.workspace.put(dataclasses.replace(model("3", 80, 0.60), data_asset="churn", data_version="3"))
    world.blobs.put("landing", "churn/d3/part-0.csv")
    world.ledger.create_approval(ApprovalRecord("churn-ep", "churn-model", "3", ApprovalState.PENDING,
                                                requested_at=ago(1), event_id="ev-3"))
    for run in ("first", "second"):  # a data version archived by one run loses its blobs on the next
        summary = world.runner().run(run_id=run, dry_run=False)
    assert world.archived(ModelKey("churn-model", "3"), DataKey("churn", "3")) == set()
    assert "churn/d3/part-0.csv" in world.blobs.names("landing")
    spared = {p.target: p.reason for p in summary.plan.protected}
    assert "candidate awaiting approval on churn-ep (pending)" in spared[ModelKey("churn-model", "3")]
    assert "trained model:churn-model:3" in spared[DataKey("churn", "3")]
    assert summary.listed["approvals"] == 1
    pending = world.ledger.get_approval("churn-ep", "churn-model", "3")
    assert pending is not None
    world.ledger.decide_approval(dataclasses.replace(pending, state=ApprovalState.REJECTED, decided_at=NOW,
                                                     decided_by="alice", reason="no"))
    world.runner().run(run_id="rejected", dry_run=False)
    assert world.archived(ModelKey("churn-model", "3"), DataKey("churn", "3")) == {"model:churn-model:3",
                                                                                   "data:churn:3"}


def test_an_approved_candidate_not_yet_rolled_out_is_still_protected(world: World) -> None:
    world.workspace.put(dataclasses.replace(model("3", 80, 0.60), data_asset="churn", data_version="3"))
    world.ledger.create_approval(ApprovalRecord("churn-ep", "churn-model", "3", ApprovalState.PENDING,
                                                requested_at=ago(1), event_id="ev-3"))
    pending = world.ledger.get_approval("churn-ep", "churn-model", "3")
    assert pending is not None
    world.ledger.decide_approval(dataclasses.replace(pending, state=ApprovalState.APPROVED, decided_at=NOW,
                                                     decided_by="alice"))
    world.runner().run(run_id="approved", dry_run=False)
    assert world.archived(ModelKey("churn-model", "3"), DataKey("churn", "3")) == set()


def test_a_job_output_keeps_what_a_job_started_after_the_listing_writes_under_it() -> None:
    """The plan's listing saw one finished job; a new job (not listed) writes under its output folder before
    the apply. Only blobs written before the old job finished are deleted; the new one is kept and reported."""

    class Racing(MemoryRetentionBlobs):
        def list(self, containers: Iterable[str]) -> list[Blob]:
            listed = super().list(containers)
            self.put("azureml-blobstore", "azureml/old-job/out/rerun/model.pkl")  # written now, after the listing
            return listed

    w = World(blobs=Racing(clock=lambda: NOW))
    w.workspace.put(Job("old-job", "Completed", outputs={"out": BlobPath("azureml-blobstore", "azureml/old-job/out/")},
                        finished_at=ago(90)))
    w.blobs.put("azureml-blobstore", "azureml/old-job/out/model.pkl", last_modified=ago(90.5))
    rules = "rules:\n  - {name: outputs, type: jobOutputs, actions: {delete: {daysAfterCompletionGreaterThan: 60}}}\n"
    summary = w.runner(rules).run(run_id="race", dry_run=False)
    [outcome] = summary.outcomes
    assert outcome.action.written_before == ago(90)
    assert (outcome.status, outcome.error) == (ApplyStatus.SKIPPED, SKIPPED_NEWER)
    assert w.blobs.names("azureml-blobstore") == ["azureml/old-job/out/rerun/model.pkl"]
    [skipped] = w.records("skipped")
    assert skipped.reason == SKIPPED_NEWER and skipped.assets["target"] == "job-output:old-job/out"
    assert '"status": "skipped"' in summary.to_json()


def test_a_candidate_queued_behind_a_rollout_keeps_its_model_and_training_data(world: World) -> None:
    """A candidate that arrives (or is approved) mid-rollout waits in the rollout row's `queued_*`; its approval is
    closed by then, so the row is what protects it until its own rollout starts."""
    world.workspace.put(dataclasses.replace(model("3", 80, 0.60), data_asset="churn", data_version="3"))
    table = MemoryTable()
    table.insert({"PartitionKey": "rollout", "RowKey": "churn-ep", "Endpoint": "churn-ep", "State": "shifting",
                  "CandidateName": "churn-model", "CandidateVersion": "4", "Deployment": "green",
                  "QueuedName": "churn-model", "QueuedVersion": "3", "QueuedEvent": "ev-3"})
    world.ledger = Ledger(table)
    summary = world.runner().run(run_id="queued", dry_run=False)
    assert world.archived(ModelKey("churn-model", "3"), DataKey("churn", "3")) == set()
    spared = {p.target: p.reason for p in summary.plan.protected}
    assert "candidate of the queued rollout on churn-ep" in spared[ModelKey("churn-model", "3")]


# -- session 5: comparisons in flight (the promoter's open work) ------------------------------------------------
def compare(world: World, job: str, tags: str) -> None:
    """Index a comparison job as the promoter does before submitting it (`Promoter._submit_comparison`)."""
    world.ledger.track_work(COMPARISON_WORK, job, {"Tags": tags})


def test_a_comparison_in_flight_keeps_both_models_their_training_data_and_its_blobs(world: World) -> None:
    """Challenger 3 (old, not the latest, not the best) is compared with champion 2: until the promoter decides,
    no rule archives either, their training data, or that data's blobs; once decided they are ordinary again."""
    world.workspace.put(dataclasses.replace(model("3", 80, 0.60), data_asset="churn", data_version="3"),
                        dataclasses.replace(model("2", 90, 0.70), data_asset="churn", data_version="1"))
    world.blobs.put("landing", "churn/d3/part-0.csv")
    compare(world, "cmp-churn-3-2", json.dumps({Tag.MODEL.value: "churn-model:3",
                                                Tag.COMPARED_WITH.value: "churn-model:2"}))
    for run in ("first", "second"):  # a data version archived by one run loses its blobs on the next
        summary = world.runner().run(run_id=run, dry_run=False)
    kept = (ModelKey("churn-model", "3"), ModelKey("churn-model", "2"), DataKey("churn", "3"), DataKey("churn", "1"))
    assert world.archived(*kept) == set()
    assert {"churn/d1/part-0.csv", "churn/d3/part-0.csv"} <= set(world.blobs.names("landing"))
    spared = {p.target: p.reason for p in summary.plan.protected}
    assert "challenger compared in job cmp-churn-3-2, not yet decided" in spared[ModelKey("churn-model", "3")]
    assert "champion compared in job cmp-churn-3-2, not yet decided" in spared[ModelKey("churn-model", "2")]
    assert "trained model:churn-model:3" in spared[DataKey("churn", "3")]
    assert summary.listed["comparisons"] == 1 and not summary.plan.suspended
    world.ledger.finish_comparison("cmp-churn-3-2")  # decided (not promoted)
    world.runner().run(run_id="decided", dry_run=False)
    assert world.archived(*kept) == {str(k) for k in kept}


def test_a_comparison_whose_version_cannot_be_read_keeps_every_version_of_its_model(world: World) -> None:
    compare(world, "cmp-odd", json.dumps({Tag.MODEL.value: "churn-model", Tag.COMPARED_WITH.value: "??"}))
    summary = world.runner().run(run_id="odd", dry_run=False)
    assert world.archived(*ALL_MODELS) == set()
    assert world.archived(DataKey("churn", "1")) == {"data:churn:1"}  # what is unrelated still retires
    spared = {p.target: p.reason for p in summary.plan.protected}
    assert "may be the challenger compared in job cmp-odd" in spared[ModelKey("churn-model", "2")]
    assert not summary.plan.suspended


def test_a_comparison_of_which_nothing_can_be_read_suspends_the_version_and_blob_rules(world: World) -> None:
    """Fail closed and say so: the run completes, retires nothing that may be the unknown challenger's, and the
    plan and the audit log carry why; once the entry is gone the rules run again."""
    compare(world, "cmp-garbled", "{not json")
    rules = RULES + "  - {name: idle, type: deployments, actions: {deleteIdle: {hoursAtZeroTrafficGreaterThan: 24}}}\n"
    world.workspace.put(Deployment("churn-ep", "old", 0, ago(3), "churn-model", "1"))
    summary = world.runner(rules).run(run_id="garbled", dry_run=False)
    assert [a.kind for a in summary.plan.actions] == [ActionKind.DELETE_DEPLOYMENT]  # deployments still retire
    assert world.archived(*ALL_DATA, *ALL_MODELS) == {"data:churn:5"}  # archived before the run
    assert set(world.blobs.names("landing")) >= {"churn/d5/part-0.csv", "churn/stray/notes.csv"}
    assert {s.rule for s in summary.plan.suspended} == {"data", "models", "raw", "stray"}
    assert all("comparison job cmp-garbled: its tags are not JSON" in s.reason for s in summary.plan.suspended)
    assert {r.assets["rule"] for r in world.records("suspended")} == {"data", "models", "raw", "stray"}
    world.ledger.finish_comparison("cmp-garbled")
    assert world.runner().run(run_id="clean", dry_run=False).plan.suspended == ()
    assert world.archived(DataKey("churn", "1")) == {"data:churn:1"}


@pytest.mark.parametrize(("tags", "challenger", "champion", "name", "unreadable"), [
    ('{"evergreen.model": "m:3", "evergreen.compared_with": "m:2"}', ModelKey("m", "3"), ModelKey("m", "2"), "", ""),
    ('{"evergreen.model": "azureml:m:3", "evergreen.compared_with": ""}', ModelKey("m", "3"), None, "", ""),
    ('{"evergreen.model": "m:", "evergreen.compared_with": "m:2"}', None, ModelKey("m", "2"), "m",
     "challenger m: is not name:version"),
    ('{"evergreen.compared_with": "x"}', None, None, "",
     "challenger (none) is not name:version; champion x is not name:version"),
    ('["m:3"]', None, None, "", "its tags are not a JSON object"),
    (None, None, None, "", "challenger (none) is not name:version"),
])
def test_comparisons_from_reads_what_it_can_of_each_entry(tags: str | None, challenger: ModelKey | None,
                                                          champion: ModelKey | None, name: str,
                                                          unreadable: str) -> None:
    ledger = Ledger(MemoryTable())
    ledger.track_work(COMPARISON_WORK, "cmp-1", {"Tags": tags})  # the raw entry, garbled or not
    [read] = comparisons_from(ledger.open_comparisons())
    assert (read.job, read.challenger, read.champion, read.challenger_name, read.unreadable) == (
        "cmp-1", challenger, champion, name, unreadable)


# -- session 6: candidates waiting for their evaluation data (the promoter's open work) ------------------------
def test_a_candidate_waiting_for_its_evaluation_data_keeps_its_model_training_data_and_blobs(world: World) -> None:
    """Candidate 3 (old, not the latest, not the best) waits for its evaluation data: it is gated when a version
    lands, so no rule archives it, its training data or that data's blobs; once gated it is ordinary again."""
    world.workspace.put(dataclasses.replace(model("3", 80, 0.60), data_asset="churn", data_version="3"))
    world.blobs.put("landing", "churn/d3/part-0.csv")
    world.ledger.track_waiting("churn-model", "3", "churn-eval", "churn-eval@latest", "ev-3")
    for run in ("first", "second"):  # a data version archived by one run loses its blobs on the next
        summary = world.runner().run(run_id=run, dry_run=False)
    kept = (ModelKey("churn-model", "3"), DataKey("churn", "3"))
    assert world.archived(*kept) == set()
    assert "churn/d3/part-0.csv" in world.blobs.names("landing")
    assert world.archived(ModelKey("churn-model", "2")) == {"model:churn-model:2"}  # the others still retire
    spared = {p.target: p.reason for p in summary.plan.protected}
    assert "candidate waiting for its evaluation data churn-eval" in spared[ModelKey("churn-model", "3")]
    assert "trained model:churn-model:3" in spared[DataKey("churn", "3")]
    assert summary.listed["waiting"] == 1 and not summary.plan.suspended
    [waiting] = world.ledger.waiting_candidates()
    world.ledger.finish_waiting(waiting)  # gated (`Promoter._wake` finishes the entry after the gate's own step)
    world.runner().run(run_id="gated", dry_run=False)
    assert world.archived(*kept) == {str(k) for k in kept}


def test_a_waiting_candidate_whose_version_cannot_be_read_keeps_every_version_of_its_model(world: World) -> None:
    world.ledger.track_work(EVALUATION_WAIT_WORK, "0-odd", {"Model": "churn-model", "DataAsset": "churn-eval"})
    summary = world.runner().run(run_id="odd", dry_run=False)
    assert world.archived(*ALL_MODELS) == set()
    assert world.archived(DataKey("churn", "1")) == {"data:churn:1"}  # what is unrelated still retires
    spared = {p.target: p.reason for p in summary.plan.protected}
    assert ("may be the candidate waiting for its evaluation data churn-eval (it has no Version)"
            in spared[ModelKey("churn-model", "2")])
    assert not summary.plan.suspended


def test_a_waiting_candidate_of_which_nothing_can_be_read_suspends_the_version_and_blob_rules(world: World) -> None:
    """Fail closed as for a garbled comparison: the unknown candidate may be any model (with its training data and
    blobs), so only the deployments rule runs; the plan and the audit log name the entry; once it is gone the
    rules run again."""
    world.ledger.track_work(EVALUATION_WAIT_WORK, "0-garbled", {"DataAsset": "churn-eval"})
    rules = RULES + "  - {name: idle, type: deployments, actions: {deleteIdle: {hoursAtZeroTrafficGreaterThan: 24}}}\n"
    world.workspace.put(Deployment("churn-ep", "old", 0, ago(3), "churn-model", "1"))
    summary = world.runner(rules).run(run_id="garbled", dry_run=False)
    assert [a.kind for a in summary.plan.actions] == [ActionKind.DELETE_DEPLOYMENT]  # deployments still retire
    assert world.archived(*ALL_DATA, *ALL_MODELS) == {"data:churn:5"}  # archived before the run
    assert set(world.blobs.names("landing")) >= {"churn/d5/part-0.csv", "churn/stray/notes.csv"}
    assert {s.rule for s in summary.plan.suspended} == {"data", "models", "raw", "stray"}
    assert all("waiting candidate entry 0-garbled: it has no Model; it has no Version" in s.reason
               for s in summary.plan.suspended)
    assert {r.assets["rule"] for r in world.records("suspended")} == {"data", "models", "raw", "stray"}
    [garbled] = world.ledger.waiting_candidates()
    world.ledger.finish_waiting(garbled)
    assert world.runner().run(run_id="clean", dry_run=False).plan.suspended == ()
    assert world.archived(DataKey("churn", "1")) == {"data:churn:1"}


@pytest.mark.parametrize(("entry", "candidate", "name", "unreadable"), [
    ({"Model": "m", "Version": "3", "DataAsset": "ev"}, ModelKey("m", "3"), "", ""),
    ({"Model": "m", "Version": "3", "Since": "yesterday"}, ModelKey("m", "3"), "", ""),  # protects what it reads
    ({"Model": "m", "DataAsset": "ev"}, None, "m", "it has no Version"),
    ({"Version": "3", "DataAsset": "ev"}, None, "", "it has no Model"),
])
def test_waiting_from_reads_what_it_can_of_each_entry(entry: dict[str, str], candidate: ModelKey | None, name: str,
                                                      unreadable: str) -> None:
    table = MemoryTable()
    table.upsert({"PartitionKey": f"work-{EVALUATION_WAIT_WORK}", "RowKey": "w-1", **entry})  # the raw entry
    [read] = waiting_from(Ledger(table).waiting_candidates())
    assert (read.entry, read.candidate, read.candidate_name, read.unreadable) == ("w-1", candidate, name, unreadable)
