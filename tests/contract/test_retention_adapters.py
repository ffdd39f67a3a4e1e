"""The retention ports' contract: the in-memory adapters and the Azure ones (emulator + Azurite) behave alike.

Each test seeds the same assets on both kinds of side (the memory one from values, the Azure one
through the emulator's seed route and blob uploads), lists them, executes actions, and lists again:
what was archived is listed archived, what was deleted is gone, a tiered blob is in its new tier,
and executing the same action again answers 'already'. The service tests rely on the memory
adapters; this suite keeps them honest.
"""

from __future__ import annotations

import dataclasses
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from shared.adapters.memory.retention import MemoryRetentionBlobs, MemoryRetentionWorkspace
from shared.domain.retention.addresses import AddressBook
from shared.domain.retention.inventory import (
    BlobKey,
    BlobPath,
    BlobTier,
    DataKey,
    DataVersion,
    DeploymentKey,
    Job,
    JobOutputKey,
    ModelKey,
    ModelVersion,
)
from shared.domain.retention.planner import Action, ActionKind
from shared.ports import RetentionBlobs, RetentionWorkspace

NOW = datetime.now(UTC).replace(microsecond=0)
LANDING = "landing"


@dataclass
class Side:
    """One kind of adapter pair, and how to seed it like people and pipelines would."""

    uid: str
    workspace: RetentionWorkspace
    blobs: RetentionBlobs
    memory: bool
    info: Any = None  # the emulator (AmlInfo) for the Azure side
    blob_service: Any = None
    ml_client: Any = None  # the Azure side's MLClient on the emulator (jobs are submitted, not seeded)

    def seed_data(self, name: str, version: str, days: float, folder: str, *, archived: bool = False,
                  tags: dict[str, str] | None = None) -> None:
        if isinstance(self.workspace, MemoryRetentionWorkspace):
            self.workspace.put(DataVersion(name, version, NOW - timedelta(days=days), archived=archived,
                                           tags=tags or {}, blob_paths=(BlobPath(LANDING, folder),)))
            return
        self._emulator_seed("data", name, {"version": version, "uri": f"azureml://datastores/landing/paths/{folder}",
                                           "dataType": "uri_folder", "createdAt": (NOW - timedelta(days=days))
                                           .isoformat(), "isArchived": archived, "tags": tags or {}})

    def seed_model(self, name: str, version: str, days: float, *, auc: float, trained_on: str) -> None:
        folder = f"{self.uid}/model{version}/"
        if isinstance(self.workspace, MemoryRetentionWorkspace):
            self.workspace.put(ModelVersion(name, version, NOW - timedelta(days=days), metrics={"auc": auc},
                                            data_asset=f"{self.uid}-data", data_version=trained_on,
                                            blob_paths=(BlobPath("azureml-blobstore", folder),)))
            return
        tags = {"evergreen.metric.auc": repr(auc), "evergreen.data_asset": f"{self.uid}-data",
                "evergreen.data_version": trained_on}
        self._emulator_seed("models", name, {"version": version, "createdAt": (NOW - timedelta(days=days)).isoformat(),
                                             "uri": f"azureml://datastores/workspaceblobstore/paths/{folder}",
                                             "tags": tags})

    def start_job(self, name: str, data: str) -> None:
        """A job that reads `data:1` and writes one output (`model`) to Azure ML's default place, still running."""
        if isinstance(self.workspace, MemoryRetentionWorkspace):
            self.workspace.put(Job(name, "Running", inputs=(DataKey(data, "1"),),
                                   outputs={"model": BlobPath("azureml-blobstore", f"azureml/{name}/model/")}))
            return
        from azure.ai.ml import Input, Output, command

        from devstack.testing.workloads import CURATED

        # Held at the emulator's compute: the job stays queued (unfinished) until canceled, whatever the load,
        # instead of running, and perhaps failing, before it is listed.
        self._hold_compute(True)
        try:
            self.ml_client.jobs.create_or_update(command(
                name=name, command="python -c \"import time; time.sleep(60)\" ${{inputs.train}} ${{outputs.model}}",
                inputs={"train": Input(type="uri_folder", path=f"azureml:{data}:1")},
                outputs={"model": Output(type="uri_folder")},
                environment=CURATED, compute="cpu-cluster", experiment_name="evergreen-tests"))
        finally:
            self._hold_compute(False)  # later jobs run again; this one stays queued

    def _hold_compute(self, hold: bool) -> None:
        import httpx

        with httpx.Client(verify=self.info.env["REQUESTS_CA_BUNDLE"], timeout=30) as client:
            client.post(f"{self.info.base_url}/_emulator/compute", json={"hold": hold},
                        headers={"Authorization": "Bearer local"}).raise_for_status()

    def cancel_job(self, name: str) -> None:
        if isinstance(self.workspace, MemoryRetentionWorkspace):
            [job] = [j for j in self.workspace.jobs(self.book()) if j.name == name]
            self.workspace.put(dataclasses.replace(job, status="Canceled", finished_at=NOW))
            return
        self.ml_client.jobs.begin_cancel(name).result()

    def _emulator_seed(self, kind: str, name: str, version: dict[str, Any]) -> None:
        import httpx

        with httpx.Client(verify=self.info.env["REQUESTS_CA_BUNDLE"], timeout=30) as client:
            client.post(f"{self.info.base_url}/_emulator/seed/{kind}/{name}", json={"versions": [version]},
                        headers={"Authorization": "Bearer local"}).raise_for_status()

    def upload(self, container: str, name: str, *, tags: dict[str, str] | None = None, late: bool = False) -> None:
        """Upload a blob now; `late`: after `job_finished()` (the memory side's clock stands still at NOW)."""
        if isinstance(self.blobs, MemoryRetentionBlobs):
            self.blobs.put(container, name, tags=tags, last_modified=NOW + timedelta(seconds=2) if late else None)
            return
        client = self.blob_service.get_container_client(container)
        if not client.exists():
            client.create_container()
        client.upload_blob(name, b"a,b\n1,2\n", overwrite=True, tags=tags)

    def job_finished(self) -> datetime:
        """When a job that wrote the blobs uploaded so far finished: after them (Storage keeps whole seconds)."""
        if self.memory:
            return NOW + timedelta(seconds=1)
        time.sleep(1.1)
        return datetime.now(UTC)

    def book(self) -> AddressBook:
        return AddressBook.of(self.workspace.datastores(), self.blobs.account_names())

    def data(self, name: str) -> dict[str, DataVersion]:
        return {v.version: v for v in self.workspace.data_versions(self.book()) if v.name == name}

    def models(self, name: str) -> dict[str, ModelVersion]:
        return {m.version: m for m in self.workspace.model_versions(self.book()) if m.name == name}

    def blob_names(self, container: str = LANDING) -> dict[str, BlobTier | None]:
        return {b.name: b.tier for b in self.blobs.list([container]) if b.name.startswith(f"{self.uid}/")}


