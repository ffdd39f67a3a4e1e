"""Delivery: retries with backoff, dead letters (API and blob), redelivery, concurrency, restarts."""

from __future__ import annotations

import itertools
import json
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from azure.storage.blob import BlobServiceClient

from devstack.eventgrid import start_eventgrid
from devstack.procs import free_port
from devstack.testing.eventgrid import INFRA_SUBSCRIPTIONS, MAX_ATTEMPTS, EventGridInfo, Receiver, wait_until

pytestmark = pytest.mark.integration


def _publish(eventgrid: EventGridInfo, token: str) -> str:
    event_id = str(uuid.uuid4())
    event = {"id": event_id, "subject": f"/jobs/{token}", "eventType": "Evergreen.Test",
             "eventTime": datetime.now(UTC).isoformat(), "dataVersion": "1", "data": {"token": token}}
    response = httpx.post(eventgrid.topic_endpoint(), json=[event], headers={"aeg-sas-key": eventgrid.topic_key})
    assert response.status_code == 200
    return event_id


def _delivery(eventgrid: EventGridInfo, event_id: str, subscription: str = "custom-all") -> dict[str, Any]:
    all_rows: list[dict[str, Any]] = eventgrid.get("/deliveries", subscription=subscription, limit=5000)
    rows = [d for d in all_rows if d["eventId"] == event_id]
    assert len(rows) == 1
    return rows[0]


def _dead_letter(eventgrid: EventGridInfo, event_id: str) -> dict[str, Any]:
    def find() -> dict[str, Any] | None:
        rows = [d for d in eventgrid.get("/deadletters", limit=5000) if d["eventId"] == event_id]
        return rows[0] if rows and rows[0]["blobStatus"] == "written" else None

    return wait_until(find, message=f"dead letter of {event_id} written")  # type: ignore[no-any-return]


def test_failures_are_retried_with_backoff_until_success(eventgrid: EventGridInfo) -> None:
    token = uuid.uuid4().hex
    eventgrid.receiver.respond(token, [503, 500, 200])
    event_id = _publish(eventgrid, token)
    requests = eventgrid.receiver.wait_for(token, function="on_custom_event", count=3)
    assert [r.status for r in requests] == [503, 500, 200]
    assert [r.headers["aeg-delivery-count"] for r in requests] == ["0", "1", "2"]
    assert {r.event["id"] for r in requests} == {event_id}
    gaps = [b.at - a.at for a, b in itertools.pairwise(requests)]
    # initial delay 0.2 s, doubling, ±20 % jitter
    assert gaps[0] >= 0.15 and gaps[1] >= 0.3
    delivery = wait_until(lambda: (d := _delivery(eventgrid, event_id))["status"] == "delivered" and d)
    assert delivery["attempts"] == 3 and delivery["lastStatus"] == 200


def test_bad_request_is_dead_lettered_at_once_with_blob(eventgrid: EventGridInfo) -> None:
    token = uuid.uuid4().hex
    eventgrid.receiver.respond(token, [400], repeat_last=True)
    event_id = _publish(eventgrid, token)
    dead = _dead_letter(eventgrid, event_id)
    assert len(eventgrid.receiver.matching(token, "on_custom_event")) == 1
    assert dead["deadLetterReason"] == "MaxDeliveryAttemptsExceeded"
    assert dead["detail"] == "HTTP 400 is not retried"
    assert dead["lastHttpStatusCode"] == 400 and dead["lastDeliveryOutcome"] == "BadRequest"
    assert dead["deliveryAttempts"] == 1
    assert "scripted failure 400" in dead["lastResponseBody"]
    assert dead["subscription"] == "custom-all" and dead["event"]["id"] == event_id
    # Azure's layout: {container}/{TOPIC}/{SUBSCRIPTION}/yyyy/mm/dd/hh/{guid}.json, a JSON array
    assert dead["container"] == "deadletter"
    assert dead["blobName"].startswith("EVERGREEN/CUSTOM-ALL/") and dead["blobName"].endswith(f"{dead['id']}.json")
    service = BlobServiceClient.from_connection_string(eventgrid.storage_connection_string)
    blob = json.loads(service.get_blob_client("deadletter", dead["blobName"]).download_blob().readall())
    assert blob[0]["id"] == event_id
    assert blob[0]["deadLetterReason"] == "MaxDeliveryAttemptsExceeded"
    assert blob[0]["deliveryAttempts"] == 1 and blob[0]["lastDeliveryOutcome"] == "BadRequest"


def test_exhausted_attempts_are_dead_lettered(eventgrid: EventGridInfo) -> None:
    token = uuid.uuid4().hex
    eventgrid.receiver.respond(token, [503], repeat_last=True)
    event_id = _publish(eventgrid, token)
    dead = _dead_letter(eventgrid, event_id)
    assert dead["deadLetterReason"] == "MaxDeliveryAttemptsExceeded"
    assert dead["deliveryAttempts"] == MAX_ATTEMPTS
    assert dead["lastHttpStatusCode"] == 503 and dead["lastDeliveryOutcome"] == "ServiceUnavailable"
    assert len(eventgrid.receiver.matching(token, "on_custom_event")) == MAX_ATTEMPTS
    assert _delivery(eventgrid, event_id)["status"] == "deadlettered"


