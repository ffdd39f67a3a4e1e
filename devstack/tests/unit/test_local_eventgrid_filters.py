"""Subscription filter semantics, as Azure documents them (pure)."""

from __future__ import annotations

from typing import Any

import pytest

from devstack.eventgrid.config import AdvancedFilter, EventFilter, SubscriptionFileError, parse_subscriptions
from devstack.eventgrid.filters import advanced_filter_matches, filter_matches, resolve_key

BLOB_EVENT: dict[str, Any] = {
    "id": "e1", "topic": "/subscriptions/x", "subject": "/blobServices/default/containers/Landing/blobs/a/b.CSV",
    "eventType": "Microsoft.Storage.BlobCreated", "dataVersion": "", "eventTime": "2024-01-01T00:00:00Z",
    "data": {"api": "PutBlockList", "contentLength": 42, "blobType": "BlockBlob", "flag": True, "none": None,
             "tags": ["gold", "Silver"], "sizes": [1, 5], "ModelTags": {"stage": "Production"}},
}


def adv(op: str, key: str, values: list[Any] | None = None, value: Any = None) -> AdvancedFilter:
    return AdvancedFilter.model_validate({"operatorType": op, "key": key, "values": values, "value": value})


def matches(op: str, key: str, values: list[Any] | None = None, *, arrays: bool = False, **kw: Any) -> bool:
    return advanced_filter_matches(adv(op, key, values, kw.get("value")), BLOB_EVENT, arrays=arrays)


@pytest.mark.parametrize(
    ("op", "key", "values", "expected"),
    [
        ("StringIn", "data.api", ["PutBlob", "putblocklist"], True),
        ("StringIn", "data.api", ["PutBlob"], False),
        ("StringNotIn", "data.api", ["PutBlob"], True),
        ("StringNotIn", "data.api", ["PUTBLOCKLIST"], False),
        ("StringBeginsWith", "subject", ["/blobservices/default/containers/landing/"], True),
        ("StringEndsWith", "Subject", [".csv"], True),
        ("StringContains", "data.blobType", ["blob"], True),
        ("StringContains", "data.blobType", ["page"], False),
        ("StringNotContains", "data.blobType", ["page"], True),
        ("StringNotBeginsWith", "data.api", ["Put"], False),
        ("StringNotEndsWith", "data.api", ["Blob"], True),
        ("NumberIn", "data.contentLength", [1, 42], True),
        ("NumberIn", "data.contentLength", [1], False),
        ("NumberNotIn", "data.contentLength", [1], True),
        ("NumberInRange", "data.contentLength", [[0, 10], [40, 50]], True),
        ("NumberNotInRange", "data.contentLength", [[40, 50]], False),
        ("StringIn", "data.ModelTags.stage", ["production"], True),
        ("StringIn", "data.modeltags.STAGE", ["production"], True),
        ("StringIn", "EventType", ["microsoft.storage.blobcreated"], True),
        # type mismatches are ignored: a number is not a string and vice versa
        ("StringIn", "data.contentLength", ["42"], False),
        ("NumberIn", "data.api", [42], False),
        ("NumberNotIn", "data.api", [42], True),
    ],
)
def test_operators(op: str, key: str, values: list[Any], expected: bool) -> None:
    assert matches(op, key, values) is expected


@pytest.mark.parametrize(
    ("op", "value", "expected"),
    [("NumberGreaterThan", 41, True), ("NumberGreaterThan", 42, False), ("NumberGreaterThanOrEquals", 42, True),
     ("NumberLessThan", 42, False), ("NumberLessThanOrEquals", 42, True), ("NumberLessThan", 43.5, True)],
)
def test_single_value_number_operators(op: str, value: float, expected: bool) -> None:
    assert matches(op, "data.contentLength", value=value) is expected
    assert matches(op, "data.contentLength", [value]) is expected


def test_bool_equals() -> None:
    assert matches("BoolEquals", "data.flag", value=True)
    assert not matches("BoolEquals", "data.flag", value=False)
    assert not matches("BoolEquals", "data.api", value=True)


@pytest.mark.parametrize(
    ("op", "values", "expected"),
    [("StringIn", ["x"], False), ("StringContains", ["x"], False), ("StringNotContains", ["x"], False),
     ("StringNotBeginsWith", ["x"], False), ("StringNotEndsWith", ["x"], False), ("StringNotIn", ["x"], True),
     ("NumberIn", [1], False), ("NumberNotIn", [1], True), ("NumberGreaterThan", [1], False),
     ("BoolEquals", [True], False)],
)
def test_missing_key_follows_azure_table(op: str, values: list[Any], expected: bool) -> None:
    assert matches(op, "data.nothere", values) is expected
    assert matches(op, "data.none", values) is expected