@pytest.fixture(params=["memory", pytest.param("azure", marks=pytest.mark.integration)])
def side(request: pytest.FixtureRequest) -> Iterator[Side]:
    uid = f"ct{uuid.uuid4().hex[:8]}"
    if request.param == "memory":
        yield Side(uid, MemoryRetentionWorkspace(), MemoryRetentionBlobs(clock=lambda: NOW), memory=True)
        return
    from azure.identity import DefaultAzureCredential
    from azure.storage.blob import BlobServiceClient

    from shared.adapters.azure.aml_retention import AmlRetention
    from shared.adapters.azure.azureml import AzureML
    from shared.adapters.azure.blob_retention import BlobRetention

    aml = request.getfixturevalue("aml")
    azurite = request.getfixturevalue("azurite")
    service = BlobServiceClient.from_connection_string(azurite.connection_string)
    azureml = AzureML(DefaultAzureCredential(), aml.subscription_id, aml.resource_group, aml.workspace)
    yield Side(uid, AmlRetention(azureml), BlobRetention(service), memory=False, info=aml, blob_service=service,
               ml_client=request.getfixturevalue("ml_client"))


def act(kind: ActionKind, target: Any, tier: BlobTier | None = None, *, etag: str = "",
        written_before: datetime | None = None) -> Action:
    return Action(kind, target, "contract", "contract", tier=tier, etag=etag, written_before=written_before)


def test_the_datastores_map_to_their_containers_on_the_data_account(side: Side) -> None:
    book = side.book()
    assert book.datastores["landing"].container == "landing"
    assert book.datastores["workspaceblobstore"].container == "azureml-blobstore"
    assert side.blobs.account_names() == {"devstoreaccount1"}
    assert book.locate("azureml://datastores/landing/paths/x/") == BlobPath(LANDING, "x/")


