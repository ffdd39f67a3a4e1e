"""Ingest on the real storage adapters (Azurite blobs and tables through AzureBlobStore and AzureTable),
with the in-memory registry, topic and queue. The behaviour itself is covered, fast, by
tests/services/test_ingest.py; these prove the same flow holds on the Azure SDKs' real semantics
(eTags, conditional downloads in chunks, listing, ETag-conditional table writes under concurrency)."""

from __future__ import annotations

import hashlib
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import pytest
from azure.data.tables import TableServiceClient
from azure.storage.blob import BlobServiceClient, ContainerClient

from shared.adapters.azure.blobs import AzureBlobStore
from shared.adapters.azure.tables import AzureTable
from shared.adapters.memory.azureml import MemoryWorkspace
from shared.adapters.memory.eventgrid import MemoryEventPublisher
from shared.adapters.memory.queues import MemoryDelayedQueue
from shared.adapters.memory.tables import MemoryTable
from shared.config.policy import Policy, parse_policy
from shared.domain.events import BlobCreated, SealRequest
from shared.domain.vocabulary import IngestAction, Tag
from shared.services.audit import TableAuditLog
from shared.services.ingest import Ingestor
from shared.services.ledger import Ledger

pytestmark = pytest.mark.integration


@dataclass
class World:
    connection_string: str
    container: str
    container_client: ContainerClient
    table: Any
    policy: Policy

    def __post_init__(self) -> None:
        self.workspace = MemoryWorkspace()
        self.publisher = MemoryEventPublisher()
        self.queue: MemoryDelayedQueue[SealRequest] = MemoryDelayedQueue()
        self.audit = TableAuditLog(MemoryTable())
        self.ingestor = self.instance()

    def instance(self) -> Ingestor:
        """A separate "Function instance": its own SDK clients, the same storage."""
        blobs = AzureBlobStore(BlobServiceClient.from_connection_string(self.connection_string))
        return Ingestor(policy=self.policy, blobs=blobs, ledger=Ledger(AzureTable(self.table)),
                        registry=self.workspace, publisher=self.publisher, seal_queue=self.queue, audit=self.audit)

    def upload(self, name: str, data: bytes) -> BlobCreated:
        client = self.container_client.upload_blob(name, data, overwrite=True)
        return BlobCreated(self.container, name, client.url)

    def marker_request(self) -> SealRequest:
        return next(r for r in self.queue.items() if r.reason == "marker")


@pytest.fixture
def world(azurite: Any) -> World:
    run = uuid.uuid4().hex[:8]
    container = f"landing{run}"
    service = BlobServiceClient.from_connection_string(azurite.connection_string)
    service.create_container(container)
    table = TableServiceClient.from_connection_string(azurite.connection_string).create_table(f"ledger{run}")
    policy = parse_policy({"datasets": [
        {"name": "churn", "container": container, "prefix": "churn/", "type": "uri_folder", "datastore": "landing",
         "batch": {"marker": "_SUCCESS", "quiet_period_seconds": 30}},
        {"name": "ref", "container": container, "prefix": "reference/", "type": "uri_file", "datastore": "landing"},
    ]})
    return World(azurite.connection_string, container, service.get_container_client(container), table, policy)


def test_file_dataset_dedupes_redeliveries_and_identical_content(world: World) -> None:
    event = world.upload("reference/regions.csv", b"region,code\nnorth,N\n")
    first = world.ingestor.on_blob_created(event)
    assert (first.action, first.version) == (IngestAction.REGISTERED, "1")
    assert world.ingestor.on_blob_created(event).action is IngestAction.DUPLICATE  # same URL + eTag again
    copy = world.upload("reference/regions copy é.csv", b"region,code\nnorth,N\n")
    assert world.ingestor.on_blob_created(copy).action is IngestAction.DUPLICATE
    changed = world.upload("reference/regions.csv", b"region,code\nnorth,N\nsouth,S\n")
    assert world.ingestor.on_blob_created(changed).version == "2"
    assert [e.version for e in world.publisher.events] == ["1", "2"]


def test_sha256_is_streamed_and_correct_for_large_blobs(world: World) -> None:
    data = bytes(range(256)) * (9 * 1024 * 16)  # 36 MiB: more than one download (the SDK's first GET is 32 MiB)
    world.ingestor.on_blob_created(world.upload("reference/big.bin", data))
    (version,) = world.workspace.data_versions("ref")
    assert version.spec.tags[Tag.SHA256.value] == hashlib.sha256(data).hexdigest()
    assert version.spec.tags[Tag.SIZE.value] == str(len(data))


def test_burst_of_files_from_concurrent_instances_becomes_one_version(world: World) -> None:
    names = [f"churn/drop1/part-{i:04d}.csv" for i in range(200)]
    with ThreadPoolExecutor(8) as pool:
        events = list(pool.map(lambda n: world.upload(n, f"row,{n}\n".encode()), names))
    instances = [world.instance() for _ in range(4)]
    deliveries = [(instances[i % 4], e) for i, e in enumerate(events + events)]  # every event twice, concurrently
    with ThreadPoolExecutor(8) as pool:
        outcomes = list(pool.map(lambda d: d[0].on_blob_created(d[1]), deliveries))
    # Two copies of one event racing past the blobs-seen check both answer BATCHED; the file's batch row is
    # an idempotent upsert, so the version below still holds each file once.
    batched = sum(o.action is IngestAction.BATCHED for o in outcomes)
    assert batched >= 200 and batched + sum(o.action is IngestAction.DUPLICATE for o in outcomes) == 400
    world.ingestor.on_blob_created(world.upload("churn/drop1/_SUCCESS", b""))
    request = world.marker_request()
    with ThreadPoolExecutor(4) as pool:  # one seal request, four instances at once: exactly one seals
        results = list(pool.map(lambda inst: inst.on_seal_request(request), instances))
    assert [r.action for r in results].count(IngestAction.SEALED) == 1
    (version,) = world.workspace.data_versions("churn")
    assert version.spec.tags[Tag.FILES.value] == "200"
    (event,) = world.publisher.events
    assert sorted(event.files) == names


def test_files_whose_events_never_arrived_are_found_by_the_listing(world: World) -> None:
    world.upload("churn/drop2/b.csv", b"b\n")  # its event is "lost"
    world.ingestor.on_blob_created(world.upload("churn/drop2/a.csv", b"a\n"))
    world.ingestor.on_blob_created(world.upload("churn/drop2/_SUCCESS", b""))
    assert world.ingestor.on_seal_request(world.marker_request()).action is IngestAction.SEALED
    (version,) = world.workspace.data_versions("churn")
    assert version.spec.tags[Tag.FILES.value] == "2"
