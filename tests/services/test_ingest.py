"""Upload → data version on the in-memory adapters: duplicates, concurrent instances, batches sealed by
marker or quiet period, reopened batches, stale claims and failures."""

from __future__ import annotations

import hashlib
import threading
import time
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
from shared.domain.ingest import REDRIVE_GRACE
from shared.domain.records import CLAIM_LEASE, DEFAULT_LEASES, Leases
from shared.domain.vocabulary import BatchState, IngestAction, Tag
from shared.domain.workspace import DataVersionSpec, RegisteredDataVersion
from shared.errors import BlobChangedError, InvalidEventError
from shared.ports import BlobFacts
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
    leases: Leases = DEFAULT_LEASES  # EVERGREEN_LEASE_SECONDS, as the composition root passes it

    def __post_init__(self) -> None:
        self.blobs = MemoryBlobStore(clock=self.clock, chunk_size=4096)
        self.queue: MemoryDelayedQueue[SealRequest] = MemoryDelayedQueue(clock=self.clock)
        self.retries: MemoryDelayedQueue[BlobCreated] = MemoryDelayedQueue(clock=self.clock)
        self.slept: list[float] = []
        self.ledger = Ledger(self.table, clock=self.clock, leases=self.leases)
        self.ingestor = self.instance()

    def instance(self) -> Ingestor:
        """Another Function instance: its own service objects, the same storage, registry and topic."""
        return Ingestor(policy=POLICY, blobs=self.blobs,
                        ledger=Ledger(self.table, clock=self.clock, leases=self.leases),
                        registry=self.workspace, publisher=self.publisher, seal_queue=self.queue,
                        blob_retry=self.retries, audit=self.audit, sleep=self.slept.append, clock=self.clock,
                        leases=self.leases)

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


def test_file_dataset_dedupes_redeliveries_and_identical_content(world: World) -> None:
    event = world.upload("reference/regions.csv", b"region,code\nnorth,N\n")
    first = world.ingestor.on_blob_created(event)
    world.clock.advance(1)  # one second between deliveries: the audit log orders by time
    assert (first.action, first.version) == (IngestAction.REGISTERED, "1")
    (version,) = world.workspace.data_versions("ref")
    sha = hashlib.sha256(b"region,code\nnorth,N\n").hexdigest()
    assert version.spec.uri == f"azureml://datastores/landing/paths/_evergreen/snapshots/ref/{sha}/regions.csv"
    assert version.spec.tags[Tag.SHA256.value] == sha
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
    assert world.audited()[2].reason == ("same content already registered as ref:1; landing/reference/regions copy "
                                         "é.csv recorded as its alias (the version's bytes are its snapshot)")
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


def test_defect8_concurrent_duplicate_deliveries_never_fail_and_register_once(world: World) -> None:
    class SlowWorkspace(MemoryWorkspace):  # Azure ML takes a while: duplicates arrive while the claim is pending
        def register_data_version(self, spec: DataVersionSpec) -> RegisteredDataVersion:
            time.sleep(0.2)
            return super().register_data_version(spec)

    world.workspace = SlowWorkspace()
    event = world.upload("reference/regions.csv", b"a,b\n")
    instances = [world.instance() for _ in range(6)]
    with ThreadPoolExecutor(6) as pool:  # any exception here fails the test: none may be raised
        outcomes = list(pool.map(lambda i: instances[i % 6].on_blob_created(event), range(24)))
    assert sum(o.action is IngestAction.REGISTERED for o in outcomes) == 1
    assert all(o.action in (IngestAction.REGISTERED, IngestAction.DUPLICATE, IngestAction.WAITING) for o in outcomes)
    waiting = sum(o.action is IngestAction.WAITING for o in outcomes)
    assert waiting == len(world.retries)  # every waiter re-scheduled itself, none was acknowledged as handled
    assert world.slept and sum(world.slept) <= 3 * waiting + 3 * 24  # bounded waits, through the injected sleeper
    world.clock.advance(CLAIM_LEASE.total_seconds() + 2)
    for message in world.retries.due():  # the re-scheduled events come back after the lease
        assert world.instance().on_blob_created(message.item).action is IngestAction.DUPLICATE
        world.retries.complete(message)
    assert world.versions("ref") == ["1"] and len(world.publisher.events) == 1
    assert world.ledger.open_work("ingest") == []


