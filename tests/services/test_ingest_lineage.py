"""Issue 12, lineage: a registered data version always reads the bytes it was registered with, an upload of
content a version already holds is recorded as that version's alias, and no SAS token is ever stored or logged.

On the in-memory adapters (the same `World` as tests/services/test_ingest.py). What a version "reads" is
what a job would get from its path: the blobs under its URI in the landing container.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator
from typing import Any
from urllib.parse import unquote

import pytest

from shared.adapters.memory.tables import MemoryTable
from shared.domain.events import BlobCreated
from shared.domain.ingest import SNAPSHOT_ROOT
from shared.domain.vocabulary import IngestAction, Tag
from shared.errors import BlobChangedError
from shared.services.audit import TableAuditLog
from tests.services.conftest import FakeClock
from tests.services.test_ingest import CONTAINER, World

PREFIX = "azureml://datastores/landing/paths/"
SAS = "?sv=2024-08-04&ss=b&srt=sco&sp=rwdlac&se=2030-01-01T00%3A00%3A00Z&sig=c2VjcmV0LXNpZ25hdHVyZQ%3D%3D"


class ScannableTable(MemoryTable):
    """A `MemoryTable` a test can read whole: every row of every partition."""

    def entities(self) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(row.data) for row in self._rows.values()]


@pytest.fixture
def world(clock: FakeClock) -> Iterator[World]:
    yield World(clock)


def reads(world: World, uri: str) -> dict[str, bytes]:
    """What a job reading the version's path gets: blob name (relative to the path) → bytes."""
    assert uri.startswith(PREFIX), uri
    path = unquote(uri[len(PREFIX):])
    if not path.endswith("/"):  # uri_file: the one blob
        data = world.blobs.content(CONTAINER, path)
        return {path.rsplit("/", 1)[-1]: data} if data is not None else {}
    return {f.name[len(path):]: world.blobs.content(CONTAINER, f.name) or b""
            for f in world.blobs.list(CONTAINER, path)}


def seal(world: World, folder: str) -> None:
    world.ingestor.on_blob_created(world.upload(f"{folder}_SUCCESS", b""))
    (request,) = world.due("marker")
    assert world.ingestor.on_seal_request(request).action is IngestAction.SEALED


# -- defect 7: data versions are immutable --------------------------------------------------------------
def test_defect7_a_folder_version_keeps_reading_its_generation_after_the_folder_changes(world: World) -> None:
    """Before: every generation registered the same folder path, so version 1 read version 2's files."""
    folder = "churn/drop1/"
    world.ingestor.on_blob_created(world.upload(f"{folder}a.csv", b"id,churned\n1,0\n"))
    seal(world, folder)
    world.clock.advance(60)
    world.ingestor.on_blob_created(world.upload(f"{folder}a.csv", b"id,churned\n1,1\n"))  # overwritten in place
    world.ingestor.on_blob_created(world.upload(f"{folder}b.csv", b"id,churned\n2,0\n"))
    seal(world, folder)
    first, second = world.workspace.data_versions("churn")
    assert first.spec.uri != second.spec.uri
    assert reads(world, first.spec.uri) == {"a.csv": b"id,churned\n1,0\n"}  # not the marker, not b.csv
    assert reads(world, second.spec.uri) == {"a.csv": b"id,churned\n1,1\n", "b.csv": b"id,churned\n2,0\n"}
    sha = first.spec.tags[Tag.SHA256.value]
    assert first.spec.uri == f"{PREFIX}{SNAPSHOT_ROOT}churn/{sha}/"
    assert first.spec.tags[Tag.SOURCE_FOLDER.value] == f"{CONTAINER}/{folder}"  # where it came from, still
    world.blobs.delete(CONTAINER, f"{folder}a.csv")  # the landing folder is a staging area
    assert reads(world, first.spec.uri) == {"a.csv": b"id,churned\n1,0\n"}


def test_defect7_an_overwritten_file_does_not_change_the_version_registered_before(world: World) -> None:
    """Before: an in-place overwrite of a uri_file blob reused its path, so version 1 read version 2's bytes."""
    world.ingestor.on_blob_created(world.upload("reference/regions.csv", b"region\nnorth\n"))
    world.clock.advance(1)
    world.ingestor.on_blob_created(world.upload("reference/regions.csv", b"region\nnorth\nsouth\n"))
    first, second = world.workspace.data_versions("ref")
    assert reads(world, first.spec.uri) == {"regions.csv": b"region\nnorth\n"}
    assert reads(world, second.spec.uri) == {"regions.csv": b"region\nnorth\nsouth\n"}
    for version in (first, second):
        data = next(iter(reads(world, version.spec.uri).values()))
        assert hashlib.sha256(data).hexdigest() == version.spec.tags[Tag.SHA256.value]


