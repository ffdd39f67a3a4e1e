"""The `BlobStore` contract: the in-memory store and Azure Blob Storage (on Azurite) behave alike.

Ingest's idempotency rests on these semantics: a new eTag on every write, a read conditioned on the
eTag that fails once the blob changed, and a listing in name order under a prefix.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

import pytest

from shared.adapters.memory.blobs import MemoryBlobStore
from shared.errors import BlobChangedError
from shared.ports import BlobStore


class Uploader(Protocol):
    def put(self, container: str, name: str, data: bytes) -> object: ...
    def delete(self, container: str, name: str) -> None: ...


@dataclass
class Blobs:
    store: BlobStore
    uploader: Uploader  # what people and pipelines do to the account
    container: str


class AzureUploader:
    def __init__(self, service: object) -> None:
        self._service = service

    def put(self, container: str, name: str, data: bytes) -> None:
        self._service.get_blob_client(container, name).upload_blob(data, overwrite=True)  # type: ignore[attr-defined]

    def delete(self, container: str, name: str) -> None:
        self._service.get_blob_client(container, name).delete_blob()  # type: ignore[attr-defined]


@pytest.fixture(params=["memory", pytest.param("azure", marks=pytest.mark.integration)])
def blobs(request: pytest.FixtureRequest) -> Iterator[Blobs]:
    container = f"contract{uuid.uuid4().hex[:12]}"
    if request.param == "memory":
        store = MemoryBlobStore(chunk_size=1024)  # small chunks: every read below spans several
        yield Blobs(store, store, container)
        return
    from azure.storage.blob import BlobServiceClient

    from shared.adapters.azure.blobs import AzureBlobStore

    service = BlobServiceClient.from_connection_string(request.getfixturevalue("azurite").connection_string)
    service.create_container(container)
    try:
        yield Blobs(AzureBlobStore(service), AzureUploader(service), container)
    finally:
        service.delete_container(container)


def test_properties_of_a_missing_blob_or_container_are_none(blobs: Blobs) -> None:
    assert blobs.store.properties(blobs.container, "nothing.csv") is None
    assert blobs.store.properties(f"missing{uuid.uuid4().hex[:8]}", "nothing.csv") is None


def test_properties_give_size_an_unquoted_etag_and_an_aware_time(blobs: Blobs) -> None:
    blobs.uploader.put(blobs.container, "a/data.csv", b"x,y\n1,2\n")
    facts = blobs.store.properties(blobs.container, "a/data.csv")
    assert facts is not None
    assert (facts.container, facts.name, facts.size) == (blobs.container, "a/data.csv", 8)
    assert facts.etag and '"' not in facts.etag
    assert facts.last_modified.tzinfo is not None


def test_every_write_gives_a_new_etag_even_with_the_same_content(blobs: Blobs) -> None:
    blobs.uploader.put(blobs.container, "a.csv", b"same")
    first = blobs.store.properties(blobs.container, "a.csv")
    blobs.uploader.put(blobs.container, "a.csv", b"same")
    second = blobs.store.properties(blobs.container, "a.csv")
    assert first is not None and second is not None and first.etag != second.etag


def test_a_read_at_the_current_etag_streams_the_whole_content(blobs: Blobs) -> None:
    data = bytes(range(256)) * 40  # 10 KiB: several chunks in memory
    blobs.uploader.put(blobs.container, "big.bin", data)
    facts = blobs.store.properties(blobs.container, "big.bin")
    assert facts is not None
    h = hashlib.sha256()
    for chunk in blobs.store.read(blobs.container, "big.bin", facts.etag):
        h.update(chunk)
    assert h.hexdigest() == hashlib.sha256(data).hexdigest()


def test_a_conditional_read_after_an_overwrite_fails_with_blob_changed(blobs: Blobs) -> None:
    blobs.uploader.put(blobs.container, "a.csv", b"old")
    facts = blobs.store.properties(blobs.container, "a.csv")
    assert facts is not None
    blobs.uploader.put(blobs.container, "a.csv", b"new")
    with pytest.raises(BlobChangedError, match=r"a\.csv"):
        b"".join(blobs.store.read(blobs.container, "a.csv", facts.etag))


def test_a_conditional_read_after_a_delete_fails_with_blob_changed(blobs: Blobs) -> None:
    blobs.uploader.put(blobs.container, "a.csv", b"old")
    facts = blobs.store.properties(blobs.container, "a.csv")
    assert facts is not None
    blobs.uploader.delete(blobs.container, "a.csv")
    with pytest.raises(BlobChangedError):
        b"".join(blobs.store.read(blobs.container, "a.csv", facts.etag))


def test_listing_is_in_name_order_and_only_under_the_prefix(blobs: Blobs) -> None:
    for name in ["b/2.csv", "b/10.csv", "bb/y.csv", "a/x.csv", "b/sub/z.csv", "b/1.csv"]:
        blobs.uploader.put(blobs.container, name, name.encode())
    listed = list(blobs.store.list(blobs.container, "b/"))
    assert [f.name for f in listed] == ["b/1.csv", "b/10.csv", "b/2.csv", "b/sub/z.csv"]
    assert next(f.name for f in blobs.store.list(blobs.container, "")) == "a/x.csv"


def test_listed_facts_match_the_properties(blobs: Blobs) -> None:
    blobs.uploader.put(blobs.container, "f/a.csv", b"12345")
    (listed,) = blobs.store.list(blobs.container, "f/")
    props = blobs.store.properties(blobs.container, "f/a.csv")
    assert props is not None
    assert (listed.etag, listed.size, listed.last_modified) == (props.etag, props.size, props.last_modified)


def test_listing_an_unknown_container_or_prefix_is_empty(blobs: Blobs) -> None:
    assert list(blobs.store.list(blobs.container, "nothing/")) == []
    assert list(blobs.store.list(f"missing{uuid.uuid4().hex[:8]}", "")) == []


# -- copy: how a data version's snapshot is made (issue 12) -------------------------------------------------
def test_a_copy_at_the_current_etag_holds_the_same_bytes_under_the_new_name(blobs: Blobs) -> None:
    data = bytes(range(256)) * 40
    blobs.uploader.put(blobs.container, "drop/a.csv", data)
    facts = blobs.store.properties(blobs.container, "drop/a.csv")
    assert facts is not None
    blobs.store.copy(blobs.container, "drop/a.csv", facts.etag, "_evergreen/snapshots/d/abc/a.csv")
    copied = blobs.store.properties(blobs.container, "_evergreen/snapshots/d/abc/a.csv")
    assert copied is not None and copied.size == len(data) and copied.etag != facts.etag
    assert b"".join(blobs.store.read(blobs.container, copied.name, copied.etag)) == data
    blobs.uploader.put(blobs.container, "drop/a.csv", b"overwritten")  # the landing blob changes; the copy does not
    assert b"".join(blobs.store.read(blobs.container, copied.name, copied.etag)) == data


def test_a_copy_overwrites_what_is_at_the_target(blobs: Blobs) -> None:
    blobs.uploader.put(blobs.container, "src.csv", b"the content")
    blobs.uploader.put(blobs.container, "dst.csv", b"a partial left-over")
    facts = blobs.store.properties(blobs.container, "src.csv")
    assert facts is not None
    blobs.store.copy(blobs.container, "src.csv", facts.etag, "dst.csv")
    target = blobs.store.properties(blobs.container, "dst.csv")
    assert target is not None and b"".join(blobs.store.read(blobs.container, "dst.csv", target.etag)) == b"the content"


def test_a_copy_after_an_overwrite_or_delete_fails_with_blob_changed_and_copies_nothing(blobs: Blobs) -> None:
    blobs.uploader.put(blobs.container, "a.csv", b"old")
    facts = blobs.store.properties(blobs.container, "a.csv")
    assert facts is not None
    blobs.uploader.put(blobs.container, "a.csv", b"new")
    with pytest.raises(BlobChangedError, match=r"a\.csv"):
        blobs.store.copy(blobs.container, "a.csv", facts.etag, "copy-1.csv")
    assert blobs.store.properties(blobs.container, "copy-1.csv") is None
    blobs.uploader.delete(blobs.container, "a.csv")
    with pytest.raises(BlobChangedError):
        blobs.store.copy(blobs.container, "a.csv", facts.etag, "copy-2.csv")
    assert blobs.store.properties(blobs.container, "copy-2.csv") is None
