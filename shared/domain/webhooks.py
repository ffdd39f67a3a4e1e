"""Incoming model-version events, parsed and verified without I/O (gidgethub style).

Two HTTP doors, kept apart on purpose:

* `parse_event_delivery` — Event Grid deliveries (Event Grid schema or CloudEvents 1.0), including
  both handshakes. Event Grid cannot sign its requests; that door is protected by the Function's
  own auth (function key or Entra ID), not here.
* `parse_registry_webhook` — MLflow and Databricks registry webhooks, which *must* carry a valid
  HMAC signature. A request on this door without one is refused (401): it never falls back to being
  read as an unsigned Event Grid delivery, so nobody can downgrade a forged request.

Both return a value (`Received`, `Ignored`, `ValidationHandshake`, `AbuseProtectionHandshake`) or
raise `SignatureError` / `InvalidEventError`; `to_http` maps any of these to a status, headers and
body, so the HTTP trigger stays a handful of lines. Nothing here executes anything.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import math
import re
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from shared.domain.events import ModelVersionEvent, Source, load_json
from shared.domain.keys import event_id as stable_event_id
from shared.errors import InvalidEventError, PayloadTooLargeError, SignatureError

MODEL_REGISTERED = "Microsoft.MachineLearningServices.ModelRegistered"
SUBSCRIPTION_VALIDATION = "Microsoft.EventGrid.SubscriptionValidationEvent"

DEFAULT_TOLERANCE_SECONDS = 300.0
MAX_BODY_BYTES = 1024 * 1024  # Event Grid's limit for one delivery; registry webhooks are far smaller

# The registry events Evergreen acts on; every other (well-formed) event is Ignored with a reason.
MLFLOW_EVENTS = frozenset({"model_version.created", "model_version_alias.created"})
DATABRICKS_EVENTS = frozenset({
    "MODEL_VERSION_CREATED",
    "MODEL_VERSION_TRANSITIONED_STAGE",
    "MODEL_VERSION_TRANSITIONED_TO_STAGING",
    "MODEL_VERSION_TRANSITIONED_TO_PRODUCTION",
})
DATABRICKS_TRANSITIONED_STAGE = "MODEL_VERSION_TRANSITIONED_STAGE"
# A stage transition is a candidate only when it goes to one of these (Databricks' stages are
# None, Staging, Production and Archived): archiving a version must never send it through the gate.
CANDIDATE_STAGES = frozenset({"staging", "production"})

MLFLOW_SIGNATURE = "x-mlflow-signature"
MLFLOW_TIMESTAMP = "x-mlflow-timestamp"
MLFLOW_DELIVERY_ID = "x-mlflow-delivery-id"
DATABRICKS_SIGNATURE = "x-databricks-signature"

_MAX_NAME = 255
_SUBJECT_RE = re.compile(r"^/?models/(?P<name>[^:/]+):(?P<version>[^:/]+)$")


# -- results (values) -----------------------------------------------------------------------------
@dataclass(frozen=True)
class ValidationHandshake:
    """Event Grid's SubscriptionValidationEvent: answer 200 `{"validationResponse": code}`."""

    code: str
    validation_url: str | None = None


@dataclass(frozen=True)
class AbuseProtectionHandshake:
    """CloudEvents webhook validation (OPTIONS): consent with the origin, `Allow: POST` and the rate."""

    origin: str
    allowed_rate: str | None = None  # only when the sender asked (WebHook-Request-Rate)


@dataclass(frozen=True)
class Ignored:
    """Well-formed but not for Evergreen (e.g. another event type): acknowledged (202), not retried."""

    reason: str
    event_id: str = ""


@dataclass(frozen=True)
class Received:
    """The model-version events of one delivery (at least one), plus what was ignored beside them."""

    events: tuple[ModelVersionEvent, ...]
    ignored: tuple[Ignored, ...] = ()


WebhookResult = ValidationHandshake | AbuseProtectionHandshake | Received | Ignored


@dataclass(frozen=True)
class HttpReply:
    status: int
    headers: Mapping[str, str]
    body: bytes


