"""Deterministic idempotency keys derived from events.

The same event (or the same content) always yields the same key, so a redelivery lands on the
same ledger row, job name or event id instead of creating a second one.
"""

from __future__ import annotations

import hashlib
import uuid

_NAMESPACE = uuid.UUID("5b1f7a52-5c0e-4c57-9d8e-6f1e0b7f3a11")


def digest(*parts: str, length: int = 40) -> str:
    """A hex digest of the parts, safe as a Table Storage key (no '/', '#', '?', control characters)."""
    h = hashlib.sha256()
    for part in parts:
        h.update(part.encode("utf-8"))
        h.update(b"\x1f")
    return h.hexdigest()[:length]


def event_id(*parts: str) -> str:
    """A stable UUID for an event we publish, so consumers can deduplicate redeliveries."""
    return str(uuid.uuid5(_NAMESPACE, "\x1f".join(parts)))


def clean_etag(etag: str) -> str:
    return etag.strip().strip('"')
