"""`DeadLetters` on a blob container and `PoisonQueue` on Queue Storage: what the redrive command reads.

Event Grid writes each dead letter as one blob, `<TOPIC>/<SUBSCRIPTION>/yyyy/MM/dd/HH/<id>.json`, holding
a JSON array of the event(s) with its delivery metadata (`deadLetterReason`, `deliveryAttempts`, …).
Poison messages are base64 text, as the Functions host moved them from their queue.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from contextlib import suppress
from datetime import datetime
from typing import Any

from azure.core import MatchConditions
from azure.core.credentials import TokenCredential
from azure.core.exceptions import ResourceModifiedError, ResourceNotFoundError
from azure.storage.blob import ContainerClient
from azure.storage.queue import (
    QueueClient,
    QueueMessage,
    QueueServiceClient,
    TextBase64DecodePolicy,
    TextBase64EncodePolicy,
)

from shared.config.connections import StorageConnection
from shared.domain.events import load_json
from shared.domain.keys import clean_etag
from shared.errors import InvalidEventError
from shared.ports import DeadLetter, PoisonMessage

log = logging.getLogger(__name__)

DEAD_LETTER_CONTAINER = "deadletter"  # infra/eventgrid-subscriptions.json: every subscription's deadLetter.container
TAKE_SECONDS = 60  # how long a message taken for replay stays hidden if the replay dies before releasing it
MAX_TAKE_BATCHES = 32  # a search for one message looks at most this many batches of 32


class BlobDeadLetters:
    """The dead-letter container of the app's storage account."""

    def __init__(self, container: ContainerClient) -> None:
        self._container = container

    def list(self) -> Iterator[DeadLetter]:
        try:
            names = [b.name for b in self._container.list_blobs()]
        except ResourceNotFoundError:  # no event was ever dead-lettered: the container does not exist yet
            return
        for name in names:
            letter = self.get(name)
            if letter is not None:
                yield letter

    def get(self, name: str) -> DeadLetter | None:
        try:
            download = self._container.download_blob(name)
            content = download.readall()
        except ResourceNotFoundError:
            return None
        props = download.properties
        last_modified = props.last_modified
        assert isinstance(last_modified, datetime)
        return DeadLetter(name, _events(name, content), clean_etag(str(props.etag)), last_modified)

    def delete(self, letter: DeadLetter) -> bool:
        try:
            self._container.delete_blob(letter.name, etag=f'"{letter.etag}"',
                                        match_condition=MatchConditions.IfNotModified)
        except (ResourceNotFoundError, ResourceModifiedError):
            return False
        return True


def _events(name: str, content: bytes) -> tuple[Mapping[str, Any], ...]:
    """The events of a dead-letter blob: a JSON array of events (or one event); none if it is not JSON."""
    try:
        document = load_json(content, f"dead letter {name}")
    except InvalidEventError as exc:
        log.warning("dead letter %s: %s; shown, never replayed", name, exc)
        return ()
    items = document if isinstance(document, list) else [document]
    return tuple(item for item in items if isinstance(item, dict))


class AzurePoisonQueue:
    """One poison queue; the client decodes base64 (`TextBase64DecodePolicy`) as the host encoded it."""

    def __init__(self, queue: QueueClient) -> None:
        self._queue = queue

    @property
    def name(self) -> str:
        return str(self._queue.queue_name)

    def peek(self, limit: int = 32) -> list[PoisonMessage]:
        try:
            return [self._message(m) for m in self._queue.peek_messages(max_messages=min(limit, 32))]
        except ResourceNotFoundError:
            return []

    def take(self, message_id: str | None = None) -> PoisonMessage | None:
        """Receive batches of 32 until the message is found (at most MAX_TAKE_BATCHES); every other message
        received on the way stays hidden until the search ends (so the next batch brings new ones), then is
        released."""
        passed: list[QueueMessage] = []
        found: QueueMessage | None = None
        try:
            for _ in range(MAX_TAKE_BATCHES):
                batch = list(self._queue.receive_messages(messages_per_page=32, max_messages=32,
                                                          visibility_timeout=TAKE_SECONDS))
                found = next((m for m in batch if message_id is None or m.id == message_id), None)
                passed.extend(m for m in batch if m is not found)
                if found is not None or not batch:
                    break
        except ResourceNotFoundError:
            return None
        finally:
            for other in passed:
                with suppress(LookupError):  # gone meanwhile: nothing to release
                    self.release(self._message(other))
        return self._message(found) if found is not None else None

    def delete(self, message: PoisonMessage) -> None:
        try:
            self._queue.delete_message(message.id, message.receipt)
        except ResourceNotFoundError as exc:
            raise LookupError(f"message {message.id} of {self.name} is gone or was taken again") from exc

    def release(self, message: PoisonMessage) -> None:
        try:
            self._queue.update_message(message.id, message.receipt, visibility_timeout=0)
        except ResourceNotFoundError as exc:
            raise LookupError(f"message {message.id} of {self.name} is gone or was taken again") from exc

    def _message(self, m: QueueMessage) -> PoisonMessage:
        inserted = m.inserted_on if isinstance(m.inserted_on, datetime) else None
        return PoisonMessage(self.name, str(m.id), str(m.content), inserted, m.pop_receipt)


def poison_queue_names(queues: Iterator[Any]) -> list[str]:
    """The poison queues among a listing (`QueueServiceClient.list_queues()`), by name."""
    return sorted(q.name for q in queues if str(q.name).endswith("-poison"))


def blob_trigger_queue_name(queues: Iterator[Any]) -> str | None:
    """The host's blob-trigger queue (`azure-webjobs-blobtrigger-<host id>`) in a listing; None unless exactly one."""
    names = [str(q.name) for q in queues if str(q.name).startswith("azure-webjobs-blobtrigger-")
             and not str(q.name).endswith("-poison")]
    with suppress(ValueError):
        [name] = names
        return name
    return None


def queue_service(conn: StorageConnection, credential: TokenCredential) -> QueueServiceClient:
    """A queue service client that reads and writes message text in base64, as the Functions host does."""
    if conn.connection_string:
        return QueueServiceClient.from_connection_string(conn.connection_string,
                                                         message_encode_policy=TextBase64EncodePolicy(),
                                                         message_decode_policy=TextBase64DecodePolicy())
    assert conn.queue_service_uri is not None
    return QueueServiceClient(conn.queue_service_uri, credential=credential,
                              message_encode_policy=TextBase64EncodePolicy(),
                              message_decode_policy=TextBase64DecodePolicy())
