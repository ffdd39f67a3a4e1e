"""`BlobStore` in memory, with Blob Storage's semantics: a new eTag on every write, conditional reads
that fail with `BlobChangedError` once the blob changed, listings in name order.

Thread-safe. `put`/`delete` stand in for uploads by people and pipelines (tests, the fault harness).
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Iterator
from dataclasses import dataclass, replace

from shared.domain.records import utcnow
from shared.errors import BlobChangedError
from shared.ports import BlobFacts, Clock

CHUNK_SIZE = 4 * 1024 * 1024  # the SDK's default download chunk


@dataclass(frozen=True)
class _Blob:
    facts: BlobFacts
    data: bytes


class MemoryBlobStore:
    def __init__(self, *, clock: Clock = utcnow, chunk_size: int = CHUNK_SIZE) -> None:
        self._blobs: dict[tuple[str, str], _Blob] = {}
        self._lock = threading.Lock()
        self._etags = itertools.count(1)
        self._clock = clock
        self._chunk = chunk_size

    # -- test helpers: what uploaders do ---------------------------------------------------------
    def put(self, container: str, name: str, data: bytes, *, tier: str | None = "Hot") -> BlobFacts:
        """Create or overwrite a blob; it gets a new eTag, like every write in Azure."""
        with self._lock:
            facts = BlobFacts(container=container, name=name, etag=f"0x8D{next(self._etags):013X}",
                              size=len(data), last_modified=self._clock(), tier=tier)
            self._blobs[(container, name)] = _Blob(facts, bytes(data))
            return facts

    def set_tier(self, container: str, name: str, tier: str) -> None:
        """Change the access tier (Azure keeps the eTag on a tier change)."""
        with self._lock:
            blob = self._blobs[(container, name)]
            self._blobs[(container, name)] = _Blob(replace(blob.facts, tier=tier), blob.data)

    def delete(self, container: str, name: str) -> None:
        with self._lock:
            self._blobs.pop((container, name), None)

    # -- the port --------------------------------------------------------------------------------
    def properties(self, container: str, name: str) -> BlobFacts | None:
        with self._lock:
            blob = self._blobs.get((container, name))
            return blob.facts if blob else None

    def read(self, container: str, name: str, etag: str) -> Iterator[bytes]:
        """Stream in chunks; every chunk checks the eTag, as the SDK's If-Match range requests do.

        Raises BlobChangedError if the blob was overwritten or deleted before or during the read.
        """
        offset = 0
        while True:
            with self._lock:
                blob = self._blobs.get((container, name))
                if blob is None or blob.facts.etag != etag:
                    raise BlobChangedError(
                        f"blob {container}/{name} changed or vanished since it was read at eTag {etag}; "
                        "its own event brings the new content"
                    )
                chunk = blob.data[offset:offset + self._chunk]
            if not chunk:
                return
            yield chunk
            offset += len(chunk)

    def list(self, container: str, prefix: str) -> Iterator[BlobFacts]:
        with self._lock:
            found = sorted((name, blob.facts) for (c, name), blob in self._blobs.items()
                           if c == container and name.startswith(prefix))
        for _, facts in found:
            yield facts

    def copy(self, container: str, name: str, etag: str, to_name: str) -> None:
        """Copy the content at `etag` to `to_name` (a new eTag, like any write); done at once.

        Raises BlobChangedError if the source changed or vanished.
        """
        with self._lock:
            blob = self._blobs.get((container, name))
            if blob is None or blob.facts.etag != etag:
                raise BlobChangedError(f"blob {container}/{name} changed or vanished since it was read at eTag "
                                       f"{etag}; its own event brings the new content")
            facts = BlobFacts(container=container, name=to_name, etag=f"0x8D{next(self._etags):013X}",
                              size=blob.facts.size, last_modified=self._clock(), tier="Hot")
            self._blobs[(container, to_name)] = _Blob(facts, blob.data)

    def content(self, container: str, name: str) -> bytes | None:
        """A blob's bytes (a test helper: what a reader of the path would get); None if it does not exist."""
        with self._lock:
            blob = self._blobs.get((container, name))
            return blob.data if blob else None