def test_defect8_a_duplicate_while_its_holder_announces_waits_instead_of_announcing_again(world: World) -> None:
    # The holder has registered the version and is publishing it; a duplicate delivery lands in that window.
    # Finishing the holder's job beside it would publish the same announcement twice and report two
    # registrations (found on real ETags under load by the Azurite test of this defect).
    class HeldPublisher(FlakyPublisher):
        def __init__(self) -> None:
            super().__init__()
            self.entered, self.go = threading.Event(), threading.Event()

        def data_version_registered(self, event: DataVersionRegistered) -> str:
            self.entered.set()
            assert self.go.wait(10)
            return super().data_version_registered(event)

    world.publisher = HeldPublisher()
    holder, other = world.instance(), world.instance()
    event = world.upload("reference/r.csv", b"r\n")
    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(holder.on_blob_created, event)
        assert world.publisher.entered.wait(10)  # registered, not yet announced
        second = other.on_blob_created(event)
        world.publisher.go.set()
        assert first.result().action is IngestAction.REGISTERED
    assert second.action is IngestAction.WAITING and "being registered by" in second.detail
    assert world.retries.items() == [event]  # re-scheduled, not acknowledged as done
    world.clock.advance(CLAIM_LEASE.total_seconds() + 1)
    (retry,) = world.retries.peek()
    assert other.on_blob_created(retry).action is IngestAction.DUPLICATE
    assert world.versions("ref") == ["1"] and len(world.publisher.events) == 1


def test_an_announcement_that_failed_after_registering_is_given_back_and_finished_by_another_instance(
        world: World) -> None:
    event = world.upload("reference/r.csv", b"r\n")
    world.publisher.failures = 1
    with pytest.raises(ConnectionError):
        world.ingestor.on_blob_created(event)  # registered, then Event Grid failed: the claim is given back
    outcome = world.instance().on_blob_created(event)  # the redelivery lands on another instance, at once
    assert (outcome.action, outcome.version) == (IngestAction.REGISTERED, "1")
    assert world.versions("ref") == ["1"] and [e.version for e in world.publisher.events] == ["1"]
    assert world.slept == []  # no wait for a lease: the failed holder released it


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
    sha = version.spec.tags[Tag.SHA256.value]
    assert version.spec.uri == f"azureml://datastores/landing/paths/_evergreen/snapshots/churn/{sha}/"
    assert version.spec.tags[Tag.FILES.value] == "500"
    snapshot = [f.name for f in world.blobs.list(CONTAINER, f"_evergreen/snapshots/churn/{sha}/")]
    assert snapshot == sorted(f"_evergreen/snapshots/churn/{sha}/{n.removeprefix('churn/drop1/')}" for n in names)
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
    waiting = world.ingestor.on_blob_created(event)  # the holder's lease is alive: wait briefly, then re-schedule
    assert waiting.action is IngestAction.WAITING and "being registered by" in waiting.detail
    assert len(world.slept) == 6 and sum(world.slept) == 3
    assert world.retries.items() == [event] and world.retries.peek() == []  # visible once the lease has ended
    world.clock.advance(CLAIM_LEASE.total_seconds() + 1)
    (retry,) = world.retries.peek()
    outcome = world.ingestor.on_blob_created(retry)
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


