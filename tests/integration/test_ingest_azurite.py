"""Ingest on the real storage adapters (Azurite blobs and tables through AzureBlobStore and AzureTable),
with the in-memory registry, topic and queue. The behaviour itself is covered, fast, by
tests/services/test_ingest.py; these prove the same flow holds on the Azure SDKs' real semantics
(eTags, conditional downloads in chunks, listing, ETag-conditional table writes under concurrency)."""

from __future__ import annotations

import hashlib
import logging
import re
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import unquote

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
from shared.domain.vocabulary import BatchState, IngestAction, Tag
from shared.domain.workspace import DataVersionSpec, RegisteredDataVersion
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
        self.retries: MemoryDelayedQueue[BlobCreated] = MemoryDelayedQueue()
        self.audit = TableAuditLog(MemoryTable())
        self.ingestor = self.instance()

    def instance(self) -> Ingestor:
        """A separate "Function instance": its own SDK clients, the same storage."""
        blobs = AzureBlobStore(BlobServiceClient.from_connection_string(self.connection_string))
        return Ingestor(policy=self.policy, blobs=blobs, ledger=Ledger(AzureTable(self.table)),
                        registry=self.workspace, publisher=self.publisher, seal_queue=self.queue,
                        blob_retry=self.retries, audit=self.audit, sleep=time.sleep)

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


class FlakyWorkspace(MemoryWorkspace):
    """Azure ML that answers 503 to the next `failures` registrations and is slow (`delay`) otherwise."""

    def __init__(self) -> None:
        super().__init__()
        self.failures = 0
        self.delay = 0.0

    def register_data_version(self, spec: DataVersionSpec) -> RegisteredDataVersion:
        if self.failures:
            self.failures -= 1
            raise ConnectionError("Azure ML answered 503")
        time.sleep(self.delay)
        return super().register_data_version(spec)


def test_defect1_a_failed_seal_gives_its_claim_back_and_the_retry_seals(world: World) -> None:
    world.workspace = FlakyWorkspace()
    world.ingestor = world.instance()
    for i in range(3):
        world.ingestor.on_blob_created(world.upload(f"churn/s/part-{i}.csv", f"{i}\n".encode()))
    world.ingestor.on_blob_created(world.upload("churn/s/_SUCCESS", b""))
    request = world.marker_request()
    world.workspace.failures = 1
    with pytest.raises(ConnectionError):
        world.ingestor.on_seal_request(request)
    batch = Ledger(AzureTable(world.table)).get_batch("churn", "churn/s/")
    assert batch is not None and batch.state == BatchState.OPEN  # released with a real ETag-conditional write
    sealed = world.instance().on_seal_request(request)
    assert (sealed.action, sealed.version) == (IngestAction.SEALED, "1")
    assert [e.version for e in world.publisher.events] == ["1"]
    assert Ledger(AzureTable(world.table)).open_work("ingest") == []


def test_defect8_concurrent_duplicates_never_fail_on_real_etags(world: World) -> None:
    world.workspace = FlakyWorkspace()
    world.workspace.delay = 0.5  # the holder is slow: its duplicates find the claim pending
    event = world.upload("reference/r.csv", b"r\n")
    instances = [world.instance() for _ in range(4)]
    with ThreadPoolExecutor(4) as pool:
        outcomes = list(pool.map(lambda i: instances[i % 4].on_blob_created(event), range(8)))
    assert sum(o.action is IngestAction.REGISTERED for o in outcomes) == 1
    assert {o.action for o in outcomes} <= {IngestAction.REGISTERED, IngestAction.DUPLICATE, IngestAction.WAITING}
    assert len(world.retries) == sum(o.action is IngestAction.WAITING for o in outcomes)
    assert [v.version for v in world.workspace.data_versions("ref")] == ["1"]


# -- issue 12 ---------------------------------------------------------------------------------------------
def sas_connection_string(connection_string: str) -> str:
    """`DATA_STORAGE` as a SAS connection string: the blob endpoint and an account SAS, no key."""
    from azure.storage.blob import AccountSasPermissions, ResourceTypes, generate_account_sas

    parts = dict(p.split("=", 1) for p in connection_string.split(";") if p)
    sas = generate_account_sas(parts["AccountName"], parts["AccountKey"],
                               ResourceTypes(service=True, container=True, object=True),
                               AccountSasPermissions(read=True, write=True, delete=True, list=True, add=True,
                                                     create=True),
                               expiry=datetime.now(UTC) + timedelta(hours=1))
    return f"BlobEndpoint={parts['BlobEndpoint']};SharedAccessSignature={sas}"


def test_defect8_with_a_sas_connection_string_no_token_reaches_tags_ledger_audit_or_logs(
        world: World, caplog: pytest.LogCaptureFixture) -> None:
    """Upload → registered version (and an alias) through a SAS-authenticated client, as the blob trigger binds
    it: `client.url` carries `sig=`; no tag, ledger row, audit record, event or log line may.

    Logs: every logger at INFO (what the Functions host keeps), Evergreen's own at DEBUG too. urllib3's DEBUG
    lines print raw request URLs; they are off unless someone turns third-party DEBUG on."""
    caplog.set_level(logging.INFO)
    caplog.set_level(logging.DEBUG, logger="shared")
    connection = sas_connection_string(world.connection_string)
    signature = unquote(connection.split("sig=", 1)[1].split("&", 1)[0])
    sas_service = BlobServiceClient.from_connection_string(connection)
    audit_table = MemoryTable()
    ingestor = Ingestor(policy=world.policy, blobs=AzureBlobStore(sas_service), ledger=Ledger(AzureTable(world.table)),
                        registry=world.workspace, publisher=world.publisher, seal_queue=world.queue,
                        blob_retry=world.retries, audit=TableAuditLog(audit_table), sleep=time.sleep)
    landing = sas_service.get_container_client(world.container)
    body = b"region,code\nnorth,N\n"
    outcomes = []
    for name in ("reference/regions.csv", "reference/regions-copy.csv"):
        client = landing.upload_blob(name, body, overwrite=True)
        assert "sig=" in client.url  # the binding's url: the token is there to be leaked
        outcomes.append(ingestor.on_blob_created(BlobCreated(world.container, name, client.url)))
    assert [o.action for o in outcomes] == [IngestAction.REGISTERED, IngestAction.DUPLICATE]
    (version,) = world.workspace.data_versions("ref")
    # the version reads its snapshot, copied server-side through the SAS client
    path = version.spec.uri.split("/paths/", 1)[1]
    assert landing.download_blob(path).readall() == body
    ledger_rows = list(world.table.list_entities())
    audit_rows = [row.data for row in audit_table._rows.values()]
    stored = {"tags": repr(version.spec.tags), "event": repr(world.publisher.events), "ledger": repr(ledger_rows),
              "audit": repr(audit_rows), "logs": caplog.text}
    # the token's signature, raw or percent-encoded; the SDK's own request log prints `sig=REDACTED`
    leaked = {where: signature in unquote(text) or re.search(r"sig=(?!REDACTED)", text) is not None
              for where, text in stored.items()}
    assert leaked == dict.fromkeys(stored, False)
    assert ledger_rows and audit_rows and caplog.text  # there was something to leak into
