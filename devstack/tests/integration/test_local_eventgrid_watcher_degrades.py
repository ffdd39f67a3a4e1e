"""Defect 10 (issue 11), watcher half: one odd blob must not stop storage events for every other blob.

Azurite answers 500 for a container listing that holds a name with BEL, ESC or NUL; the watcher used to
abort its whole scan on it. Now the failure stays with that container (its known blobs are not reported
deleted), is logged once, and events for blobs elsewhere keep flowing.
"""

from __future__ import annotations

import uuid

import pytest
from azure.storage.blob import BlobServiceClient, ContainerClient

from devstack.testing.eventgrid import EventGridInfo, wait_until

pytestmark = pytest.mark.integration


def _container(eventgrid: EventGridInfo, prefix: str) -> ContainerClient:
    name = f"{prefix}-{uuid.uuid4().hex[:20]}"
    client = BlobServiceClient.from_connection_string(eventgrid.storage_connection_string).get_container_client(name)
    client.create_container()
    return client


def _log(eventgrid: EventGridInfo) -> str:
    return (eventgrid.state_dir / "logs" / "eventgrid.log").read_text(errors="replace")


@pytest.mark.parametrize("control", ["\x07", "\x1b", "\x00"], ids=["BEL", "ESC", "NUL"])
def test_defect10_an_unlistable_blob_does_not_stop_events_for_other_blobs(
    eventgrid: EventGridInfo, control: str
) -> None:
    odd_home, elsewhere = _container(eventgrid, "odd"), _container(eventgrid, "fine")
    odd_home.upload_blob("known.csv", b"known")
    eventgrid.receiver.wait_for(f"{odd_home.container_name}/blobs/known.csv", function="on_any_blob")
    odd_name = f"bad{control}name.csv"
    odd_home.upload_blob(odd_name, b"odd")
    try:
        strict = ContainerClient.from_connection_string(eventgrid.storage_connection_string,
                                                        odd_home.container_name, retry_total=0)
        with pytest.raises(Exception, match="Internal Server Error"):
            list(strict.list_blobs())  # the precondition: Azurite cannot list this container any more
        for i in range(3):
            elsewhere.upload_blob(f"after-{i}.csv", b"still flowing")
        events = eventgrid.receiver.wait_for(elsewhere.container_name, function="on_any_blob", count=3)
        assert sorted(e.event["subject"].rsplit("/", 1)[1] for e in events) == [f"after-{i}.csv" for i in range(3)]
        eventgrid.wait_scans(3)
        deleted = [r for r in eventgrid.receiver.matching(odd_home.container_name, "on_any_blob")
                   if r.event["eventType"] == "Microsoft.Storage.BlobDeleted"]
        assert deleted == [], "a container that cannot be listed must not look empty"
        health = eventgrid.get("/healthz")["watcher"]
        assert odd_home.container_name in (health["lastError"] or "")
        assert _log(eventgrid).count(f"cannot list container '{odd_home.container_name}'") == 1, "logged once"
    finally:
        odd_home.delete_blob(odd_name)
    odd_home.upload_blob("later.csv", b"back")
    eventgrid.receiver.wait_for(f"{odd_home.container_name}/blobs/later.csv", function="on_any_blob")
    wait_until(lambda: odd_home.container_name not in (eventgrid.get("/healthz")["watcher"]["lastError"] or ""),
               message="the watcher to clear the container's problem")
