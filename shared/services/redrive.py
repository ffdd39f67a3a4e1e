"""Replay what was never handled: Event Grid dead letters and poison-queue messages (`python -m shared.cli redrive`).

`shared.domain.redrive` decides where each item goes back to; this executes it through ports. An item is
removed (the dead-letter blob deleted, the poison message deleted) only after its replay succeeded and
the replay was audited (`redrive.replayed`); a failed replay leaves it where it was, visible again.
Replays are safe to repeat: queue handlers, the topic's deterministic event ids and the services'
own idempotency absorb a second delivery.
"""

from __future__ import annotations

import itertools
import json
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from shared.domain.audit import AuditRecord
from shared.domain.records import utcnow
from shared.domain.redrive import (
    Dispatch,
    Replay,
    Republish,
    Requeue,
    Unsupported,
    dead_letter_id,
    event_type_of,
    parse_item_id,
    plan_dead_letter_replay,
    plan_poison_replay,
    poison_id,
)
from shared.domain.vocabulary import ReplayAction
from shared.ports import (
    AuditLog,
    Clock,
    DeadLetter,
    DeadLetters,
    DelayedQueue,
    EventPublisher,
    PoisonMessage,
    PoisonQueue,
)

log = logging.getLogger(__name__)

REPLAYED_KIND = "redrive.replayed"
SOURCES = ("deadletter", "poison")
Handler = Callable[[Mapping[str, Any]], object]  # an Azure ML event document -> the service's outcome


@dataclass(frozen=True)
class RedriveItem:
    """One dead letter or poison message, as `redrive list` and `redrive show` print it."""

    id: str  # deadletter:<blob name> | poison:<queue>:<message id>
    source: str  # deadletter | poison
    what: str  # the event type(s), or the poison queue
    reason: str  # why it was never handled, as far as the platform says
    at: datetime | None
    content: str  # the event(s) as JSON, or the message text

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "source": self.source, "what": self.what, "reason": self.reason,
                "at": self.at.isoformat() if self.at else None, "content": self.content}


@dataclass(frozen=True)
class ReplayOutcome:
    id: str
    action: ReplayAction
    detail: str

    def to_json(self) -> dict[str, str]:
        return {"id": self.id, "action": self.action.value, "detail": self.detail}