# -- entry points -----------------------------------------------------------------------------------
def parse_event_delivery(
    method: str, headers: Mapping[str, str], body: bytes, *, max_rate: int | None = None
) -> WebhookResult:
    """Parse one Event Grid webhook request (Event Grid schema or CloudEvents 1.0, single or batch).

    `max_rate` caps the requests per minute granted in the CloudEvents handshake (None: grant what is asked).
    """
    h = _lower(headers)
    verb = method.upper()
    if verb == "OPTIONS":
        return _abuse_protection(h, max_rate)
    if verb != "POST":
        raise InvalidEventError(f"method {method} is not supported here; Event Grid delivers with POST "
                                "(and OPTIONS for the CloudEvents handshake)")
    if "ce-specversion" in h:
        raise InvalidEventError("binary-mode CloudEvents (ce-* headers) are not supported; "
                                "deliver in structured mode (application/cloudevents+json)")
    items, batched = _delivery_items(h, body)
    handshake = _validation_in(items, h)
    if handshake is not None:
        return handshake
    return _model_version_events(items, batched)


def _delivery_items(h: Mapping[str, str], body: bytes) -> tuple[list[Any], bool]:
    """The events of a delivery body, and whether it was a JSON array (a batch) or one CloudEvent."""
    document = _load_json(body, "the delivery")
    if isinstance(document, dict):
        if "specversion" not in document:
            raise InvalidEventError("the delivery is a JSON object but not a CloudEvent (no 'specversion'); "
                                    "Event Grid schema deliveries are JSON arrays")
        if h.get("content-type", "").lower().startswith("application/cloudevents-batch+json"):
            raise InvalidEventError("content type application/cloudevents-batch+json needs a JSON array")
        return [document], False
    if not isinstance(document, list):
        raise InvalidEventError(f"the delivery must be a JSON array of events, not {_json_type(document)}")
    if not document:
        raise InvalidEventError("the delivery is an empty array: there is no event to handle")
    return document, True


def _validation_in(items: list[Any], h: Mapping[str, str]) -> ValidationHandshake | None:
    """Event Grid's subscription validation, if this delivery is one (it must come alone)."""
    for i, item in enumerate(items):
        if isinstance(item, dict) and item.get("eventType") == SUBSCRIPTION_VALIDATION:
            if len(items) != 1:
                raise InvalidEventError(f"events[{i}]: a SubscriptionValidationEvent must be delivered alone")
            return _validation_handshake(item)
    if h.get("aeg-event-type", "").lower() == "subscriptionvalidation":
        raise InvalidEventError("header aeg-event-type is SubscriptionValidation but the body holds no "
                                f"{SUBSCRIPTION_VALIDATION}")
    return None


def _model_version_events(items: list[Any], batched: bool) -> Received | Ignored:
    """Every item parsed; one malformed item refuses the whole delivery, other event types are Ignored."""
    events: list[ModelVersionEvent] = []
    ignored: list[Ignored] = []
    for i, item in enumerate(items):
        where = f"events[{i}]" if batched else "the CloudEvent"
        if not isinstance(item, dict):
            raise InvalidEventError(f"{where} must be a JSON object, not {_json_type(item)}")
        outcome = _cloud_event(item, where) if "specversion" in item else _event_grid_event(item, where)
        if isinstance(outcome, Ignored):
            ignored.append(outcome)
        else:
            events.append(outcome)
    if not events:
        return ignored[0] if len(ignored) == 1 else Ignored("; ".join(x.reason for x in ignored))
    return Received(tuple(events), tuple(ignored))


def parse_registry_webhook(
    method: str,
    headers: Mapping[str, str],
    body: bytes,
    *,
    secret: str | None,
    now: datetime,
    tolerance_seconds: float = DEFAULT_TOLERANCE_SECONDS,
) -> Received | Ignored:
    """Verify and parse an MLflow or Databricks registry webhook; the sender is told by its signature header.

    `secret` is the shared webhook secret (EVERGREEN_WEBHOOK_SECRET); without one every request is refused,
    because an unsigned registry webhook would let anyone who can reach the URL start a rollout.
    """
    h = _lower(headers)
    if method.upper() != "POST":
        raise InvalidEventError(f"method {method} is not supported here; registry webhooks use POST")
    if len(body) > MAX_BODY_BYTES:
        raise PayloadTooLargeError(f"the body is {len(body)} bytes; at most {MAX_BODY_BYTES} are accepted")
    if not secret:
        raise SignatureError("registry webhooks are refused: no webhook secret is configured; "
                             "set EVERGREEN_WEBHOOK_SECRET to the secret the registry signs with")
    if any(k in h for k in (MLFLOW_SIGNATURE, MLFLOW_TIMESTAMP, MLFLOW_DELIVERY_ID)):
        return _mlflow(h, body, secret, now, tolerance_seconds)
    if DATABRICKS_SIGNATURE in h:
        return _databricks(h, body, secret, now, tolerance_seconds)
    raise SignatureError("the request is not signed: expected X-MLflow-Signature (with X-MLflow-Delivery-Id and "
                         "X-MLflow-Timestamp) or X-Databricks-Signature; create the webhook with a secret")