def test_defect5_a_blob_changed_since_it_was_listed_is_not_deleted_or_tiered(side: Side) -> None:
    side.upload(LANDING, f"{side.uid}/raced.csv")
    [listed] = [b for b in side.blobs.list([LANDING]) if b.name == f"{side.uid}/raced.csv"]
    assert listed.etag
    side.upload(LANDING, f"{side.uid}/raced.csv")  # a new upload after the listing
    for action in (act(ActionKind.DELETE_BLOB, listed.key, etag=listed.etag),
                   act(ActionKind.TIER_BLOB, listed.key, BlobTier.COOL, etag=listed.etag)):
        assert side.blobs.execute(action) == "changed"
    assert side.blob_names() == {f"{side.uid}/raced.csv": BlobTier.HOT}
    [fresh] = [b for b in side.blobs.list([LANDING]) if b.name == f"{side.uid}/raced.csv"]
    assert side.blobs.execute(act(ActionKind.DELETE_BLOB, fresh.key, etag=fresh.etag)) == "done"


def test_listing_returns_what_was_seeded_archived_versions_included(side: Side) -> None:
    name = f"{side.uid}-data"
    side.seed_data(name, "1", 200, f"{side.uid}/d1/")
    side.seed_data(name, "2", 100, f"{side.uid}/d2/", archived=True, tags={"evergreen.keep": "true"})
    side.seed_model(f"{side.uid}-model", "1", 50, auc=0.91, trained_on="1")
    data = side.data(name)
    assert set(data) == {"1", "2"}
    assert not data["1"].archived and data["2"].archived
    assert data["1"].blob_paths == (BlobPath(LANDING, f"{side.uid}/d1/"),)
    assert dict(data["2"].tags) == {"evergreen.keep": "true"}
    assert abs((data["1"].created_at - (NOW - timedelta(days=200))).total_seconds()) < 1
    [model] = side.models(f"{side.uid}-model").values()
    assert dict(model.metrics) == {"auc": 0.91} and model.trained_on == DataKey(name, "1")
    assert model.blob_paths == (BlobPath("azureml-blobstore", f"{side.uid}/model1/"),)


def test_blobs_are_listed_with_tier_and_index_tags_and_a_missing_container_holds_none(side: Side) -> None:
    side.upload(LANDING, f"{side.uid}/a.csv")
    side.upload(LANDING, f"{side.uid}/b/c.csv", tags={"evergreen.keep": "true"})
    listed = {b.name: b for b in side.blobs.list([LANDING, f"missing{side.uid}"]) if b.name.startswith(side.uid)}
    assert sorted(listed) == [f"{side.uid}/a.csv", f"{side.uid}/b/c.csv"]
    assert all(b.tier in (BlobTier.HOT, None) and b.container == LANDING for b in listed.values())
    assert dict(listed[f"{side.uid}/b/c.csv"].tags) == {"evergreen.keep": "true"}
    assert all(b.last_modified.tzinfo is not None for b in listed.values())


@pytest.mark.parametrize("kind", [ActionKind.ARCHIVE_DATA, ActionKind.DELETE_DATA])
def test_data_versions_are_archived_or_deleted_once(side: Side, kind: ActionKind) -> None:
    name = f"{side.uid}-data"
    side.seed_data(name, "1", 200, f"{side.uid}/d1/")
    side.seed_data(name, "2", 10, f"{side.uid}/d2/")
    action = act(kind, DataKey(name, "1"))
    assert side.workspace.execute(action) == "done"
    data = side.data(name)
    if kind is ActionKind.ARCHIVE_DATA:
        assert data["1"].archived and not data["2"].archived
    else:
        assert set(data) == {"2"}
    assert side.workspace.execute(action) == "already"


@pytest.mark.parametrize("kind", [ActionKind.ARCHIVE_MODEL, ActionKind.DELETE_MODEL])
def test_model_versions_are_archived_or_deleted_once(side: Side, kind: ActionKind) -> None:
    name = f"{side.uid}-model"
    side.seed_model(name, "1", 50, auc=0.5, trained_on="1")
    side.seed_model(name, "2", 5, auc=0.6, trained_on="2")
    action = act(kind, ModelKey(name, "1"))
    assert side.workspace.execute(action) == "done"
    models = side.models(name)
    if kind is ActionKind.ARCHIVE_MODEL:
        assert models["1"].archived and not models["2"].archived
    else:
        assert set(models) == {"2"}
    assert side.workspace.execute(action) == "already"


def test_a_version_that_never_existed_is_already_gone(side: Side) -> None:
    assert side.workspace.execute(act(ActionKind.DELETE_DATA, DataKey(f"{side.uid}-none", "1"))) == "already"
    assert side.workspace.execute(act(ActionKind.ARCHIVE_MODEL, ModelKey(f"{side.uid}-none", "1"))) == "already"
    gone = act(ActionKind.DELETE_DEPLOYMENT, DeploymentKey(f"{side.uid}-ep", "blue"))
    assert side.workspace.execute(gone) == "already"