def test_defect1_a_dead_sealer_is_waited_for_then_taken_over_and_files_meanwhile_do_not_fail(world: World) -> None:
    world.ingestor.on_blob_created(world.upload("churn/drop6/a.csv", b"a\n"))
    world.ingestor.on_blob_created(world.upload("churn/drop6/_SUCCESS", b""))
    (request,) = world.due("marker")
    batch = world.ledger.get_batch("churn", "churn/drop6/")
    claimed = world.ledger.claim_seal(batch, owner="dead", reason="marker _SUCCESS is present") if batch else None
    assert claimed is not None  # an instance claims, then dies
    busy = world.ingestor.on_seal_request(request)  # the redelivery must not complete the unsealed batch's request
    assert busy.action is IngestAction.WAITING and "being sealed by dead" in busy.detail
    assert [r for r in world.queue.items() if r.reason == "marker"] == [request]  # re-scheduled: the lease's end
    assert world.due() == []
    late = world.ingestor.on_blob_created(world.upload("churn/drop6/b.csv", b"b\n"))  # no ClaimInProgressError
    assert late.action is IngestAction.BATCHED
    world.clock.advance(CLAIM_LEASE.total_seconds() + 2)
    (again,) = world.due("marker")
    sealed = world.ingestor.on_seal_request(again)
    assert (sealed.action, sealed.version) == (IngestAction.SEALED, "1")
    record = world.ledger.get_batch("churn", "churn/drop6/")
    assert record is not None and record.state == BatchState.SEALED
    (version,) = world.workspace.data_versions("churn")
    assert version.spec.tags[Tag.FILES.value] == "2"  # b.csv is in the listing
    assert version.spec.tags[Tag.SEALED_BY.value] == "marker _SUCCESS is present"  # the holder's reason
    assert world.ledger.open_work("ingest") == []


# -- issue 11: recovery from any single failure ------------------------------------------------------------
class ProcessDied(BaseException):
    """The Function host died here: nothing of ours runs after it (no `except Exception` sees it)."""


class FlakyWorkspace(MemoryWorkspace):
    """Azure ML answering 503 to the next `failures` registrations; with `lost_reply`, after registering;
    with `die`, the process dies right after registering."""

    def __init__(self) -> None:
        super().__init__()
        self.failures = 0
        self.lost_reply = False
        self.die = False

    def register_data_version(self, spec: DataVersionSpec) -> RegisteredDataVersion:
        if self.failures and not self.lost_reply:
            self.failures -= 1
            raise ConnectionError("Azure ML answered 503")
        registered = super().register_data_version(spec)
        if self.die:
            self.die = False
            raise ProcessDied
        if self.failures:
            self.failures -= 1
            raise ConnectionError("the connection dropped before Azure ML's answer arrived")
        return registered


class CountingStore(MemoryBlobStore):
    """Counts content downloads; reading a blob in the Archive tier fails as in Azure (409 BlobArchived)."""

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.reads: list[str] = []

    def read(self, container: str, name: str, etag: str) -> Iterator[bytes]:
        self.reads.append(name)
        facts = self.properties(container, name)
        if facts is not None and facts.tier == "Archive":
            raise PermissionError(f"409 BlobArchived: {name} is in the Archive tier")
        return super().read(container, name, etag)


def drop(world: World, folder: str, count: int) -> list[str]:
    names = [f"{folder}part-{i:03d}.csv" for i in range(count)]
    for name in names:
        world.ingestor.on_blob_created(world.upload(name, f"row,{name}\n".encode()))
    return names


def sealing_state(world: World, folder: str) -> str:
    batch = world.ledger.get_batch("churn", folder)
    assert batch is not None
    return batch.state


def test_defect1_an_azure_ml_503_during_a_seal_releases_it_and_the_retry_seals(world: World) -> None:
    world.workspace = FlakyWorkspace()
    world.ingestor = world.instance()
    drop(world, "churn/s1/", 3)
    world.ingestor.on_blob_created(world.upload("churn/s1/_SUCCESS", b""))
    (request,) = world.due("marker")
    world.workspace.failures = 1
    with pytest.raises(ConnectionError):
        world.ingestor.on_seal_request(request)
    assert sealing_state(world, "churn/s1/") == BatchState.OPEN  # the claim was given back, not left sealing
    sealed = world.ingestor.on_seal_request(request)  # the queue redelivers at once: no lease to wait for
    assert (sealed.action, sealed.version) == (IngestAction.SEALED, "1")
    assert world.versions("churn") == ["1"] and [e.version for e in world.publisher.events] == ["1"]


def test_defect1_a_failed_announcement_during_a_seal_is_announced_by_the_retry(world: World) -> None:
    drop(world, "churn/s2/", 2)
    world.ingestor.on_blob_created(world.upload("churn/s2/_SUCCESS", b""))
    (request,) = world.due("marker")
    world.publisher.failures = 1
    with pytest.raises(ConnectionError):
        world.ingestor.on_seal_request(request)
    assert world.versions("churn") == ["1"] and world.publisher.events == []  # registered, never announced
    assert sealing_state(world, "churn/s2/") == BatchState.OPEN
    sealed = world.ingestor.on_seal_request(request)
    assert (sealed.action, sealed.version) == (IngestAction.SEALED, "1")
    assert world.versions("churn") == ["1"] and [e.version for e in world.publisher.events] == ["1"]
    assert world.ledger.open_work("ingest") == []