def test_dead_letter_can_be_redelivered(eventgrid: EventGridInfo) -> None:
    token = uuid.uuid4().hex
    eventgrid.receiver.respond(token, [404])
    event_id = _publish(eventgrid, token)
    dead = _dead_letter(eventgrid, event_id)
    response = httpx.post(f"{eventgrid.url}/deadletters/{dead['id']}/redeliver")
    assert response.status_code == 202
    requests = eventgrid.receiver.wait_for(token, function="on_custom_event", count=2)
    assert [r.status for r in requests] == [404, 200]
    assert httpx.post(f"{eventgrid.url}/deadletters/no-such-id/redeliver").status_code == 404


def test_a_slow_function_does_not_block_other_deliveries(eventgrid: EventGridInfo) -> None:
    slow, fast = uuid.uuid4().hex, uuid.uuid4().hex
    eventgrid.receiver.respond(slow, [200], delay=2.0)
    _publish(eventgrid, slow)
    _publish(eventgrid, fast)
    (fast_request,) = eventgrid.receiver.wait_for(fast, function="on_custom_event")
    (slow_request,) = eventgrid.receiver.wait_for(slow, function="on_custom_event")
    # `at` is stamped when the receiver answers: the fast one finished while the slow one was still running.
    assert fast_request.at < slow_request.at - 1.0


def test_pending_deliveries_survive_a_restart(azurite: Any, tmp_path: Path) -> None:
    """With the real subscription file: a landing blob whose delivery keeps failing is delivered after restart."""
    receiver = Receiver()
    token = uuid.uuid4().hex
    receiver.respond(token, [503], repeat_last=True)
    blob_name = f"{token}/part-0.csv"

    def start() -> tuple[Any, str]:
        port = free_port()
        service = start_eventgrid(tmp_path, port, host_url=receiver.url,
                                  storage_connection_string=azurite.connection_string,
                                  subscriptions_path=INFRA_SUBSCRIPTIONS, topic_key="k", watch_interval=0.25,
                                  retry_initial_delay=0.2, retry_max_delay=0.5)
        service.wait_ready()
        return service, f"http://127.0.0.1:{port}"

    service, url = start()
    try:
        container = BlobServiceClient.from_connection_string(azurite.connection_string).get_container_client("landing")
        if not container.exists():
            container.create_container()
        container.upload_blob(blob_name, b"a,b\n1,2\n")
        receiver.wait_for(token, function="on_blob_created", count=2)
    finally:
        service.stop()
    attempts_before = len(receiver.matching(token))
    receiver.clear(token)
    service, url = start()
    try:
        requests = receiver.wait_for(token, function="on_blob_created", where=lambda rs: rs[-1].status == 200,
                                     count=attempts_before + 1)
        delivered = requests[-1]
        assert delivered.path == "/runtime/webhooks/blobs?functionName=Host.Functions.on_blob_created"
        assert delivered.headers["aeg-subscription-name"] == "LANDING-BLOB-CREATED"
        assert int(delivered.headers["aeg-delivery-count"]) >= attempts_before
        assert delivered.event["subject"] == f"/blobServices/default/containers/landing/blobs/{blob_name}"
        assert len({r.event["id"] for r in requests}) == 1
        # The restarted watcher did not emit the blob again.
        events = httpx.get(f"{url}/events", params={"topic": "storage", "subject": delivered.event["subject"]}).json()
        assert len(events) == 1
    finally:
        service.stop()
        receiver.close()


def test_dead_letter_blob_waits_for_storage_to_come_back(tmp_path: Path) -> None:
    """Storage down at dead-letter time: the blob stays pending (with the error) and is written later."""
    from devstack.azurite import connection_string, start_azurite

    receiver = Receiver()
    token = uuid.uuid4().hex
    receiver.respond(token, [400])
    ports = free_port(), free_port(), free_port()
    port = free_port()
    subscriptions = tmp_path / "subs.json"
    subscriptions.write_text(json.dumps({"subscriptions": [
        {"name": "dl-test", "topic": "evergreen", "destination": {"function": "on_x", "kind": "eventGridTrigger"},
         "deadLetter": {"container": "deadletter"}}]}))
    service = start_eventgrid(tmp_path / "eg", port, host_url=receiver.url,
                              storage_connection_string=connection_string(*ports), subscriptions_path=subscriptions,
                              topic_key="k", retry_initial_delay=0.1)
    azurite = None
    try:
        service.wait_ready(timeout=30)
        info = EventGridInfo(f"http://127.0.0.1:{port}", port, "k", receiver, subscriptions, tmp_path,
                             connection_string(*ports), service)
        event_id = _publish(info, token)
        pending = wait_until(lambda: [d for d in info.get("/deadletters") if d["blobError"]],
                             message="a failed dead-letter write")
        assert pending[0]["eventId"] == event_id and pending[0]["blobStatus"] == "pending"
        azurite = start_azurite(tmp_path / "azurite", *ports)
        azurite.wait_ready()
        written = _dead_letter(info, event_id)
        service_client = BlobServiceClient.from_connection_string(connection_string(*ports))
        blob = service_client.get_blob_client("deadletter", written["blobName"]).download_blob().readall()
        assert json.loads(blob)[0]["id"] == event_id
    finally:
        service.stop()
        if azurite is not None:
            azurite.stop()
        receiver.close()
