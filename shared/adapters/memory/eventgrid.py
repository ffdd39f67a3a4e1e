"""`EventPublisher` in memory: records what was published, each event id once.

Event Grid delivers at least once and Evergreen's consumers dedupe by the (deterministic) event id,
so a re-publish of the same event is kept once here; `attempts` counts every call.
Thread-safe.
"""

from __future__ import annotations

import threading

from shared.domain.events import DataVersionRegistered


class MemoryEventPublisher:
    def __init__(self) -> None:
        self._events: dict[str, DataVersionRegistered] = {}
        self._attempts = 0
        self._lock = threading.Lock()

    def data_version_registered(self, event: DataVersionRegistered) -> str:
        with self._lock:
            self._attempts += 1
            self._events.setdefault(event.event_id, event)
        return event.event_id

    @property
    def events(self) -> list[DataVersionRegistered]:
        """The distinct events, in the order first published."""
        with self._lock:
            return list(self._events.values())

    @property
    def attempts(self) -> int:
        """Every publish call, duplicates included."""
        with self._lock:
            return self._attempts
