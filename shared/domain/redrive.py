"""What to do with a dead letter or a poison message: pure decisions, each with its reason.

`python -m shared.cli redrive` lists what never got handled and replays it. Where it goes back to
is decided here, without I/O:

* a poison message of one of Evergreen's queues (`<queue>-poison`) → re-enqueued on `<queue>`;
* a poison message of the blob trigger (`webjobs-blobtrigger-poison`, in the data account) → re-enqueued
  on the host's blob-trigger queue (`azure-webjobs-blobtrigger-<host id>`), unchanged;
* a dead-lettered `Evergreen.DataVersionRegistered` → re-published to Evergreen's topic (its id is
  deterministic, so a consumer that did get it deduplicates);
* a dead-lettered `Microsoft.Storage.BlobCreated` → a blob-trigger message for the blob, on the same
  queue as above (Event Grid system topics cannot be published to);
* a dead-lettered Azure ML event (ModelRegistered, RunCompleted, RunStatusChanged) → handled in-process
  by the same parser and service as its trigger (`Dispatch`);
* anything else → `Unsupported`, with the reason; it stays where it is.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from shared.domain.events import DataVersionRegistered
from shared.domain.retrain import RUN_COMPLETED, RUN_STATUS_CHANGED, parse_data_version_registered
from shared.domain.webhooks import MODEL_REGISTERED
from shared.errors import InvalidEventError

POISON_SUFFIX = "-poison"
BLOB_TRIGGER_POISON = "webjobs-blobtrigger-poison"
BLOB_TRIGGER_QUEUE = "blob-trigger"  # the key of the host's blob-trigger queue (its real name holds the host id)
BLOB_CREATED = "Microsoft.Storage.BlobCreated"
BLOB_TRIGGER_FUNCTION = "on_blob_created"
DISPATCHED_TYPES = frozenset({MODEL_REGISTERED, RUN_COMPLETED, RUN_STATUS_CHANGED})
DEAD_LETTER_PREFIX = "deadletter:"
_BLOB_SUBJECT = re.compile(r"^/blobServices/default/containers/(?P<container>[^/]+)/blobs/(?P<name>.+)$")
POISON_PREFIX = "poison:"


@dataclass(frozen=True)
class Requeue:
    """Send `text` to the queue named `queue` (BLOB_TRIGGER_QUEUE: the host's blob-trigger queue)."""

    queue: str
    text: str
    reason: str


@dataclass(frozen=True)
class Republish:
    """Publish Evergreen's own event to Evergreen's topic again."""

    event: DataVersionRegistered
    reason: str


@dataclass(frozen=True)
class Dispatch:
    """Handle an Azure ML event in-process, through its trigger's parser and service."""

    event_type: str
    document: Mapping[str, Any]
    reason: str


@dataclass(frozen=True)
class Unsupported:
    """Nothing can replay this; it is left where it is."""

    reason: str


Replay = Requeue | Republish | Dispatch | Unsupported


# -- ids: one namespace for both sources -------------------------------------------------------------------
def dead_letter_id(blob_name: str) -> str:
    return f"{DEAD_LETTER_PREFIX}{blob_name}"


def poison_id(queue: str, message_id: str) -> str:
    return f"{POISON_PREFIX}{queue}:{message_id}"


def parse_item_id(item_id: str) -> tuple[str, str, str]:
    """`(source, queue or "", name or message id)` of an id as `redrive list` prints it; ValueError if it is none."""
    if item_id.startswith(DEAD_LETTER_PREFIX) and len(item_id) > len(DEAD_LETTER_PREFIX):
        return "deadletter", "", item_id[len(DEAD_LETTER_PREFIX):]
    if item_id.startswith(POISON_PREFIX):
        queue, _, message = item_id[len(POISON_PREFIX):].partition(":")
        if queue and message:
            return "poison", queue, message
    raise ValueError(f"{item_id!r} is not a redrive id: expected deadletter:<blob name> or "
                     "poison:<queue>:<message id>, as `redrive list` prints them")


# -- decisions -----------------------------------------------------------------------------------------------
def plan_poison_replay(poison_queue: str, text: str) -> Requeue | Unsupported:
    """Where a poison message goes back to: its original queue, unchanged."""
    if poison_queue == BLOB_TRIGGER_POISON:
        return Requeue(BLOB_TRIGGER_QUEUE, text, "a blob-trigger message goes back to the host's blob-trigger queue")
    if poison_queue.endswith(POISON_SUFFIX) and len(poison_queue) > len(POISON_SUFFIX):
        original = poison_queue[: -len(POISON_SUFFIX)]
        return Requeue(original, text, f"re-enqueued on {original}, the queue it was poisoned from")
    return Unsupported(f"{poison_queue} is not a poison queue (<queue>{POISON_SUFFIX})")


def event_type_of(event: Mapping[str, Any]) -> str:
    """An event's type in either schema (Event Grid `eventType`, CloudEvents `type`); '' if it names none."""
    value = event.get("eventType", event.get("type"))
    return value if isinstance(value, str) else ""


def plan_dead_letter_replay(event: Mapping[str, Any]) -> Replay:
    """Where one dead-lettered event goes back to (see the module docstring)."""
    event_type = event_type_of(event)
    data = event.get("data")
    if event_type == DataVersionRegistered.EVENT_TYPE:
        try:
            return Republish(parse_data_version_registered(data), "re-published to Evergreen's topic")
        except InvalidEventError as exc:
            return Unsupported(f"the dead-lettered event cannot be re-published: {exc}")
    if event_type == BLOB_CREATED:
        return _blob_created_replay(event.get("subject"), data)
    if event_type in DISPATCHED_TYPES:
        return Dispatch(event_type, _event_grid_document(event), "handled in-process by its trigger's service")
    return Unsupported(f"event type {event_type or '(none)'} has no replay: Evergreen replays "
                       f"{DataVersionRegistered.EVENT_TYPE}, {BLOB_CREATED} and Azure ML's "
                       f"{', '.join(sorted(DISPATCHED_TYPES))}")


def _blob_created_replay(subject: object, data: object) -> Requeue | Unsupported:
    """A blob-trigger message for the blob a dead-lettered BlobCreated names (by its subject, as the host reads it)."""
    found = _BLOB_SUBJECT.match(subject) if isinstance(subject, str) else None
    if found is None:
        return Unsupported(f"the dead-lettered {BLOB_CREATED} names no blob: its subject {subject!r} is not "
                           "/blobServices/default/containers/<container>/blobs/<name>")
    etag = data.get("eTag") if isinstance(data, Mapping) else None
    message = {"Type": "BlobTrigger", "FunctionId": f"Host.Functions.{BLOB_TRIGGER_FUNCTION}", "BlobType": "Block",
               "ContainerName": found["container"], "BlobName": found["name"],
               "ETag": etag if isinstance(etag, str) else None}
    return Requeue(BLOB_TRIGGER_QUEUE, json.dumps(message, ensure_ascii=False),
                   "a blob-trigger message for the blob, on the host's blob-trigger queue")


def _event_grid_document(event: Mapping[str, Any]) -> dict[str, Any]:
    """The Event Grid–schema document a trigger's parser reads (a CloudEvent's keys mapped onto it)."""
    if "specversion" not in event:
        return dict(event)
    return {"id": event.get("id"), "eventType": event.get("type"), "subject": event.get("subject"),
            "eventTime": event.get("time"), "topic": event.get("source"), "data": event.get("data")}
