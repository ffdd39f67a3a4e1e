"""Service tests run the executors on the in-memory adapters: no Azurite, no emulator, a clock we move."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pytest


class FakeClock:
    """One time for every adapter and service of a test; `advance` moves it (thread-safe)."""

    def __init__(self, start: datetime = datetime(2026, 11, 27, 12, tzinfo=UTC)) -> None:
        self._now = start
        self._lock = threading.Lock()

    def __call__(self) -> datetime:
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> None:
        with self._lock:
            self._now += timedelta(seconds=seconds)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()