def test_defect7_identical_content_under_a_new_name_is_recorded_as_an_alias_of_its_version(world: World) -> None:
    """Before: the copy belonged to no version and left no trace but a 'duplicate' line."""
    body = b"region\nnorth\n"
    world.ingestor.on_blob_created(world.upload("reference/regions.csv", body))
    world.clock.advance(1)
    copy = world.upload("reference/regions-copy.csv", body)
    outcome = world.ingestor.on_blob_created(copy)
    assert (outcome.action, outcome.version) == (IngestAction.DUPLICATE, "1")
    assert "recorded as its alias" in outcome.detail
    (alias,) = world.ledger.aliases("ref")
    assert (alias["Version"], alias["Url"], alias["Name"]) == ("1", copy.url, "reference/regions-copy.csv")
    assert alias["Sha256"] == hashlib.sha256(body).hexdigest()
    record = world.audited()[-1]
    assert record.kind == "data.duplicate" and record.assets["data_version"] == "1" and "alias" in record.reason
    # the alias adds no copy: the version's snapshot is the one place its bytes are kept
    (version,) = world.workspace.data_versions("ref")
    assert [f.name for f in world.blobs.list(CONTAINER, SNAPSHOT_ROOT)] == [unquote(version.spec.uri[len(PREFIX):])]
    assert reads(world, version.spec.uri) == {"regions.csv": body}


class FailingCopies:
    """The in-memory store, whose `copy` fails after `allowed` copies (a process dying mid-snapshot)."""

    def __init__(self, world: World, allowed: int) -> None:
        self.inner, self.allowed, self.copies = world.blobs, allowed, 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def copy(self, container: str, name: str, etag: str, to_name: str) -> None:
        if self.copies >= self.allowed:
            raise ConnectionError("the process died mid-snapshot")
        self.copies += 1
        self.inner.copy(container, name, etag, to_name)


def test_defect7_a_snapshot_cut_off_mid_way_is_resumed_and_each_file_copied_once(world: World) -> None:
    folder = "churn/drop2/"
    for i in range(5):
        world.ingestor.on_blob_created(world.upload(f"{folder}part-{i}.csv", f"id\n{i}\n".encode()))
    world.ingestor.on_blob_created(world.upload(f"{folder}_SUCCESS", b""))
    (request,) = world.due("marker")
    failing = FailingCopies(world, allowed=2)
    world.ingestor._blobs = failing
    with pytest.raises(ConnectionError):
        world.ingestor.on_seal_request(request)
    assert world.workspace.data_versions("churn") == []  # nothing registered on a partial snapshot
    retry = world.instance()
    counting = FailingCopies(world, allowed=99)
    retry._blobs = counting
    assert retry.on_seal_request(request).action is IngestAction.SEALED
    assert counting.copies == 3  # the two copied before the crash are kept
    (version,) = world.workspace.data_versions("churn")
    assert reads(world, version.spec.uri) == {f"part-{i}.csv": f"id\n{i}\n".encode() for i in range(5)}


def test_defect7_a_file_overwritten_between_hash_and_copy_is_not_snapshotted(world: World) -> None:
    event = world.upload("reference/regions.csv", b"old\n")

    class OverwriteBeforeCopy(FailingCopies):
        def copy(self, container: str, name: str, etag: str, to_name: str) -> None:
            world.blobs.put(container, name, b"new\n")  # someone uploads again, right before the copy
            self.inner.copy(container, name, etag, to_name)

    world.ingestor._blobs = OverwriteBeforeCopy(world, 1)
    with pytest.raises(BlobChangedError):
        world.ingestor.on_blob_created(event)
    assert world.workspace.data_versions("ref") == []
    assert list(world.blobs.list(CONTAINER, SNAPSHOT_ROOT)) == []