def test_blobs_are_deleted_and_tiered_once(side: Side) -> None:
    side.upload(LANDING, f"{side.uid}/old.csv")
    side.upload(LANDING, f"{side.uid}/cold.csv")
    delete = act(ActionKind.DELETE_BLOB, BlobKey(LANDING, f"{side.uid}/old.csv"))
    tier = act(ActionKind.TIER_BLOB, BlobKey(LANDING, f"{side.uid}/cold.csv"), BlobTier.COOL)
    assert side.blobs.execute(delete) == "done"
    assert side.blobs.execute(tier) == "done"
    assert side.blob_names() == {f"{side.uid}/cold.csv": BlobTier.COOL}
    assert side.blobs.execute(delete) == "already"
    assert side.blobs.execute(tier) == "already"


def test_a_job_output_is_deleted_by_prefix_once(side: Side) -> None:
    for name in ("out/model/a.bin", "out/model/sub/b.bin", "out/modelx/keep.bin", "other.bin"):
        side.upload(LANDING, f"{side.uid}/{name}")
    action = act(ActionKind.DELETE_JOB_OUTPUT, JobOutputKey("job", "model", BlobPath(LANDING, f"{side.uid}/out/model")),
                 written_before=side.job_finished())
    assert side.blobs.delete_job_output(action) == "done"
    assert sorted(side.blob_names()) == [f"{side.uid}/other.bin", f"{side.uid}/out/modelx/keep.bin"]
    assert side.blobs.delete_job_output(action) == "already"


def test_a_job_output_keeps_blobs_written_after_the_job_finished(side: Side) -> None:
    """A job started after the plan's listing writes under the old job's output folder: its blob is kept
    ('newer'), the old job's own are deleted; an action without the job's end is refused (fail closed)."""
    side.upload(LANDING, f"{side.uid}/out/model/a.bin")
    finished = side.job_finished()
    side.upload(LANDING, f"{side.uid}/out/model/rerun/b.bin", late=True)
    key = JobOutputKey("job", "model", BlobPath(LANDING, f"{side.uid}/out/model/"))
    with pytest.raises(ValueError, match="written_before"):
        side.blobs.delete_job_output(act(ActionKind.DELETE_JOB_OUTPUT, key))
    assert sorted(side.blob_names()) == [f"{side.uid}/out/model/a.bin", f"{side.uid}/out/model/rerun/b.bin"]
    action = act(ActionKind.DELETE_JOB_OUTPUT, key, written_before=finished)
    assert side.blobs.delete_job_output(action) == "newer"
    assert sorted(side.blob_names()) == [f"{side.uid}/out/model/rerun/b.bin"]
    assert side.blobs.delete_job_output(action) == "newer"  # still there, still kept


def test_an_action_sent_to_the_wrong_side_is_refused(side: Side) -> None:
    with pytest.raises(ValueError, match="not an Azure ML action"):
        side.workspace.execute(act(ActionKind.DELETE_BLOB, BlobKey(LANDING, "x")))
    with pytest.raises(ValueError, match="not a blob action"):
        side.blobs.execute(act(ActionKind.DELETE_DATA, DataKey("x", "1")))


def test_jobs_are_listed_with_status_inputs_outputs_and_end(side: Side) -> None:
    """What retention protects a running job by: its status (unfinished, no end), what it reads (a data version)
    and where it writes (Azure ML's default output folder); once canceled it is finished."""
    data, name = f"{side.uid}-data", f"{side.uid}-job"
    side.seed_data(data, "1", 1, f"{side.uid}/d1/")
    side.start_job(name, data)
    try:
        [job] = [j for j in side.workspace.jobs(side.book()) if j.name == name]
        assert not job.finished and job.finished_at is None
        assert job.inputs == (DataKey(data, "1"),)
        # Azure ML adds its own `default` output (the run's artifacts): only the declared one is compared
        assert job.outputs["model"] == BlobPath("azureml-blobstore", f"azureml/{name}/model/")
    finally:
        side.cancel_job(name)
    [job] = [j for j in side.workspace.jobs(side.book()) if j.name == name]
    assert job.finished  # canceled (or failed first: its data folder holds no file); it reads nothing any more
    assert job.finished_at is None or job.finished_at.tzinfo is not None  # the emulator gives no end time
