"""A burst into one folder batch (issue 15): the seal combines the hashes recorded on arrival (a listing, no
download), makes the snapshot from one listing of it (no lookup per file), copies concurrently in the Function
App, and files that arrive while the batch seals are recorded and acknowledged, never failed."""

from __future__ import annotations

import contextvars
import hashlib
from collections import Counter
from typing import Any

from shared.adapters.memory.blobs import MemoryBlobStore
from shared.domain.ingest import FileFacts, manifest_sha256, snapshot_path
from shared.domain.vocabulary import IngestAction, Tag
from shared.services.ingest import SNAPSHOT_COPY_WORKERS, Ingestor
from tests.services.conftest import FakeClock
from tests.services.test_ingest import POLICY, World


class CountingStore(MemoryBlobStore):
    """The in-memory blob store, counting each port call by method (reads count when streamed)."""

    def __init__(self, *, clock: FakeClock) -> None:
        super().__init__(clock=clock, chunk_size=4096)
        self.calls: Counter[str] = Counter()

    def properties(self, container: str, name: str) -> Any:
        self.calls["properties"] += 1
        return super().properties(container, name)

    def read(self, container: str, name: str, etag: str) -> Any:
        self.calls["read"] += 1
        return super().read(container, name, etag)

    def list(self, container: str, prefix: str) -> Any:
        self.calls["list"] += 1
        return super().list(container, prefix)

    def copy(self, container: str, name: str, etag: str, to_name: str) -> None:
        self.calls["copy"] += 1
        super().copy(container, name, etag, to_name)


def _world(clock: FakeClock, copy_workers: int = 1) -> World:
    world = World(clock)
    world.blobs = CountingStore(clock=clock)
    world.ingestor = Ingestor(policy=POLICY, blobs=world.blobs, ledger=world.ledger, registry=world.workspace,
                              publisher=world.publisher, seal_queue=world.queue, blob_retry=world.retries,
                              audit=world.audit, sleep=world.slept.append, clock=clock, leases=world.leases,
                              copy_workers=copy_workers)
    return world


def test_a_seal_lists_once_and_downloads_nothing_that_was_hashed_on_arrival(clock: FakeClock) -> None:
    world = _world(clock)
    files = 200
    for i in range(files):
        world.ingestor.on_blob_created(world.upload(f"churn/burst/part-{i:04d}.csv", f"row,{i}\n".encode()))
    world.ingestor.on_blob_created(world.upload("churn/burst/_SUCCESS", b""))
    store = world.blobs
    assert isinstance(store, CountingStore)
    store.calls.clear()
    (request,) = world.due("marker")
    sealed = world.ingestor.on_seal_request(request)
    assert sealed.action is IngestAction.SEALED
    assert store.calls["read"] == 0  # every hash came from the ledger: no file downloaded again
    assert store.calls["list"] == 2  # the folder, then the snapshot folder (what is already copied)
    assert store.calls["properties"] <= 1  # the marker's time, not a lookup per file
    assert store.calls["copy"] == files
    (version,) = world.workspace.data_versions("churn")
    assert version.spec.tags[Tag.FILES.value] == str(files)


def test_concurrent_snapshot_copies_make_the_same_version_as_one_at_a_time(clock: FakeClock) -> None:
    made = []
    for workers in (1, SNAPSHOT_COPY_WORKERS):
        world = _world(clock, copy_workers=workers)
        for i in range(40):
            world.ingestor.on_blob_created(world.upload(f"churn/d/part-{i:02d}.csv", f"{i}\n".encode()))
        world.ingestor.on_blob_created(world.upload("churn/d/_SUCCESS", b""))
        (request,) = world.due("marker")
        assert world.ingestor.on_seal_request(request).action is IngestAction.SEALED
        (version,) = world.workspace.data_versions("churn")
        snapshot = sorted((f.name, f.size) for f in world.blobs.list("landing", "_evergreen/snapshots/churn/"))
        made.append((version.spec.tags[Tag.SHA256.value], snapshot))
    assert made[0] == made[1] and len(made[0][1]) == 40


def test_a_snapshot_interrupted_half_way_copies_only_the_rest(clock: FakeClock) -> None:
    world = _world(clock, copy_workers=4)
    for i in range(10):
        world.ingestor.on_blob_created(world.upload(f"churn/half/p{i}.csv", f"{i}\n".encode()))
    world.ingestor.on_blob_created(world.upload("churn/half/_SUCCESS", b""))
    store = world.blobs
    assert isinstance(store, CountingStore)
    manifest = {f"churn/half/p{i}.csv": FileFacts("", 2, hashlib.sha256(f"{i}\n".encode()).hexdigest(), clock())
                for i in range(10)}
    root = snapshot_path("churn", manifest_sha256(manifest))
    for i in range(4):  # a crashed sealer had copied these
        store.put("landing", f"{root}p{i}.csv", f"{i}\n".encode())
    store.calls.clear()
    (request,) = world.due("marker")
    assert world.ingestor.on_seal_request(request).action is IngestAction.SEALED
    assert store.calls["copy"] == 6


def test_files_arriving_while_their_batch_seals_are_acknowledged_and_go_to_the_next_generation(
        clock: FakeClock) -> None:
    world = _world(clock)
    world.ingestor.on_blob_created(world.upload("churn/live/a.csv", b"a\n"))
    world.ingestor.on_blob_created(world.upload("churn/live/_SUCCESS", b""))
    (request,) = world.due("marker")
    batch = world.ledger.get_batch("churn", "churn/live/")
    assert batch is not None and world.ledger.claim_seal(batch, owner="sealer", reason="marker") is not None
    late = [world.ingestor.on_blob_created(world.upload(f"churn/live/late-{i}.csv", f"{i}\n".encode()))
            for i in range(20)]  # each raised ClaimInProgressError before: a retry storm
    assert {o.action for o in late} == {IngestAction.BATCHED}
    assert world.ingestor.on_seal_request(request).action is IngestAction.WAITING  # the live sealer holds it


CALLER: contextvars.ContextVar[str] = contextvars.ContextVar("caller", default="")


class ContextRecordingStore(MemoryBlobStore):
    """Records the caller's context variable as each copy sees it (the host tags log lines this way)."""

    def __init__(self, *, clock: FakeClock) -> None:
        super().__init__(clock=clock, chunk_size=4096)
        self.seen: list[str] = []

    def copy(self, container: str, name: str, etag: str, to_name: str) -> None:
        self.seen.append(CALLER.get())
        super().copy(container, name, etag, to_name)


def test_concurrent_copies_run_in_the_invocations_context(clock: FakeClock) -> None:
    world = _world(clock, copy_workers=4)
    store = ContextRecordingStore(clock=clock)
    world.blobs = store
    world.ingestor._blobs = store  # the same world, on the recording store
    for i in range(12):
        world.ingestor.on_blob_created(world.upload(f"churn/ctx/p{i}.csv", f"{i}\n".encode()))
    world.ingestor.on_blob_created(world.upload("churn/ctx/_SUCCESS", b""))
    (request,) = world.due("marker")
    CALLER.set("seal-invocation")
    assert world.ingestor.on_seal_request(request).action is IngestAction.SEALED
    assert store.seen == ["seal-invocation"] * 12
