"""The `DeadLetters` and `PoisonQueue` contracts: in memory and on Azurite (blob container, Queue Storage) alike."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from shared.adapters.memory.redrive import MemoryDeadLetters, MemoryPoisonQueue
from shared.ports import DeadLetters, PoisonQueue

EVENT = {"id": "e-1", "eventType": "Evergreen.DataVersionRegistered", "data": {"dataset": "churn"},
         "deadLetterReason": "MaxDeliveryAttemptsExceeded", "deliveryAttempts": 30}


@dataclass
class Letters:
    port: DeadLetters
    write: Callable[[str, bytes], None]  # what Event Grid does: one blob per dead letter


@dataclass
class Poison:
    port: PoisonQueue
    add: Callable[[str], None]  # what the host does after maxDequeueCount failures


@pytest.fixture(params=["memory", pytest.param("azure", marks=pytest.mark.integration)])
def letters(request: pytest.FixtureRequest) -> Iterator[Letters]:
    if request.param == "memory":
        memory = MemoryDeadLetters()

        def add(name: str, content: bytes) -> None:
            try:
                document: Any = json.loads(content)
            except ValueError:
                document = []
            memory.add(name, *(document if isinstance(document, list) else [document]))

        yield Letters(memory, add)
        return
    from azure.storage.blob import BlobServiceClient

    from shared.adapters.azure.redrive import BlobDeadLetters

    service = BlobServiceClient.from_connection_string(request.getfixturevalue("azurite").connection_string)
    container = service.get_container_client(f"deadletter-{uuid.uuid4().hex[:12]}")
    azure = BlobDeadLetters(container)
    assert list(azure.list()) == []  # before the container exists: nothing, no error
    container.create_container()
    yield Letters(azure, lambda name, content: container.upload_blob(name, content, overwrite=True) and None)
    container.delete_container()


@pytest.fixture(params=["memory", pytest.param("azure", marks=pytest.mark.integration)])
def poison(request: pytest.FixtureRequest) -> Iterator[Poison]:
    if request.param == "memory":
        memory = MemoryPoisonQueue("evergreen-batch-seal-poison")
        yield Poison(memory, lambda text: memory.add(text) and None)
        return
    from shared.adapters.azure.redrive import AzurePoisonQueue, queue_service
    from shared.config.connections import StorageConnection

    conn = StorageConnection(name="AzureWebJobsStorage",
                             connection_string=request.getfixturevalue("azurite").connection_string)
    client = queue_service(conn, None).get_queue_client(f"contract-{uuid.uuid4().hex[:12]}-poison")  # type: ignore[arg-type]
    azure = AzurePoisonQueue(client)
    assert azure.peek() == [] and azure.take() is None  # before the queue exists: nothing, no error
    client.create_queue()
    yield Poison(azure, lambda text: client.send_message(text) and None)
    client.delete_queue()


def test_dead_letters_are_listed_read_and_deleted_only_if_unchanged(letters: Letters) -> None:
    letters.write("EVERGREEN/SUB/2026/11/27/11/b.json", json.dumps([EVENT]).encode())
    letters.write("EVERGREEN/SUB/2026/11/27/10/a.json", json.dumps([EVENT, {**EVENT, "id": "e-2"}]).encode())
    letters.write("EVERGREEN/SUB/2026/11/27/12/c.json", b"not json")

    listed = list(letters.port.list())
    assert [x.name.rsplit("/", 1)[1] for x in listed] == ["a.json", "b.json", "c.json"]
    assert [e["id"] for e in listed[0].events] == ["e-1", "e-2"] and listed[2].events == ()
    letter = letters.port.get("EVERGREEN/SUB/2026/11/27/11/b.json")
    assert letter is not None and letter.events[0]["deadLetterReason"] == "MaxDeliveryAttemptsExceeded"
    assert letters.port.get("nope.json") is None

    letters.write(letter.name, json.dumps([{**EVENT, "id": "e-3"}]).encode())  # rewritten meanwhile
    assert letters.port.delete(letter) is False
    fresh = letters.port.get(letter.name)
    assert fresh is not None and letters.port.delete(fresh) is True
    assert letters.port.delete(fresh) is False and letters.port.get(letter.name) is None


def test_a_poison_message_is_peeked_taken_released_and_deleted(poison: Poison) -> None:
    for text in ("one", "two", '{"ü": 3}'):
        poison.add(text)

    peeked = poison.port.peek()
    assert [m.text for m in peeked] == ["one", "two", '{"ü": 3}']
    assert {m.queue for m in peeked} == {poison.port.name}

    taken = poison.port.take(peeked[1].id)
    assert taken is not None and taken.text == "two" and taken.receipt
    assert [m.text for m in poison.port.peek()] == ["one", '{"ü": 3}']  # hidden while taken; the others released
    poison.port.release(taken)
    assert sorted(m.text for m in poison.port.peek()) == sorted(["one", "two", '{"ü": 3}'])

    again = poison.port.take(peeked[1].id)
    assert again is not None
    poison.port.delete(again)
    with pytest.raises(LookupError):
        poison.port.delete(again)
    assert poison.port.take("no-such-id") is None
    assert sorted(m.text for m in poison.port.peek()) == sorted(["one", '{"ü": 3}'])
