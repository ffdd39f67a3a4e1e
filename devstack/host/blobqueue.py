"""The Event Grid–sourced blob trigger's internal queue, as the Functions blob extension keeps it.

In Azure the host does not run a blob-trigger function inside the Event Grid delivery: it answers
202 at once, writes a `BlobTriggerMessage` to its own queue, runs the function from that queue with the
queue's retry rules (`extensions.queues` of host.json: `maxDequeueCount`, `visibilityTimeout`) and,
after `maxDequeueCount` failures, moves the message to `webjobs-blobtrigger-poison` in the storage
account of the trigger's connection. So a failing blob never reaches Event Grid's dead letters.

Locally the work queue lives in the same (data) account as its poison queue, one per connection:
`azure-webjobs-blobtrigger-<host id>`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

POISON_QUEUE = "webjobs-blobtrigger-poison"
FUNCTION_ID_PREFIX = "Host.Functions."
MESSAGE_TYPE = "BlobTrigger"
_QUEUE_NAME_MAX = 63
_NOT_QUEUE_CHARS = re.compile(r"[^a-z0-9-]+")

# Azure.Storage.Blobs.Models.BlobType, as the extension's StringEnumConverter writes it.
_BLOB_TYPES = {"blockblob": "Block", "pageblob": "Page", "appendblob": "Append"}


class BadBlobTriggerMessage(ValueError):
    """A message on the blob-trigger queue is not a BlobTriggerMessage."""


def work_queue_name(host_id: str) -> str:
    """`azure-webjobs-blobtrigger-<host id>`, made a valid queue name (lower case, digits, single dashes)."""
    tail = _NOT_QUEUE_CHARS.sub("-", host_id.lower()).strip("-") or "host"
    name = f"azure-webjobs-blobtrigger-{tail}"[:_QUEUE_NAME_MAX].rstrip("-")
    return re.sub("-{2,}", "-", name)


def blob_type_name(event_blob_type: str | None) -> str:
    """The extension's name for a blob type given as Event Grid spells it (`BlockBlob` → `Block`)."""
    return _BLOB_TYPES.get(str(event_blob_type or "BlockBlob").lower(), "Block")


@dataclass(frozen=True)
class BlobTriggerMessage:
    """What the blob extension enqueues for one blob (field names as the extension serialises them)."""

    function_id: str
    container: str
    blob_name: str
    blob_type: str = "Block"
    etag: str | None = None

    @classmethod
    def for_function(cls, function: str, container: str, blob_name: str, *, blob_type: str = "Block",
                     etag: str | None = None) -> BlobTriggerMessage:
        return cls(f"{FUNCTION_ID_PREFIX}{function}", container, blob_name, blob_type, etag)

    @property
    def function_name(self) -> str:
        """The function's short name (`Host.Functions.on_blob` → `on_blob`)."""
        if self.function_id.lower().startswith(FUNCTION_ID_PREFIX.lower()):
            return self.function_id[len(FUNCTION_ID_PREFIX):]
        return self.function_id

    @property
    def blob_path(self) -> str:
        return f"{self.container}/{self.blob_name}"

    def to_json(self) -> str:
        body: dict[str, Any] = {
            "Type": MESSAGE_TYPE,
            "FunctionId": self.function_id,
            "BlobType": self.blob_type,
            "ContainerName": self.container,
            "BlobName": self.blob_name,
            "ETag": self.etag,
        }
        return json.dumps(body, ensure_ascii=False)

    @classmethod
    def from_json(cls, text: bytes | str) -> BlobTriggerMessage:
        """Parse a queue message body; raises BadBlobTriggerMessage when it is not one."""
        try:
            body = json.loads(text)
        except (ValueError, UnicodeDecodeError) as exc:
            raise BadBlobTriggerMessage(f"not JSON: {exc}") from exc
        if not isinstance(body, dict) or body.get("Type", MESSAGE_TYPE) != MESSAGE_TYPE:
            raise BadBlobTriggerMessage("not a BlobTrigger message")
        fields = [body.get(key) for key in ("FunctionId", "ContainerName", "BlobName")]
        if not all(isinstance(value, str) and value for value in fields):
            raise BadBlobTriggerMessage("FunctionId, ContainerName and BlobName must be non-empty strings")
        etag = body.get("ETag")
        return cls(
            function_id=str(fields[0]),
            container=str(fields[1]),
            blob_name=str(fields[2]),
            blob_type=str(body.get("BlobType") or "Block"),
            etag=etag if isinstance(etag, str) else None,
        )
