"""The redrive command's service on in-memory adapters: list, show, replay one or all, each replay audited."""

from __future__ import annotations

import json
from typing import Any

import pytest

from shared.adapters.memory.queues import MemoryDelayedQueue
from shared.adapters.memory.redrive import MemoryDeadLetters, MemoryPoisonQueue
from shared.adapters.memory.tables import MemoryTable
from shared.domain.events import DataVersionRegistered
from shared.domain.redrive import BLOB_TRIGGER_POISON, BLOB_TRIGGER_QUEUE
from shared.domain.webhooks import MODEL_REGISTERED
from shared.services.audit import TableAuditLog
from shared.services.redrive import REPLAYED_KIND, Redriver
from tests.services.conftest import FakeClock

SEAL = "evergreen-batch-seal"
DATA = {"dataset": "churn", "asset_name": "churn", "version": "3", "uri": "azureml://x", "asset_type": "uri_folder",
        "sha256": "ab" * 32, "file_count": 1, "files": ["a.csv"]}


class Publisher:
    def __init__(self, fail: bool = False) -> None:
        self.published: list[DataVersionRegistered] = []
        self.fail = fail

    def data_version_registered(self, event: DataVersionRegistered) -> str:
        if self.fail:
            raise ConnectionError("topic unreachable")
        self.published.append(event)
        return event.event_id


class World:
    def __init__(self, clock: FakeClock, *, publish_fails: bool = False) -> None:
        self.letters = MemoryDeadLetters(clock=clock)
        self.seal_poison = MemoryPoisonQueue(f"{SEAL}-poison", clock=clock)
        self.blob_poison = MemoryPoisonQueue(BLOB_TRIGGER_POISON, clock=clock)
        self.seal: MemoryDelayedQueue[str] = MemoryDelayedQueue(clock=clock)
        self.blob_trigger: MemoryDelayedQueue[str] = MemoryDelayedQueue(clock=clock)
        self.publisher = Publisher(publish_fails)
        self.handled: list[dict[str, Any]] = []
        self.table = MemoryTable()
        self.audit = TableAuditLog(self.table)
        self.redriver = Redriver(
            dead_letters=self.letters, poison_queues=[self.seal_poison, self.blob_poison],
            queues={SEAL: self.seal, BLOB_TRIGGER_QUEUE: self.blob_trigger}, publisher=self.publisher,
            handlers={MODEL_REGISTERED: lambda doc: self.handled.append(dict(doc)) or "started"},
            audit=self.audit, clock=clock)

    def replayed(self) -> list[dict[str, str]]:
        return [{"event": r.event_id, **r.assets} for r in self.audit.query(kind_prefix=REPLAYED_KIND,
                                                                              now=self.redriver._clock())]


def event(event_type: str, data: object, ident: str = "e-1", **extra: Any) -> dict[str, Any]:
    return {"id": ident, "eventType": event_type, "subject": extra.pop("subject", "s"), "data": data,
            "eventTime": "2026-11-27T11:00:00Z", "deadLetterReason": "MaxDeliveryAttemptsExceeded",
            "deliveryAttempts": 30, **extra}


@pytest.fixture
def world(clock: FakeClock) -> World:
    return World(clock)


def test_list_and_show_name_every_item_with_its_reason(world: World) -> None:
    world.letters.add("EVERGREEN/DATA-VERSION-REGISTERED/2026/11/27/11/x.json",
                      event(DataVersionRegistered.EVENT_TYPE, DATA))
    message = world.seal_poison.add('{"dataset": "churn"}')

    items = {i.id: i for i in world.redriver.list_items()}
    letter_id = "deadletter:EVERGREEN/DATA-VERSION-REGISTERED/2026/11/27/11/x.json"
    assert set(items) == {letter_id, f"poison:{SEAL}-poison:{message.id}"}
    assert items[letter_id].what == DataVersionRegistered.EVENT_TYPE
    assert items[letter_id].reason == "MaxDeliveryAttemptsExceeded"
    assert [i.source for i in world.redriver.list_items("poison")] == ["poison"]
    shown = world.redriver.show(f"poison:{SEAL}-poison:{message.id}")
    assert shown is not None and shown.content == '{"dataset": "churn"}'
    assert world.redriver.show("poison:nope-poison:m-9") is None
    with pytest.raises(ValueError, match="not a redrive id"):
        world.redriver.show("what")


def test_a_poison_message_goes_back_to_its_queue_is_audited_and_then_removed(world: World) -> None:
    message = world.seal_poison.add('{"dataset": "churn", "folder": "f", "generation": 1}')

    outcome = world.redriver.replay(f"poison:{SEAL}-poison:{message.id}")

    assert (outcome.action, outcome.detail) == ("replayed", f"queue {SEAL}")
    assert world.seal.items() == [message.text]
    assert world.seal_poison.texts() == []
    assert world.replayed() == [{"event": message.id, "item": outcome.id, "target": f"queue {SEAL}"}]


def test_a_blob_trigger_poison_message_goes_back_to_the_hosts_blob_trigger_queue(world: World) -> None:
    text = json.dumps({"Type": "BlobTrigger", "FunctionId": "Host.Functions.on_blob_created",
                       "ContainerName": "landing", "BlobName": "churn/a.csv"})
    world.blob_poison.add(text)
    [outcome] = world.redriver.replay_all("poison")
    assert outcome.action == "replayed"
    assert world.blob_trigger.items() == [text]