def test_defect1_a_lost_reply_from_azure_ml_is_adopted_after_the_lease(world: World) -> None:
    world.workspace = FlakyWorkspace()
    world.ingestor = world.instance()
    drop(world, "churn/s3/", 2)
    world.ingestor.on_blob_created(world.upload("churn/s3/_SUCCESS", b""))
    (request,) = world.due("marker")
    world.workspace.failures, world.workspace.lost_reply = 1, True
    with pytest.raises(ConnectionError):
        world.ingestor.on_seal_request(request)  # registered in Azure ML, the ledger never heard of it
    sealed = world.ingestor.on_seal_request(request)  # the claims were given back: the retry adopts the version
    assert (sealed.action, sealed.version) == (IngestAction.SEALED, "1")
    assert world.versions("churn") == ["1"]  # adopted by its Tag.SHA256, not registered twice
    assert [e.version for e in world.publisher.events] == ["1"]


def test_defect1_a_blob_overwritten_while_the_seal_hashes_it_releases_the_seal(world: World) -> None:
    class OverwriteOnce(MemoryBlobStore):
        armed = True

        def read(self, container: str, name: str, etag: str) -> Iterator[bytes]:
            if self.armed:
                self.armed = False
                self.put(container, name, b"newer\n")
            return super().read(container, name, etag)

    world.blobs = OverwriteOnce(clock=world.clock)
    world.ingestor = world.instance()
    world.blobs.put(CONTAINER, "churn/s4/lost.csv", b"old\n")  # its event was lost: the seal must hash it
    world.ingestor.on_blob_created(world.upload("churn/s4/_SUCCESS", b""))
    (request,) = world.due("marker")
    with pytest.raises(BlobChangedError):
        world.ingestor.on_seal_request(request)
    assert sealing_state(world, "churn/s4/") == BatchState.OPEN
    assert world.ingestor.on_seal_request(request).action is IngestAction.SEALED
    (version,) = world.workspace.data_versions("churn")
    newer = hashlib.sha256(b"newer\n").hexdigest()
    line = f"churn/s4/lost.csv\t{newer}\t6"
    assert version.spec.tags[Tag.SHA256.value] == hashlib.sha256(line.encode()).hexdigest()


def test_defect1_an_archived_blob_is_a_clear_audited_outcome_not_an_endless_retry(world: World) -> None:
    world.blobs = CountingStore(clock=world.clock)
    world.ingestor = world.instance()
    world.ingestor.on_blob_created(world.upload("churn/s5/a.csv", b"a\n"))
    world.blobs.put(CONTAINER, "churn/s5/cold.csv", b"cold\n", tier="Archive")  # no event; cannot be read
    world.ingestor.on_blob_created(world.upload("churn/s5/_SUCCESS", b""))
    world.clock.advance(1)
    sealed = world.ingestor.on_seal_request(world.due("marker")[0])
    assert sealed.action is IngestAction.SEALED and "left out" in sealed.detail and "churn/s5/cold.csv" in sealed.detail
    assert world.workspace.data_versions("churn")[0].spec.tags[Tag.FILES.value] == "1"
    assert world.audited()[-1].kind == "data.sealed" and "Archive tier" in world.audited()[-1].reason
    assert world.due() == [] and world.ledger.open_work("ingest") == []  # nothing keeps retrying
    assert "churn/s5/cold.csv" not in world.blobs.reads
    archived = world.upload("reference/cold.csv", b"cold\n")
    world.blobs.set_tier(CONTAINER, "reference/cold.csv", "Archive")
    ignored = world.ingestor.on_blob_created(archived)
    assert ignored.action is IngestAction.IGNORED and "Archive tier" in ignored.detail
    assert world.ingestor.on_blob_created(archived).action is IngestAction.DUPLICATE  # handled once, for good


