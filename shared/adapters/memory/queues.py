"""`DelayedQueue` in memory, with Queue Storage's delivery semantics on an injectable clock.

A message is invisible until its delay has passed. Receiving it increments its dequeue count and
hides it again for a visibility timeout; unless it is completed in that time it reappears
(at-least-once delivery). A harness drives redelivery with `receive`/`due` and `complete`.
Thread-safe.
"""

from __future__ import annotations

import itertools
import threading
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Generic, TypeVar

from shared.domain.records import utcnow
from shared.ports import Clock, clamp_delay
from shared.telemetry import current_traceparent

T = TypeVar("T")
VISIBILITY_TIMEOUT = 30.0  # seconds a received message stays hidden (the Functions queue trigger's default)


@dataclass(frozen=True)
class QueuedMessage(Generic[T]):
    """A received message: complete it with its `receipt`, or it reappears when `visible_at` passes."""

    id: int
    item: T
    dequeue_count: int
    visible_at: datetime
    receipt: int = 0
    traceparent: str = ""  # the sender's trace context, as the Azure adapter puts it in the message text


class MemoryDelayedQueue(Generic[T]):
    def __init__(self, *, clock: Clock = utcnow, visibility_timeout: float = VISIBILITY_TIMEOUT) -> None:
        self._clock = clock
        self._timeout = visibility_timeout
        self._messages: dict[int, QueuedMessage[T]] = {}
        self._ids = itertools.count(1)
        self._receipts = itertools.count(1)
        self._lock = threading.Lock()

    # -- the port --------------------------------------------------------------------------------
    def send(self, item: T, delay_seconds: float) -> None:
        """Enqueue `item`, invisible for `delay_seconds` (clamped to 0..7 days, as the Azure adapter does)."""
        with self._lock:
            message_id = next(self._ids)
            visible_at = self._clock() + timedelta(seconds=clamp_delay(delay_seconds))
            self._messages[message_id] = QueuedMessage(message_id, item, 0, visible_at,
                                                       traceparent=current_traceparent())

    # -- the consumer's side (the platform, in tests and the harness) ------------------------------
    def receive(self, *, now: datetime | None = None,
                visibility_timeout: float | None = None) -> QueuedMessage[T] | None:
        """The visible message that became visible first, now hidden for the visibility timeout; None if none."""
        received = self.due(now, limit=1, visibility_timeout=visibility_timeout)
        return received[0] if received else None

    def due(self, now: datetime | None = None, *, limit: int | None = None,
            visibility_timeout: float | None = None) -> list[QueuedMessage[T]]:
        """Receive every message visible at `now` (oldest first): each one's dequeue count goes up by one."""
        now = now or self._clock()
        hidden_until = now + timedelta(seconds=self._timeout if visibility_timeout is None else visibility_timeout)
        with self._lock:
            visible = sorted((m for m in self._messages.values() if m.visible_at <= now),
                             key=lambda m: (m.visible_at, m.id))[:limit]
            received = []
            for message in visible:
                taken = replace(message, dequeue_count=message.dequeue_count + 1, visible_at=hidden_until,
                                receipt=next(self._receipts))
                self._messages[message.id] = taken
                received.append(taken)
            return received

    def complete(self, message: QueuedMessage[T]) -> bool:
        """Delete a received message; False if its receipt is outdated (it was received again meanwhile) or gone."""
        with self._lock:
            current = self._messages.get(message.id)
            if current is None or current.receipt != message.receipt:
                return False
            del self._messages[message.id]
            return True

    def peek(self, now: datetime | None = None) -> list[T]:
        """The items visible at `now`, without receiving them."""
        now = now or self._clock()
        with self._lock:
            return [m.item for m in sorted(self._messages.values(), key=lambda m: (m.visible_at, m.id))
                    if m.visible_at <= now]

    def items(self) -> list[T]:
        """Every item still in the queue, visible or not, in the order sent."""
        with self._lock:
            return [self._messages[k].item for k in sorted(self._messages)]

    def __len__(self) -> int:
        with self._lock:
            return len(self._messages)
