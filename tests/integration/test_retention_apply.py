"""Retention on the local stack with the real SDKs: listing, dry run, apply, crash-resume, 429 retries.

Azure ML is the emulator (azure-ai-ml talks to it over https), blobs and tables are Azurite. Every
test works under its own asset names and blob prefix, so the shared workspace does not interfere:
the runner lists everything, but the rules select only this test's assets.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from azure.data.tables import TableServiceClient
from azure.identity import DefaultAzureCredential
from azure.storage.blob import BlobServiceClient

from devstack.testing.aml import AmlInfo
from devstack.testing.azurite import AzuriteInfo
from shared.adapters.azure.aml_retention import AmlRetention
from shared.adapters.azure.azureml import AzureML
from shared.adapters.azure.blob_retention import BlobRetention
from shared.adapters.azure.tables import AzureTable
from shared.domain.retention import (
    ActionKind,
    BlobKey,
    BlobPath,
    BlobTier,
    DataKey,
    ModelKey,
    RetentionPlan,
    Unreadable,
    parse_retention,
)
from shared.domain.retention.addresses import AddressBook
from shared.services.audit import TableAuditLog
from shared.services.ledger import Ledger
from shared.services.retention import RetentionRunner

pytestmark = pytest.mark.integration

NOW = datetime.now(UTC)
LATER = NOW + timedelta(days=10)  # the runs measure ages as if ten days had passed (blobs cannot be backdated)


def ago(days: float) -> str:
    return (NOW - timedelta(days=days)).isoformat()


@dataclass
class World:
    """One test's assets and a runner wired to the stack exactly as build_services wires it."""

    uid: str
    data: str
    model: str
    aml: AmlInfo
    ml: Any
    blobs: BlobServiceClient
    audit: TableAuditLog
    ledger: Ledger
    azureml: AzureML

    def runner(self, yaml_rules: str, **kwargs: Any) -> RetentionRunner:
        import yaml

        policy = parse_retention(yaml.safe_load(yaml_rules.replace("UID", self.uid).replace("DATA", self.data)
                                                .replace("MODEL", self.model)))
        return RetentionRunner(policy=policy, workspace=AmlRetention(self.azureml), blobs=BlobRetention(self.blobs),
                               rollouts=self.ledger.rollouts,
                               approvals=self.ledger.open_approvals, comparisons=lambda: [], waiting=lambda: [],
                               audit=self.audit,
                               **kwargs)

    def emulator(self, method: str, path: str, body: Any = None) -> Any:
        with httpx.Client(verify=self.aml.env["REQUESTS_CA_BUNDLE"], timeout=30) as client:
            resp = client.request(method, f"{self.aml.base_url}{path}", json=body,
                                  headers={"Authorization": "Bearer local"})
            resp.raise_for_status()
            return resp.json() if resp.content else None

    def seed(self, kind: str, name: str, versions: list[dict[str, Any]]) -> None:
        self.emulator("POST", f"/_emulator/seed/{kind}/{name}", {"versions": versions})

    def upload(self, *names: str) -> None:
        landing = self.blobs.get_container_client("landing")
        for name in names:
            landing.upload_blob(f"{self.uid}/{name}", b"a,b\n1,2\n", overwrite=True)

    def blob_names(self) -> set[str]:
        landing = self.blobs.get_container_client("landing")
        return {b.name.removeprefix(f"{self.uid}/") for b in landing.list_blobs(name_starts_with=f"{self.uid}/")}

    def tier(self, name: str) -> str:
        return str(self.blobs.get_blob_client("landing", f"{self.uid}/{name}").get_blob_properties().blob_tier)

    def archived(self, name: str, *, models: bool = False) -> set[str]:
        from azure.ai.ml.constants import ListViewType

        ops = self.ml.models if models else self.ml.data
        return {str(v.version) for v in ops.list(name=name, list_view_type=ListViewType.ARCHIVED_ONLY)}

    def versions(self, name: str, *, models: bool = False) -> set[str]:
        from azure.ai.ml.constants import ListViewType

        ops = self.ml.models if models else self.ml.data
        return {str(v.version) for v in ops.list(name=name, list_view_type=ListViewType.ALL)}

    def retention_records(self) -> list[Any]:
        return [r for r in self.audit.query(days=2, kind_prefix="retention.") if self.uid in r.reason + r.decision
                + " ".join(r.assets.values())]