def parse_webhook_request(
    method: str,
    headers: Mapping[str, str],
    body: bytes,
    *,
    secret: str | None,
    now: datetime,
    tolerance_seconds: float = DEFAULT_TOLERANCE_SECONDS,
    max_rate: int | None = None,
) -> WebhookResult:
    """One URL for all three kinds (`POST /api/registry-webhook`), told apart without trusting the body.

    A request carrying a registry signature header, or a JSON object that is not a CloudEvent (the
    shape of MLflow and Databricks webhooks), is a registry webhook and must verify: it can never be
    downgraded to an unsigned Event Grid delivery. Everything else is an Event Grid delivery (Event Grid
    schema array or CloudEvents), authenticated by the function key.
    """
    h = _lower(headers)
    signed = any(k in h for k in (MLFLOW_SIGNATURE, MLFLOW_TIMESTAMP, MLFLOW_DELIVERY_ID, DATABRICKS_SIGNATURE))
    if method.upper() == "POST" and not signed and len(body) <= MAX_BODY_BYTES:
        try:
            document = load_json(body, "the request body")
        except InvalidEventError:
            document = None  # parse_event_delivery refuses it below, naming the problem
        signed = isinstance(document, dict) and "specversion" not in document
    if signed:
        return parse_registry_webhook(method, headers, body, secret=secret, now=now,
                                      tolerance_seconds=tolerance_seconds)
    return parse_event_delivery(method, headers, body, max_rate=max_rate)


def parse_model_registered(event: Mapping[str, Any]) -> ModelVersionEvent:
    """Parse one Event Grid–schema event from the Functions Event Grid trigger (the trigger did the handshake).

    Keys are the Event Grid schema's (`id`, `eventType`, `subject`, `eventTime`, `data`, `topic`);
    `eventTime` may be a string or a datetime. Other event types are refused: filter the subscription
    to ModelRegistered (includedEventTypes) so they never reach this function.
    """
    outcome = _event_grid_event(event, "the event")
    if isinstance(outcome, Ignored):
        raise InvalidEventError(f"{outcome.reason}; limit the subscription to {MODEL_REGISTERED}")
    return outcome


