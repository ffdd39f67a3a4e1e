"""Event Grid trigger webhook: handshakes, Event Grid and CloudEvents notifications, errors."""

from __future__ import annotations

import json
import uuid

import httpx
import pytest

from devstack.testing.host import SampleHost, read_results, wait_for

pytestmark = pytest.mark.integration


def _webhook(sample: SampleHost, function: str = "on_event") -> str:
    return f"{sample.url}/runtime/webhooks/EventGrid?functionName={function}"


def _event(**data: object) -> dict[str, object]:
    return {
        "id": f"evt-{uuid.uuid4().hex[:8]}", "topic": "/subscriptions/x/topics/evergreen", "subject": "models/m:1",
        "eventType": "Evergreen.Test", "eventTime": "2024-05-01T12:00:00Z", "data": data, "dataVersion": "1",
    }


def test_subscription_validation_handshake(sample_host: SampleHost) -> None:
    body = [{
        "id": "v1", "topic": "t", "subject": "", "eventType": "Microsoft.EventGrid.SubscriptionValidationEvent",
        "eventTime": "2024-05-01T12:00:00Z", "dataVersion": "1",
        "data": {"validationCode": "code-123", "validationUrl": "https://example.invalid/validate"},
    }]
    response = httpx.post(_webhook(sample_host), json=body, headers={"aeg-event-type": "SubscriptionValidation"})
    assert response.status_code == 200
    assert response.json() == {"validationResponse": "code-123"}


def test_cloudevents_abuse_protection_handshake(sample_host: SampleHost) -> None:
    response = httpx.options(
        _webhook(sample_host),
        headers={"WebHook-Request-Origin": "eventgrid.azure.net", "WebHook-Request-Rate": "120"},
    )
    assert response.status_code == 200
    assert response.headers["webhook-allowed-origin"] == "eventgrid.azure.net"
    assert response.headers["webhook-allowed-rate"] == "120"


def test_notification_invokes_once_per_event(sample_host: SampleHost) -> None:
    first, second = _event(n=1), _event(n=2)
    response = httpx.post(_webhook(sample_host), json=[first, second], headers={"aeg-event-type": "Notification"})
    assert response.status_code in {200, 202}
    results = read_results(sample_host, "on_event")
    assert results[str(first["id"])]["data"] == {"n": 1}
    assert results[str(second["id"])]["data"] == {"n": 2}
    assert results[str(first["id"])]["class"] == "EventGridEvent"
    assert results[str(first["id"])]["type"] == "Evergreen.Test"


def test_cloudevents_batch_is_delivered(sample_host: SampleHost) -> None:
    event_id = f"ce-{uuid.uuid4().hex[:8]}"
    cloud_event = {"specversion": "1.0", "id": event_id, "source": "/evergreen", "type": "Evergreen.Cloud",
                   "subject": "x", "time": "2024-05-01T12:00:00Z", "data": {"cloud": True}}
    response = httpx.post(
        _webhook(sample_host), content=json.dumps([cloud_event]),
        headers={"content-type": "application/cloudevents-batch+json", "aeg-event-type": "Notification"},
    )
    assert response.status_code in {200, 202}
    recorded = read_results(sample_host, "on_event")[event_id]
    assert recorded["data"] == {"cloud": True}
    assert recorded["class"] == "CloudEvent"


def test_function_failure_is_500_so_event_grid_retries(sample_host: SampleHost) -> None:
    event = _event(fail=True)
    response = httpx.post(_webhook(sample_host), json=[event], headers={"aeg-event-type": "Notification"})
    assert response.status_code == 500
    wait_for(lambda: f"event {event['id']} asked to fail" in sample_host.info.log_text(), message="failure log")


def test_unknown_function_is_404(sample_host: SampleHost) -> None:
    assert httpx.post(_webhook(sample_host, "missing"), json=[_event()]).status_code == 404
    # an existing function with another trigger is not an Event Grid function either
    assert httpx.post(_webhook(sample_host, "hello"), json=[_event()]).status_code == 404


@pytest.mark.parametrize("body", [b"not json", b"[]", b"[1, 2]", b'[{"id": "x"}]', b"{}"])
def test_malformed_body_is_400(sample_host: SampleHost, body: bytes) -> None:
    response = httpx.post(_webhook(sample_host), content=body, headers={"aeg-event-type": "Notification"})
    assert response.status_code == 400


def test_webhook_path_is_case_insensitive(sample_host: SampleHost) -> None:
    event = _event(case=True)
    response = httpx.post(
        f"{sample_host.url}/runtime/webhooks/eventgrid?functionName=On_Event", json=[event],
        headers={"aeg-event-type": "Notification"},
    )
    assert response.status_code in {200, 202}
    assert read_results(sample_host, "on_event")[str(event["id"])]["data"] == {"case": True}
