"""Event Grid webhook bodies as the Functions Event Grid extension reads them (pure, no I/O)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlparse

VALIDATION_EVENT = "Microsoft.EventGrid.SubscriptionValidationEvent"
BLOB_CREATED = "Microsoft.Storage.BlobCreated"
_BLOB_SUBJECT_PREFIX = "/blobServices/default/containers/"


class MalformedEventsError(ValueError):
    """The body is not an Event Grid or CloudEvents event (or array of them)."""


@dataclass(frozen=True)
class Handshake:
    """A SubscriptionValidation request: answer with the code."""

    validation_code: str


def parse_events(body: bytes) -> list[dict[str, Any]]:
    """The events of a delivery: a JSON array (Event Grid, CloudEvents batch) or one CloudEvent."""
    try:
        document = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:  # RecursionError: nested too deeply
        raise MalformedEventsError(f"body is not JSON: {exc}") from exc
    events = document if isinstance(document, list) else [document]
    if not events:
        raise MalformedEventsError("body is an empty array")
    for index, event in enumerate(events):
        if not isinstance(event, dict):
            raise MalformedEventsError(f"event {index} is not an object")
        if "specversion" in event:
            missing = [key for key in ("id", "source", "type") if not event.get(key)]
        else:
            missing = [key for key in ("id", "eventType") if not event.get(key)]
        if missing:
            raise MalformedEventsError(f"event {index} lacks {', '.join(missing)}")
    return events


def event_type(event: dict[str, Any]) -> str:
    return str(event.get("eventType") or event.get("type") or "")


def validation_handshake(events: list[dict[str, Any]]) -> Handshake | None:
    """The validation code if this delivery is Event Grid's SubscriptionValidation event."""
    for event in events:
        if event_type(event) == VALIDATION_EVENT:
            code = (event.get("data") or {}).get("validationCode")
            if not code:
                raise MalformedEventsError("SubscriptionValidationEvent without data.validationCode")
            return Handshake(str(code))
    return None


def blob_path(event: dict[str, Any]) -> str:
    """`container/blob` of a BlobCreated event, from the subject, else from `data.url`."""
    subject = str(event.get("subject") or "")
    if subject.startswith(_BLOB_SUBJECT_PREFIX):
        container, sep, blob = subject[len(_BLOB_SUBJECT_PREFIX) :].partition("/blobs/")
        if sep and container and blob:
            return f"{container}/{blob}"
    url = str((event.get("data") or {}).get("url") or "")
    if url:
        parsed = urlparse(url)
        segments = unquote(parsed.path).lstrip("/").split("/")
        host = parsed.hostname or ""
        # Path-style endpoints (Azurite, IP hosts) put the account first: /account/container/blob
        if host in {"localhost"} or host.replace(".", "").isdigit() or ":" in host:
            segments = segments[1:]
        if len(segments) >= 2 and all(segments[:2]):
            return "/".join(segments)
    raise MalformedEventsError(f"event {event.get('id')} names no blob (subject '{subject}', no data.url)")