def test_dead_letters_are_republished_requeued_or_dispatched_by_type(world: World) -> None:
    world.letters.add("a.json", event(DataVersionRegistered.EVENT_TYPE, DATA, "e-data"))
    world.letters.add("b.json", event("Microsoft.Storage.BlobCreated", {"eTag": "0x1", "url": "http://x"},
                                      "e-blob", subject="/blobServices/default/containers/landing/blobs/churn/a b.csv"))
    world.letters.add("c.json", {"specversion": "1.0", "id": "e-model", "type": MODEL_REGISTERED, "source": "/ws",
                                 "data": {"ModelName": "m", "ModelVersion": "2"}})

    outcomes = world.redriver.replay_all("deadletter")

    assert [o.action for o in outcomes] == ["replayed"] * 3
    assert [e.version for e in world.publisher.published] == ["3"]
    [blob_message] = world.blob_trigger.items()
    assert json.loads(blob_message) == {"Type": "BlobTrigger", "FunctionId": "Host.Functions.on_blob_created",
                                        "BlobType": "Block", "ContainerName": "landing", "BlobName": "churn/a b.csv",
                                        "ETag": "0x1"}
    assert [(d["id"], d["eventType"]) for d in world.handled] == [("e-model", MODEL_REGISTERED)]
    assert len(world.letters) == 0
    assert sorted(r["event"] for r in world.replayed()) == ["e-blob", "e-data", "e-model"]


def test_a_failed_replay_keeps_the_item_and_audits_nothing(clock: FakeClock) -> None:
    world = World(clock, publish_fails=True)
    world.letters.add("a.json", event(DataVersionRegistered.EVENT_TYPE, DATA))

    [outcome] = world.redriver.replay_all()

    assert outcome.action == "failed" and "topic unreachable" in outcome.detail
    assert len(world.letters) == 1 and world.replayed() == []


def test_a_failed_poison_replay_releases_the_message(clock: FakeClock) -> None:
    world = World(clock)
    orphan = MemoryPoisonQueue("evergreen-gone-poison", clock=clock)
    orphan.add("x")
    redriver = Redriver(dead_letters=world.letters, poison_queues=[orphan], queues={}, publisher=world.publisher,
                        handlers={}, audit=world.audit, clock=clock)

    outcomes = redriver.replay_all()

    assert [o.action for o in outcomes] == ["unsupported"]
    assert "no queue evergreen-gone" in outcomes[0].detail
    assert orphan.texts() == ["x"] and [m.text for m in orphan.peek()] == ["x"]  # visible again, not lost


def test_unknown_event_types_are_left_with_the_reason(world: World) -> None:
    world.letters.add("a.json", event("Contoso.Other", {}))
    world.letters.add("b.json")  # unreadable: no event
    outcomes = world.redriver.replay_all()
    assert [o.action for o in outcomes] == ["unsupported", "unsupported"]
    assert "Contoso.Other has no replay" in outcomes[0].detail
    assert len(world.letters) == 2 and world.replayed() == []


def test_replaying_what_is_gone_says_so(world: World) -> None:
    assert world.redriver.replay("deadletter:nope.json").action == "not_found"
    assert world.redriver.replay(f"poison:{SEAL}-poison:m-404").action == "not_found"
    assert world.redriver.replay("poison:other-poison:m-1").action == "not_found"


def test_the_cli_lists_and_replays_through_the_service(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    import argparse

    from shared.cli import run_redrive

    message = world.seal_poison.add('{"dataset": "churn", "folder": "f", "generation": 1}')
    item = f"poison:{SEAL}-poison:{message.id}"

    assert run_redrive(argparse.Namespace(action="list", source=None, json=False), world.redriver) == 0
    assert item in capsys.readouterr().out
    assert run_redrive(argparse.Namespace(action="replay", id=None, all=False, source=None, json=False),
                       world.redriver) == 2
    assert run_redrive(argparse.Namespace(action="replay", id=item, all=False, source=None, json=True),
                       world.redriver) == 0
    assert json.loads(capsys.readouterr().out) == [{"id": item, "action": "replayed", "detail": f"queue {SEAL}"}]
    assert run_redrive(argparse.Namespace(action="show", id=item, json=False), world.redriver) == 1


class FlakyQueue(MemoryDelayedQueue[str]):
    """A queue whose send fails for one message text (the replay of that message fails)."""

    def __init__(self, clock: FakeClock, refuse: str) -> None:
        super().__init__(clock=clock)
        self.refuse = refuse

    def send(self, item: str, delay_seconds: float) -> None:
        if item == self.refuse:
            raise ConnectionError("queue unreachable for this one")
        super().send(item, delay_seconds)


def test_replay_all_goes_past_a_message_that_cannot_be_replayed(clock: FakeClock) -> None:
    world = World(clock)
    bad = '{"dataset": "bad"}'
    world.redriver._queues = {SEAL: FlakyQueue(clock, refuse=bad)}  # type: ignore[attr-defined]
    world.seal_poison.add(bad)
    world.seal_poison.add('{"dataset": "good-1"}')
    world.seal_poison.add('{"dataset": "good-2"}')

    outcomes = world.redriver.replay_all("poison")

    assert sorted(o.action for o in outcomes) == ["failed", "replayed", "replayed"]
    left = world.seal_poison.peek()
    assert [m.text for m in left] == [bad]  # only the one that failed is left, visible again for the next try
