"""The storage watcher: turns changes in Azurite's blob service into `Microsoft.Storage.*` events.

Azurite emits no Event Grid events (Azure/Azurite#1174), so this polls the blob service, lists every
container (paged, one listing call per 5000 blobs), compares eTags with the state it persisted and
publishes BlobCreated (new or overwritten blob) and BlobDeleted events to the `storage` topic. Events
and the new blob state are committed together, so each change is emitted once, also across restarts.
Only new or changed block blobs are fetched individually (their committed block list tells PutBlob
from PutBlockList).
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

from devstack.eventgrid.store import BlobState, Store

logger = logging.getLogger(__name__)

BLOB_CREATED = "Microsoft.Storage.BlobCreated"
BLOB_DELETED = "Microsoft.Storage.BlobDeleted"
BASELINE_KEY = "watcher_baseline_done"
LIST_PAGE_SIZE = 5000

PublishFn = Callable[[str, list[dict[str, Any]], Callable[[sqlite3.Connection], None]], int]


@dataclass(frozen=True)
class SeenBlob:
    container: str
    name: str
    etag: str
    size: int
    content_type: str
    blob_type: str
    copy_id: str | None
    copy_status: str | None


@dataclass(frozen=True)
class Change:
    blob: SeenBlob
    api: str


@dataclass
class Listing:
    """One listing pass: the blobs seen, and the containers whose listing failed part-way."""

    blobs: dict[tuple[str, str], SeenBlob] = field(default_factory=dict)
    incomplete: set[str] = field(default_factory=set)


class Problems:
    """Per-blob and per-container errors, logged once when they start and once when they clear."""

    def __init__(self) -> None:
        self._open: dict[tuple[str, ...], str] = {}
        self._lock = threading.Lock()

    def report(self, key: tuple[str, ...], what: str, exc: BaseException) -> None:
        detail = f"{what}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:500]
        with self._lock:
            first = key not in self._open
            self._open[key] = detail
        if first:
            logger.warning("storage watcher: %s", detail)

    def resolve(self, key: tuple[str, ...]) -> None:
        with self._lock:
            detail = self._open.pop(key, None)
        if detail is not None:
            logger.info("storage watcher: recovered (%s)", detail.split(":", 1)[0])

    def summary(self) -> str | None:
        with self._lock:
            if not self._open:
                return None
            return f"{len(self._open)} problem(s); first: {next(iter(self._open.values()))}"[:500]


def event_time(now: float | None = None) -> str:
    """ISO 8601 in UTC with 7 fractional digits, the way Azure stamps system events."""
    stamp = datetime.fromtimestamp(time.time() if now is None else now, UTC)
    return stamp.strftime("%Y-%m-%dT%H:%M:%S.%f") + "0Z"


def blob_subject(container: str, name: str) -> str:
    return f"/blobServices/default/containers/{container}/blobs/{name}"


class StorageWatcher:
    """Polls the blob service every `interval` seconds and publishes storage events through `publish`."""

    def __init__(
        self,
        store: Store,
        connection_string: str,
        publish: PublishFn,
        *,
        topic_id_template: str,
        interval: float = 0.5,
        emit_existing: bool = False,
    ) -> None:
        from azure.storage.blob import BlobServiceClient

        self._store = store
        self._publish = publish
        self._interval = interval
        self._emit_existing = emit_existing
        self._service = BlobServiceClient.from_connection_string(
            connection_string, retry_total=0, connection_timeout=5, read_timeout=30
        )
        self.account = str(self._service.account_name)
        self.topic_id = topic_id_template.format(account=self.account)
        self._endpoint = self._service.url.rstrip("/")
        self._state: dict[tuple[str, str], BlobState] = store.load_blob_state()
        self._pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="blob-watch")
        self.scans = 0
        self.last_error: str | None = None
        self.last_scan_at: float | None = None
        self._problems = Problems()

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._service.close()

    async def run(self) -> None:
        failures = 0
        while True:
            try:
                await self.scan_once()
                failures = 0
            except Exception as exc:
                failures += 1
                self.last_error = f"{type(exc).__name__}: {exc}"[:500]
                log = logger.warning if failures in (1, 10) or failures % 100 == 0 else logger.debug
                log(
                    "storage watcher cannot scan the blob service (%d in a row): %s",
                    failures,
                    self.last_error,
                )
            await asyncio.sleep(self._interval)

    async def scan_once(self) -> int:
        """One full pass; returns the number of events published.

        Degrades per container and per blob: a container whose listing fails keeps its known state
        (no false BlobDeleted) while the others are scanned; a blob that cannot be classified is
        skipped this pass (and logged once). Raises only when the blob service itself is unreachable.
        """
        listing = await asyncio.to_thread(self._list_all)
        seen = listing.blobs
        created = [b for key, b in seen.items() if self._is_change(key, b)]
        deleted = [
            key for key in self._state if key not in seen and key[0] not in listing.incomplete
        ]
        baseline = not self._emit_existing and self._store.get_meta(BASELINE_KEY) is None
        changes = [] if baseline else await asyncio.to_thread(self._classify, created)
        if baseline:
            changes = [Change(b, "") for b in created]
        published = self._commit(changes, [] if baseline else deleted, deleted, baseline=baseline)
        self.scans += 1
        self.last_error = self._problems.summary()
        self.last_scan_at = time.time()
        return published

    def _is_change(self, key: tuple[str, str], blob: SeenBlob) -> bool:
        if blob.copy_status == "pending":
            return False  # Azure raises the event when the copy completes
        known = self._state.get(key)
        return known is None or known.etag != blob.etag

    def _list_all(self) -> Listing:
        """Every blob of every container; containers that could not be listed completely are named."""
        listing = Listing()
        for container in self._service.list_containers():
            try:
                self._list_container(container.name, listing.blobs)
            except Exception as exc:
                listing.incomplete.add(container.name)
                self._problems.report(("container", container.name), f"cannot list container "
                                      f"{container.name!r}; its other blobs wait until it can be listed", exc)
            else:
                self._problems.resolve(("container", container.name))
        return listing

    def _list_container(self, container: str, seen: dict[tuple[str, str], SeenBlob]) -> None:
        """Add the container's blobs to `seen`, page by page (blobs of pages before a failing one stay)."""
        client = self._service.get_container_client(container)
        for page in client.list_blobs(include=["copy"], results_per_page=LIST_PAGE_SIZE).by_page():
            for blob in page:
                copy = getattr(blob, "copy", None)
                seen[(container, blob.name)] = SeenBlob(
                    container=container,
                    name=blob.name,
                    etag=str(blob.etag).strip('"'),
                    size=int(blob.size or 0),
                    content_type=(blob.content_settings.content_type or "application/octet-stream"),
                    blob_type=str(getattr(blob.blob_type, "value", blob.blob_type)),
                    copy_id=getattr(copy, "id", None),
                    copy_status=getattr(copy, "status", None),
                )

    def _classify(self, blobs: list[SeenBlob]) -> list[Change]:
        return [c for c in self._pool.map(self._classify_one, blobs) if c is not None]

    def _classify_one(self, blob: SeenBlob) -> Change | None:
        """The change's `api`; None when the blob is gone again or cannot be read (skipped this pass)."""
        from azure.core.exceptions import ResourceNotFoundError

        known = self._state.get((blob.container, blob.name))
        if blob.copy_id and (known is None or known.copy_id != blob.copy_id):
            return Change(blob, "CopyBlob")
        if blob.blob_type != "BlockBlob":
            return Change(blob, "PutBlob")
        problem = ("blob", blob.container, blob.name, blob.etag)
        try:
            committed, _ = self._service.get_blob_client(blob.container, blob.name).get_block_list(
                "committed"
            )
        except ResourceNotFoundError:
            return None  # gone again before we looked; the next scan settles it
        except Exception as exc:
            self._problems.report(problem, f"cannot read blob {blob.container}/{blob.name!r}; skipped", exc)
            return None
        self._problems.resolve(problem)
        return Change(blob, "PutBlockList" if committed else "PutBlob")

    def _url(self, container: str, name: str) -> str:
        return f"{self._endpoint}/{quote(container)}/{quote(name, safe='/~')}"

    def _common(self, container: str, name: str) -> dict[str, Any]:
        return {
            "clientRequestId": str(uuid.uuid4()),
            "requestId": str(uuid.uuid4()),
            "url": self._url(container, name),
            "sequencer": self._store.next_sequencer(),
            "storageDiagnostics": {"batchId": str(uuid.uuid4())},
        }

    def _event(self, event_type: str, container: str, name: str, data: dict[str, Any]) -> dict[str, Any]:
        return {
            "topic": self.topic_id,
            "subject": blob_subject(container, name),
            "eventType": event_type,
            "eventTime": event_time(),
            "id": str(uuid.uuid4()),
            "data": data,
            "dataVersion": "",
            "metadataVersion": "1",
        }

    def _commit(
        self,
        changes: list[Change],
        deleted_events: list[tuple[str, str]],
        deleted: list[tuple[str, str]],
        *,
        baseline: bool,
    ) -> int:
        events: list[dict[str, Any]] = []
        for change in changes if not baseline else []:
            b = change.blob
            data = {"api": change.api, **self._common(b.container, b.name)}
            data.update(eTag=b.etag, contentType=b.content_type, contentLength=b.size, blobType=b.blob_type)
            events.append(self._event(BLOB_CREATED, b.container, b.name, self._ordered(data)))
        for container, name in deleted_events:
            known = self._state[(container, name)]
            data = {"api": "DeleteBlob", **self._common(container, name)}
            data.update(
                contentType=known.content_type or "application/octet-stream",
                blobType=known.blob_type or "BlockBlob",
            )
            events.append(self._event(BLOB_DELETED, container, name, self._ordered(data)))

        def also(db: sqlite3.Connection) -> None:
            db.executemany(
                "INSERT OR REPLACE INTO blobs (container, name, etag, copy_id, content_type, blob_type)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                [
                    (
                        c.blob.container,
                        c.blob.name,
                        c.blob.etag,
                        c.blob.copy_id,
                        c.blob.content_type,
                        c.blob.blob_type,
                    )
                    for c in changes
                ],
            )
            db.executemany("DELETE FROM blobs WHERE container = ? AND name = ?", deleted)
            if baseline:
                db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, '1')", (BASELINE_KEY,))

        if events or changes or deleted or baseline:
            self._publish("storage", events, also)
        for c in changes:
            b = c.blob
            self._state[(b.container, b.name)] = BlobState(b.etag, b.copy_id, b.content_type, b.blob_type)
        for key in deleted:
            self._state.pop(key, None)
        if events:
            logger.info("storage watcher published %d event(s)", len(events))
        return len(events)

    @staticmethod
    def _ordered(data: dict[str, Any]) -> dict[str, Any]:
        order = [
            "api",
            "clientRequestId",
            "requestId",
            "eTag",
            "contentType",
            "contentLength",
            "blobType",
            "url",
            "sequencer",
            "storageDiagnostics",
        ]
        return {k: data[k] for k in order if k in data}
