"""Upload → data version on the in-memory adapters: duplicates, concurrent instances, batches sealed by
marker or quiet period, reopened batches, stale claims and failures."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import pytest

from shared.adapters.memory.azureml import MemoryWorkspace
from shared.adapters.memory.blobs import MemoryBlobStore
from shared.adapters.memory.eventgrid import MemoryEventPublisher
from shared.adapters.memory.queues import MemoryDelayedQueue
from shared.adapters.memory.tables import MemoryTable
from shared.config.policy import parse_policy
from shared.domain.audit import AuditRecord
from shared.domain.events import BlobCreated, DataVersionRegistered, SealRequest
from shared.domain.records import CLAIM_LEASE
from shared.domain.vocabulary import BatchState, IngestAction, Tag
from shared.domain.workspace import DataVersionSpec
from shared.errors import BlobChangedError, ClaimInProgressError, InvalidEventError
from shared.services.audit import TableAuditLog
from shared.services.ingest import Ingestor, IngestOutcome
from shared.services.ledger import Ledger
from tests.services.conftest import FakeClock

CONTAINER = "landing"
POLICY = parse_policy({"datasets": [
    {"name": "churn", "container": CONTAINER, "prefix": "churn/", "type": "uri_folder", "datastore": "landing",
     "batch": {"marker": "_SUCCESS", "quiet_period_seconds": 30}},
    {"name": "ref", "container": CONTAINER, "prefix": "reference/", "type": "uri_file", "datastore": "landing"},
]})


class FlakyPublisher(MemoryEventPublisher):
    """Fails the next `failures` publishes (Event Grid answering 503), then publishes."""

    def __init__(self) -> None:
        super().__init__()
        self.failures = 0

    def data_version_registered(self, event: DataVersionRegistered) -> str:
        if self.failures:
            self.failures -= 1
            raise ConnectionError("Event Grid is unavailable")
        return super().data_version_registered(event)


@dataclass
class World:
    clock: FakeClock
    table: MemoryTable = field(default_factory=MemoryTable)
    workspace: MemoryWorkspace = field(default_factory=MemoryWorkspace)
    publisher: FlakyPublisher = field(default_factory=FlakyPublisher)
    audit: TableAuditLog = field(default_factory=lambda: TableAuditLog(MemoryTable()))

    def __post_init__(self) -> None:
        self.blobs = MemoryBlobStore(clock=self.clock, chunk_size=4096)
        self.queue: MemoryDelayedQueue[SealRequest] = MemoryDelayedQueue(clock=self.clock)
        self.ledger = Ledger(self.table, clock=self.clock)
        self.ingestor = self.instance()

    def instance(self) -> Ingestor:
        """Another Function instance: its own service objects, the same storage, registry and topic."""
        return Ingestor(policy=POLICY, blobs=self.blobs, ledger=Ledger(self.table, clock=self.clock),
                        registry=self.workspace, publisher=self.publisher, seal_queue=self.queue, audit=self.audit,
                        clock=self.clock)

    def upload(self, name: str, data: bytes) -> BlobCreated:
        self.blobs.put(CONTAINER, name, data)
        return BlobCreated(CONTAINER, name, f"https://data.blob.core.windows.net/{CONTAINER}/{name}")

    def versions(self, dataset: str) -> list[str]:
        return [v.version for v in self.workspace.data_versions(dataset)]

    def due(self, reason: str | None = None) -> list[SealRequest]:
        """Seal requests visible now (received and completed, as the queue trigger would)."""
        received = self.queue.due()
        for message in received:
            self.queue.complete(message)
        return [m.item for m in received if reason is None or m.item.reason == reason]

    def audited(self) -> list[AuditRecord]:
        return sorted(self.audit.query(now=self.clock()), key=lambda r: r.at)


@pytest.fixture
def world(clock: FakeClock) -> Iterator[World]:
    yield World(clock)


def settle(instance: Ingestor, event: BlobCreated) -> IngestOutcome:
    """Deliver like Event Grid: a ClaimInProgressError means 'retry later'."""
    for _ in range(200):
        try:
            return instance.on_blob_created(event)
        except ClaimInProgressError:
            continue
    raise AssertionError("never settled")


def test_file_dataset_dedupes_redeliveries_and_identical_content(world: World) -> None:
    event = world.upload("reference/regions.csv", b"region,code\nnorth,N\n")
    first = world.ingestor.on_blob_created(event)
    world.clock.advance(1)  # one second between deliveries: the audit log orders by time
    assert (first.action, first.version) == (IngestAction.REGISTERED, "1")
    (version,) = world.workspace.data_versions("ref")
    assert version.spec.uri == "azureml://datastores/landing/paths/reference/regions.csv"
    assert version.spec.tags[Tag.SHA256.value] == hashlib.sha256(b"region,code\nnorth,N\n").hexdigest()
    assert version.spec.tags[Tag.SOURCE_URL.value] == event.url
    assert world.ingestor.on_blob_created(event).action is IngestAction.DUPLICATE  # same URL + eTag again
    world.clock.advance(1)
    copy = world.upload("reference/regions copy é.csv", b"region,code\nnorth,N\n")
    dup = world.ingestor.on_blob_created(copy)
    assert dup.action is IngestAction.DUPLICATE and "already registered as ref:1" in dup.detail
    world.clock.advance(1)
    changed = world.upload("reference/regions.csv", b"region,code\nnorth,N\nsouth,S\n")
    assert world.ingestor.on_blob_created(changed).version == "2"
    assert [e.version for e in world.publisher.events] == ["1", "2"]
    assert [r.kind for r in world.audited()] == ["data.registered", "data.duplicate", "data.duplicate",
                                                 "data.registered"]
    assert world.audited()[2].reason == "same content already registered as ref:1"
    assert world.versions("ref") == ["1", "2"]


def test_sha256_is_streamed_and_correct_for_large_blobs(world: World) -> None:
    data = bytes(range(256)) * 1024  # 256 KiB: 64 chunks of 4 KiB
    world.ingestor.on_blob_created(world.upload("reference/big.bin", data))
    (version,) = world.workspace.data_versions("ref")
    assert version.spec.tags[Tag.SHA256.value] == hashlib.sha256(data).hexdigest()
    assert version.spec.tags[Tag.SIZE.value] == str(len(data))


def test_empty_deleted_and_foreign_blobs_are_ignored_with_a_reason(world: World) -> None:
    empty = world.ingestor.on_blob_created(world.upload("reference/empty.csv", b""))
    assert empty.action is IngestAction.IGNORED and "empty" in empty.detail
    gone = world.upload("reference/gone.csv", b"x")
    world.blobs.delete(CONTAINER, "reference/gone.csv")
    assert world.ingestor.on_blob_created(gone).action is IngestAction.IGNORED
    foreign = world.ingestor.on_blob_created(world.upload("other/a.csv", b"x"))
    assert foreign.action is IngestAction.IGNORED and "no dataset" in foreign.detail
    assert world.workspace.data_versions("ref") == [] and world.publisher.events == []


def test_concurrent_duplicate_deliveries_of_one_file_register_it_once(world: World) -> None:
    event = world.upload("reference/regions.csv", b"a,b\n")
    instances = [world.instance() for _ in range(6)]
    with ThreadPoolExecutor(6) as pool:
        outcomes = list(pool.map(lambda i: settle(instances[i % 6], event), range(24)))
    assert sum(o.action is IngestAction.REGISTERED for o in outcomes) == 1
    assert all(o.action in (IngestAction.REGISTERED, IngestAction.DUPLICATE) for o in outcomes)
    assert world.versions("ref") == ["1"] and len(world.publisher.events) == 1


def test_burst_of_500_files_becomes_one_version_none_lost_none_twice(world: World) -> None:
    names = [f"churn/drop1/part-{i:04d}.csv" for i in range(500)]
    events = [world.upload(n, f"row,{n}\n".encode()) for n in names]
    instances = [world.instance() for _ in range(4)]
    deliveries = [(instances[i % 4], e) for i, e in enumerate(events + events)]  # every event twice, concurrently
    with ThreadPoolExecutor(8) as pool:
        outcomes = list(pool.map(lambda d: d[0].on_blob_created(d[1]), deliveries))
    # Two copies of one event racing past the blobs-seen check both answer BATCHED; the file's batch row is
    # an idempotent upsert, so the version below still holds each file once.
    batched = sum(o.action is IngestAction.BATCHED for o in outcomes)
    assert batched >= 500 and batched + sum(o.action is IngestAction.DUPLICATE for o in outcomes) == 1000
    assert world.ingestor.on_blob_created(world.upload("churn/drop1/_SUCCESS", b"")).action is IngestAction.BATCHED
    (marker_request,) = world.due("marker")
    with ThreadPoolExecutor(4) as pool:  # the seal request handled by four instances at once: exactly one seals
        results = list(pool.map(lambda inst: inst.on_seal_request(marker_request), instances))
    assert [r.action for r in results].count(IngestAction.SEALED) == 1
    (version,) = world.workspace.data_versions("churn")
    assert version.spec.uri == "azureml://datastores/landing/paths/churn/drop1/"
    assert version.spec.tags[Tag.FILES.value] == "500"
    (event,) = world.publisher.events
    assert event.file_count == 500 and sorted(event.files) == names
    assert world.instance().on_blob_created(events[7]).action is IngestAction.DUPLICATE  # late redelivery
    assert world.versions("churn") == ["1"]


def test_files_whose_events_never_arrived_are_still_counted(world: World) -> None:
    world.upload("churn/drop2/b.csv", b"b\n")  # its event is "lost"
    world.ingestor.on_blob_created(world.upload("churn/drop2/a.csv", b"a\n"))
    world.ingestor.on_blob_created(world.upload("churn/drop2/_SUCCESS", b""))
    (request,) = world.due("marker")
    assert world.ingestor.on_seal_request(request).action is IngestAction.SEALED
    (version,) = world.workspace.data_versions("churn")
    assert version.spec.tags[Tag.FILES.value] == "2"
    assert world.publisher.events[0].files == ("churn/drop2/a.csv", "churn/drop2/b.csv")


def test_late_new_file_reopens_the_batch_as_a_new_version(world: World) -> None:
    world.ingestor.on_blob_created(world.upload("churn/drop3/a.csv", b"a\n"))
    world.ingestor.on_blob_created(world.upload("churn/drop3/_SUCCESS", b""))
    (marker,) = world.due("marker")
    assert world.ingestor.on_seal_request(marker).action is IngestAction.SEALED
    world.clock.advance(5)
    late = world.ingestor.on_blob_created(world.upload("churn/drop3/c.csv", b"c\n"))
    assert late.action is IngestAction.BATCHED and "generation 2" in late.detail
    assert world.due() == []  # the quiet-period request of generation 2 is not visible yet
    world.clock.advance(10)
    world.blobs.put(CONTAINER, "churn/drop3/d.csv", b"d\n")
    world.ingestor.on_blob_created(BlobCreated(CONTAINER, "churn/drop3/d.csv", "u/d"))
    world.clock.advance(20)
    old, quiet = world.due("quiet-period")
    assert (old.generation, quiet.generation) == (1, 2)
    stale = world.ingestor.on_seal_request(old)
    assert stale.action is IngestAction.SKIPPED and "stale request for generation 1" in stale.detail
    waiting = world.ingestor.on_seal_request(quiet)  # the last file came 20 s ago: wait 10 s more
    assert waiting.action is IngestAction.WAITING
    world.clock.advance(10)
    (again,) = world.due("quiet-period")
    sealed = world.ingestor.on_seal_request(again)
    assert (sealed.action, sealed.version) == (IngestAction.SEALED, "2")
    assert world.workspace.data_versions("churn")[1].spec.tags[Tag.FILES.value] == "3"
    assert world.workspace.data_versions("churn")[1].spec.tags[Tag.BATCH_GENERATION.value] == "2"


def test_an_old_marker_does_not_seal_a_reopened_generation(world: World) -> None:
    world.ingestor.on_blob_created(world.upload("churn/drop4/a.csv", b"a\n"))
    world.ingestor.on_blob_created(world.upload("churn/drop4/_SUCCESS", b""))
    world.ingestor.on_seal_request(world.due("marker")[0])
    world.clock.advance(1)
    world.ingestor.on_blob_created(world.upload("churn/drop4/b.csv", b"b\n"))
    stale_marker = SealRequest("churn", "churn/drop4/", 2, "marker")
    assert world.ingestor.on_seal_request(stale_marker).action is IngestAction.WAITING  # quiet period decides


def test_quiet_period_seals_without_a_marker(world: World) -> None:
    world.ingestor.on_blob_created(world.upload("churn/drop5/a.csv", b"a\n"))
    assert world.due() == []
    world.clock.advance(31)  # the queue message becomes visible 30 s later
    (request,) = world.due("quiet-period")
    assert world.instance().on_seal_request(request).action is IngestAction.SEALED
    assert world.workspace.data_versions("churn")[0].spec.tags[Tag.SEALED_BY.value] == "no new file for 30s"


def test_a_seal_request_for_an_unknown_dataset_is_invalid(world: World) -> None:
    with pytest.raises(InvalidEventError, match="unknown dataset 'nope'"):
        world.ingestor.on_seal_request(SealRequest("nope", "x/", 1, "marker"))


def test_a_stale_content_claim_is_taken_over_and_adopts_the_version_its_holder_registered(world: World) -> None:
    event = world.upload("reference/r.csv", b"r\n")
    sha = hashlib.sha256(b"r\n").hexdigest()
    # an instance claimed the content, registered it in Azure ML, and died before writing the ledger
    assert world.ledger.claim_content("ref", sha, event.url) is not None
    world.ingestor.on_blob_created(world.upload("reference/other.csv", b"other"))  # version 1
    world.workspace.register_data_version(DataVersionSpec("ref", "uri_file", "azureml://x", "",
                                                          {Tag.SHA256.value: sha}))  # version 2
    with pytest.raises(ClaimInProgressError, match="being registered by another instance"):
        world.ingestor.on_blob_created(event)
    world.clock.advance(CLAIM_LEASE.total_seconds() + 1)
    outcome = world.ingestor.on_blob_created(event)
    assert (outcome.action, outcome.version) == (IngestAction.REGISTERED, "2")
    assert world.versions("ref") == ["1", "2"]  # nothing registered twice
    assert [e.version for e in world.publisher.events] == ["1", "2"]


def test_a_failed_announcement_is_finished_by_the_redelivery_without_registering_again(world: World) -> None:
    event = world.upload("reference/r.csv", b"r\n")
    world.publisher.failures = 1
    with pytest.raises(ConnectionError):
        world.ingestor.on_blob_created(event)
    assert world.versions("ref") == ["1"] and world.publisher.events == []
    outcome = world.ingestor.on_blob_created(event)  # Event Grid redelivers
    assert (outcome.action, outcome.version) == (IngestAction.REGISTERED, "1")
    assert world.versions("ref") == ["1"] and [e.version for e in world.publisher.events] == ["1"]


def test_a_blob_overwritten_while_it_is_hashed_raises_blob_changed(world: World) -> None:
    class OverwritingStore(MemoryBlobStore):
        def read(self, container: str, name: str, etag: str) -> Iterator[bytes]:
            self.put(container, name, b"newer content")  # someone uploads again mid-read
            return super().read(container, name, etag)

    world.blobs = OverwritingStore(clock=world.clock)
    event = world.upload("reference/r.csv", b"r\n")
    with pytest.raises(BlobChangedError):
        world.instance().on_blob_created(event)
    assert world.workspace.data_versions("ref") == []


def test_a_stale_seal_claim_is_taken_over(world: World) -> None:
    world.ingestor.on_blob_created(world.upload("churn/drop6/a.csv", b"a\n"))
    world.ingestor.on_blob_created(world.upload("churn/drop6/_SUCCESS", b""))
    (request,) = world.due("marker")
    batch = world.ledger.get_batch("churn", "churn/drop6/")
    assert batch is not None and world.ledger.claim_seal(batch) is not None  # an instance claims, then dies
    busy = world.ingestor.on_seal_request(request)
    assert busy.action is IngestAction.SKIPPED and "being sealed by another instance" in busy.detail
    with pytest.raises(ClaimInProgressError, match="being sealed"):
        world.ingestor.on_blob_created(world.upload("churn/drop6/b.csv", b"b\n"))
    world.clock.advance(CLAIM_LEASE.total_seconds() + 1)
    assert world.ingestor.on_seal_request(request).action is IngestAction.SEALED
    sealed = world.ledger.get_batch("churn", "churn/drop6/")
    assert sealed is not None and sealed.state == BatchState.SEALED
    assert world.workspace.data_versions("churn")[0].spec.tags[Tag.FILES.value] == "2"  # b.csv is in the listing