class Redriver:
    """Lists, shows and replays dead letters and poison messages; every replay audited."""

    def __init__(
        self,
        *,
        dead_letters: DeadLetters,
        poison_queues: Sequence[PoisonQueue],
        queues: Mapping[str, DelayedQueue[str]],
        publisher: EventPublisher,
        handlers: Mapping[str, Handler],
        audit: AuditLog,
        clock: Clock = utcnow,
    ) -> None:
        """`queues`: where poison messages go back to, by queue name (`shared.domain.redrive.BLOB_TRIGGER_QUEUE`
        for the host's blob-trigger queue); `handlers`: Azure ML event type -> its trigger's parse-and-handle."""
        self._dead_letters = dead_letters
        self._poison = {q.name: q for q in poison_queues}
        self._queues = queues
        self._publisher = publisher
        self._handlers = handlers
        self._audit = audit
        self._clock = clock

    # -- list and show --------------------------------------------------------------------------------
    def list_items(self, source: str | None = None) -> list[RedriveItem]:
        """Every dead letter and up to 32 messages of each poison queue (Queue Storage peeks at most 32)."""
        items: list[RedriveItem] = []
        if source in (None, "deadletter"):
            items.extend(_dead_letter_item(letter) for letter in self._dead_letters.list())
        if source in (None, "poison"):
            for queue in self._poison.values():
                items.extend(_poison_item(message) for message in queue.peek())
        return items

    def count_waiting(self, limit: int = 100) -> int:
        """How many items wait for an operator: dead letters (at most `limit` read) and poison messages (at most
        32 per queue). The reconciler records it on its span for the dead-letter alert."""
        letters = sum(1 for _ in itertools.islice(self._dead_letters.list(), limit))
        return letters + sum(len(queue.peek()) for queue in self._poison.values())

    def show(self, item_id: str) -> RedriveItem | None:
        """One item by its id; None if there is none. Raises ValueError for an id that is not a redrive id."""
        source, queue, name = parse_item_id(item_id)
        if source == "deadletter":
            letter = self._dead_letters.get(name)
            return _dead_letter_item(letter) if letter else None
        found = [m for m in self._poison_queue(queue).peek() if m.id == name] if queue in self._poison else []
        return _poison_item(found[0]) if found else None

    # -- replay ---------------------------------------------------------------------------------------
    def replay(self, item_id: str) -> ReplayOutcome:
        """Replay one item; raises ValueError for an id that is not a redrive id (nothing else: see the outcome)."""
        source, queue, name = parse_item_id(item_id)
        if source == "deadletter":
            letter = self._dead_letters.get(name)
            if letter is None:
                return ReplayOutcome(item_id, ReplayAction.NOT_FOUND,
                                     "no dead letter by that name (replayed already?)")
            return self._replay_dead_letter(letter)
        if queue not in self._poison:
            return ReplayOutcome(item_id, ReplayAction.NOT_FOUND, f"{queue} is not one of the poison queues "
                                 f"({', '.join(sorted(self._poison)) or 'none'})")
        message = self._poison[queue].take(name)
        if message is None:
            return ReplayOutcome(item_id, ReplayAction.NOT_FOUND,
                                 "no such message (replayed already, or being replayed)")
        return self._replay_poison(self._poison[queue], message)

    def replay_all(self, source: str | None = None) -> list[ReplayOutcome]:
        """Replay every item (of one source); an item that cannot be replayed is left and reported, the rest go on."""
        outcomes: list[ReplayOutcome] = []
        if source in (None, "deadletter"):
            outcomes.extend(self._replay_dead_letter(letter) for letter in list(self._dead_letters.list()))
        if source in (None, "poison"):
            for queue in self._poison.values():
                outcomes.extend(self._drain(queue))
        return outcomes

    def _drain(self, queue: PoisonQueue) -> Iterator[ReplayOutcome]:
        """Replay every message of one poison queue. One that cannot be replayed stays hidden until the drain
        ends (released then), so the queue's order cannot hand it back first and hide the ones behind it."""
        seen: set[str] = set()
        kept: list[PoisonMessage] = []
        try:
            while (message := queue.take()) is not None:
                if message.id in seen:  # tried in this run already: everything left has been seen
                    queue.release(message)
                    return
                seen.add(message.id)
                yield self._replay_poison(queue, message, keep=kept)
        finally:
            for message in kept:
                queue.release(message)

    def _poison_queue(self, name: str) -> PoisonQueue:
        return self._poison[name]

    def _replay_dead_letter(self, letter: DeadLetter) -> ReplayOutcome:
        item_id = dead_letter_id(letter.name)
        if not letter.events:
            return self._unsupported(item_id, "the dead letter holds no readable event")
        plans = [plan_dead_letter_replay(event) for event in letter.events]
        refused = [p.reason for p in plans if isinstance(p, Unsupported)]
        if refused:
            return self._unsupported(item_id, "; ".join(refused))
        try:
            done = [self._execute(plan) for plan in plans]
            for event, plan, target in zip(letter.events, plans, done, strict=True):
                self._audit_replay(item_id, str(event.get("id") or letter.name), plan, target)
        except Exception as exc:
            return self._failed(item_id, exc)
        if not self._dead_letters.delete(letter):
            log.warning("redrive item=%s outcome=replayed detail=the dead letter changed meanwhile and was kept",
                        item_id)
        return self._replayed(item_id, "; ".join(done))

    def _replay_poison(self, queue: PoisonQueue, message: PoisonMessage,
                       keep: list[PoisonMessage] | None = None) -> ReplayOutcome:
        """Replay one taken message. One that is not replayed goes back to the queue (or into `keep`, for the
        caller to release later); a replayed one is deleted, and a lost receipt is reported, not raised."""

        def give_back() -> None:
            if keep is None:
                queue.release(message)
            else:
                keep.append(message)

        item_id = poison_id(queue.name, message.id)
        plan = plan_poison_replay(queue.name, message.text)
        if isinstance(plan, Unsupported) or plan.queue not in self._queues:
            give_back()
            reason = plan.reason if isinstance(plan, Unsupported) else f"no queue {plan.queue} to re-enqueue on"
            return self._unsupported(item_id, reason)
        try:
            target = self._execute(plan)
            self._audit_replay(item_id, message.id, plan, target)
        except Exception as exc:
            give_back()
            return self._failed(item_id, exc)
        try:
            queue.delete(message)
        except LookupError:  # the replay outlasted the message's hidden time: it shows again; say so
            log.warning("redrive item=%s outcome=replayed detail=its poison message could not be removed (it was "
                        "visible again); remove it by hand or it will be replayed again", item_id)
            return self._replayed(item_id, f"{target}; the poison message is still there: remove it")
        return self._replayed(item_id, target)

    def _execute(self, plan: Replay) -> str:
        """Do one replay; returns where it went. Errors propagate (the caller keeps the item)."""
        if isinstance(plan, Requeue):
            if plan.queue not in self._queues:
                raise LookupError(f"no queue {plan.queue} to re-enqueue on")
            self._queues[plan.queue].send(plan.text, 0)
            return f"queue {plan.queue}"
        if isinstance(plan, Republish):
            event_id = self._publisher.data_version_registered(plan.event)
            return f"topic evergreen (event {event_id})"
        if isinstance(plan, Dispatch):
            handler = self._handlers.get(plan.event_type)
            if handler is None:
                raise LookupError(f"no handler for {plan.event_type}")
            outcome = handler(plan.document)
            action = getattr(outcome, "action", outcome)
            return f"handled in-process: {getattr(action, 'value', action)}"
        raise TypeError(f"cannot execute {plan!r}")

    def _audit_replay(self, item_id: str, event_id: str, plan: Replay, target: str) -> None:
        self._audit.record(AuditRecord(kind=REPLAYED_KIND, decision=ReplayAction.REPLAYED.value, reason=plan.reason,
                                       event_id=event_id, assets={"item": item_id, "target": target}, at=self._clock()))

    @staticmethod
    def _replayed(item_id: str, detail: str) -> ReplayOutcome:
        log.info("redrive item=%s outcome=replayed detail=%s", item_id, detail)
        return ReplayOutcome(item_id, ReplayAction.REPLAYED, detail)

    @staticmethod
    def _unsupported(item_id: str, reason: str) -> ReplayOutcome:
        log.warning("redrive item=%s outcome=unsupported detail=%s", item_id, reason)
        return ReplayOutcome(item_id, ReplayAction.UNSUPPORTED, reason)

    @staticmethod
    def _failed(item_id: str, exc: Exception) -> ReplayOutcome:
        log.error("redrive item=%s outcome=failed detail=%s: %s", item_id, type(exc).__name__, exc)
        return ReplayOutcome(item_id, ReplayAction.FAILED, f"{type(exc).__name__}: {exc}; left in place")


def _dead_letter_item(letter: DeadLetter) -> RedriveItem:
    types = sorted({event_type_of(e) or "?" for e in letter.events}) or ["(unreadable)"]
    reasons = sorted({str(e.get("deadLetterReason") or e.get("deadletterreason") or "") for e in letter.events} - {""})
    return RedriveItem(dead_letter_id(letter.name), "deadletter", ", ".join(types), ", ".join(reasons) or "-",
                       letter.last_modified, json.dumps(list(letter.events), indent=2, default=str))


def _poison_item(message: PoisonMessage) -> RedriveItem:
    return RedriveItem(poison_id(message.queue, message.id), "poison", message.queue,
                       "failed maxDequeueCount times", message.inserted_at, message.text)
