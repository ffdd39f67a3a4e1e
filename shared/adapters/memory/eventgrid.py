"""`EventPublisher` in memory: records what was published, each event id once.

Event Grid delivers at least once and Evergreen's consumers dedupe by the (deterministic) event id,
so a re-publish of the same event is kept once here; `attempts` counts every call.
Thread-safe.
"""

from __future__ import annotations

import threading
from dataclasses import replace

from shared.domain.decay import ChampionDegraded
from shared.domain.events import DataVersionRegistered
from shared.telemetry import current_traceparent


class MemoryEventPublisher:
    def __init__(self) -> None:
        self._events: dict[str, DataVersionRegistered] = {}
        self._degraded: dict[str, ChampionDegraded] = {}
        self._attempts = 0
        self._lock = threading.Lock()

    def data_version_registered(self, event: DataVersionRegistered) -> str:
        """Record the event, with the current trace context unless it carries one (as the Azure adapter sends it)."""
        event = replace(event, traceparent=event.traceparent or current_traceparent())
        with self._lock:
            self._attempts += 1
            self._events.setdefault(event.event_id, event)
        return event.event_id

    def champion_degraded(self, event: ChampionDegraded) -> str:
        """Record a ChampionDegraded event (kept once per id, as consumers dedupe)."""
        with self._lock:
            self._attempts += 1
            self._degraded.setdefault(event.event_id, event)
        return event.event_id

    @property
    def degraded(self) -> list[ChampionDegraded]:
        """The distinct ChampionDegraded events, in the order first published."""
        with self._lock:
            return list(self._degraded.values())

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
