"""Publishing to the local Event Grid with the real SDK, envelope validation and routing."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime

import httpx
import pytest
from azure.core.credentials import AzureKeyCredential
from azure.core.exceptions import HttpResponseError
from azure.core.messaging import CloudEvent
from azure.eventgrid import EventGridEvent, EventGridPublisherClient

from devstack.testing.eventgrid import EventGridInfo

pytestmark = pytest.mark.integration


def _client(eventgrid: EventGridInfo, topic: str = "evergreen", key: str | None = None) -> EventGridPublisherClient:
    return EventGridPublisherClient(eventgrid.topic_endpoint(topic), AzureKeyCredential(key or eventgrid.topic_key))


def _eg_event(**overrides: object) -> dict[str, object]:
    event: dict[str, object] = {
        "id": str(uuid.uuid4()), "subject": "/things/1", "eventType": "Evergreen.Test",
        "eventTime": datetime.now(UTC).isoformat(), "dataVersion": "1.0", "data": {"a": 1},
    }
    event.update(overrides)
    return {k: v for k, v in event.items() if v is not ...}


def _post(eventgrid: EventGridInfo, body: object, content_type: str = "application/json") -> httpx.Response:
    return httpx.post(eventgrid.topic_endpoint(), content=json.dumps(body).encode(),
                      headers={"aeg-sas-key": eventgrid.topic_key, "Content-Type": content_type})


def test_sdk_event_grid_schema_is_delivered_as_published(eventgrid: EventGridInfo) -> None:
    token = uuid.uuid4().hex
    with _client(eventgrid) as client:
        client.send([EventGridEvent(subject=f"/runs/{token}", event_type="Evergreen.RunFinished",
                                    data={"run": token, "n": 3}, data_version="2.0")])
    (request,) = eventgrid.receiver.wait_for(token, function="on_custom_event")
    assert request.path == "/runtime/webhooks/EventGrid?functionName=on_custom_event"
    assert request.headers["aeg-event-type"] == "Notification"
    assert request.headers["aeg-subscription-name"] == "CUSTOM-ALL"
    assert request.headers["aeg-delivery-count"] == "0"
    assert request.headers["content-type"].startswith("application/json")
    assert isinstance(request.body, list) and len(request.body) == 1
    event = request.event
    assert event["subject"] == f"/runs/{token}"
    assert event["eventType"] == "Evergreen.RunFinished"
    assert event["data"] == {"run": token, "n": 3}
    assert event["dataVersion"] == "2.0"
    assert event["metadataVersion"] == "1"
    assert event["topic"].endswith("/providers/Microsoft.EventGrid/topics/evergreen")
    published = eventgrid.get("/events", topic="evergreen", subject=f"/runs/{token}")
    assert [p["event"]["id"] for p in published] == [event["id"]]


def test_sdk_cloud_events_are_delivered_in_cloudevents_schema(eventgrid: EventGridInfo) -> None:
    token = uuid.uuid4().hex
    with _client(eventgrid) as client:
        client.send([CloudEvent(source="/evergreen/tests", type="Evergreen.Cloud", subject=f"/ce/{token}",
                                data={"token": token})])
    (request,) = eventgrid.receiver.wait_for(token, function="on_custom_event")
    assert request.headers["content-type"].startswith("application/cloudevents-batch+json")
    event = request.event
    assert event["specversion"] == "1.0"
    assert event["type"] == "Evergreen.Cloud"
    assert event["source"] == "/evergreen/tests"
    assert event["data"] == {"token": token}


def test_wrong_or_missing_key_is_401(eventgrid: EventGridInfo) -> None:
    with _client(eventgrid, key="not-the-key") as client, pytest.raises(HttpResponseError) as info:
        client.send([EventGridEvent(subject="/x", event_type="T", data={}, data_version="1")])
    assert info.value.status_code == 401
    response = httpx.post(eventgrid.topic_endpoint(), json=[_eg_event()])
    assert response.status_code == 401
    assert "aeg-sas-key" in response.json()["error"]["message"]


def test_unknown_topic_is_404(eventgrid: EventGridInfo) -> None:
    response = httpx.post(f"{eventgrid.url}/topics/nope/api/events", json=[_eg_event()],
                          headers={"aeg-sas-key": eventgrid.topic_key})
    assert response.status_code == 404


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"id": ...}, "'id'"),
        ({"eventType": ...}, "'eventType'"),
        ({"subject": ...}, "'subject'"),
        ({"dataVersion": ...}, "'dataVersion'"),
        ({"eventTime": ...}, "'eventTime'"),
        ({"eventTime": "yesterday"}, "'eventTime'"),
        ({"id": 42}, "'id'"),
        ({"subject": ["a"]}, "'subject'"),
        ({"metadataVersion": "2"}, "'metadataVersion'"),
    ],
)
def test_bad_event_grid_envelope_is_400_naming_the_field(
    eventgrid: EventGridInfo, overrides: dict[str, object], field: str
) -> None:
    token = uuid.uuid4().hex
    response = _post(eventgrid, [_eg_event(subject=f"/ok/{token}"), _eg_event(**overrides)])
    assert response.status_code == 400
    message = response.json()["error"]["message"]
    assert field in message and "index 1" in message
    # The whole batch is refused: the valid first event was not published either.
    assert eventgrid.get("/events", subject=f"/ok/{token}") == []


def test_bad_cloud_event_is_400_naming_the_field(eventgrid: EventGridInfo) -> None:
    good = {"specversion": "1.0", "id": "1", "source": "/s", "type": "T"}
    for missing in ("id", "source", "type", "specversion"):
        event = {k: v for k, v in good.items() if k != missing}
        response = _post(eventgrid, [event], "application/cloudevents-batch+json; charset=utf-8")
        assert response.status_code == 400
        assert f"'{missing}'" in response.json()["error"]["message"]


def test_not_an_array_and_not_json_are_400(eventgrid: EventGridInfo) -> None:
    assert _post(eventgrid, _eg_event()).status_code == 400
    response = httpx.post(eventgrid.topic_endpoint(), content=b"{not json",
                          headers={"aeg-sas-key": eventgrid.topic_key})
    assert response.status_code == 400


def test_batch_over_one_megabyte_is_413(eventgrid: EventGridInfo) -> None:
    response = _post(eventgrid, [_eg_event(data={"blob": "x" * (1024 * 1024)})])
    assert response.status_code == 413
    assert "1 MB" in response.json()["error"]["message"]


def test_routing_applies_type_subject_and_advanced_filters(eventgrid: EventGridInfo) -> None:
    token = uuid.uuid4().hex
    matching = _eg_event(eventType="evergreen.modelpromoted", subject=f"/models/{token}/1",
                         data={"stage": "Production"})
    wrong_stage = _eg_event(eventType="Evergreen.ModelPromoted", subject=f"/models/{token}/2",
                            data={"stage": "Staging"})
    wrong_subject = _eg_event(eventType="Evergreen.ModelPromoted", subject=f"/other/{token}/3",
                              data={"stage": "Production"})
    assert _post(eventgrid, [matching, wrong_stage, wrong_subject]).status_code == 200
    (promoted,) = eventgrid.receiver.wait_for(token, function="on_model_promoted")
    assert promoted.event["id"] == matching["id"]
    # Every event reached the unfiltered subscription; routing was decided at publish time.
    eventgrid.receiver.wait_for(token, function="on_custom_event", count=3)
    deliveries = eventgrid.get("/deliveries", subscription="custom-promoted", limit=5000)
    assert matching["id"] in {d["eventId"] for d in deliveries}
    assert not {wrong_stage["id"], wrong_subject["id"]} & {d["eventId"] for d in deliveries}


def test_workspace_topic_filters_on_model_tags(eventgrid: EventGridInfo) -> None:
    token = uuid.uuid4().hex
    tagged = EventGridEvent(subject=f"models/{token}:1", event_type="Microsoft.MachineLearningServices.ModelRegistered",
                            data={"ModelName": token, "ModelVersion": "1", "ModelTags": {"evergreen": "TRUE"}},
                            data_version="2")
    untagged = EventGridEvent(subject=f"models/{token}:2",
                              event_type="Microsoft.MachineLearningServices.ModelRegistered",
                              data={"ModelName": token, "ModelVersion": "2", "ModelTags": {}}, data_version="2")
    with _client(eventgrid, "workspace") as client:
        client.send([untagged, tagged])
    (request,) = eventgrid.receiver.wait_for(token, function="on_tagged_model")
    assert request.event["subject"] == f"models/{token}:1"
    assert request.event["topic"].endswith("/Microsoft.MachineLearningServices/workspaces/evergreen-ws")
    published = eventgrid.get("/events", topic="workspace", subject=f"models/{token}")
    assert len(published) == 2


def test_cli_prints_tables_from_the_running_server(
    eventgrid: EventGridInfo, capsys: pytest.CaptureFixture[str]
) -> None:
    from devstack.eventgrid.__main__ import main

    token = uuid.uuid4().hex
    assert _post(eventgrid, [_eg_event(subject=f"/cli/{token}")]).status_code == 200
    eventgrid.receiver.wait_for(token, function="on_custom_event")
    assert main(["events", "--url", eventgrid.url, "--subject", f"/cli/{token}"]) == 0
    out = capsys.readouterr().out
    assert f"/cli/{token}" in out and "(1 row)" in out
    assert main(["deliveries", "--url", eventgrid.url, "--status", "delivered", "--limit", "5"]) == 0
    assert "delivered" in capsys.readouterr().out
    assert main(["deadletters", "--url", eventgrid.url]) == 0
    assert main(["events", "--url", "http://127.0.0.1:9"]) == 1
