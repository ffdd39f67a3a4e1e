"""Delivery faults for chaos runs: duplicates, reordering and late deliveries, deterministic under a seed.

Azure Event Grid delivers at least once and in no particular order; these switches make the local Event
Grid show that on purpose so a run can prove the app converges anyway. They act when an event is routed
(each delivery row gets a delay, a duplicated delivery is a second row), so they combine with the
retry rules, dead letters and inspection routes unchanged. Set them at run time with `PUT /faults`
or at start with `--faults '<json>'` / `EVERGREEN_EVENTGRID_FAULTS`.

Body: `{"seed": 7, "duplicate": 0.2, "shuffleWindow": 2.0, "late": 0.1, "lateSeconds": 10,
"topics": ["storage"], "subscriptions": ["landing-blob-created"]}` (all optional; fractions in 0..1,
empty lists mean every topic/subscription).
"""

from __future__ import annotations

import logging
import random
import threading
from collections import Counter
from dataclasses import dataclass, replace
from typing import Any

from devstack.eventgrid.store import Route

logger = logging.getLogger(__name__)

ENV_VAR = "EVERGREEN_EVENTGRID_FAULTS"
_FRACTIONS = {"duplicate": "duplicate", "late": "late"}
_SECONDS = {"shuffleWindow": "shuffle_window", "lateSeconds": "late_seconds"}
_LISTS = {"topics": "topics", "subscriptions": "subscriptions"}


class FaultSpecError(ValueError):
    """A fault specification is not valid (the admin route answers 400 with this message)."""


def _fraction(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= float(value) <= 1.0:
        raise FaultSpecError(f"'{name}' must be a fraction between 0 and 1, got {value!r}")
    return float(value)


def _seconds(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or float(value) < 0:
        raise FaultSpecError(f"'{name}' must be a non-negative number of seconds, got {value!r}")
    return float(value)


def _names(name: str, value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise FaultSpecError(f"'{name}' must be a list of names")
    return tuple(v.lower() for v in value)


@dataclass(frozen=True)
class DeliveryFaults:
    """What to do to deliveries; the default does nothing."""

    seed: int = 0
    duplicate: float = 0.0
    shuffle_window: float = 0.0
    late: float = 0.0
    late_seconds: float = 0.0
    topics: tuple[str, ...] = ()
    subscriptions: tuple[str, ...] = ()

    @property
    def active(self) -> bool:
        return bool(self.duplicate or self.shuffle_window or (self.late and self.late_seconds))

    @classmethod
    def from_json(cls, body: Any) -> DeliveryFaults:
        """Parse the admin body; raises FaultSpecError naming the first bad field."""
        if not isinstance(body, dict):
            raise FaultSpecError("the body must be a JSON object")
        known = {"seed", *_FRACTIONS, *_SECONDS, *_LISTS}
        unknown = sorted(set(body) - known)
        if unknown:
            raise FaultSpecError(f"unknown field(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        seed = body.get("seed", 0)
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise FaultSpecError(f"'seed' must be an integer, got {seed!r}")
        values: dict[str, Any] = {"seed": seed}
        for parse, fields in ((_fraction, _FRACTIONS), (_seconds, _SECONDS), (_names, _LISTS)):
            for key, attr in fields.items():
                if key in body:
                    values[attr] = parse(key, body[key])
        return cls(**values)

    def to_json(self) -> dict[str, Any]:
        return {
            "seed": self.seed, "duplicate": self.duplicate, "shuffleWindow": self.shuffle_window,
            "late": self.late, "lateSeconds": self.late_seconds,
            "topics": list(self.topics), "subscriptions": list(self.subscriptions),
        }


class FaultPlan:
    """Applies the current DeliveryFaults to the routes of each published event.

    Every route draws the same number of random numbers whatever the outcome, so for one seed and one
    sequence of published events the duplicates, delays and order are always the same.
    """

    def __init__(self, faults: DeliveryFaults | None = None) -> None:
        self._lock = threading.Lock()
        self.faults = DeliveryFaults()
        self._rng = random.Random(0)
        self.applied: Counter[str] = Counter()
        self.set(faults or DeliveryFaults())

    def set(self, faults: DeliveryFaults) -> None:
        """Replace the faults and restart the random sequence from their seed."""
        with self._lock:
            self.faults = faults
            self._rng = random.Random(faults.seed)
            self.applied = Counter()
        if faults.active:
            logger.warning("delivery faults on: %s", faults.to_json())
        else:
            logger.info("delivery faults off")

    def status(self) -> dict[str, Any]:
        with self._lock:
            return {**self.faults.to_json(), "applied": dict(self.applied)}

    def apply(self, topic: str, routes: list[Route]) -> list[Route]:
        """The delivery rows to queue for one event's routes: delayed, and some of them twice."""
        with self._lock:
            faults = self.faults
            if not faults.active:
                return routes
            planned: list[Route] = []
            for route in routes:
                if not self._targets(faults, topic, route):
                    planned.append(route)
                    continue
                shuffle, late, duplicate, again = (self._rng.random() for _ in range(4))
                delay = shuffle * faults.shuffle_window
                if late < faults.late and faults.late_seconds:
                    delay += faults.late_seconds
                    self.applied["late"] += 1
                planned.append(replace(route, delay=delay))
                if duplicate < faults.duplicate:
                    planned.append(replace(route, delay=delay + again * faults.shuffle_window))
                    self.applied["duplicated"] += 1
                self.applied["routed"] += 1
            return planned

    @staticmethod
    def _targets(faults: DeliveryFaults, topic: str, route: Route) -> bool:
        return (not faults.topics or topic.lower() in faults.topics) and (
            not faults.subscriptions or route.subscription.lower() in faults.subscriptions
        )
