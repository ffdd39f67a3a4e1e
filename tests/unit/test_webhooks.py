"""Event Grid / CloudEvents / registry-webhook parsing and verification (pure: no HTTP, no Azure)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from shared.domain.webhooks import (
    AbuseProtectionHandshake,
    Ignored,
    ModelVersionEvent,
    PayloadTooLargeError,
    Received,
    SignatureError,
    ValidationHandshake,
    databricks_signature,
    mlflow_signature,
    parse_event_delivery,
    parse_model_registered,
    parse_registry_webhook,
    to_http,
)
from shared.errors import InvalidEventError

PAYLOADS = Path(__file__).resolve().parents[1] / "fixtures" / "payloads"
NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
SECRET = "s3cr3t-for-tests"
NOTIFICATION = {"aeg-event-type": "Notification", "Content-Type": "application/json"}


def payload(name: str) -> bytes:
    return (PAYLOADS / name).read_bytes()


def deliver(body: bytes | object, headers: dict[str, str] | None = None, method: str = "POST"):
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return parse_event_delivery(method, headers or NOTIFICATION, raw)


def only_event(result) -> ModelVersionEvent:
    assert isinstance(result, Received), result
    assert len(result.events) == 1
    return result.events[0]


# -- independent signers (not the module's helpers), so the tests check the wire format ---------------
def mlflow_headers(body: bytes, *, secret: str = SECRET, at: datetime = NOW, delivery: str = "d-1") -> dict[str, str]:
    ts = str(int(at.timestamp()))
    mac = hmac.new(secret.encode(), f"{delivery}.{ts}.".encode() + body, hashlib.sha256).digest()
    return {"X-MLflow-Delivery-Id": delivery, "X-MLflow-Timestamp": ts,
            "X-MLflow-Signature": "v1," + base64.b64encode(mac).decode(), "Content-Type": "application/json"}


def databricks_headers(body: bytes, *, secret: str = SECRET) -> dict[str, str]:
    return {"X-Databricks-Signature": hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()}


def registry(body: bytes, headers: dict[str, str], *, secret: str | None = SECRET, now: datetime = NOW,
             tolerance: float = 300.0):
    return parse_registry_webhook("POST", headers, body, secret=secret, now=now, tolerance_seconds=tolerance)


# -- Event Grid schema ------------------------------------------------------------------------------
def test_subscription_validation_handshake_answers_with_the_code():
    headers = {"aeg-event-type": "SubscriptionValidation"}
    result = deliver(payload("eventgrid_subscription_validation.json"), headers)
    assert result == ValidationHandshake(
        "512d38b6-c7b8-40c8-89fe-f46f9e9622b6",
        "https://rp-eastus2.eventgrid.azure.net:553/eventsubscriptions/evergreen/validate?id=512d38b6-c7b8-40c8-"
        "89fe-f46f9e9622b6&t=2026-11-27T12:00:00.0000000Z&apiVersion=2022-06-15&token=abc",
    )
    reply = to_http(result)
    assert reply.status == 200  # not 202: Event Grid requires 200 for the handshake
    assert json.loads(reply.body) == {"validationResponse": "512d38b6-c7b8-40c8-89fe-f46f9e9622b6"}
    assert reply.headers["Content-Type"] == "application/json"


@pytest.mark.parametrize(
    ("data", "fragment"),
    [(None, "'data' must be an object"), ({}, "validationCode is missing"), ({"validationCode": 7}, "not a string")],
)
def test_malformed_validation_event_is_rejected(data, fragment):
    event = json.loads(payload("eventgrid_subscription_validation.json"))[0]
    event["data"] = data
    with pytest.raises(InvalidEventError, match=fragment):
        deliver([event], {"aeg-event-type": "SubscriptionValidation"})


def test_validation_header_without_validation_event_is_rejected():
    with pytest.raises(InvalidEventError, match=r"holds no Microsoft\.EventGrid\.SubscriptionValidationEvent"):
        deliver(payload("eventgrid_model_registered.json"), {"aeg-event-type": "SubscriptionValidation"})


def test_validation_event_must_come_alone():
    validation = json.loads(payload("eventgrid_subscription_validation.json"))[0]
    registered = json.loads(payload("eventgrid_model_registered.json"))[0]
    with pytest.raises(InvalidEventError, match="delivered alone"):
        deliver([registered, validation])


def test_model_registered_pascal_case_with_integer_version():
    event = only_event(deliver(payload("eventgrid_model_registered.json")))
    assert (event.model_name, event.version, event.source) == ("churn-classifier", "3", "eventgrid")
    assert event.event_id == "831e1650-001e-001b-66ab-eeb76e069631"
    assert event.event_type == "Microsoft.MachineLearningServices.ModelRegistered"
    assert event.tags == {"evergreen.metric.auc": "0.91", "evergreen.endpoint": "churn-online", "team": "growth-ml"}
    assert event.properties["evergreen.metric.auc"] == "0.912"
    assert event.occurred_at == datetime(2026, 11, 27, 11, 59, 58, 123456, tzinfo=UTC)  # 7 digits truncated
    assert event.origin.endswith("/workspaces/mlw-evergreen")
    assert event.model == "churn-classifier:3"


def test_model_registered_camel_case_with_string_version_and_non_string_tags():
    event = only_event(deliver(payload("eventgrid_model_registered_camel.json")))
    assert (event.model_name, event.version) == ("churn-classifier", "4")
    assert event.tags == {"evergreen.metric.auc": "0.93", "approved": "true", "epochs": "12"}
    assert event.properties == {}
    assert event.occurred_at == datetime(2026, 11, 27, 12, 0, tzinfo=UTC)


def test_subject_is_the_fallback_for_name_and_version():
    event = json.loads(payload("eventgrid_model_registered.json"))[0]
    event["data"] = {"ModelTags": {"a": "b"}}
    parsed = only_event(deliver([event]))
    assert (parsed.model_name, parsed.version, parsed.tags) == ("churn-classifier", "3", {"a": "b"})


@pytest.mark.parametrize(
    ("mutate", "fragment"),
    [
        (lambda e: e.pop("id"), "events\\[0\\]: 'id' is missing"),
        (lambda e: e.update(eventType=5), "'eventType' must be a non-empty string"),
        (lambda e: e.update(data=[1, 2]), "events\\[0\\].data must be an object, not an array"),
        (lambda e: e.update(data={}, subject="models/no-version"), "names no model: data.ModelName is missing"),
        (lambda e: e["data"].update(ModelVersion=3.5), "ModelVersion must be a string or an integer, got 3.5"),
        (lambda e: e["data"].update(ModelVersion=True), "must be a string or an integer, got True"),
        (lambda e: e["data"].update(ModelName=""), "ModelName must be a non-empty string"),
        (lambda e: e["data"].update(ModelName="bad\x00name"), "control characters"),
        (lambda e: e["data"].update(ModelTags=["a"]), "ModelTags must be an object of strings, not an array"),
        (lambda e: e["data"].update(modelName="other"), "'modelName' twice in different casing"),
        (lambda e: e.update(eventTime="yesterday"), "eventTime is not an ISO 8601 time"),
    ],
)
def test_malformed_model_registered_events_say_what_is_wrong(mutate, fragment):
    event = json.loads(payload("eventgrid_model_registered.json"))[0]
    mutate(event)
    with pytest.raises(InvalidEventError, match=fragment):
        deliver([event])


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (b"not json", "the delivery is not valid JSON"),
        (b"\xff\xfe", "the delivery is not valid JSON"),
        (b"42", "must be a JSON array of events, not a number"),
        (b"[]", "empty array"),
        (b'{"id": "1"}', "not a CloudEvent"),
        (b'["x"]', "events\\[0\\] must be a JSON object, not a string"),
        (b"[" * 100_000 + b"]" * 100_000, "not valid JSON"),
    ],
)
def test_malformed_deliveries(body, fragment):
    with pytest.raises(InvalidEventError, match=fragment):
        deliver(body)


def test_oversized_delivery_is_413():
    with pytest.raises(PayloadTooLargeError) as info:
        deliver(b" " * (1024 * 1024 + 1))
    assert to_http(info.value).status == 413


def test_other_event_types_are_ignored_with_a_reason():
    result = deliver(payload("eventgrid_model_deployed.json"))
    assert isinstance(result, Ignored)
    assert "ModelDeployed is not handled" in result.reason
    assert result.event_id == "40ab8a2e-43f1-4e4e-a8d0-3c4b0f8f1a01"
    reply = to_http(result)
    assert reply.status == 202 and "ModelDeployed" in json.loads(reply.body)["ignored"]


def test_unsupported_methods_are_refused():
    with pytest.raises(InvalidEventError, match="method GET is not supported"):
        deliver(b"[]", method="GET")


# -- CloudEvents 1.0 --------------------------------------------------------------------------------
def test_abuse_protection_handshake_echoes_origin_and_rate():
    headers = {"WebHook-Request-Origin": "eventgrid.azure.net", "WebHook-Request-Rate": "120",
               "WebHook-Request-Callback": "https://eventgrid.azure.net/callback?x=1"}
    result = parse_event_delivery("OPTIONS", headers, b"")
    assert result == AbuseProtectionHandshake("eventgrid.azure.net", "120")
    reply = to_http(result)
    assert reply.status == 200 and reply.body == b""
    assert reply.headers == {"WebHook-Allowed-Origin": "eventgrid.azure.net", "Allow": "POST",
                             "WebHook-Allowed-Rate": "120"}


def test_abuse_protection_without_a_rate_omits_the_rate_header_and_headers_are_case_insensitive():
    result = parse_event_delivery("options", {"webhook-request-origin": "eventgrid.azure.net"}, b"")
    assert result == AbuseProtectionHandshake("eventgrid.azure.net")
    assert "WebHook-Allowed-Rate" not in to_http(result).headers


def test_abuse_protection_rate_is_capped_when_asked():
    headers = {"WebHook-Request-Origin": "eventgrid.azure.net", "WebHook-Request-Rate": "500"}
    assert parse_event_delivery("OPTIONS", headers, b"", max_rate=60).allowed_rate == "60"  # type: ignore[union-attr]
    headers["WebHook-Request-Rate"] = "*"
    assert parse_event_delivery("OPTIONS", headers, b"").allowed_rate == "*"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("headers", "fragment"),
    [({}, "without WebHook-Request-Origin"),
     ({"WebHook-Request-Origin": "eventgrid.azure.net", "WebHook-Request-Rate": "fast"}, "positive integer")],
)
def test_bad_abuse_protection_requests(headers, fragment):
    with pytest.raises(InvalidEventError, match=fragment):
        parse_event_delivery("OPTIONS", headers, b"")


def test_structured_cloud_event():
    headers = {"Content-Type": "application/cloudevents+json; charset=utf-8"}
    event = only_event(deliver(payload("cloudevents_model_registered.json"), headers))
    assert (event.model_name, event.version, event.source) == ("churn-classifier", "5", "cloudevents")
    assert event.origin.endswith("/workspaces/mlw-evergreen")
    assert event.occurred_at == datetime(2026, 11, 27, 12, 0, 1, 500000, tzinfo=UTC)


def test_cloud_events_batch_keeps_events_and_ignored_reasons():
    headers = {"Content-Type": "application/cloudevents-batch+json; charset=utf-8"}
    result = deliver(payload("cloudevents_batch.json"), headers)
    assert isinstance(result, Received)
    assert [(e.model_name, e.version) for e in result.events] == [("fraud-scorer", "12")]  # from the subject
    assert len(result.ignored) == 1 and "RunCompleted is not handled" in result.ignored[0].reason
    body = json.loads(to_http(result).body)
    assert body["accepted"] == [{"event_id": "5e1a3f0c-1111-4c55-9b1a-000000000001", "model": "fraud-scorer",
                                 "version": "12"}]


@pytest.mark.parametrize(
    ("mutate", "fragment"),
    [
        (lambda e: e.update(specversion="0.3"), "specversion must be '1.0'"),
        (lambda e: e.pop("source"), "'source' is missing"),
        (lambda e: e.update(time=5), "time must be an ISO 8601 string"),
    ],
)
def test_malformed_cloud_events(mutate, fragment):
    event = json.loads(payload("cloudevents_model_registered.json"))
    mutate(event)
    with pytest.raises(InvalidEventError, match=fragment):
        deliver(event, {"Content-Type": "application/cloudevents+json"})


def test_binary_mode_and_mismatched_batch_content_type_are_refused_clearly():
    with pytest.raises(InvalidEventError, match="binary-mode CloudEvents"):
        deliver(b"{}", {"ce-specversion": "1.0", "ce-id": "1"})
    with pytest.raises(InvalidEventError, match="needs a JSON array"):
        deliver(payload("cloudevents_model_registered.json"), {"Content-Type": "application/cloudevents-batch+json"})


# -- the Event Grid trigger's entry point ----------------------------------------------------------------
def test_parse_model_registered_from_the_trigger():
    raw = json.loads(payload("eventgrid_model_registered_camel.json"))[0]
    raw["eventTime"] = datetime(2026, 11, 27, 12, 0)  # func.EventGridEvent gives a datetime (naive = UTC)
    event = parse_model_registered(raw)
    assert (event.model_name, event.version, event.source) == ("churn-classifier", "4", "eventgrid")
    assert event.occurred_at == NOW


def test_parse_model_registered_refuses_other_types_and_says_how_to_filter():
    raw = json.loads(payload("eventgrid_model_deployed.json"))[0]
    with pytest.raises(InvalidEventError, match=r"limit the subscription to Microsoft\.MachineLearningServices"):
        parse_model_registered(raw)


def test_model_version_event_is_frozen_hashable_and_keyed():
    event = only_event(deliver(payload("eventgrid_model_registered.json")))
    with pytest.raises(AttributeError):
        event.version = "4"  # type: ignore[misc]
    assert hash(event) == hash(only_event(deliver(payload("eventgrid_model_registered.json"))))
    assert event.key == only_event(deliver(payload("eventgrid_model_registered.json"))).key


# -- MLflow -------------------------------------------------------------------------------------------
def test_mlflow_model_version_created():
    body = payload("mlflow_model_version_created.json")
    event = only_event(registry(body, mlflow_headers(body)))
    assert (event.model_name, event.version, event.source) == ("churn-classifier", "7", "mlflow")
    assert (event.event_type, event.event_id) == ("model_version.created", "d-1")
    assert event.tags["evergreen.metric.auc"] == "0.925"
    assert event.occurred_at == datetime(2026, 11, 27, 11, 59, 59, 500000, tzinfo=UTC)


def test_mlflow_alias_created_carries_the_alias():
    body = payload("mlflow_model_version_alias_created.json")
    event = only_event(registry(body, mlflow_headers(body)))
    assert (event.model_name, event.version, event.alias) == ("churn-classifier", "7", "challenger")


def test_mlflow_other_events_are_ignored():
    body = payload("mlflow_registered_model_created.json")
    result = registry(body, mlflow_headers(body))
    assert isinstance(result, Ignored) and "registered_model.created is not handled" in result.reason


def test_mlflow_signature_helper_matches_the_wire_format():
    body = payload("mlflow_model_version_created.json")
    assert mlflow_signature(SECRET, "d-1", str(int(NOW.timestamp())), body) == mlflow_headers(body)[
        "X-MLflow-Signature"]


def test_mlflow_accepts_any_of_several_signatures_for_secret_rotation():
    body = payload("mlflow_model_version_created.json")
    headers = mlflow_headers(body)
    old = mlflow_headers(body, secret="old-secret")["X-MLflow-Signature"]
    headers["X-MLflow-Signature"] = f"{old} {headers['X-MLflow-Signature']}"
    assert isinstance(registry(body, headers), Received)


@pytest.mark.parametrize(
    ("tamper", "fragment"),
    [
        (lambda h, b: ({**h, "X-MLflow-Signature": "v1,AAAA"}, b), "does not match"),
        (lambda h, b: (mlflow_headers(b, secret="wrong"), b), "does not match"),
        (lambda h, b: (h, b.replace(b'"7"', b'"8"')), "does not match"),
        (lambda h, b: ({**h, "X-MLflow-Delivery-Id": "d-2"}, b), "does not match"),
        (lambda h, b: ({k: v for k, v in h.items() if k != "X-MLflow-Signature"}, b), "lacks X-MLflow-Signature"),
        (lambda h, b: ({k: v for k, v in h.items() if k != "X-MLflow-Timestamp"}, b), "lacks X-MLflow-Timestamp"),
    ],
)
def test_mlflow_bad_or_missing_signatures_are_401(tamper, fragment):
    body = payload("mlflow_model_version_created.json")
    headers, body = tamper(mlflow_headers(body), body)
    with pytest.raises(SignatureError, match=fragment) as info:
        registry(body, headers)
    assert to_http(info.value).status == 401


@pytest.mark.parametrize("age", [timedelta(seconds=301), timedelta(hours=-1)])
def test_mlflow_replays_outside_the_tolerance_are_refused(age):
    body = payload("mlflow_model_version_created.json")
    with pytest.raises(SignatureError, match="possible replays"):
        registry(body, mlflow_headers(body, at=NOW - age))
    assert isinstance(registry(body, mlflow_headers(body, at=NOW - timedelta(seconds=299))), Received)


def test_mlflow_malformed_bodies_after_a_valid_signature_are_400():
    for body, fragment in [
        (b"{oops", "not valid JSON"),
        (b"[]", "must be a JSON object, not an array"),
        (b'{"entity": "model_version"}', "'action' is missing"),
        (b'{"entity": "model_version", "action": "created", "data": "x"}', "'data' must be an object"),
        (b'{"entity": "model_version", "action": "created", "data": {"name": "m"}}', "'version' is missing"),
    ]:
        with pytest.raises(InvalidEventError, match=fragment):
            registry(body, mlflow_headers(body))


def test_mlflow_non_numeric_timestamp_with_valid_signature_is_400():
    body = payload("mlflow_model_version_created.json")
    mac = hmac.new(SECRET.encode(), b"d-1.soon." + body, hashlib.sha256).digest()
    headers = {"X-MLflow-Delivery-Id": "d-1", "X-MLflow-Timestamp": "soon",
               "X-MLflow-Signature": "v1," + base64.b64encode(mac).decode()}
    with pytest.raises(InvalidEventError, match="must be Unix seconds"):
        registry(body, headers)


# -- Databricks -----------------------------------------------------------------------------------------
def test_databricks_model_version_created():
    body = payload("databricks_model_version_created.json")
    event = only_event(registry(body, databricks_headers(body)))
    assert (event.model_name, event.version, event.source) == ("churn-classifier", "8", "databricks")
    assert event.occurred_at == NOW and event.origin == "c5596721253c4b429368cf6f4341b88a"
    again = only_event(registry(body, databricks_headers(body)))
    assert event.event_id == again.event_id  # derived, stable across redeliveries


def test_databricks_transition_carries_the_stage_and_an_integer_version():
    body = payload("databricks_transitioned_to_production.json")
    event = only_event(registry(body, databricks_headers(body)))
    assert (event.version, event.stage, event.event_type) == ("8", "Production",
                                                              "MODEL_VERSION_TRANSITIONED_TO_PRODUCTION")


def test_databricks_registered_model_created_is_ignored():
    body = payload("databricks_registered_model_created.json")
    result = registry(body, databricks_headers(body))
    assert isinstance(result, Ignored) and "REGISTERED_MODEL_CREATED is not handled" in result.reason


def test_databricks_signature_helper_and_uppercase_hex():
    body = payload("databricks_model_version_created.json")
    assert databricks_signature(SECRET, body) == databricks_headers(body)["X-Databricks-Signature"]
    upper = {"x-databricks-signature": databricks_headers(body)["X-Databricks-Signature"].upper()}
    assert isinstance(registry(body, upper), Received)


@pytest.mark.parametrize(
    "headers",
    [{"X-Databricks-Signature": "00" * 32}, {"X-Databricks-Signature": ""}, {"X-Databricks-Signature": "é"}],
)
def test_databricks_bad_signatures_are_401(headers):
    with pytest.raises(SignatureError, match="does not match"):
        registry(payload("databricks_model_version_created.json"), headers)


def test_databricks_replay_uses_event_timestamp_in_milliseconds():
    body = payload("databricks_model_version_created.json")
    with pytest.raises(SignatureError, match=r"event_timestamp .* is 600 s from now"):
        registry(body, databricks_headers(body), now=NOW + timedelta(minutes=10))
    assert isinstance(registry(body, databricks_headers(body), now=NOW + timedelta(minutes=10), tolerance=900),
                      Received)


@pytest.mark.parametrize(
    ("doc", "fragment"),
    [
        ({"webhook_id": "w", "event_timestamp": 1795780800000}, "'event' is missing"),
        ({"event": "MODEL_VERSION_CREATED", "model_name": "m", "version": "1"}, "'event_timestamp' is missing"),
        ({"event": "MODEL_VERSION_CREATED", "event_timestamp": "now"}, "must be Unix milliseconds"),
        ({"event": "MODEL_VERSION_CREATED", "event_timestamp": 1795780800000, "model_name": "m"},
         "model_name and version are required"),
        ({"event": "MODEL_VERSION_CREATED", "event_timestamp": 1795780800000, "model_name": 3, "version": "1"},
         "'model_name' must be a string"),
    ],
)
def test_databricks_malformed_bodies_are_400(doc, fragment):
    body = json.dumps(doc).encode()
    with pytest.raises(InvalidEventError, match=fragment) as info:
        registry(body, databricks_headers(body))
    reply = to_http(info.value)
    assert reply.status == 400 and json.loads(reply.body)["error"] == str(info.value)


# -- refusals common to registry webhooks ---------------------------------------------------------------------
@pytest.mark.parametrize("secret", [None, ""])
def test_without_a_configured_secret_registry_webhooks_are_refused(secret):
    body = payload("databricks_model_version_created.json")
    with pytest.raises(SignatureError, match="no webhook secret is configured; set EVERGREEN_WEBHOOK_SECRET") as info:
        registry(body, databricks_headers(body), secret=secret)
    assert to_http(info.value).status == 401


def test_unsigned_registry_requests_never_fall_back_to_event_grid_parsing():
    with pytest.raises(SignatureError, match="the request is not signed"):
        registry(payload("eventgrid_model_registered.json"), {"aeg-event-type": "Notification"})


def test_registry_webhook_refuses_other_methods_and_huge_bodies():
    with pytest.raises(InvalidEventError, match="registry webhooks use POST"):
        parse_registry_webhook("GET", {}, b"", secret=SECRET, now=NOW)
    with pytest.raises(PayloadTooLargeError):
        registry(b"x" * (1024 * 1024 + 1), {"X-Databricks-Signature": "00"})


@pytest.mark.parametrize("fixture", ["mlflow_model_version_created.json", "databricks_model_version_created.json"])
def test_signatures_are_compared_in_constant_time(monkeypatch, fixture):
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a, b):
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    body = payload(fixture)
    headers = mlflow_headers(body) if fixture.startswith("mlflow") else databricks_headers(body)
    assert isinstance(registry(body, headers), Received)
    assert len(calls) == 1