def test_null_and_undefined_operators() -> None:
    assert matches("IsNullOrUndefined", "data.nothere")
    assert matches("IsNullOrUndefined", "data.none")
    assert not matches("IsNullOrUndefined", "data.api")
    assert matches("IsNotNull", "data.api")
    assert not matches("IsNotNull", "data.none")
    assert not matches("IsNotNull", "data.api.deeper")


def test_arrays_only_with_enable_advanced_filtering_on_arrays() -> None:
    assert not matches("StringIn", "data.tags", ["silver"])
    assert matches("StringIn", "data.tags", ["silver"], arrays=True)
    assert not matches("StringNotIn", "data.tags", ["SILVER"], arrays=True)
    assert matches("NumberGreaterThan", "data.sizes", value=4, arrays=True)
    assert not matches("NumberGreaterThan", "data.sizes", value=5, arrays=True)


def test_resolve_key_prefers_exact_nested_names() -> None:
    event = {"data": {"Name": "upper", "name": "lower"}}
    assert resolve_key(event, "data.name") == "lower"
    assert resolve_key(event, "DATA.Name") == "upper"


def event_filter(**kw: Any) -> EventFilter:
    return EventFilter.model_validate(kw)


def test_event_types_are_case_insensitive_and_all_means_all() -> None:
    assert filter_matches(event_filter(includedEventTypes=["microsoft.storage.blobcreated"]), BLOB_EVENT)
    assert not filter_matches(event_filter(includedEventTypes=["Microsoft.Storage.BlobDeleted"]), BLOB_EVENT)
    assert filter_matches(event_filter(includedEventTypes=["All"]), BLOB_EVENT)
    assert filter_matches(event_filter(), BLOB_EVENT)
    assert filter_matches(event_filter(), {"type": "ce.type", "id": "1"})


def test_subject_filters_are_case_insensitive_unless_asked() -> None:
    begins = "/blobServices/default/containers/landing/"
    assert filter_matches(event_filter(subjectBeginsWith=begins, subjectEndsWith=".csv"), BLOB_EVENT)
    assert not filter_matches(event_filter(subjectBeginsWith=begins, isSubjectCaseSensitive=True), BLOB_EVENT)
    assert not filter_matches(event_filter(subjectEndsWith=".json"), BLOB_EVENT)
    assert filter_matches(event_filter(subjectBeginsWith="", subjectEndsWith=""), BLOB_EVENT)


def test_advanced_filters_are_anded_and_values_ored() -> None:
    both = event_filter(advancedFilters=[
        {"operatorType": "StringIn", "key": "data.api", "values": ["PutBlob", "PutBlockList"]},
        {"operatorType": "NumberGreaterThan", "key": "data.contentLength", "value": 100},
    ])
    assert not filter_matches(both, BLOB_EVENT)


def test_real_subscription_file_parses_and_matches(tmp_path: Any) -> None:
    from devstack.eventgrid.config import load_subscriptions
    from devstack.testing.eventgrid import INFRA_SUBSCRIPTIONS

    landing = next(s for s in load_subscriptions(INFRA_SUBSCRIPTIONS) if s.name == "landing-blob-created")
    assert filter_matches(landing.filter, BLOB_EVENT)
    other = {**BLOB_EVENT, "subject": "/blobServices/default/containers/other/blobs/a.csv"}
    assert not filter_matches(landing.filter, other)
    copy = {**BLOB_EVENT, "data": {**BLOB_EVENT["data"], "api": "SetBlobMetadata"}}
    assert not filter_matches(landing.filter, copy)


def test_invalid_subscription_file_lists_every_problem() -> None:
    document = {"subscriptions": [
        {"name": "a-b-c", "topic": "nope", "destination": {"function": "f", "kind": "eventGridTrigger"},
         "filter": {"advancedFilters": [{"operatorType": "StringLike", "key": "data.x", "values": ["1"]}]}},
        {"name": "A-B-C", "topic": "storage", "destination": {"function": "f", "kind": "blobTrigger"},
         "filter": {"advancedFilters": [{"operatorType": "NumberIn", "key": "data.x", "values": ["1"]}]}},
    ]}
    with pytest.raises(SubscriptionFileError) as info:
        parse_subscriptions(document)
    message = str(info.value)
    assert "subscriptions.0.topic" in message
    assert "subscriptions.0.filter.advancedFilters.0" in message and "StringLike" in message
    assert "subscriptions.1.name" in message
    assert "subscriptions.1.filter.advancedFilters.0: NumberIn values must be numbers" in message
    with pytest.raises(SubscriptionFileError, match=r"subscriptions\.0\.destination\.kind"):
        parse_subscriptions({"subscriptions": [{"name": "abc", "topic": "storage",
                                                "destination": {"function": "f", "kind": "queue"}}]})
