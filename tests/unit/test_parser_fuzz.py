"""Every parser of an input, fed arbitrary bytes or JSON, returns a typed value or raises its one error.

`InvalidEventError` / `SignatureError` (inputs) or `ConfigurationError` (the policy): anything else, such as
a `RecursionError`, `KeyError` or `TypeError`, would be a retried execution, a 500 or a traceback.
"""

from __future__ import annotations

import contextlib
import json
from datetime import UTC, datetime
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared.config.policy import parse_policy
from shared.domain.ingest import blob_created_from_json, seal_request_from_json
from shared.domain.retrain import (
    RUN_COMPLETED,
    RUN_STATUS_CHANGED,
    parse_data_version_registered,
    parse_run_event,
    retrain_check_from_json,
)
from shared.domain.rollout import candidate_retry_from_json, tick_from_json
from shared.domain.webhooks import (
    MODEL_REGISTERED,
    parse_event_delivery,
    parse_model_registered,
    parse_webhook_request,
)
from shared.errors import ConfigurationError, InvalidEventError, SignatureError
from shared.services.status import parse_status_query
from tests.unit.test_webhooks import SECRET, databricks_headers, mlflow_headers

NOW = datetime(2026, 11, 27, 12, tzinfo=UTC)
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=10), inner, max_size=4), max_leaves=20)
KEYS = ["id", "eventType", "type", "specversion", "source", "subject", "eventTime", "time", "data", "ModelName",
        "ModelVersion", "modelName", "ModelTags", "ModelProperties", "runId", "runStatus", "runTags", "dataset",
        "asset_name", "version", "uri", "asset_type", "sha256", "file_count", "files", "folder", "generation",
        "endpoint", "rolloutId", "seq", "event", "event_timestamp", "model_name", "to_stage", "entity", "action",
        "name", "alias", "tags", "webhook_id"]
# Documents shaped like the real ones (known keys, known event types), so the fuzz reaches past the first check.
shaped = st.recursive(scalars | st.sampled_from([MODEL_REGISTERED, RUN_COMPLETED, "1.0", "model_version", "created"]),
                      lambda inner: st.lists(inner, max_size=3)
                      | st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=5), inner, max_size=8),
                      max_leaves=30)
documents = json_values | shaped
nested = st.integers(min_value=1, max_value=20_000).map(lambda n: "[" * n + "]" * n)
texts = st.text(max_size=200) | documents.map(json.dumps) | nested
bodies = st.binary(max_size=300) | texts.map(lambda t: t.encode("utf-8", "surrogatepass"))
INPUT_ERRORS = (InvalidEventError, SignatureError)


def settles(call: Any, *args: Any, errors: tuple[type[Exception], ...] = INPUT_ERRORS, **kwargs: Any) -> None:
    with contextlib.suppress(*errors):  # a typed value, or one of these; anything else fails the test
        call(*args, **kwargs)


# Text that `str.isdigit` accepts but `int` may not read: other digit forms ('²', '١٢') and thousands of digits.
digit_like = (st.text(st.characters(categories=("Nd", "No")), min_size=1, max_size=8)
              | st.integers(min_value=1, max_value=6).map(lambda n: "9" * (n * 1000)))
header_values = st.text(max_size=20) | digit_like


@FUZZ
@given(body=bodies, method=st.sampled_from(["POST", "OPTIONS", "GET"]),
       headers=st.dictionaries(st.sampled_from(["aeg-event-type", "content-type", "webhook-request-origin",
                                                "webhook-request-rate", "ce-specversion", "x-mlflow-timestamp"]),
                               header_values, max_size=3))
def test_parse_event_delivery_and_parse_webhook_request(body: bytes, method: str, headers: dict[str, str]) -> None:
    settles(parse_event_delivery, method, headers, body)
    settles(parse_webhook_request, method, headers, body, secret=SECRET, now=NOW)


@FUZZ
@given(body=bodies)
def test_signed_registry_webhooks_with_any_body(body: bytes) -> None:
    """A valid signature gets past the first door: the body itself must still be refused cleanly."""
    settles(parse_webhook_request, "POST", databricks_headers(body), body, secret=SECRET, now=NOW)
    settles(parse_webhook_request, "POST", mlflow_headers(body, at=NOW), body, secret=SECRET, now=NOW)


@FUZZ
@given(event=documents)
def test_parse_model_registered(event: Any) -> None:
    settles(parse_model_registered, event if isinstance(event, dict) else {"data": event})


@FUZZ
@given(data=documents, event_type=st.sampled_from([RUN_COMPLETED, RUN_STATUS_CHANGED, "x"]) | st.text(max_size=10))
def test_parse_data_version_registered_and_parse_run_event(data: Any, event_type: str) -> None:
    settles(parse_data_version_registered, data)
    settles(parse_run_event, event_type, data)


@FUZZ
@given(text=texts)
def test_queue_message_parsers(text: str) -> None:
    for parse in (seal_request_from_json, tick_from_json, blob_created_from_json, candidate_retry_from_json,
                  retrain_check_from_json):
        settles(parse, text)


@FUZZ
@given(document=documents)
def test_the_policy_parser(document: Any) -> None:
    settles(parse_policy, document, errors=(ConfigurationError,))
    if isinstance(document, dict):
        settles(parse_policy, {"datasets": [document], "models": [document]}, errors=(ConfigurationError,))


STATUS_POLICY = parse_policy({"datasets": [{"name": "d", "container": "landing", "prefix": "d/", "type": "uri_file",
                                            "datastore": "landing"}]})


@FUZZ
@given(params=st.dictionaries(st.sampled_from(["dataset", "model", "endpoint", "kind", "limit", "code"])
                              | st.text(max_size=8), header_values, max_size=5))
def test_the_status_page_query_parser(params: dict[str, str]) -> None:
    settles(parse_status_query, params, STATUS_POLICY)