def test_defect1b_a_reopened_batch_is_sealed_from_the_listing_without_downloading_known_files(world: World) -> None:
    world.blobs = CountingStore(clock=world.clock)
    world.ingestor = world.instance()
    names = drop(world, "churn/h/", 40)
    assert len(world.blobs.reads) == 40  # each file hashed once, on arrival
    world.ingestor.on_blob_created(world.upload("churn/h/_SUCCESS", b""))
    assert world.ingestor.on_seal_request(world.due("marker")[0]).action is IngestAction.SEALED
    assert len(world.blobs.reads) == 40  # the seal itself downloads nothing
    world.clock.advance(5)
    world.ingestor.on_blob_created(world.upload("churn/h/late.csv", b"late\n"))  # reopens generation 2
    assert world.blobs.reads[-1] == "churn/h/late.csv" and len(world.blobs.reads) == 41
    world.clock.advance(31)
    sealed = world.ingestor.on_seal_request(world.due("quiet-period")[-1])
    assert (sealed.action, sealed.version) == (IngestAction.SEALED, "2")
    assert len(world.blobs.reads) == 41  # generation 1's 40 files come from their covered rows: no re-hash
    assert world.publisher.events[-1].files == tuple(sorted([*names, "churn/h/late.csv"]))
    covered = world.ledger.covered_files("churn", "churn/h/")
    assert {n: r["Version"] for n, r in covered.items()} == {**dict.fromkeys(names, "1"), "churn/h/late.csv": "2"}


def test_defect8_a_file_event_while_its_batch_is_sealed_is_recorded_and_sealed_next(world: World) -> None:
    class ListThenUpload(MemoryBlobStore):
        """A file lands and its event is handled right after the sealer listed the folder."""

        hook: list[object] = []

        def list(self, container: str, prefix: str) -> Iterator[BlobFacts]:
            listed = list(super().list(container, prefix))
            while self.hook:
                outcomes.append(world.instance().on_blob_created(world.upload("churn/m/c.csv", b"c\n")))
                self.hook.pop()
            return iter(listed)

    outcomes: list[IngestOutcome] = []
    world.blobs = ListThenUpload(clock=world.clock)
    world.ingestor = world.instance()
    drop(world, "churn/m/", 2)
    world.ingestor.on_blob_created(world.upload("churn/m/_SUCCESS", b""))
    world.blobs.hook.append(True)
    first = world.ingestor.on_seal_request(world.due("marker")[0])
    assert [o.action for o in outcomes] == [IngestAction.BATCHED]  # before: ClaimInProgressError, HTTP 500
    assert (first.action, first.version) == (IngestAction.SEALED, "1")
    assert world.workspace.data_versions("churn")[0].spec.tags[Tag.FILES.value] == "2"
    batch = world.ledger.get_batch("churn", "churn/m/")
    assert batch is not None and (batch.generation, batch.state) == (2, BatchState.OPEN)  # the seal reopened it
    world.clock.advance(31)
    second = world.ingestor.on_seal_request(world.due("quiet-period")[-1])
    assert (second.action, second.version) == (IngestAction.SEALED, "2")
    assert world.publisher.events[-1].files == ("churn/m/c.csv", "churn/m/part-000.csv", "churn/m/part-001.csv")
    assert world.ledger.open_work("ingest") == []


def test_defect8_a_burst_with_the_marker_mid_way_never_fails_and_loses_no_file(world: World) -> None:
    names = [f"churn/burst/part-{i:04d}.csv" for i in range(300)]
    instances = [world.instance() for _ in range(4)]
    errors: list[BaseException] = []
    outcomes: list[IngestOutcome] = []
    lock = threading.Lock()

    def deliver(index: int) -> None:
        try:
            name = names[index]
            event = world.upload(name, f"row,{name}\n".encode())
            results = [instances[index % 4].on_blob_created(event), instances[(index + 1) % 4].on_blob_created(event)]
            if index == 150:  # the marker lands mid-way; its seal runs while files keep arriving
                marker = world.upload("churn/burst/_SUCCESS", b"")
                results.append(instances[0].on_blob_created(marker))
                results.append(instances[1].on_seal_request(SealRequest("churn", "churn/burst/", 1, "marker")))
            with lock:
                outcomes.extend(results)
        except BaseException as exc:  # collected: the test asserts there are none
            errors.append(exc)

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(deliver, range(len(names))))
    assert errors == []
    assert not [o for o in outcomes if o.action not in (IngestAction.BATCHED, IngestAction.DUPLICATE,
                                                          IngestAction.SEALED, IngestAction.WAITING)]
    for _ in range(20):  # the platform: deliver what is due, move time on, until nothing is left
        for message in world.queue.due():
            world.instance().on_seal_request(message.item)
            world.queue.complete(message)
        if not len(world.queue):
            break
        world.clock.advance(31)
    assert len(world.queue) == 0 and len(world.retries) == 0
    covered = world.ledger.covered_files("churn", "churn/burst/")
    assert sorted(covered) == names  # every file is in exactly one version: the first that covered it
    assert world.publisher.events[-1].files == tuple(names)  # and the newest version holds them all
    versions = world.workspace.data_versions("churn")
    assert len({v.spec.tags[Tag.SHA256.value] for v in versions}) == len(versions) <= 3
    assert world.ledger.open_work("ingest") == []


