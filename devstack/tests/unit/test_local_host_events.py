"""Parsing Event Grid deliveries as the Functions Event Grid extension does."""

from __future__ import annotations

import json

import pytest

from devstack.host.events import (
    Handshake,
    MalformedEventsError,
    blob_path,
    event_type,
    parse_events,
    validation_handshake,
)

EG_EVENT = {"id": "1", "subject": "s", "eventType": "T", "eventTime": "2024-01-01T00:00:00Z", "data": {},
            "dataVersion": "1"}
CLOUD_EVENT = {"specversion": "1.0", "id": "2", "source": "/x", "type": "C", "data": {}}


def test_event_grid_array() -> None:
    assert parse_events(json.dumps([EG_EVENT, EG_EVENT]).encode()) == [EG_EVENT, EG_EVENT]


def test_cloud_event_single_object_and_batch() -> None:
    assert parse_events(json.dumps(CLOUD_EVENT).encode()) == [CLOUD_EVENT]
    assert parse_events(json.dumps([CLOUD_EVENT]).encode()) == [CLOUD_EVENT]
    assert event_type(CLOUD_EVENT) == "C"
    assert event_type(EG_EVENT) == "T"


@pytest.mark.parametrize(
    "body",
    [b"", b"nope", b"[]", b"[1]", b'[{"id": "1"}]', b'{"specversion": "1.0", "id": "x"}', b"\xff\xfe"],
)
def test_malformed(body: bytes) -> None:
    with pytest.raises(MalformedEventsError):
        parse_events(body)


def test_validation_handshake() -> None:
    event = {"id": "v", "subject": "", "eventType": "Microsoft.EventGrid.SubscriptionValidationEvent",
             "data": {"validationCode": "abc"}}
    assert validation_handshake([event]) == Handshake("abc")
    assert validation_handshake([EG_EVENT]) is None
    with pytest.raises(MalformedEventsError):
        validation_handshake([{**event, "data": {}}])


def test_blob_path_from_subject_keeps_raw_name() -> None:
    event = {"subject": "/blobServices/default/containers/landing/blobs/a b/ü%20.csv", "data": {}}
    assert blob_path(event) == "landing/a b/ü%20.csv"


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://acct.blob.core.windows.net/landing/a%20b/%C3%BC.csv", "landing/a b/ü.csv"),
        ("http://127.0.0.1:10000/devstoreaccount1/landing/x.csv", "landing/x.csv"),
        ("http://localhost:10000/devstoreaccount1/landing/d/x.csv", "landing/d/x.csv"),
    ],
)
def test_blob_path_from_url(url: str, expected: str) -> None:
    assert blob_path({"id": "1", "subject": "", "data": {"url": url}}) == expected


def test_blob_path_missing() -> None:
    with pytest.raises(MalformedEventsError):
        blob_path({"id": "1", "subject": "/other", "data": {}})
