"""The outbox store, retry arithmetic, dead-letter naming and the CLI table (no network)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from devstack.eventgrid.__main__ import build_parser, print_table
from devstack.eventgrid.delivery import (
    TIME_TO_LIVE_EXCEEDED,
    Dispatcher,
    RetrySettings,
    dead_letter_blob_name,
    outcome_of,
)
from devstack.eventgrid.store import Route, Store

ROUTE = Route("sub-a", "on_a", "eventGridTrigger", "deadletter", max_attempts=5, ttl_seconds=60)


def event(event_id: str) -> dict[str, object]:
    return {"id": event_id, "subject": f"/s/{event_id}", "eventType": "T", "dataVersion": "", "data": {}}


def test_ingest_queues_one_delivery_per_route_and_survives_reopen(tmp_path: Path) -> None:
    store = Store(tmp_path / "eg.sqlite")
    other = Route("sub-b", "on_b", "blobTrigger", None, max_attempts=2, ttl_seconds=60)
    assert store.ingest("evergreen", "EventGridSchema", [(event("1"), [ROUTE, other]), (event("2"), [])]) == 2
    store.close()
    reopened = Store(tmp_path / "eg.sqlite")
    due = reopened.due_deliveries(time.time(), 10, set())
    assert sorted(d.subscription for d in due) == ["sub-a", "sub-b"]
    assert reopened.due_deliveries(time.time(), 10, {due[0].id}) == [due[1]]
    assert len(reopened.list_events(topic="evergreen", event_type="t", subject_prefix="/s/", limit=10)) == 2


def test_retry_then_dead_letter_then_redeliver(tmp_path: Path) -> None:
    store = Store(tmp_path / "eg.sqlite")
    store.ingest("evergreen", "EventGridSchema", [(event("1"), [ROUTE])])
    (delivery,) = store.due_deliveries(time.time(), 10, set())
    store.record_retry(delivery.id, 503, "ServiceUnavailable", "busy", time.time() + 3600)
    assert store.due_deliveries(time.time(), 10, set()) == []
    assert store.next_due_at() is not None
    dl_id = store.record_dead_letter(delivery, reason="MaxDeliveryAttemptsExceeded", detail="x", attempted=True,
                                     status=500, outcome="InternalServerError", body="boom")
    (dead,) = store.list_dead_letters(subscription="SUB-A", limit=10)
    assert dead["id"] == dl_id and dead["deliveryAttempts"] == 2 and dead["lastHttpStatusCode"] == 500
    assert dead["blobStatus"] == "pending"
    (pending,) = store.pending_dead_letter_blobs(time.time())
    assert pending.document["deadLetterReason"] == "MaxDeliveryAttemptsExceeded"
    assert pending.document["id"] == "1" and pending.document["deliveryAttempts"] == 2
    store.mark_dead_letter_blob(dl_id, blob_name=None, error="down", next_at=time.time() + 3600)
    assert store.pending_dead_letter_blobs(time.time()) == []
    store.mark_dead_letter_blob(dl_id, blob_name="X/Y/z.json", error=None, next_at=0)
    assert store.list_dead_letters(subscription=None, limit=10)[0]["blobStatus"] == "written"
    new_id = store.redeliver(dl_id)
    assert new_id is not None and store.redeliver("missing") is None
    (again,) = store.due_deliveries(time.time(), 10, set())
    assert again.id == new_id and again.attempts == 0


def test_sequencer_is_monotonic_fixed_width_and_persisted(tmp_path: Path) -> None:
    store = Store(tmp_path / "eg.sqlite")
    first, second = store.next_sequencer(), store.next_sequencer()
    assert len(first) == len(second) == 48 and first < second
    store.ingest("storage", "EventGridSchema", [])
    store.close()
    assert Store(tmp_path / "eg.sqlite").next_sequencer() > second


def test_backoff_grows_with_jitter_and_is_capped() -> None:
    retry = RetrySettings(initial_delay=0.5, max_delay=4.0, jitter=0.2)
    for attempts, base in [(1, 0.5), (2, 1.0), (3, 2.0), (4, 4.0), (10, 4.0)]:
        delays = {retry.delay(attempts) for _ in range(20)}
        assert all(base * 0.8 <= d <= base * 1.2 for d in delays)
        assert len(delays) > 1
    assert RetrySettings(max_attempts_cap=3).max_attempts(30) == 3
    assert RetrySettings().max_attempts(30) == 30


def test_outcomes_and_dead_letter_blob_layout() -> None:
    assert outcome_of(404) == "NotFound" and outcome_of(413) == "RequestEntityTooLarge"
    assert outcome_of(599) == "Http599"
    when = 1_700_000_000.0  # 2023-11-14T22:13:20Z
    assert dead_letter_blob_name("evergreen", "custom-all", when, "g") == "EVERGREEN/CUSTOM-ALL/2023/11/14/22/g.json"


def test_expired_event_is_dead_lettered_without_an_attempt(tmp_path: Path) -> None:
    store = Store(tmp_path / "eg.sqlite")
    expired = Route("sub-a", "on_a", "eventGridTrigger", None, max_attempts=5, ttl_seconds=-1)
    store.ingest("evergreen", "EventGridSchema", [(event("1"), [expired])])

    async def run() -> None:
        # Port 9 (discard) on loopback: nothing may be sent there; an attempt would be recorded.
        dispatcher = Dispatcher(store, "http://127.0.0.1:9", retry=RetrySettings())
        task = asyncio.create_task(dispatcher.run())
        deadline = time.monotonic() + 5
        while not store.list_dead_letters(subscription=None, limit=1) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    asyncio.run(run())
    (dead,) = store.list_dead_letters(subscription=None, limit=10)
    assert dead["deadLetterReason"] == TIME_TO_LIVE_EXCEEDED
    assert dead["deliveryAttempts"] == 0 and dead["blobStatus"] == "none"


def test_cli_table_and_parser(capsys: pytest.CaptureFixture[str]) -> None:
    rows = [{"id": 1, "event": {"subject": "/a/very/long/subject"}}]
    print_table(rows, [("id", "id", 4), ("subject", "event.subject", 8)])
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["id", "subject"]
    assert out[1].split() == ["1", "/a/very…"]
    assert out[2] == "(1 row)"
    args = build_parser().parse_args(["serve", "--port", "1", "--max-attempts", "2", "--watch-interval", "0.3"])
    assert (args.port, args.max_attempts, args.watch_interval) == (1, 2, 0.3)
    assert build_parser().parse_args(["deadletters", "--url", "http://x"]).url == "http://x"