# -- reconcile: re-drive what is stuck -------------------------------------------------------------------
def test_reconcile_seals_a_batch_whose_sealer_died_and_whose_request_was_lost(world: World) -> None:
    drop(world, "churn/r1/", 2)
    world.ingestor.on_blob_created(world.upload("churn/r1/_SUCCESS", b""))
    world.due()  # the messages are lost (poisoned, or the queue was purged)
    batch = world.ledger.get_batch("churn", "churn/r1/")
    assert batch is not None and world.ledger.claim_seal(batch, owner="dead", reason="marker") is not None
    assert world.ingestor.reconcile(world.clock()) == []  # the lease is alive: nothing is stuck yet
    world.clock.advance(CLAIM_LEASE.total_seconds() + 1)
    (outcome,) = world.ingestor.reconcile(world.clock())
    assert (outcome.action, outcome.version) == (IngestAction.SEALED, "1") and "lease expired" in outcome.detail
    assert world.audited()[-1].kind == "data.redriven" and world.audited()[-1].decision == "sealed"
    assert world.ingestor.reconcile(world.clock()) == [] and world.ledger.open_work("ingest") == []


def test_reconcile_seals_an_open_batch_whose_quiet_period_request_was_lost(world: World) -> None:
    drop(world, "churn/r2/", 2)
    world.due()
    world.clock.advance(31)
    assert world.ingestor.reconcile(world.clock()) == []  # its request may still be on its way
    world.clock.advance(REDRIVE_GRACE.total_seconds())
    (outcome,) = world.ingestor.reconcile(world.clock())
    assert outcome.action is IngestAction.SEALED and "quiet period" in outcome.detail
    assert world.versions("churn") == ["1"] and [e.version for e in world.publisher.events] == ["1"]


def test_reconcile_finishes_content_whose_holder_died_adopting_what_it_registered(world: World) -> None:
    world.workspace = FlakyWorkspace()
    world.ingestor = world.instance()
    world.workspace.die = True
    with pytest.raises(ProcessDied):  # registered; then the process died, and the event was dead-lettered
        world.ingestor.on_blob_created(world.upload("reference/r.csv", b"r\n"))
    assert world.ingestor.reconcile(world.clock()) == []
    world.clock.advance(CLAIM_LEASE.total_seconds() + 1)
    (outcome,) = world.ingestor.reconcile(world.clock())
    assert (outcome.action, outcome.version) == (IngestAction.REGISTERED, "1") and "pending" in outcome.detail
    assert world.versions("ref") == ["1"]
    (event,) = world.publisher.events
    assert event.files == ("reference/r.csv",) and event.file_count == 1
    assert world.ingestor.reconcile(world.clock()) == [] and world.ledger.open_work("ingest") == []


def test_reconcile_announces_content_registered_but_never_published(world: World) -> None:
    world.publisher.failures = 1
    with pytest.raises(ConnectionError):
        world.ingestor.on_blob_created(world.upload("reference/r.csv", b"r\n"))
    world.clock.advance(CLAIM_LEASE.total_seconds() + 1)
    (outcome,) = world.ingestor.reconcile(world.clock())
    assert outcome.action is IngestAction.REGISTERED and "registered past its lease" in outcome.detail
    assert world.versions("ref") == ["1"] and [e.version for e in world.publisher.events] == ["1"]