@pytest.fixture
def world(aml: AmlInfo, azurite: AzuriteInfo, ml_client: Any) -> Iterator[World]:
    uid = f"ret{uuid.uuid4().hex[:8]}"
    tables = TableServiceClient.from_connection_string(azurite.connection_string)
    blobs = BlobServiceClient.from_connection_string(azurite.connection_string)
    if not blobs.get_container_client("landing").exists():
        blobs.create_container("landing")
    audit = TableAuditLog(AzureTable(tables.create_table(f"audit{uid}")))
    ledger = Ledger(AzureTable(tables.create_table(f"ledger{uid}")))
    azureml = AzureML(DefaultAzureCredential(), aml.subscription_id, aml.resource_group, aml.workspace)
    yield World(uid, f"{uid}-data", f"{uid}-model", aml, ml_client, blobs, audit, ledger, azureml)


def data_version(uid: str, version: str, days: float, folder: str, **extra: Any) -> dict[str, Any]:
    return {"version": version, "uri": f"azureml://datastores/landing/paths/{uid}/{folder}/",
            "dataType": "uri_folder", "createdAt": ago(days), **extra}


def model_version(uid: str, version: str, days: float, auc: float, **extra: Any) -> dict[str, Any]:
    return {"version": version, "uri": f"azureml://datastores/workspaceblobstore/paths/{uid}/model{version}/",
            "createdAt": ago(days), "tags": {"evergreen.metric.auc": repr(auc)}, **extra}


RULES = """
rules:
  - name: data-UID
    type: dataVersions
    filters: {names: [DATA]}
    actions: {keepLatest: 1, archive: {daysAfterCreationGreaterThan: 30}}
  - name: models-UID
    type: modelVersions
    filters: {names: [MODEL]}
    actions: {keepLatest: 1, keepTopK: {k: 1, metric: auc}, archive: {daysAfterCreationGreaterThan: 30}}
  - name: raw-UID
    type: blobs
    filters: {prefixes: [landing/UID/d]}
    actions: {delete: {daysAfterModificationGreaterThan: 5}}
  - name: stray-UID
    type: blobs
    filters: {prefixes: [landing/UID/stray/]}
    actions: {tierToCool: {daysAfterModificationGreaterThan: 1}}
"""


def seed_world(w: World) -> None:
    """Data: 1, 3 old; 2 old but tagged keep; 4 new (latest); 5 archived long ago. Models: 1 best, 2-3 old, 4 new."""
    w.seed("data", w.data, [
        data_version(w.uid, "5", 300, "d5", isArchived=True),
        data_version(w.uid, "1", 200, "d1"),
        data_version(w.uid, "2", 150, "d2", tags={"evergreen.keep": "true"}),
        data_version(w.uid, "3", 100, "d3"),
        data_version(w.uid, "4", 5, "d4"),
    ])
    w.seed("models", w.model, [
        model_version(w.uid, "1", 100, 0.91),
        model_version(w.uid, "2", 90, 0.70),
        model_version(w.uid, "3", 80, 0.60),
        model_version(w.uid, "4", 1, 0.50),
    ])
    w.upload("d1/part-0.csv", "d5/part-0.csv", "d5/part-1.csv", "stray/notes.csv")


def test_datastore_uris_map_to_containers_read_once(world: World) -> None:
    book = _book(world)
    assert book.datastores["landing"].container == "landing"
    long = "azureml://subscriptions/s/resourcegroups/r/workspaces/w/datastores/landing/paths/churn/drop-1/"
    assert book.locate(long) == BlobPath("landing", "churn/drop-1/")
    assert book.locate("azureml://datastores/LANDING/paths/x.csv") == BlobPath("landing", "x.csv")
    assert isinstance(book.locate("azureml://datastores/unknown/paths/x.csv"), Unreadable)  # fails closed
    account = BlobRetention(world.blobs).account_names()
    assert account == {"devstoreaccount1"}
    assert book.locate("https://devstoreaccount1.blob.core.windows.net/raw/a/b.csv") == BlobPath("raw", "a/b.csv")
    assert book.locate("https://acct.blob.core.windows.net/raw/a/b.csv") is None  # another account


