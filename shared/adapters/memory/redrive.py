"""`DeadLetters` and `PoisonQueue` in memory, with the Azure adapters' semantics (ETags, hidden taken messages)."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Iterator, Mapping
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

from shared.domain.records import utcnow
from shared.ports import Clock, DeadLetter, PoisonMessage

TAKE_SECONDS = 60.0  # how long a taken message stays hidden (as the Azure adapter asks)


class MemoryDeadLetters:
    """The dead-letter container as a dict of blob name → events; `add` is what Event Grid would write."""

    def __init__(self, *, clock: Clock = utcnow) -> None:
        self._clock = clock
        self._letters: dict[str, DeadLetter] = {}
        self._etags = itertools.count(1)
        self._lock = threading.Lock()

    def add(self, name: str, *events: Mapping[str, Any]) -> DeadLetter:
        with self._lock:
            letter = DeadLetter(name, tuple(dict(e) for e in events), f"0x{next(self._etags):x}", self._clock())
            self._letters[name] = letter
            return letter

    def list(self) -> Iterator[DeadLetter]:
        with self._lock:
            letters = [self._letters[name] for name in sorted(self._letters)]
        yield from letters

    def get(self, name: str) -> DeadLetter | None:
        with self._lock:
            return self._letters.get(name)

    def delete(self, letter: DeadLetter) -> bool:
        with self._lock:
            current = self._letters.get(letter.name)
            if current is None or current.etag != letter.etag:
                return False
            del self._letters[letter.name]
            return True

    def __len__(self) -> int:
        with self._lock:
            return len(self._letters)


class MemoryPoisonQueue:
    """One poison queue; `add` is what the host does after `maxDequeueCount` failures."""

    def __init__(self, name: str, *, clock: Clock = utcnow) -> None:
        self._name = name
        self._clock = clock
        self._messages: dict[str, tuple[PoisonMessage, datetime]] = {}  # id -> (message, visible at)
        self._ids = itertools.count(1)
        self._receipts = itertools.count(1)
        self._lock = threading.Lock()

    @property
    def name(self) -> str:
        return self._name

    def add(self, text: str) -> PoisonMessage:
        with self._lock:
            now = self._clock()
            message = PoisonMessage(self._name, f"m-{next(self._ids)}", text, now)
            self._messages[message.id] = (message, now)
            return message

    def _visible(self) -> list[PoisonMessage]:
        now = self._clock()
        return [m for m, visible_at in self._messages.values() if visible_at <= now]

    def peek(self, limit: int = 32) -> list[PoisonMessage]:
        with self._lock:
            return [replace(m, receipt=None) for m in self._visible()[:min(limit, 32)]]

    def take(self, message_id: str | None = None) -> PoisonMessage | None:
        with self._lock:
            found = [m for m in self._visible() if message_id is None or m.id == message_id][:1]
            if not found:
                return None
            taken = replace(found[0], receipt=f"r-{next(self._receipts)}")
            self._messages[taken.id] = (taken, self._clock() + timedelta(seconds=TAKE_SECONDS))
            return taken

    def delete(self, message: PoisonMessage) -> None:
        with self._lock:
            self._current(message)
            del self._messages[message.id]

    def release(self, message: PoisonMessage) -> None:
        with self._lock:
            current = self._current(message)
            self._messages[message.id] = (replace(current, receipt=None), self._clock())

    def _current(self, message: PoisonMessage) -> PoisonMessage:
        """The stored message if `message` holds its current receipt; LookupError as Azure's 404 would be."""
        stored = self._messages.get(message.id)
        if stored is None or message.receipt is None or stored[0].receipt != message.receipt:
            raise LookupError(f"message {message.id} of {self._name} is gone or was taken again (outdated receipt)")
        return stored[0]

    def texts(self) -> list[str]:
        with self._lock:
            return [m.text for m, _ in self._messages.values()]