def mlflow_signature(secret: str, delivery_id: str, timestamp: str, body: bytes) -> str:
    """The `X-MLflow-Signature` value for a body: `v1,` + base64 HMAC-SHA256 of `{id}.{timestamp}.{body}`."""
    signed = delivery_id.encode() + b"." + timestamp.encode() + b"." + body
    digest = hmac.new(secret.encode("utf-8"), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode("ascii")


def databricks_signature(secret: str, body: bytes) -> str:
    """The `X-Databricks-Signature` value for a body: hex HMAC-SHA256 of the raw body."""
    return hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()


def to_http(result: WebhookResult | SignatureError | InvalidEventError) -> HttpReply:
    """Map a parse result or error to the HTTP reply Event Grid / the registry expects."""
    if isinstance(result, ValidationHandshake):
        return _json_reply(200, {"validationResponse": result.code})
    if isinstance(result, AbuseProtectionHandshake):
        headers = {"WebHook-Allowed-Origin": result.origin, "Allow": "POST"}
        if result.allowed_rate is not None:
            headers["WebHook-Allowed-Rate"] = result.allowed_rate
        return HttpReply(200, headers, b"")
    if isinstance(result, Received):
        accepted = [{"event_id": e.event_id, "model": e.model_name, "version": e.version} for e in result.events]
        return _json_reply(202, {"accepted": accepted, "ignored": [x.reason for x in result.ignored]})
    if isinstance(result, Ignored):
        return _json_reply(202, {"ignored": result.reason})
    if isinstance(result, SignatureError):
        return _json_reply(401, {"error": str(result)})
    if isinstance(result, PayloadTooLargeError):
        return _json_reply(413, {"error": str(result)})
    return _json_reply(400, {"error": str(result)})


# -- Event Grid and CloudEvents -------------------------------------------------------------------
def _abuse_protection(h: Mapping[str, str], max_rate: int | None) -> AbuseProtectionHandshake:
    origin = h.get("webhook-request-origin", "").strip()
    if not origin:
        raise InvalidEventError("OPTIONS without WebHook-Request-Origin is not a CloudEvents abuse-protection "
                                "handshake")
    requested = h.get("webhook-request-rate")
    if requested is None:
        return AbuseProtectionHandshake(origin)
    requested = requested.strip()
    if requested == "*":
        return AbuseProtectionHandshake(origin, "*" if max_rate is None else str(max_rate))
    # ASCII digits only, and few: `str.isdigit` accepts '²' and `int` refuses 4,300+ digits (issue 11, defect 5)
    if not re.fullmatch(r"[0-9]{1,9}", requested) or int(requested) < 1:
        raise InvalidEventError(f"WebHook-Request-Rate must be a positive integer (at most 9 digits) or '*', "
                                f"got {requested[:40]!r}")
    rate = int(requested) if max_rate is None else min(int(requested), max_rate)
    return AbuseProtectionHandshake(origin, str(rate))


def _validation_handshake(item: Mapping[str, Any]) -> ValidationHandshake:
    data = item.get("data")
    if not isinstance(data, dict):
        raise InvalidEventError("SubscriptionValidationEvent: 'data' must be an object with validationCode")
    code = data.get("validationCode")
    if not isinstance(code, str) or not code:
        raise InvalidEventError("SubscriptionValidationEvent: data.validationCode is missing or not a string")
    url = data.get("validationUrl")
    return ValidationHandshake(code, url if isinstance(url, str) and url else None)


def _event_grid_event(item: Mapping[str, Any], where: str) -> ModelVersionEvent | Ignored:
    ident = _required_str(item, "id", where)
    event_type = _required_str(item, "eventType", where)
    if event_type != MODEL_REGISTERED:
        return Ignored(f"{where}: event type {event_type} is not handled (Evergreen acts on {MODEL_REGISTERED})",
                       ident)
    return _model_registered(
        item.get("data"), _optional_str(item, "subject", where), where,
        source="eventgrid", event_id=ident, event_type=event_type,
        occurred_at=_time(item.get("eventTime"), f"{where}.eventTime"),
        origin=_optional_str(item, "topic", where) or "",
    )


def _cloud_event(item: Mapping[str, Any], where: str) -> ModelVersionEvent | Ignored:
    if item.get("specversion") != "1.0":
        raise InvalidEventError(f"{where}: specversion must be '1.0', got {item.get('specversion')!r}")
    ident = _required_str(item, "id", where)
    source = _required_str(item, "source", where)
    event_type = _required_str(item, "type", where)
    if event_type != MODEL_REGISTERED:
        return Ignored(f"{where}: event type {event_type} is not handled (Evergreen acts on {MODEL_REGISTERED})",
                       ident)
    return _model_registered(
        item.get("data"), _optional_str(item, "subject", where), where,
        source="cloudevents", event_id=ident, event_type=event_type,
        occurred_at=_time(item.get("time"), f"{where}.time"), origin=source,
    )


def _model_registered(
    data: object, subject: str | None, where: str, *, source: Source, event_id: str, event_type: str,
    occurred_at: datetime | None, origin: str,
) -> ModelVersionEvent:
    """Azure ML's ModelRegistered data: keys in either casing, version int or string, subject as fallback."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise InvalidEventError(f"{where}.data must be an object, not {_json_type(data)}")
    fields = _casefold_keys(data, f"{where}.data")
    from_subject = _SUBJECT_RE.match(subject or "")
    name: object = fields.get("modelname")
    if name is None and from_subject:
        name = from_subject["name"]
    raw_version: object = fields.get("modelversion")
    if raw_version is None and from_subject:
        raw_version = from_subject["version"]
    if name is None or raw_version is None:
        missing = "data.ModelName" if name is None else "data.ModelVersion"
        raise InvalidEventError(f"{where}: ModelRegistered event {event_id} names no model: {missing} is missing "
                                f"and the subject {subject!r} is not 'models/<name>:<version>'")
    return ModelVersionEvent(
        model_name=_name(name, f"{where}.data.ModelName"),
        version=_version(raw_version, f"{where}.data.ModelVersion"),
        source=source,
        event_id=event_id,
        event_type=event_type,
        tags=_str_map(fields.get("modeltags"), f"{where}.data.ModelTags"),
        properties=_str_map(fields.get("modelproperties"), f"{where}.data.ModelProperties"),
        occurred_at=occurred_at,
        origin=origin,
    )


# -- registry webhooks ------------------------------------------------------------------------------
def _mlflow(h: Mapping[str, str], body: bytes, secret: str, now: datetime, tolerance: float) -> Received | Ignored:
    missing = [name for name in ("X-MLflow-Signature", "X-MLflow-Delivery-Id", "X-MLflow-Timestamp")
               if not h.get(name.lower(), "").strip()]
    if missing:
        raise SignatureError(f"MLflow webhook lacks {', '.join(missing)}: it cannot be verified")
    delivery_id = h[MLFLOW_DELIVERY_ID].strip()
    timestamp = h[MLFLOW_TIMESTAMP].strip()
    expected = mlflow_signature(secret, delivery_id, timestamp, body).encode("ascii")
    # The header may list several space-separated signatures (secret rotation); one match suffices.
    # Every candidate is compared, so the time taken does not depend on which one matched.
    matches = [hmac.compare_digest(expected, sig.encode("utf-8")) for sig in h[MLFLOW_SIGNATURE].split()]
    if not any(matches):
        raise SignatureError("X-MLflow-Signature does not match the body: wrong secret, or the body was altered")
    try:
        sent_at = datetime.fromtimestamp(int(timestamp), UTC)
    except (ValueError, OverflowError, OSError) as exc:
        raise InvalidEventError(f"X-MLflow-Timestamp must be Unix seconds, got {timestamp!r}") from exc
    _check_fresh(sent_at, now, tolerance, "X-MLflow-Timestamp")

    document = _load_json(body, "the MLflow webhook body")
    if not isinstance(document, dict):
        raise InvalidEventError(f"the MLflow webhook body must be a JSON object, not {_json_type(document)}")
    entity = _required_str(document, "entity", "the MLflow webhook body")
    action = _required_str(document, "action", "the MLflow webhook body")
    event_type = f"{entity}.{action}"
    if event_type not in MLFLOW_EVENTS:
        handled = ", ".join(sorted(MLFLOW_EVENTS))
        return Ignored(f"MLflow event {event_type} is not handled (Evergreen acts on {handled})", delivery_id)
    data = document.get("data")
    if not isinstance(data, dict):
        raise InvalidEventError(f"MLflow {event_type}: 'data' must be an object, not {_json_type(data)}")
    where = f"MLflow {event_type} data"
    alias = _required_str(data, "alias", where) if entity == "model_version_alias" else None
    occurred = _time(document.get("timestamp"), "the MLflow webhook timestamp") or sent_at
    event = ModelVersionEvent(
        model_name=_name(_require(data, "name", where), f"{where}.name"),
        version=_version(_require(data, "version", where), f"{where}.version"),
        source="mlflow",
        event_id=delivery_id,
        event_type=event_type,
        tags=_str_map(data.get("tags"), f"{where}.tags"),
        occurred_at=occurred,
        alias=alias,
    )
    return Received((event,))


def _databricks(h: Mapping[str, str], body: bytes, secret: str, now: datetime, tolerance: float) -> Received | Ignored:
    given = h[DATABRICKS_SIGNATURE].strip().lower()
    expected = databricks_signature(secret, body).encode("ascii")
    if not hmac.compare_digest(expected, given.encode("utf-8")):
        raise SignatureError("X-Databricks-Signature does not match the body: wrong secret, or the body was altered")
    document = _load_json(body, "the Databricks webhook body")
    if not isinstance(document, dict):
        raise InvalidEventError(f"the Databricks webhook body must be a JSON object, not {_json_type(document)}")
    where = "the Databricks webhook body"
    event_type = _required_str(document, "event", where)
    raw_ms = _require(document, "event_timestamp", where)
    if isinstance(raw_ms, bool) or not isinstance(raw_ms, int | float) or not math.isfinite(raw_ms):
        raise InvalidEventError(f"{where}: event_timestamp must be Unix milliseconds, got {raw_ms!r}")
    try:
        sent_at = datetime.fromtimestamp(raw_ms / 1000, UTC)
    except (ValueError, OverflowError, OSError) as exc:
        raise InvalidEventError(f"{where}: event_timestamp {raw_ms!r} is out of range") from exc
    # The timestamp is inside the signed body, so checking it after the signature is sound.
    _check_fresh(sent_at, now, tolerance, "event_timestamp")

    webhook_id = _optional_str(document, "webhook_id", where) or ""
    model_name = _optional_str(document, "model_name", where)
    raw_version = document.get("version")
    # Databricks sends no event id: derive a stable one, so a redelivery yields the same id.
    ident = stable_event_id("databricks", webhook_id, event_type, model_name or "", str(raw_version), str(raw_ms))
    if event_type not in DATABRICKS_EVENTS:
        return Ignored(f"Databricks event {event_type} is not handled "
                       f"(Evergreen acts on {', '.join(sorted(DATABRICKS_EVENTS))})", ident)
    if model_name is None or raw_version is None:
        raise InvalidEventError(f"Databricks {event_type}: model_name and version are required")
    to_stage = _optional_str(document, "to_stage", where)
    if event_type == DATABRICKS_TRANSITIONED_STAGE and (to_stage or "").strip().lower() not in CANDIDATE_STAGES:
        return Ignored(f"Databricks {event_type} of {model_name}:{raw_version} to stage {to_stage!r} is not handled "
                       "(only transitions to Staging or Production are candidates)", ident)
    return Received((ModelVersionEvent(
        model_name=_name(model_name, f"{where}.model_name"),
        version=_version(raw_version, f"{where}.version"),
        source="databricks",
        event_id=ident,
        event_type=event_type,
        occurred_at=sent_at,
        origin=webhook_id,
        stage=to_stage,
    ),))


def _check_fresh(sent_at: datetime, now: datetime, tolerance: float, what: str) -> None:
    skew = abs((now - sent_at).total_seconds())
    if skew > tolerance:
        raise SignatureError(f"{what} {sent_at.isoformat()} is {skew:.0f} s from now; deliveries more than "
                             f"{tolerance:g} s away are refused as possible replays (check the sender's clock)")


# -- small parsers ----------------------------------------------------------------------------------
def _lower(headers: Mapping[str, str]) -> dict[str, str]:
    return {str(k).lower(): str(v) for k, v in headers.items()}


def _load_json(body: bytes, what: str) -> Any:
    if len(body) > MAX_BODY_BYTES:
        raise PayloadTooLargeError(f"{what} is {len(body)} bytes; at most {MAX_BODY_BYTES} are accepted")
    return load_json(body, what)


def _json_type(value: object) -> str:
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null"}
    return names.get(type(value), "a number")


def _require(obj: Mapping[str, Any], key: str, where: str) -> Any:
    if key not in obj or obj[key] is None:
        raise InvalidEventError(f"{where}: '{key}' is missing")
    return obj[key]


def _required_str(obj: Mapping[str, Any], key: str, where: str) -> str:
    value = _require(obj, key, where)
    if not isinstance(value, str) or not value.strip():
        raise InvalidEventError(f"{where}: '{key}' must be a non-empty string, got {value!r}")
    return value


def _optional_str(obj: Mapping[str, Any], key: str, where: str) -> str | None:
    value = obj.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidEventError(f"{where}: '{key}' must be a string, got {value!r}")
    return value


def _casefold_keys(data: Mapping[str, Any], where: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        folded = key.lower()
        if folded in out and out[folded] != value:
            raise InvalidEventError(f"{where} holds '{key}' twice in different casing with different values")
        out[folded] = value
    return out


def _name(value: object, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise InvalidEventError(f"{where} must be a non-empty string, got {value!r}")
    if len(value) > _MAX_NAME or any(unicodedata.category(ch) == "Cc" for ch in value):
        raise InvalidEventError(f"{where} is not a usable model name (over {_MAX_NAME} characters or control "
                                "characters)")
    return value.strip()


def _version(value: object, where: str) -> str:
    """Versions are strings everywhere in Evergreen; registries send 3 or "3"."""
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise InvalidEventError(f"{where} must be a string or an integer, got {value!r}")
    return _name(str(value), where)


def _str_map(value: object, where: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidEventError(f"{where} must be an object of strings, not {_json_type(value)}")
    return {str(k): _as_str(v) for k, v in value.items()}


def _as_str(value: object) -> str:
    if isinstance(value, str):
        return value
    if value is None:
        return ""
    return json.dumps(value, sort_keys=True)  # true/false, numbers and nested values keep their JSON spelling


def _time(value: object, where: str) -> datetime | None:
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if not isinstance(value, str):
        raise InvalidEventError(f"{where} must be an ISO 8601 string, got {value!r}")
    text = value.strip()
    # Event Grid writes 7 fractional digits; fromisoformat accepts at most 6.
    text = re.sub(r"(\.\d{6})\d+", r"\1", text)
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError as exc:
        raise InvalidEventError(f"{where} is not an ISO 8601 time: {value!r}") from exc
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _json_reply(status: int, payload: Mapping[str, object] | Sequence[object]) -> HttpReply:
    return HttpReply(status, {"Content-Type": "application/json"}, json.dumps(payload).encode("utf-8"))
