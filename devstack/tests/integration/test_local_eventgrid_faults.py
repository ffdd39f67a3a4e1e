"""The local Event Grid's delivery faults at run time (`PUT /faults`): duplicates, reordering, late."""

from __future__ import annotations

import time
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from devstack.testing.eventgrid import EventGridInfo

pytestmark = pytest.mark.integration


@pytest.fixture
def faults(eventgrid: EventGridInfo) -> Iterator[Any]:
    """Set faults on the `custom-all` subscription only; always turned off afterwards."""

    def put(**body: Any) -> dict[str, Any]:
        response = httpx.put(f"{eventgrid.url}/faults",
                             json={"topics": ["evergreen"], "subscriptions": ["custom-all"], **body})
        assert response.status_code == 200, response.text
        return dict(response.json())

    try:
        yield put
    finally:
        httpx.delete(f"{eventgrid.url}/faults").raise_for_status()


def _publish(eventgrid: EventGridInfo, token: str, count: int) -> list[str]:
    events = [{"id": f"{token}-{i:02d}", "subject": f"/faults/{token}", "eventType": "Evergreen.Test",
               "eventTime": datetime.now(UTC).isoformat(), "dataVersion": "1", "data": {"i": i}}
              for i in range(count)]
    response = httpx.post(eventgrid.topic_endpoint(), json=events, headers={"aeg-sas-key": eventgrid.topic_key})
    assert response.status_code == 200
    return [str(e["id"]) for e in events]


def test_every_event_delivered_twice_when_duplicate_is_one(eventgrid: EventGridInfo, faults: Any) -> None:
    status = faults(seed=1, duplicate=1.0)
    assert status["duplicate"] == 1.0
    token = uuid.uuid4().hex
    ids = _publish(eventgrid, token, 3)
    received = eventgrid.receiver.wait_for(token, function="on_custom_event", count=6)
    assert Counter(r.event["id"] for r in received) == dict.fromkeys(ids, 2)
    assert eventgrid.get("/faults")["applied"]["duplicated"] == 3
    time.sleep(0.5)
    assert len(eventgrid.receiver.matching(token, "on_custom_event")) == 6


def test_shuffle_window_reorders_a_batch(eventgrid: EventGridInfo, faults: Any) -> None:
    faults(seed=5, shuffleWindow=1.5)
    token = uuid.uuid4().hex
    ids = _publish(eventgrid, token, 12)
    received = eventgrid.receiver.wait_for(token, function="on_custom_event", count=12)
    arrived = [r.event["id"] for r in sorted(received, key=lambda r: r.at)]
    assert sorted(arrived) == ids and arrived != ids


def test_late_events_arrive_after_the_delay_and_others_do_not_wait(eventgrid: EventGridInfo, faults: Any) -> None:
    faults(seed=0, late=1.0, lateSeconds=2.5)
    token = uuid.uuid4().hex
    sent = time.time()
    (event_id,) = _publish(eventgrid, token, 1)
    other = uuid.uuid4().hex
    httpx.post(eventgrid.topic_endpoint(), headers={"aeg-sas-key": eventgrid.topic_key}, json=[{
        "id": other, "subject": f"/models/{other}", "eventType": "Evergreen.ModelPromoted",
        "eventTime": datetime.now(UTC).isoformat(), "dataVersion": "1", "data": {"stage": "production"}}])
    (late,) = eventgrid.receiver.wait_for(token, function="on_custom_event", timeout=10)
    assert late.event["id"] == event_id and late.at - sent >= 2.5
    (unaffected,) = eventgrid.receiver.wait_for(other, function="on_model_promoted")
    assert unaffected.at < late.at, "another subscription's delivery of a later event is not held back"


def test_bad_fault_spec_is_400_and_changes_nothing(eventgrid: EventGridInfo) -> None:
    before = eventgrid.get("/faults")
    response = httpx.put(f"{eventgrid.url}/faults", json={"duplicate": 2})
    assert response.status_code == 400 and "duplicate" in response.text
    assert eventgrid.get("/faults") == before
