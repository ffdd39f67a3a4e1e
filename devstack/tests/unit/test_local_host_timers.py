"""Timer schedules (NCRONTAB with seconds, TimeSpan) and the one-at-a-time, past-due firing loop."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta

import pytest

from devstack.host.settings import SettingsError
from devstack.host.timers import Schedule, TimerListener

T0 = datetime(2024, 3, 1, 12, 0, 0, tzinfo=UTC)


def test_ncrontab_seconds_come_first() -> None:
    schedule = Schedule("*/5 * * * * *")
    assert schedule.next_after(T0) == T0 + timedelta(seconds=5)
    assert Schedule("0 0 2 * * *").next_after(T0) == datetime(2024, 3, 2, 2, 0, 0, tzinfo=UTC)
    assert Schedule("30 15 * * * 1-5").next_after(T0) == T0 + timedelta(minutes=15, seconds=30)


def test_timespan_schedule() -> None:
    assert Schedule("00:00:30").next_after(T0) == T0 + timedelta(seconds=30)


@pytest.mark.parametrize("expression", ["* * * * *", "nonsense", "61 * * * * *", "00:00:00"])
def test_invalid_schedules(expression: str) -> None:
    with pytest.raises(SettingsError):
        Schedule(expression)


def test_listener_runs_on_startup_one_at_a_time_and_flags_past_due() -> None:
    fired: list[tuple[bool, float]] = []
    active = 0
    overlap = False

    async def scenario() -> None:
        stopping = asyncio.Event()

        async def fire(past_due: bool, at: datetime, following: datetime) -> None:
            nonlocal active, overlap
            active += 1
            overlap = overlap or active > 1
            fired.append((past_due, time.monotonic()))
            if len(fired) == 2:
                await asyncio.sleep(2.5)  # longer than the 1 s interval: the next firing is past due
            active -= 1
            if len(fired) >= 4:
                stopping.set()

        listener = TimerListener("t", Schedule("00:00:01"), fire, run_on_startup=True, stopping=stopping)
        await asyncio.wait_for(listener.run(), timeout=15)

    asyncio.run(scenario())
    assert not overlap
    assert [past_due for past_due, _ in fired] == [False, False, True, False]
    # the catch-up firing comes right after the long one; the next is a full interval later
    assert fired[3][1] - fired[2][1] >= 0.9


def test_listener_stops_promptly() -> None:
    async def scenario() -> float:
        stopping = asyncio.Event()

        async def fire(past_due: bool, at: datetime, following: datetime) -> None:
            raise AssertionError("must not fire")

        listener = TimerListener("t", Schedule("0 0 0 1 1 *"), fire, run_on_startup=False, stopping=stopping)
        task = asyncio.create_task(listener.run())
        await asyncio.sleep(0)
        started = time.monotonic()
        stopping.set()
        await asyncio.wait_for(task, timeout=2)
        return time.monotonic() - started

    assert asyncio.run(scenario()) < 1
