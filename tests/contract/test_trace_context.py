"""The trace context crosses both kinds of `DelayedQueue` and `EventPublisher` alike: what a consumer
receives carries the `traceparent` of the span that sent it (the in-memory adapters record it where the
Azure adapters write it into the message text and the event's data)."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator

import pytest
from opentelemetry.sdk.trace import TracerProvider

from shared import telemetry
from shared.adapters.memory.eventgrid import MemoryEventPublisher
from shared.adapters.memory.queues import MemoryDelayedQueue
from shared.domain.events import DataVersionRegistered, SealRequest
from shared.domain.ingest import seal_request_to_json
from shared.ports import DelayedQueue, EventPublisher

Received = Callable[[], str]  # the traceparent the consumer got with the one item sent


@pytest.fixture
def sending() -> Iterator[Callable[[], str]]:
    """Enter a (locally recorded) span and return its traceparent; the span ends with the test."""
    provider = TracerProvider()
    with provider.get_tracer("contract").start_as_current_span("sender"):
        yield telemetry.current_traceparent
    provider.shutdown()


@pytest.fixture(params=["memory", pytest.param("azure", marks=pytest.mark.integration)])
def queue(request: pytest.FixtureRequest) -> Iterator[tuple[DelayedQueue[SealRequest], Received]]:
    if request.param == "memory":
        memory: MemoryDelayedQueue[SealRequest] = MemoryDelayedQueue()

        def taken() -> str:
            message = memory.receive()
            assert message is not None
            return message.traceparent

        yield memory, taken
        return
    from azure.storage.queue import QueueClient, TextBase64DecodePolicy

    from shared.adapters.azure.queues import AzureDelayedQueue, queue_client
    from shared.config.connections import StorageConnection

    conn = request.getfixturevalue("azurite").connection_string
    name = f"contract-trace-{uuid.uuid4().hex[:12]}"
    client = queue_client(StorageConnection(name="AzureWebJobsStorage", connection_string=conn), None, name)  # type: ignore[arg-type]
    reader = QueueClient.from_connection_string(conn, name, message_decode_policy=TextBase64DecodePolicy())

    def peeked() -> str:
        (message,) = reader.peek_messages(max_messages=2)
        return telemetry.traceparent_of_message(message.content)

    try:
        yield AzureDelayedQueue(client, seal_request_to_json), peeked
    finally:
        client.delete_queue()


def test_a_queued_item_carries_the_senders_trace_context(
        queue: tuple[DelayedQueue[SealRequest], Received], sending: Callable[[], str]) -> None:
    sender, received = queue
    sender.send(SealRequest("churn", "churn/d1/", 1, "marker"), 0)
    assert sending().startswith("00-") and received() == sending()


@pytest.fixture(params=["memory", pytest.param("azure", marks=pytest.mark.integration)])
def topic(request: pytest.FixtureRequest) -> Iterator[tuple[EventPublisher, Callable[[str], str]]]:
    if request.param == "memory":
        memory = MemoryEventPublisher()
        yield memory, lambda dataset: next(e.traceparent for e in memory.events if e.dataset == dataset)
        return
    from azure.core.credentials import AzureKeyCredential

    from shared.adapters.azure.eventgrid import EventGridPublisher

    eventgrid = request.getfixturevalue("eventgrid")

    def delivered(dataset: str) -> str:
        (got,) = eventgrid.receiver.wait_for(f"datasets/{dataset}/", function="on_custom_event", count=1)
        return str(got.event["data"]["traceparent"])

    yield (EventGridPublisher(eventgrid.topic_endpoint("evergreen"), AzureKeyCredential(eventgrid.topic_key)),
           delivered)


def test_a_published_event_carries_the_senders_trace_context(
        topic: tuple[EventPublisher, Callable[[str], str]], sending: Callable[[], str]) -> None:
    publisher, received = topic
    dataset = f"contract{uuid.uuid4().hex[:10]}"
    publisher.data_version_registered(DataVersionRegistered(dataset, dataset, "1", "azureml://x", "uri_file",
                                                            "cd" * 32, 1, ("a.csv",)))
    assert received(dataset) == sending()
