"""Defect 5 (issue 11): inputs that crashed or misfired. Each test failed on the code before the fix."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from shared.config.policy import parse_policy
from shared.domain.events import MAX_JSON_DEPTH, json_depth, load_json
from shared.domain.vocabulary import version_order
from shared.domain.webhooks import (
    Ignored,
    Received,
    parse_event_delivery,
    parse_webhook_request,
    to_http,
)
from shared.errors import InvalidEventError
from shared.services.status import parse_status_query
from tests.unit.test_webhooks import SECRET, databricks_headers

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)


def nested(depth: int, open_: str = "[", close: str = "]") -> bytes:
    return (open_ * depth + close * depth).encode()


def webhook(body: bytes, headers: dict[str, str] | None = None):
    return parse_webhook_request("POST", {"Content-Type": "application/json", **(headers or {})}, body,
                                 secret=SECRET, now=NOW)


@pytest.mark.parametrize("body", [nested(100_000), nested(MAX_JSON_DEPTH + 1),
                                  b'{"a":' * 50_000 + b"1" + b"}" * 50_000])
def test_defect5_deeply_nested_json_to_the_registry_webhook_is_400_naming_the_depth(body: bytes) -> None:
    with pytest.raises(InvalidEventError) as raised:
        webhook(body)
    assert "nests deeper than" in str(raised.value)
    assert to_http(raised.value).status == 400


def test_defect5_deeply_nested_signed_databricks_body_is_400() -> None:
    body = b'{"event": ' + nested(5_000) + b"}"
    with pytest.raises(InvalidEventError, match="nests deeper than"):
        webhook(body, databricks_headers(body))


def test_nesting_up_to_the_bound_is_parsed() -> None:
    assert json_depth(load_json(nested(MAX_JSON_DEPTH), "x")) == MAX_JSON_DEPTH
    assert json_depth(3) == 0 and json_depth({"a": [1, {"b": []}]}) == 4


def databricks(event: str, to_stage: str | None, version: object = "8") -> bytes:
    doc: dict[str, object] = {"event": event, "webhook_id": "wh-1", "event_timestamp": int(NOW.timestamp() * 1000),
                              "model_name": "churn-classifier", "version": version, "from_stage": "Production"}
    if to_stage is not None:
        doc["to_stage"] = to_stage
    return json.dumps(doc).encode()


@pytest.mark.parametrize("to_stage", ["Archived", "None", "archived", None])
def test_defect5_databricks_transition_to_archived_or_none_is_ignored_with_a_reason(to_stage: str | None) -> None:
    body = databricks("MODEL_VERSION_TRANSITIONED_STAGE", to_stage)
    result = webhook(body, databricks_headers(body))
    assert isinstance(result, Ignored), result
    assert f"to stage {to_stage!r} is not handled" in result.reason
    assert "Staging or Production" in result.reason
    assert result.event_id  # a stable id, so the ignore is attributable
    assert to_http(result).status == 202


@pytest.mark.parametrize("to_stage", ["Staging", "Production"])
def test_a_databricks_transition_to_staging_or_production_is_a_candidate(to_stage: str) -> None:
    body = databricks("MODEL_VERSION_TRANSITIONED_STAGE", to_stage)
    result = webhook(body, databricks_headers(body))
    assert isinstance(result, Received), result
    assert result.events[0].stage == to_stage


def test_defect5_superscript_version_sorts_as_a_label_and_does_not_crash() -> None:
    assert version_order("²") == (1, 0, "²")
    assert sorted(["10", "²", "9", "latest"], key=version_order) == ["9", "10", "latest", "²"]


# `str.isdigit` is True for '²' (and '١٢'), which `int` cannot read (or reads as Arabic-Indic digits), and `int`
# refuses 4,300+ digits: each of these answered 500 from a parser that checked `isdigit()` only.
DIGIT_LIKE = ["²", "١٢", "9" * 5000]


@pytest.mark.parametrize("rate", DIGIT_LIKE)
def test_defect5_a_handshake_rate_that_is_not_a_plain_number_is_400_not_a_crash(rate: str) -> None:
    headers = {"WebHook-Request-Origin": "eventgrid.azure.net", "WebHook-Request-Rate": rate}
    for parse in (lambda: parse_event_delivery("OPTIONS", headers, b""),
                  lambda: parse_webhook_request("OPTIONS", headers, b"", secret=SECRET, now=NOW)):
        with pytest.raises(InvalidEventError, match="positive integer") as refused:
            parse()
        assert to_http(refused.value).status == 400


@pytest.mark.parametrize("limit", DIGIT_LIKE)
def test_defect5_a_status_page_limit_that_is_not_a_plain_number_is_refused_not_a_crash(limit: str) -> None:
    policy = parse_policy({"datasets": [{"name": "d", "container": "landing", "prefix": "d/", "type": "uri_file",
                                         "datastore": "landing"}]})
    with pytest.raises(InvalidEventError, match="limit="):
        parse_status_query({"limit": limit}, policy)