def _book(world: World) -> AddressBook:
    return AddressBook.of(AmlRetention(world.azureml).datastores(), BlobRetention(world.blobs).account_names())


def test_listing_sees_archived_versions_lineage_and_metrics_across_pages(world: World) -> None:
    seed_world(world)
    aml = AmlRetention(world.azureml)
    containers = _book(world)
    data = {v.version: v for v in aml.data_versions(containers) if v.name == world.data}
    assert set(data) == {"1", "2", "3", "4", "5"}  # 5 versions > the test page size of 3: paging is followed
    assert data["5"].archived and not data["1"].archived
    assert data["1"].blob_paths == (BlobPath("landing", f"{world.uid}/d1/"),)
    assert data["1"].created_at < NOW - timedelta(days=199)
    assert data["2"].tags == {"evergreen.keep": "true"}
    models = {m.version: m for m in aml.model_versions(containers) if m.name == world.model}
    assert models["1"].metrics == {"auc": 0.91} and not models["1"].archived
    blobs = {b.name: b for b in BlobRetention(world.blobs).list(["landing"]) if b.name.startswith(world.uid)}
    assert set(blobs) == {f"{world.uid}/{n}" for n in ("d1/part-0.csv", "d5/part-0.csv", "d5/part-1.csv",
                                                        "stray/notes.csv")}
    assert all(b.tier in (BlobTier.HOT, None) for b in blobs.values())


def test_dry_run_plans_with_reasons_and_changes_nothing(world: World) -> None:
    seed_world(world)
    before = (world.archived(world.data), world.archived(world.model, models=True), world.blob_names())
    summary = world.runner(RULES).run(run_id=f"dry-{world.uid}", dry_run=True, now=LATER)
    targets = {a.target: a for a in summary.plan.actions}
    assert {t for t in targets if not isinstance(t, BlobKey) or t.name.startswith(world.uid)} >= {
        DataKey(world.data, "1"), DataKey(world.data, "3"), ModelKey(world.model, "2"), ModelKey(world.model, "3"),
        BlobKey("landing", f"{world.uid}/d5/part-0.csv"), BlobKey("landing", f"{world.uid}/stray/notes.csv")}
    assert DataKey(world.data, "2") not in targets and DataKey(world.data, "4") not in targets
    assert BlobKey("landing", f"{world.uid}/d1/part-0.csv") not in targets  # v1 is not archived yet
    spared = {p.target: p.reason for p in summary.plan.protected}
    assert "tagged evergreen.keep" in spared[DataKey(world.data, "2")]
    assert "top 1" in spared[ModelKey(world.model, "1")]
    assert "referenced by non-archived" in spared[BlobKey("landing", f"{world.uid}/d1/part-0.csv")]
    assert f"data:{world.data}:1" in summary.render() and "Dry run: nothing was changed." in summary.render()
    assert (world.archived(world.data), world.archived(world.model, models=True), world.blob_names()) == before
    assert world.retention_records() == []


def test_apply_archives_deletes_tiers_and_records_each_action(world: World) -> None:
    seed_world(world)
    summary = world.runner(RULES).run(run_id=f"run-{world.uid}", dry_run=False, now=LATER)
    mine = [o for o in summary.outcomes if world.uid in str(o.action.target)]
    assert mine and all(o.status == "done" for o in mine)
    assert world.archived(world.data) == {"1", "3", "5"}
    assert world.archived(world.model, models=True) == {"2", "3"}
    assert world.blob_names() == {"d1/part-0.csv", "stray/notes.csv"}
    assert world.tier("stray/notes.csv") == "Cool"
    recorded = {r.assets["target"]: r for r in world.retention_records() if r.kind != "retention.run"}
    assert set(recorded) == {str(o.action.target) for o in mine}
    archive = recorded[f"data:{world.data}:1"]
    assert archive.kind == "retention.archive_data" and "created 210 days ago" in archive.reason
    assert archive.event_id == f"run-{world.uid}" and archive.assets["rule"] == f"data-{world.uid}"
    # next run: the versions archived now free their blobs; the run before never counted on its own actions
    world.upload("d3/part-0.csv")
    again = world.runner(RULES).run(run_id=f"run2-{world.uid}", dry_run=False, now=LATER + timedelta(days=6))
    assert BlobKey("landing", f"{world.uid}/d1/part-0.csv") in again.plan.targets()
    assert world.blob_names() == {"stray/notes.csv"}  # the raw drops of archived versions are gone now


