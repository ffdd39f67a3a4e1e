"""Delivery faults of the local Event Grid: parsing, and deterministic duplicates, delays and reordering."""

from __future__ import annotations

import pytest

from devstack.eventgrid.faults import DeliveryFaults, FaultPlan, FaultSpecError
from devstack.eventgrid.store import Route

ROUTE = Route("sub-a", "on_a", "eventGridTrigger", None, max_attempts=5, ttl_seconds=60)
OTHER = Route("sub-b", "on_b", "eventGridTrigger", None, max_attempts=5, ttl_seconds=60)


def _plan(**body: object) -> FaultPlan:
    return FaultPlan(DeliveryFaults.from_json(body))


def _run(plan: FaultPlan, events: int = 200) -> list[list[tuple[str, float]]]:
    return [[(r.subscription, r.delay) for r in plan.apply("evergreen", [ROUTE])] for _ in range(events)]


def test_no_faults_leave_routes_untouched() -> None:
    plan = FaultPlan()
    assert plan.apply("evergreen", [ROUTE, OTHER]) == [ROUTE, OTHER]
    assert not plan.faults.active


def test_duplicate_fraction_queues_that_share_twice() -> None:
    plan = _plan(seed=1, duplicate=0.25)
    runs = _run(plan, 400)
    doubled = sum(1 for rows in runs if len(rows) == 2)
    assert 60 <= doubled <= 140
    assert all(len(rows) in (1, 2) for rows in runs)
    assert plan.status()["applied"]["duplicated"] == doubled


def test_late_fraction_delays_by_the_given_seconds() -> None:
    runs = _run(_plan(seed=2, late=0.5, lateSeconds=30), 200)
    delays = [rows[0][1] for rows in runs]
    assert set(delays) == {0.0, 30.0}
    assert 60 <= delays.count(30.0) <= 140


def test_shuffle_window_spreads_deliveries_inside_the_window() -> None:
    delays = [rows[0][1] for rows in _run(_plan(seed=3, shuffleWindow=2.0), 200)]
    assert all(0.0 <= d <= 2.0 for d in delays)
    assert delays != sorted(delays), "the window reorders deliveries"


def test_same_seed_same_schedule_and_reset_restarts_it() -> None:
    body = {"seed": 42, "duplicate": 0.3, "shuffleWindow": 1.0, "late": 0.2, "lateSeconds": 5}
    first, second = _run(_plan(**body)), _run(_plan(**body))
    assert first == second
    assert first != _run(_plan(**{**body, "seed": 43}))
    plan = _plan(**body)
    again = _run(plan)
    plan.set(DeliveryFaults.from_json(body))
    assert _run(plan) == again


def test_faults_target_only_the_named_topics_and_subscriptions() -> None:
    plan = _plan(duplicate=1.0, topics=["storage"], subscriptions=["SUB-A"])
    assert plan.apply("evergreen", [ROUTE]) == [ROUTE]
    assert [r.subscription for r in plan.apply("storage", [ROUTE, OTHER])] == ["sub-a", "sub-a", "sub-b"]


@pytest.mark.parametrize("body", [
    {"duplicate": 1.5}, {"late": -0.1}, {"lateSeconds": -1}, {"shuffleWindow": "2"}, {"seed": "x"},
    {"duplicates": 0.1}, {"topics": "storage"}, [],
])
def test_bad_specs_are_rejected_with_the_field(body: object) -> None:
    with pytest.raises(FaultSpecError):
        DeliveryFaults.from_json(body)