# -- defect 8: no SAS token leaves through a URL ---------------------------------------------------------
def test_defect8_a_sas_url_never_reaches_tags_ledger_audit_events_or_logs(clock: FakeClock,
                                                                          caplog: pytest.LogCaptureFixture) -> None:
    """Before: a BlobCreated built from a SAS client's url (not through the edge: a retry message, a
    re-drive) carried `sig=` into the evergreen.source_url tag, the blobs-seen rows, the audit log and logs."""
    ledger, audit = ScannableTable(), ScannableTable()
    world = World(clock, table=ledger, audit=TableAuditLog(audit))
    caplog.set_level(logging.DEBUG)
    body = b"region\nnorth\n"
    for name, outcome in (("reference/regions.csv", IngestAction.REGISTERED), ("reference/copy.csv",
                                                                              IngestAction.DUPLICATE)):
        world.blobs.put(CONTAINER, name, body)
        event = BlobCreated(CONTAINER, name, f"https://data.blob.core.windows.net/{CONTAINER}/{name}{SAS}")
        assert world.ingestor.on_blob_created(event).action is outcome
    (version,) = world.workspace.data_versions("ref")
    stored = [repr(version.spec), repr(world.publisher.events), repr(ledger.entities()), repr(audit.entities()),
              caplog.text]
    assert [text for text in stored if "sig=" in text or "sv=2024" in text] == []
    assert version.spec.tags[Tag.SOURCE_URL.value] == (
        f"https://data.blob.core.windows.net/{CONTAINER}/reference/regions.csv")


def test_an_upload_of_content_whose_version_retention_retired_registers_it_again(world: World) -> None:
    """Retention deleted version 1 and reclaimed its snapshot; the same bytes uploaded again (a roll back to
    known-good data) must become a new version with its bytes, not an alias of a version that is gone."""
    body = b"region\nnorth\n"
    world.ingestor.on_blob_created(world.upload("reference/regions.csv", body))
    (first,) = world.workspace.data_versions("ref")
    snapshot = unquote(first.spec.uri[len(PREFIX):])
    assert world.workspace.delete_data_version("ref", "1")  # retention's delete_data
    world.blobs.delete(CONTAINER, snapshot)  # ...then its blob rule reclaims the snapshot
    world.clock.advance(1)

    outcome = world.ingestor.on_blob_created(world.upload("reference/regions-again.csv", body))

    assert (outcome.action, outcome.version) == (IngestAction.REGISTERED, "2")
    (second,) = world.workspace.data_versions("ref")
    assert reads(world, second.spec.uri) == {"regions-again.csv": body}  # a snapshot again, the same bytes
    assert [e.version for e in world.publisher.events] == ["1", "2"]  # announced: retraining runs on it


def test_an_upload_of_content_whose_snapshot_retention_reclaimed_registers_it_again(world: World) -> None:
    """Version 1 was archived, so retention's blob rule (`landing/`, as in the README) reclaimed its snapshot,
    but version 1 is still registered. The same bytes uploaded again must not become an alias of a version
    that no longer holds them (nothing would be registered or retrained): they are registered anew, on a
    snapshot that is there again."""
    body = b"region\nnorth\n"
    world.ingestor.on_blob_created(world.upload("reference/regions.csv", body))
    (first,) = world.workspace.data_versions("ref")
    snapshot = unquote(first.spec.uri[len(PREFIX):])
    world.blobs.delete(CONTAINER, snapshot)  # the archived version stays registered; its bytes are gone
    world.clock.advance(1)

    outcome = world.ingestor.on_blob_created(world.upload("reference/regions-again.csv", body))

    assert (outcome.action, outcome.version) == (IngestAction.REGISTERED, "2")
    second = {v.version: v for v in world.workspace.data_versions("ref")}["2"]
    assert reads(world, second.spec.uri) == {"regions-again.csv": body}
    assert [e.version for e in world.publisher.events] == ["1", "2"]  # announced: retraining runs on it


def test_a_folder_generation_dropped_again_makes_a_partly_reclaimed_snapshot_whole(world: World) -> None:
    """A retention apply cut off mid-way deleted one file of an archived generation's snapshot. The same files
    dropped again (generation 2 has generation 1's manifest) must not be recorded as an alias of a version that
    no longer holds them: the snapshot is copied whole again, so version 1 reads its bytes and holds them."""
    folder, files = "churn/drop1/", {"a.csv": b"id,churned\n1,0\n", "b.csv": b"id,churned\n2,1\n"}
    for name, body in files.items():
        world.ingestor.on_blob_created(world.upload(f"{folder}{name}", body))
    seal(world, folder)
    (first,) = world.workspace.data_versions("churn")
    world.blobs.delete(CONTAINER, f"{unquote(first.spec.uri[len(PREFIX):])}b.csv")
    world.clock.advance(60)
    for name, body in files.items():
        world.ingestor.on_blob_created(world.upload(f"{folder}{name}", body))
    world.ingestor.on_blob_created(world.upload(f"{folder}_SUCCESS", b""))
    (request,) = world.due("marker")

    outcome = world.ingestor.on_seal_request(request)

    assert (outcome.action, outcome.version) == (IngestAction.DUPLICATE, "1")
    assert reads(world, first.spec.uri) == files  # whole again: version 1 holds the content it aliases
