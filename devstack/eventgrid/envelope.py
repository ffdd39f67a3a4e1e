"""Validation of what publishers POST to a topic, as Event Grid does it (pure; no I/O).

Event Grid rejects a whole batch when one event is malformed, answering 400 with a message that names
the event's index and the offending property; batches over 1 MB get 413. Both schemas that
`EventGridPublisherClient` sends are accepted: the Event Grid schema (a JSON array) and CloudEvents 1.0
(`application/cloudevents-batch+json`, or a single `application/cloudevents+json` event).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

MAX_BATCH_BYTES = 1024 * 1024
_CE_ATTRIBUTE = re.compile(r"^[a-z0-9]{1,20}$")
_CE_KNOWN = frozenset(
    ["specversion", "id", "source", "type", "time", "subject", "datacontenttype", "dataschema", "data"]
)


class Schema(StrEnum):
    EVENT_GRID = "EventGridSchema"
    CLOUD_EVENTS = "CloudEventSchemaV1_0"


class EnvelopeError(ValueError):
    """A publish request Event Grid would refuse; `status` is the HTTP status to answer with."""

    def __init__(self, message: str, *, status: int = 400) -> None:
        super().__init__(message)
        self.status = status
        self.message = message

    def to_json(self) -> dict[str, Any]:
        code = "BadRequest" if self.status == 400 else "RequestEntityTooLarge"
        return {"error": {"code": code, "message": self.message}}


@dataclass(frozen=True)
class Batch:
    schema: Schema
    events: list[dict[str, Any]]


def _is_time(value: Any) -> bool:
    if not isinstance(value, str) or "T" not in value:
        return False
    try:
        datetime.fromisoformat(value)
    except ValueError:
        return False
    return True


def _require_string(event: dict[str, Any], name: str, index: int, *, allow_empty: bool = False) -> None:
    if name not in event or event[name] is None:
        raise EnvelopeError(f"Required property '{name}' was not found in the event at index {index}.")
    value = event[name]
    if not isinstance(value, str):
        raise EnvelopeError(
            f"Property '{name}' of the event at index {index} must be a string, not {type(value).__name__}."
        )
    if not allow_empty and not value.strip():
        raise EnvelopeError(f"Property '{name}' of the event at index {index} must not be empty.")


def _validate_event_grid(event: dict[str, Any], index: int, topic_id: str) -> dict[str, Any]:
    for name in ("id", "subject", "eventType"):
        _require_string(event, name, index)
    _require_string(event, "dataVersion", index, allow_empty=True)
    _require_string(event, "eventTime", index)
    if not _is_time(event["eventTime"]):
        raise EnvelopeError(
            f"Property 'eventTime' of the event at index {index} is not a valid ISO 8601 date-time: "
            f"{event['eventTime']!r}."
        )
    metadata_version = event.get("metadataVersion")
    if metadata_version is not None and metadata_version != "1":
        raise EnvelopeError(
            f"Property 'metadataVersion' of the event at index {index} must be '1', not {metadata_version!r}."
        )
    topic = event.get("topic")
    if topic is not None and not isinstance(topic, str):
        raise EnvelopeError(f"Property 'topic' of the event at index {index} must be a string.")
    normalized = dict(event)
    normalized["topic"] = topic or topic_id
    normalized["metadataVersion"] = "1"
    return normalized


def _validate_cloud_event(event: dict[str, Any], index: int) -> dict[str, Any]:
    _require_string(event, "specversion", index)
    if event["specversion"] != "1.0":
        raise EnvelopeError(
            f"Property 'specversion' of the event at index {index} must be '1.0', "
            f"not {event['specversion']!r}."
        )
    for name in ("id", "source", "type"):
        _require_string(event, name, index)
    if event.get("time") is not None and not _is_time(event["time"]):
        raise EnvelopeError(
            f"Property 'time' of the event at index {index} is not a valid RFC 3339 timestamp."
        )
    for name in ("subject", "datacontenttype", "dataschema"):
        if event.get(name) is not None and not isinstance(event[name], str):
            raise EnvelopeError(f"Property '{name}' of the event at index {index} must be a string.")
    if "data" in event and "data_base64" in event:
        raise EnvelopeError(f"The event at index {index} has both 'data' and 'data_base64'; send one.")
    for name in event:
        if name not in _CE_KNOWN and name != "data_base64" and not _CE_ATTRIBUTE.match(name):
            raise EnvelopeError(
                f"Attribute '{name}' of the event at index {index} is not a valid CloudEvents attribute name "
                "(lower-case letters and digits, at most 20 characters)."
            )
    return dict(event)


def parse_batch(body: bytes, content_type: str, *, topic_id: str) -> Batch:
    """Validate a publish request body; raises EnvelopeError with Event Grid's status and a message."""
    if len(body) > MAX_BATCH_BYTES:
        raise EnvelopeError(
            f"The batch is {len(body)} bytes; Event Grid accepts at most {MAX_BATCH_BYTES} bytes (1 MB) per "
            "request. Send fewer events per call.",
            status=413,
        )
    media_type = content_type.split(";", 1)[0].strip().lower()
    try:
        document = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise EnvelopeError(f"The request body is not valid JSON: {exc}.") from exc
    if media_type == "application/cloudevents+json":
        schema = Schema.CLOUD_EVENTS
        document = [document]
    elif media_type == "application/cloudevents-batch+json":
        schema = Schema.CLOUD_EVENTS
    else:
        schema = Schema.EVENT_GRID
    if not isinstance(document, list):
        raise EnvelopeError("The request body must be a JSON array of events.")
    if not document:
        raise EnvelopeError("The request body is an empty array; send at least one event.")
    events: list[dict[str, Any]] = []
    for index, event in enumerate(document):
        if not isinstance(event, dict):
            raise EnvelopeError(f"The event at index {index} must be a JSON object.")
        if schema is Schema.CLOUD_EVENTS:
            events.append(_validate_cloud_event(event, index))
        else:
            events.append(_validate_event_grid(event, index, topic_id))
    return Batch(schema=schema, events=events)
