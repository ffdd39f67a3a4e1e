"""`DelayedQueue` on Azure Queue Storage (azure-storage-queue): work scheduled as invisible messages.

Seal checks and rollout steps wait this way instead of blocking a function: a message sent with a
visibility timeout appears when the delay has passed, and the queue trigger picks it up.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import suppress
from typing import Generic, TypeVar

from azure.core.credentials import TokenCredential
from azure.core.exceptions import ResourceExistsError
from azure.storage.queue import QueueClient, QueueServiceClient, TextBase64EncodePolicy

from shared.config.connections import StorageConnection
from shared.ports import clamp_delay
from shared.telemetry import with_traceparent

log = logging.getLogger(__name__)

T = TypeVar("T")


def queue_client(conn: StorageConnection, credential: TokenCredential, queue: str) -> QueueClient:
    """A client for `queue` (created if missing), encoding messages in base64 as the Functions trigger expects."""
    policy = TextBase64EncodePolicy()
    if conn.connection_string:
        service = QueueServiceClient.from_connection_string(conn.connection_string, message_encode_policy=policy)
    else:
        assert conn.queue_service_uri is not None
        service = QueueServiceClient(conn.queue_service_uri, credential=credential, message_encode_policy=policy)
    client = service.get_queue_client(queue, message_encode_policy=policy)
    with suppress(ResourceExistsError):
        client.create_queue()
    return client


class AzureDelayedQueue(Generic[T]):
    """One queue; `encode` turns an item into the message text (the trigger decodes it)."""

    def __init__(self, queue: QueueClient, encode: Callable[[T], str]) -> None:
        self._queue = queue
        self._encode = encode

    def send(self, item: T, delay_seconds: float) -> None:
        """Enqueue `item`, invisible for `delay_seconds` (clamped to 0..7 days). Azure errors propagate.

        The message never expires (`time_to_live=-1`): with the default of 7 days, a message delayed
        by 7 days would expire the moment it became visible, and its work would be lost silently.
        A JSON message carries the current trace context as its `traceparent` key, so the handler that
        picks it up continues the trace (`shared.telemetry.with_traceparent`).
        """
        self._queue.send_message(with_traceparent(self._encode(item)), visibility_timeout=clamp_delay(delay_seconds),
                                 time_to_live=-1)
