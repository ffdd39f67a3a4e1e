"""Timer triggers: NCRONTAB (seconds first) or TimeSpan schedules, one invocation at a time."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from croniter import croniter

from devstack.host.settings import SettingsError, parse_timespan

log = logging.getLogger(__name__)

# A firing later than this after its scheduled time counts as past due.
PAST_DUE_TOLERANCE = timedelta(seconds=1)


@dataclass(frozen=True)
class Schedule:
    """When a timer fires. NCRONTAB has 6 fields (`{second} {minute} {hour} {day} {month} {dow}`);
    a TimeSpan (`hh:mm:ss`) fires at that interval, as on App Service plans."""

    expression: str

    def __post_init__(self) -> None:
        fields = self.expression.split()
        if len(fields) == 1 and ":" in self.expression:
            interval = parse_timespan(self.expression)
            if not interval or interval <= timedelta(0):
                raise SettingsError(f"timer interval '{self.expression}' must be positive")
        elif len(fields) == 6:
            if not croniter.is_valid(self.expression, second_at_beginning=True):
                raise SettingsError(f"'{self.expression}' is not a valid NCRONTAB expression")
        else:
            raise SettingsError(
                f"'{self.expression}' is not a timer schedule: use 6 NCRONTAB fields "
                "('{second} {minute} {hour} {day} {month} {day-of-week}') or a TimeSpan 'hh:mm:ss'"
            )

    def next_after(self, moment: datetime) -> datetime:
        """The first occurrence strictly after `moment` (UTC)."""
        if len(self.expression.split()) == 1:
            interval = parse_timespan(self.expression)
            assert interval is not None
            return moment + interval
        it = croniter(self.expression, moment, second_at_beginning=True)
        result: datetime = it.get_next(datetime)
        return result


Fire = Callable[[bool, datetime, datetime], Awaitable[None]]


class TimerListener:
    """Fires one timer function on its schedule until stopped."""

    def __init__(
        self, name: str, schedule: Schedule, fire: Fire, *, run_on_startup: bool, stopping: asyncio.Event
    ) -> None:
        self._name = name
        self._schedule = schedule
        self._fire = fire
        self._run_on_startup = run_on_startup
        self._stopping = stopping

    async def run(self) -> None:
        now = datetime.now(UTC)
        if self._run_on_startup:
            await self._fire(False, now, self._schedule.next_after(now))
        last = datetime.now(UTC)
        while not self._stopping.is_set():
            due = self._schedule.next_after(last)
            now = datetime.now(UTC)
            past_due = now - due > PAST_DUE_TOLERANCE
            if not past_due:
                log.debug("Timer '%s' next fires at %s", self._name, due.isoformat())
                try:
                    await asyncio.wait_for(self._stopping.wait(), (due - now).total_seconds())
                    return
                except TimeoutError:
                    pass
            else:
                log.warning("Timer '%s' missed its %s occurrence; firing now as past due", self._name,
                            due.isoformat())
            fired_at = datetime.now(UTC)
            await self._fire(past_due, fired_at, self._schedule.next_after(fired_at))
            # After a past-due catch-up, resume from now rather than replaying every missed occurrence.
            last = fired_at if past_due else due