def test_finished_work_leaves_the_open_work_index_empty(world: World) -> None:
    drop(world, "churn/r3/", 3)
    world.ingestor.on_blob_created(world.upload("churn/r3/_SUCCESS", b""))
    world.ingestor.on_blob_created(world.upload("reference/a.csv", b"a\n"))
    assert len(world.ledger.open_work("ingest")) == 1  # the open batch
    world.ingestor.on_seal_request(world.due("marker")[0])
    assert world.ledger.open_work("ingest") == []


def test_defect1_a_sealer_that_dies_mid_seal_is_taken_over_after_its_lease(world: World) -> None:
    world.workspace = FlakyWorkspace()
    world.ingestor = world.instance()
    drop(world, "churn/d/", 2)
    world.ingestor.on_blob_created(world.upload("churn/d/_SUCCESS", b""))
    (request,) = world.due("marker")
    world.workspace.die = True
    with pytest.raises(ProcessDied):  # registered in Azure ML, then the host died: nothing was given back
        world.ingestor.on_seal_request(request)
    assert sealing_state(world, "churn/d/") == BatchState.SEALING
    redelivered = world.instance().on_seal_request(request)  # before: SKIPPED, and the message completed
    assert redelivered.action is IngestAction.WAITING
    world.clock.advance(CLAIM_LEASE.total_seconds() + 2)
    (again,) = world.due("marker")
    sealed = world.instance().on_seal_request(again)
    assert (sealed.action, sealed.version) == (IngestAction.SEALED, "1")
    assert world.versions("churn") == ["1"] and [e.version for e in world.publisher.events] == ["1"]
    assert world.ledger.open_work("ingest") == []


# -- issue 11: a dead holder costs one configured lease (EVERGREEN_LEASE_SECONDS), not ten minutes ----------
SHORT = Leases.of(30)


def test_defect1_a_sealer_that_dies_mid_seal_costs_one_configured_lease_not_ten_minutes(clock: FakeClock) -> None:
    world = World(clock, workspace=FlakyWorkspace(), leases=SHORT)
    drop(world, "churn/short/", 2)
    world.ingestor.on_blob_created(world.upload("churn/short/_SUCCESS", b""))
    (request,) = world.due("marker")
    world.workspace.die = True
    with pytest.raises(ProcessDied):  # registered in Azure ML, then the host died holding the seal
        world.ingestor.on_seal_request(request)
    batch = world.ledger.get_batch("churn", "churn/short/")
    assert batch is not None and batch.lease_until == clock() + SHORT.seal  # the ledger wrote the short lease
    world.clock.advance(SHORT.seal.total_seconds() - 1)
    assert world.instance().reconcile(world.clock()) == []  # still its holder's
    world.clock.advance(2)  # before: the seal stayed the dead holder's for 10 minutes
    (outcome,) = world.instance().reconcile(world.clock())
    assert (outcome.action, outcome.version) == (IngestAction.SEALED, "1") and "lease expired" in outcome.detail
    assert world.versions("churn") == ["1"] and [e.version for e in world.publisher.events] == ["1"]
    assert world.ledger.open_work("ingest") == []


def test_defect8_a_registrar_that_dies_costs_one_configured_lease_and_waiters_come_back_then(clock: FakeClock) -> None:
    world = World(clock, workspace=FlakyWorkspace(), leases=SHORT)
    event = world.upload("reference/short.csv", b"s\n")
    world.workspace.die = True
    with pytest.raises(ProcessDied):  # the content is registered; its registrar died holding the claim
        world.ingestor.on_blob_created(event)
    waiting = world.instance().on_blob_created(event)  # a redelivery: the claim is live, so it re-schedules itself
    assert waiting.action is IngestAction.WAITING
    (retry,) = world.retries.items()
    assert world.retries.due() == []
    world.clock.advance(SHORT.content.total_seconds() + 1)  # before: due only after 10 minutes
    (message,) = world.retries.due()
    assert message.item == retry
    done = world.instance().on_blob_created(message.item)
    assert (done.action, done.version) == (IngestAction.REGISTERED, "1")
    assert world.versions("ref") == ["1"] and len(world.publisher.events) == 1
    assert world.ledger.open_work("ingest") == []