def test_a_crash_half_way_resumes_without_failing_or_recording_twice(world: World) -> None:
    seed_world(world)
    runner = world.runner(RULES)
    first = runner.run(run_id=f"plan-{world.uid}", dry_run=True, now=LATER).plan
    mine = tuple(a for a in first.actions if world.uid in str(a.target))
    assert len(mine) == 7  # 2 data + 2 model archives, 2 blob deletes, 1 tier
    half = RetentionPlan(first.now, mine[:3], ())
    runner.apply(half, f"crashed-{world.uid}")  # the run "crashes" after three actions

    resumed = runner.run(run_id=f"resumed-{world.uid}", dry_run=False, now=LATER)
    resumed_mine = {a.target for a in resumed.plan.actions if world.uid in str(a.target)}
    freed = BlobKey("landing", f"{world.uid}/d1/part-0.csv")  # v1 was archived before the crash: its blob is free
    assert resumed_mine == {a.target for a in mine[3:]} | {freed}  # what was left, nothing done again
    assert world.archived(world.data) == {"1", "3", "5"} and world.archived(world.model, models=True) == {"2", "3"}
    # re-running the *original* plan too (a crashed run restarted from its own plan) is harmless
    replay = runner.apply(RetentionPlan(first.now, mine, ()), f"replay-{world.uid}")
    assert {o.status for o in replay} == {"already"}  # archived, deleted, tiered: nothing left to do
    records = [r for r in world.retention_records() if r.kind not in ("retention.run",)]
    keys = [r.assets["action"] for r in records]
    cascade = [a.key for a in resumed.plan.actions if a.target == freed]
    assert sorted(keys) == sorted([a.key for a in mine] + cascade)  # each decision recorded exactly once


def test_throttled_requests_are_retried_after_retry_after(world: World) -> None:
    world.seed("data", world.data, [data_version(world.uid, "1", 100, "d1"), data_version(world.uid, "2", 1, "d2")])
    world.emulator("DELETE", "/_emulator/throttle")
    world.emulator("POST", "/_emulator/throttle", {"method": "PUT", "pathContains": f"/data/{world.data}/versions/",
                                                   "times": 2, "retryAfter": 1})
    rules = """
rules:
  - name: data-UID
    type: dataVersions
    filters: {names: [DATA]}
    actions: {keepLatest: 1, archive: {daysAfterCreationGreaterThan: 30}}
"""
    started = time.monotonic()
    summary = world.runner(rules).run(run_id=f"throttled-{world.uid}", dry_run=False)
    elapsed = time.monotonic() - started
    assert [(str(o.action.target), o.status) for o in summary.outcomes] == [(f"data:{world.data}:1", "done")]
    assert world.archived(world.data) == {"1"}
    assert world.emulator("GET", "/_emulator/throttle")["value"] == []  # both 429s were served...
    assert elapsed >= 2.0  # ...and each retry waited the Retry-After second


def test_delete_rules_delete_versions_through_the_rest_api_and_a_second_delete_is_harmless(world: World) -> None:
    world.seed("data", world.data, [data_version(world.uid, "1", 400, "d1", isArchived=True),
                                    data_version(world.uid, "2", 1, "d2")])
    rules = """
rules:
  - name: data-UID
    type: dataVersions
    filters: {names: [DATA]}
    actions: {archive: {daysAfterCreationGreaterThan: 30}, delete: {daysAfterCreationGreaterThan: 365}}
"""
    runner = world.runner(rules)
    summary = runner.run(run_id=f"delete-{world.uid}", dry_run=False)
    assert [(o.action.kind, str(o.action.target)) for o in summary.outcomes] == [
        (ActionKind.DELETE_DATA, f"data:{world.data}:1")]
    assert world.versions(world.data) == {"2"}
    assert {o.status for o in runner.apply(summary.plan, f"again-{world.uid}")} == {"already"}


