"""The `DelayedQueue` contract: the in-memory queue and Azure Queue Storage (on Azurite) behave alike.

Seal checks and rollout steps wait by sending themselves with a delay: a message must stay
invisible until its delay has passed, then appear with the item intact.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest

from shared.adapters.memory.queues import MemoryDelayedQueue
from shared.domain.events import SealRequest
from shared.domain.ingest import seal_request_from_json, seal_request_to_json
from shared.ports import DelayedQueue


@dataclass
class Queue:
    queue: DelayedQueue[SealRequest]
    visible: Callable[[], list[SealRequest]]  # what a consumer could receive now (peeked, not received)
    advance: Callable[[float], None]  # let time pass


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 11, 27, 12, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@pytest.fixture(params=["memory", pytest.param("azure", marks=pytest.mark.integration)])
def queue(request: pytest.FixtureRequest) -> Iterator[Queue]:
    if request.param == "memory":
        clock = Clock()
        memory: MemoryDelayedQueue[SealRequest] = MemoryDelayedQueue(clock=clock)
        yield Queue(memory, memory.peek, clock.advance)
        return
    from azure.storage.queue import QueueClient, TextBase64DecodePolicy

    from shared.adapters.azure.queues import AzureDelayedQueue, queue_client
    from shared.config.connections import StorageConnection

    conn = request.getfixturevalue("azurite").connection_string
    name = f"contract-{uuid.uuid4().hex[:12]}"
    client = queue_client(StorageConnection(name="AzureWebJobsStorage", connection_string=conn), None, name)  # type: ignore[arg-type]
    reader = QueueClient.from_connection_string(conn, name, message_decode_policy=TextBase64DecodePolicy())

    def visible() -> list[SealRequest]:
        return [seal_request_from_json(m.content) for m in reader.peek_messages(max_messages=32)]

    try:
        yield Queue(AzureDelayedQueue(client, seal_request_to_json), visible, time.sleep)
    finally:
        client.delete_queue()


def request_for(n: int) -> SealRequest:
    return SealRequest("churn", f"churn/drop {n} é/", n, "quiet-period")


def test_a_message_without_delay_is_visible_at_once_with_its_item_intact(queue: Queue) -> None:
    queue.queue.send(request_for(1), 0)
    assert queue.visible() == [request_for(1)]


def test_a_message_is_invisible_before_its_delay_and_visible_after(queue: Queue) -> None:
    queue.queue.send(request_for(2), 2)
    assert queue.visible() == []
    queue.advance(3)
    assert queue.visible() == [request_for(2)]


def test_a_negative_delay_counts_as_none(queue: Queue) -> None:
    queue.queue.send(request_for(3), -5)
    assert queue.visible() == [request_for(3)]


def test_a_delay_beyond_seven_days_is_clamped_not_refused(queue: Queue) -> None:
    queue.queue.send(request_for(4), 30 * 24 * 3600)
    queue.queue.send(request_for(5), 0)
    assert queue.visible() == [request_for(5)]
