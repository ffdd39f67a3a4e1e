"""The storage watcher: real-shaped blob events from Azurite, exactly once, for awkward blobs too."""

from __future__ import annotations

import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from azure.storage.blob import BlobBlock, BlobClient, BlobServiceClient, ContainerClient

from devstack.testing.eventgrid import EventGridInfo

pytestmark = pytest.mark.integration
SUBJECT = "/blobServices/default/containers/{}/blobs/{}"


@pytest.fixture
def container(eventgrid: EventGridInfo) -> ContainerClient:
    name = f"w-{uuid.uuid4().hex[:20]}"
    client = BlobServiceClient.from_connection_string(eventgrid.storage_connection_string).get_container_client(name)
    client.create_container()
    return client


def _events_for(eventgrid: EventGridInfo, receiver_token: str, count: int) -> list[dict[str, Any]]:
    requests = eventgrid.receiver.wait_for(receiver_token, function="on_any_blob", count=count)
    return [r.event for r in requests]


def test_blob_created_event_has_azure_shape(eventgrid: EventGridInfo, container: ContainerClient) -> None:
    blob = container.upload_blob("data/part 1.csv", b"a,b\n1,2\n", content_settings=None)
    props = blob.get_blob_properties()
    (event,) = _events_for(eventgrid, container.container_name, 1)
    assert event["eventType"] == "Microsoft.Storage.BlobCreated"
    assert event["subject"] == SUBJECT.format(container.container_name, "data/part 1.csv")
    assert event["topic"] == ("/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/evergreen-local"
                              "/providers/Microsoft.Storage/storageAccounts/devstoreaccount1")
    assert event["metadataVersion"] == "1" and event["dataVersion"] == ""
    assert event["eventTime"].endswith("Z") and event["id"]
    data = event["data"]
    assert data["api"] == "PutBlob"
    assert data["eTag"] == props.etag.strip('"')
    assert data["contentLength"] == 8 and isinstance(data["contentLength"], int)
    assert data["blobType"] == "BlockBlob"
    assert data["contentType"] == props.content_settings.content_type
    assert data["url"] == f"{container.url}/data/part%201.csv"
    assert len(data["sequencer"]) == 48 and int(data["sequencer"], 16) > 0
    assert data["requestId"] and data["clientRequestId"] and data["storageDiagnostics"]["batchId"]


def test_overwrite_emits_a_new_event_with_the_new_etag(eventgrid: EventGridInfo, container: ContainerClient) -> None:
    first = container.upload_blob("model.json", b"{}").get_blob_properties().etag
    (created,) = _events_for(eventgrid, container.container_name, 1)
    second = container.upload_blob("model.json", b'{"v": 2}', overwrite=True).get_blob_properties().etag
    events = _events_for(eventgrid, container.container_name, 2)
    assert [e["data"]["eTag"] for e in events] == [first.strip('"'), second.strip('"')]
    assert events[0]["id"] == created["id"] and events[1]["id"] != created["id"]
    assert events[1]["data"]["contentLength"] == 8
    assert events[0]["data"]["sequencer"] < events[1]["data"]["sequencer"]


def test_block_list_upload_reports_put_block_list(eventgrid: EventGridInfo, container: ContainerClient) -> None:
    blob = container.get_blob_client("big.bin")
    blob.stage_block("b1", b"x" * 10)
    blob.stage_block("b2", b"y" * 5)
    blob.commit_block_list([BlobBlock("b1"), BlobBlock("b2")])
    (event,) = _events_for(eventgrid, container.container_name, 1)
    assert event["data"]["api"] == "PutBlockList" and event["data"]["contentLength"] == 15


def test_awkward_names_and_empty_blobs(eventgrid: EventGridInfo, container: ContainerClient) -> None:
    # Dot segments ("a/../b") cannot be written at all: the SDK signs the path, the transport normalises it.
    names = ["with space/and  two.csv", "ünïcødé/日本語 ✓.txt", "x/..y/z..csv", "..dots", "q?x#y&z=%41.csv",
             "l/" + "n" * 900, "empty.csv"]
    for name in names:
        container.upload_blob(name, b"" if name == "empty.csv" else b"1")
    stored = sorted(b.name for b in container.list_blobs())
    events = _events_for(eventgrid, container.container_name, len(stored))
    prefix = SUBJECT.format(container.container_name, "")
    assert sorted(e["subject"].removeprefix(prefix) for e in events) == stored
    for event in events:
        name = event["subject"].removeprefix(prefix)
        assert BlobClient.from_blob_url(event["data"]["url"]).blob_name == name
    (empty,) = [e for e in events if e["subject"].endswith("/empty.csv")]
    assert empty["data"]["contentLength"] == 0


def test_deleted_blob_emits_blob_deleted(eventgrid: EventGridInfo, container: ContainerClient) -> None:
    container.upload_blob("gone.csv", b"1")
    _events_for(eventgrid, container.container_name, 1)
    container.delete_blob("gone.csv")
    deleted = _events_for(eventgrid, container.container_name, 2)[1]
    assert deleted["eventType"] == "Microsoft.Storage.BlobDeleted"
    assert deleted["data"]["api"] == "DeleteBlob"
    assert deleted["subject"] == SUBJECT.format(container.container_name, "gone.csv")


def test_landing_subscription_routes_only_landing_blobs_to_the_blob_trigger(
    eventgrid: EventGridInfo, container: ContainerClient
) -> None:
    token = uuid.uuid4().hex
    service = BlobServiceClient.from_connection_string(eventgrid.storage_connection_string)
    landing = service.get_container_client("landing")
    if not landing.exists():
        landing.create_container()
    landing.upload_blob(f"{token}.csv", b"1")
    container.upload_blob(f"{token}.csv", b"1")
    (request,) = eventgrid.receiver.wait_for(token, function="on_blob_created")
    assert request.path == "/runtime/webhooks/blobs?functionName=Host.Functions.on_blob_created"
    assert request.event["subject"] == SUBJECT.format("landing", f"{token}.csv")
    eventgrid.receiver.wait_for(token, function="on_any_blob", count=2)
    eventgrid.wait_scans()
    assert len(eventgrid.receiver.matching(token, "on_blob_created")) == 1


def test_burst_of_500_blobs_gives_exactly_500_events(eventgrid: EventGridInfo, container: ContainerClient) -> None:
    names = [f"burst/{i:04d}.csv" for i in range(500)]
    with ThreadPoolExecutor(max_workers=16) as pool:
        list(pool.map(lambda n: container.upload_blob(n, n.encode()), names))
    events = _events_for(eventgrid, container.container_name, 500)
    eventgrid.wait_scans()
    prefix = SUBJECT.format(container.container_name, "")
    published = eventgrid.get("/events", topic="storage", subject=prefix, limit=5000)
    assert Counter(p["event"]["subject"] for p in published) == Counter(prefix + n for n in names)
    assert len(eventgrid.receiver.matching(container.container_name, "on_any_blob")) == 500
    assert sorted(e["subject"].removeprefix(prefix) for e in events) == names