def test_a_failing_action_does_not_stop_the_others_is_recorded_and_fails_the_run(world: World) -> None:
    from shared.services.retention import RetentionIncomplete

    seed_world(world)
    world.emulator("DELETE", "/_emulator/throttle")  # throttled for longer than the SDK retries
    world.emulator("POST", "/_emulator/throttle", {"method": "PUT", "pathContains": f"/data/{world.data}/versions/1",
                                                   "times": 100, "retryAfter": 0})
    runner = world.runner(RULES)
    with pytest.raises(RetentionIncomplete) as failure:
        runner.run(run_id=f"failing-{world.uid}", dry_run=False, now=LATER)
    world.emulator("DELETE", "/_emulator/throttle")
    summary = failure.value.summary
    assert [str(o.action.target) for o in summary.failed] == [f"data:{world.data}:1"]
    assert "429" in summary.failed[0].error or "TooManyRequests" in summary.failed[0].error
    assert world.archived(world.data) == {"3", "5"} and world.blob_names() == {"d1/part-0.csv", "stray/notes.csv"}
    assert [r.decision for r in world.retention_records() if r.kind == "retention.failed"] == [
        f"failed archive_data data:{world.data}:1"]
    retried = runner.run(run_id=f"retry-{world.uid}", dry_run=False, now=LATER)  # the next run finishes the job
    assert [(str(o.action.target), o.status) for o in retried.outcomes if world.uid in str(o.action.target)] == [
        (f"data:{world.data}:1", "done")]


def test_apply_runs_at_most_max_workers_actions_at_once(world: World) -> None:
    import threading

    class CountingBlobs(BlobRetention):
        """The real blob side, counting how many actions run at the same time."""

        def __init__(self, blobs: BlobServiceClient) -> None:
            super().__init__(blobs)
            self.lock, self.running, self.peak = threading.Lock(), 0, 0

        def execute(self, action: Any) -> str:
            with self.lock:
                self.running += 1
                self.peak = max(self.peak, self.running)
            try:
                time.sleep(0.05)
                return super().execute(action)
            finally:
                with self.lock:
                    self.running -= 1

    world.upload(*(f"stray/{i}.csv" for i in range(24)))
    import yaml

    policy = parse_retention(yaml.safe_load(RULES.replace("UID", world.uid).replace("DATA", world.data)
                                            .replace("MODEL", world.model)))
    counting = CountingBlobs(world.blobs)
    runner = RetentionRunner(policy=policy, workspace=AmlRetention(world.azureml), blobs=counting,
                             rollouts=world.ledger.rollouts,
                             approvals=world.ledger.open_approvals, comparisons=lambda: [], waiting=lambda: [],
                             audit=world.audit, max_workers=3)
    summary = runner.run(run_id=f"bounded-{world.uid}", dry_run=False, now=LATER)
    assert len([o for o in summary.outcomes if o.action.kind is ActionKind.TIER_BLOB]) == 24
    assert counting.peak == 3


def test_blobs_with_spaces_and_unicode_are_matched_to_the_encoded_uris_that_reference_them(world: World) -> None:
    from shared.domain.blobnames import azureml_path

    folder = f"{world.uid}/drop é 1/"
    world.seed("data", world.data, [{"version": "1", "uri": f"azureml://datastores/landing/paths/{azureml_path(folder)}",
                                     "dataType": "uri_folder", "createdAt": ago(1)}])
    world.upload("drop é 1/part 0.csv", "drop é 2/part 0.csv")
    summary = world.runner(RULES.replace("landing/UID/d", "landing/UID/drop")).run(
        run_id=f"unicode-{world.uid}", dry_run=False, now=LATER)
    assert [str(o.action.target) for o in summary.outcomes if world.uid in str(o.action.target)] == [
        f"blob:landing/{world.uid}/drop é 2/part 0.csv"]
    assert world.blob_names() == {"drop é 1/part 0.csv"}  # referenced (through an encoded URI): kept
