"""Queue triggers: poll Azurite queues with the host's batching, retry and poison-queue rules.

Like the WebJobs queue listener: fetch up to `batchSize` messages (hidden for 10 minutes while
they run), fetch more when fewer than `newBatchThreshold` are in flight, delete on success, make
a failed message visible again after `visibilityTimeout`, and move it to `<queue>-poison` once it
has been tried `maxDequeueCount` times.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from azure.core.exceptions import AzureError, ResourceExistsError, ResourceNotFoundError
from azure.storage.queue import QueueClient, QueueMessage

from devstack.host.bindings import decode_queue_message
from devstack.host.settings import QueueOptions

log = logging.getLogger(__name__)

LEASE_SECONDS = 600
BUSY_POLL_SECONDS = 0.05
FIRST_IDLE_POLL_SECONDS = 0.1
MAX_LOCAL_IDLE_POLL_SECONDS = 2.0


@dataclass(frozen=True)
class DequeuedMessage:
    """A message as the function will see it (body already decoded)."""

    id: str
    body: bytes
    dequeue_count: int
    insertion_time: datetime | None
    expiration_time: datetime | None
    next_visible_time: datetime | None
    pop_receipt: str | None


Process = Callable[[DequeuedMessage], Awaitable[bool]]


class QueueListener:
    """Polls one queue for one function until `stopping` is set; in-flight messages are finished."""

    def __init__(
        self,
        function_name: str,
        queue: QueueClient,
        poison: QueueClient,
        options: QueueOptions,
        process: Process,
        *,
        stopping: asyncio.Event,
    ) -> None:
        self._function = function_name
        self._queue = queue
        self._poison = poison
        self._options = options
        self._process = process
        self._stopping = stopping
        self._in_flight: set[asyncio.Task[None]] = set()
        self._slot_free = asyncio.Event()
        self._nudged = asyncio.Event()
        self._idle_cap = min(options.max_polling_interval.total_seconds(), MAX_LOCAL_IDLE_POLL_SECONDS)

    @property
    def in_flight(self) -> set[asyncio.Task[None]]:
        return self._in_flight

    @property
    def queue_name(self) -> str:
        return str(self._queue.queue_name)

    def nudge(self) -> None:
        """A message was just added by this host: poll now instead of after the idle backoff."""
        self._nudged.set()

    async def run(self) -> None:
        delay = FIRST_IDLE_POLL_SECONDS
        while not self._stopping.is_set():
            try:
                await asyncio.to_thread(_create_queue, self._queue, retry_total=0)
                break
            except AzureError as exc:
                log.warning("Queue '%s' is not reachable yet: %s", self._queue.queue_name, exc)
                await self._wait(self._stopping.wait(), delay)
                delay = min(delay * 2, self._idle_cap)
        log.info("Listening on queue '%s' for 'Functions.%s'", self._queue.queue_name, self._function)
        while not self._stopping.is_set():
            if len(self._in_flight) > self._options.new_batch_threshold:
                self._slot_free.clear()
                await self._wait(self._slot_free.wait(), None)
                continue
            wanted = self._options.batch_size - len(self._in_flight)
            try:
                messages = await asyncio.to_thread(self._receive, wanted)
            except AzureError as exc:
                log.warning("Polling queue '%s' failed: %s", self._queue.queue_name, exc)
                messages = []
            for message in messages:
                task = asyncio.create_task(self._handle(message), name=f"queue-{message.id}")
                self._in_flight.add(task)
                task.add_done_callback(self._done)
            if messages:
                delay = FIRST_IDLE_POLL_SECONDS
                await self._wait(self._stopping.wait(), BUSY_POLL_SECONDS)
            else:
                await self._wait(self._nudged.wait(), delay)
                delay = FIRST_IDLE_POLL_SECONDS if self._nudged.is_set() else min(delay * 2, self._idle_cap)
                self._nudged.clear()

    async def _wait(self, awaitable: Awaitable[Any], timeout: float | None) -> None:
        stop = asyncio.ensure_future(self._stopping.wait())
        other = asyncio.ensure_future(awaitable)
        _done, pending = await asyncio.wait({stop, other}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        for task in pending:
            task.cancel()

    def _done(self, task: asyncio.Task[None]) -> None:
        self._in_flight.discard(task)
        self._slot_free.set()
        if not task.cancelled() and task.exception() is not None:
            log.error("Handling a message of queue '%s' failed", self._queue.queue_name,
                      exc_info=task.exception())

    def _receive(self, count: int) -> list[QueueMessage]:
        # No SDK retries: the poll loop is the retry, and a stop must not wait out a backoff.
        pages = self._queue.receive_messages(
            messages_per_page=count, max_messages=count, visibility_timeout=LEASE_SECONDS, retry_total=0
        )
        return list(pages)

    async def _handle(self, message: QueueMessage) -> None:
        max_count = self._options.max_dequeue_count
        if message.dequeue_count is not None and message.dequeue_count > max_count:
            await self._to_poison(message, f"its dequeue count {message.dequeue_count} exceeds {max_count}")
            return
        try:
            body = decode_queue_message(str(message.content), self._options.message_encoding)
        except ValueError as exc:
            await self._to_poison(message, f"its content is not valid {self._options.message_encoding}: {exc}")
            return
        dequeued = DequeuedMessage(
            id=message.id,
            body=body,
            dequeue_count=int(message.dequeue_count or 1),
            insertion_time=message.inserted_on,
            expiration_time=message.expires_on,
            next_visible_time=message.next_visible_on,
            pop_receipt=message.pop_receipt,
        )
        succeeded = await self._process(dequeued)
        if succeeded:
            await asyncio.to_thread(self._queue.delete_message, message.id, message.pop_receipt)
        elif dequeued.dequeue_count >= max_count:
            await self._to_poison(message, f"it failed {dequeued.dequeue_count} times (maxDequeueCount {max_count})")
        else:
            visibility = int(self._options.visibility_timeout.total_seconds())
            await asyncio.to_thread(
                self._queue.update_message, message.id, message.pop_receipt, visibility_timeout=visibility
            )

    async def _to_poison(self, message: QueueMessage, why: str) -> None:
        log.warning(
            "Message '%s' on queue '%s' has reached MaxDequeueCount of %d (%s). Moving message to queue '%s'.",
            message.id, self._queue.queue_name, self._options.max_dequeue_count, why, self._poison.queue_name,
        )

        def move() -> None:
            _create_queue(self._poison)
            self._poison.send_message(message.content)
            try:
                self._queue.delete_message(message.id, message.pop_receipt)
            except ResourceNotFoundError:
                log.warning("Message '%s' was already gone from '%s'", message.id, self._queue.queue_name)

        await asyncio.to_thread(move)


def _create_queue(client: QueueClient, **options: Any) -> None:
    with contextlib.suppress(ResourceExistsError):
        client.create_queue(**options)
