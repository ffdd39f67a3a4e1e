"""Publish-body validation (pure)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from devstack.eventgrid.envelope import MAX_BATCH_BYTES, EnvelopeError, Schema, parse_batch

TOPIC = "/subscriptions/s/resourceGroups/r/providers/Microsoft.EventGrid/topics/evergreen"


def eg(**overrides: Any) -> dict[str, Any]:
    event = {"id": "1", "subject": "/a", "eventType": "T", "eventTime": "2024-05-01T10:00:00.1234567Z",
             "dataVersion": "", "data": None}
    event.update(overrides)
    return event


def parse(body: Any, content_type: str = "application/json") -> Any:
    return parse_batch(json.dumps(body).encode(), content_type, topic_id=TOPIC)


def test_event_grid_batch_is_normalised() -> None:
    batch = parse([eg(), eg(id="2", topic="/custom")])
    assert batch.schema is Schema.EVENT_GRID
    assert batch.events[0]["topic"] == TOPIC and batch.events[0]["metadataVersion"] == "1"
    assert batch.events[1]["topic"] == "/custom"


def test_cloud_events_batch_and_single() -> None:
    ce = {"specversion": "1.0", "id": "1", "source": "/s", "type": "T", "comexampleext": 5}
    assert parse([ce], "application/cloudevents-batch+json; charset=utf-8").schema is Schema.CLOUD_EVENTS
    assert parse(ce, "application/cloudevents+json").events == [ce]


@pytest.mark.parametrize(
    ("event", "fragment"),
    [
        ({"specversion": "0.3", "id": "1", "source": "/s", "type": "T"}, "'specversion'"),
        ({"specversion": "1.0", "id": "1", "source": "/s", "type": "T", "time": "noon"}, "'time'"),
        ({"specversion": "1.0", "id": "1", "source": "/s", "type": "T", "Bad_Name": 1}, "'Bad_Name'"),
        ({"specversion": "1.0", "id": "1", "source": "/s", "type": "T", "data": 1, "data_base64": "AA=="},
         "data_base64"),
        ({"specversion": "1.0", "id": "", "source": "/s", "type": "T"}, "'id'"),
    ],
)
def test_bad_cloud_events(event: dict[str, Any], fragment: str) -> None:
    with pytest.raises(EnvelopeError) as info:
        parse([event], "application/cloudevents-batch+json")
    assert info.value.status == 400 and fragment in info.value.message


def test_empty_data_version_is_allowed_but_not_a_number() -> None:
    assert parse([eg(dataVersion="")]).events
    with pytest.raises(EnvelopeError, match=r"'dataVersion'.*must be a string"):
        parse([eg(dataVersion=1)])


def test_size_limit_is_413() -> None:
    body = json.dumps([eg(data="x" * MAX_BATCH_BYTES)]).encode()
    with pytest.raises(EnvelopeError) as info:
        parse_batch(body, "application/json", topic_id=TOPIC)
    assert info.value.status == 413
    assert info.value.to_json()["error"]["code"] == "RequestEntityTooLarge"


def test_empty_batch_and_non_objects() -> None:
    with pytest.raises(EnvelopeError, match="empty"):
        parse([])
    with pytest.raises(EnvelopeError, match="index 0 must be a JSON object"):
        parse(["x"])
