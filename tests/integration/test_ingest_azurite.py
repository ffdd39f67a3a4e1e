"""The ingestion domain against real Azurite storage and tables, with hand-written Azure ML and
Event Grid stand-ins (the full path through the emulators is covered by tests/e2e)."""

from __future__ import annotations

import hashlib
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
from azure.data.tables import TableServiceClient
from azure.storage.blob import BlobServiceClient

from shared.aml import DataVersionSpec, RegisteredDataVersion
from shared.events import BlobCreated, DataVersionRegistered, SealRequest
from shared.ingest import Ingestor
from shared.ledger import Ledger
from shared.policy import parse_policy

pytestmark = pytest.mark.integration


class FakeRegistry:
    """Auto-incrementing data versions, like the service; thread-safe; counts registrations."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.versions: list[DataVersionSpec] = []

    def register_data_version(self, spec: DataVersionSpec) -> RegisteredDataVersion:
        with self.lock:
            self.versions.append(spec)
            return RegisteredDataVersion(spec.name, str(len(self.versions)), spec.uri)

    def find_data_version(self, name, tag, value):
        with self.lock:
            for i, spec in enumerate(self.versions, 1):
                if spec.name == name and spec.tags.get(tag) == value:
                    return RegisteredDataVersion(name, str(i), spec.uri)
        return None


class FakePublisher:
    def __init__(self) -> None:
        self.events: list[DataVersionRegistered] = []

    def data_version_registered(self, event: DataVersionRegistered) -> str:
        self.events.append(event)
        return event.event_id


class FakeAudit:
    def __init__(self) -> None:
        self.records = []

    def record(self, rec) -> None:
        self.records.append(rec)


class FakeSealQueue:
    def __init__(self) -> None:
        self.requests: list[tuple[SealRequest, float]] = []
        self.lock = threading.Lock()

    def send(self, request: SealRequest, delay_seconds: float) -> None:
        with self.lock:
            self.requests.append((request, delay_seconds))


@pytest.fixture
def world(azurite):
    run = uuid.uuid4().hex[:8]
    container = f"landing{run}"
    blobs = BlobServiceClient.from_connection_string(azurite.connection_string)
    blobs.create_container(container)
    table = TableServiceClient.from_connection_string(azurite.connection_string).create_table(f"ledger{run}")
    policy = parse_policy({"datasets": [
        {"name": "churn", "container": container, "prefix": "churn/", "type": "uri_folder", "datastore": "landing",
         "batch": {"marker": "_SUCCESS", "quiet_period_seconds": 30}},
        {"name": "ref", "container": container, "prefix": "reference/", "type": "uri_file", "datastore": "landing"},
    ]})
    registry, publisher, queue, audit = FakeRegistry(), FakePublisher(), FakeSealQueue(), FakeAudit()

    def make_instance() -> Ingestor:  # a separate "Function instance": own clients, same storage
        return Ingestor(policy=policy, blobs=BlobServiceClient.from_connection_string(azurite.connection_string),
                        ledger=Ledger(table), registry=registry, publisher=publisher, seal_queue=queue,
                        audit=audit)

    class World:
        pass

    w = World()
    w.audit = audit
    w.container, w.blobs, w.registry, w.publisher, w.queue, w.make_instance = (
        container, blobs.get_container_client(container), registry, publisher, queue, make_instance)
    w.ingestor = make_instance()

    def upload(name: str, data: bytes) -> BlobCreated:
        client = w.blobs.upload_blob(name, data, overwrite=True)
        return BlobCreated(container, name, client.url)

    w.upload = upload
    return w


def test_file_dataset_dedupes_redeliveries_and_identical_content(world):
    event = world.upload("reference/regions.csv", b"region,code\nnorth,N\n")
    first = world.ingestor.on_blob_created(event)
    assert (first.action, first.version) == ("registered", "1")
    spec = world.registry.versions[0]
    assert spec.uri == "azureml://datastores/landing/paths/reference/regions.csv"
    assert spec.tags["evergreen.sha256"] == hashlib.sha256(b"region,code\nnorth,N\n").hexdigest()
    assert spec.tags["evergreen.source_url"] == event.url
    assert world.ingestor.on_blob_created(event).action == "duplicate"  # same URL + eTag again
    copy = world.upload("reference/regions copy é.csv", b"region,code\nnorth,N\n")
    dup = world.ingestor.on_blob_created(copy)
    assert dup.action == "duplicate" and "already registered as ref:1" in dup.detail
    changed = world.upload("reference/regions.csv", b"region,code\nnorth,N\nsouth,S\n")
    assert world.ingestor.on_blob_created(changed).version == "2"
    assert [e.version for e in world.publisher.events] == ["1", "2"]
    assert [r.kind for r in world.audit.records] == ["data.registered", "data.duplicate", "data.duplicate",
                                                     "data.registered"]
    assert world.audit.records[2].reason == "same content already registered as ref:1"
    assert len(world.registry.versions) == 2


def test_sha256_is_streamed_and_correct_for_large_blobs(world):
    data = bytes(range(256)) * (9 * 1024 * 16)  # 36 MiB: several download chunks
    event = world.upload("reference/big.bin", data)
    world.ingestor.on_blob_created(event)
    assert world.registry.versions[-1].tags["evergreen.sha256"] == hashlib.sha256(data).hexdigest()
    assert world.registry.versions[-1].tags["evergreen.size"] == str(len(data))


def test_empty_blobs_are_ignored_with_a_reason(world):
    outcome = world.ingestor.on_blob_created(world.upload("reference/empty.csv", b""))
    assert outcome.action == "ignored" and "empty" in outcome.detail
    assert world.registry.versions == []


def test_burst_of_500_files_becomes_one_version_none_lost_none_twice(world):
    names = [f"churn/drop1/part-{i:04d}.csv" for i in range(500)]
    with ThreadPoolExecutor(16) as pool:
        events = list(pool.map(lambda n: world.upload(n, f"row,{n}\n".encode()), names))
    instances = [world.make_instance() for _ in range(4)]
    # every event delivered twice, by different instances, concurrently
    deliveries = [(instances[i % 4], e) for i, e in enumerate(events + events)]
    with ThreadPoolExecutor(8) as pool:
        outcomes = list(pool.map(lambda d: d[0].on_blob_created(d[1]), deliveries))
    assert sum(o.action == "batched" for o in outcomes) == 500
    assert sum(o.action == "duplicate" for o in outcomes) == 500
    marker = world.upload("churn/drop1/_SUCCESS", b"")
    assert world.ingestor.on_blob_created(marker).action == "batched"
    seal_requests = [r for r, _ in world.queue.requests if r.reason == "marker"]
    assert len(seal_requests) == 1
    # the seal request is handled by four instances at once: exactly one seals
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda inst: inst.on_seal_request(seal_requests[0]), instances))
    assert sorted(r.action for r in results).count("sealed") == 1
    assert len(world.registry.versions) == 1
    spec = world.registry.versions[0]
    assert spec.uri == "azureml://datastores/landing/paths/churn/drop1/"
    assert spec.tags["evergreen.files"] == "500"
    (event,) = world.publisher.events
    assert event.file_count == 500 and sorted(event.files) == sorted(names)
    # a late redelivery of an already covered file changes nothing
    late = world.make_instance().on_blob_created(events[7])
    assert late.action == "duplicate"
    assert len(world.registry.versions) == 1


def test_files_whose_events_never_arrived_are_still_counted(world):
    world.upload("churn/drop2/a.csv", b"a\n")
    world.upload("churn/drop2/b.csv", b"b\n")  # its event is "lost"
    world.ingestor.on_blob_created(world.upload("churn/drop2/a.csv", b"a\n"))
    world.ingestor.on_blob_created(world.upload("churn/drop2/_SUCCESS", b""))
    request = next(r for r, _ in world.queue.requests if r.reason == "marker")
    assert world.ingestor.on_seal_request(request).action == "sealed"
    assert world.registry.versions[0].tags["evergreen.files"] == "2"


def test_late_new_file_reopens_the_batch_as_a_new_version(world):
    world.ingestor.on_blob_created(world.upload("churn/drop3/a.csv", b"a\n"))
    world.ingestor.on_blob_created(world.upload("churn/drop3/_SUCCESS", b""))
    world.ingestor.on_seal_request(next(r for r, _ in world.queue.requests if r.reason == "marker"))
    late = world.ingestor.on_blob_created(world.upload("churn/drop3/c.csv", b"c\n"))
    assert late.action == "batched" and "generation 2" in late.detail
    request = [r for r, _ in world.queue.requests if r.reason == "quiet-period"][-1]
    assert request.generation == 2
    assert world.ingestor.on_seal_request(request).action == "waiting"  # quiet period not over yet
    assert [r.generation for r, _ in world.queue.requests][-1] == 2


def test_quiet_period_seals_without_a_marker(world):
    from datetime import timedelta

    from shared.ledger import utcnow

    world.ingestor.on_blob_created(world.upload("churn/drop4/a.csv", b"a\n"))
    request, delay = world.queue.requests[-1]
    assert (request.reason, delay) == ("quiet-period", 30)
    later = world.make_instance()
    later._clock = lambda: utcnow() + timedelta(seconds=31)  # the queue message becomes visible 30 s later
    assert later.on_seal_request(request).action == "sealed"
    assert world.registry.versions[0].tags["evergreen.sealed_by"] == "no new file for 30s"
