"""The edge: one decorator that turns a platform input into a typed event and settles every outcome alike.

A trigger names where its input comes from (a `Source`: queue message, Event Grid event, blob, HTTP
request, timer), the parser that makes it a typed event, and the service call::

    @bp.function_name("seal_batch")
    @bp.queue_trigger(arg_name="msg", queue_name=SEAL_QUEUE, connection="AzureWebJobsStorage")
    @edge(queue_message(seal_request_from_json), subject=lambda r: f"{r.dataset}/{r.folder}")
    def seal_batch(request: SealRequest, delivery: Delivery) -> Settled:
        return get_services().ingestor.on_seal_request(request)

The decorator then keeps the error contract of `shared.errors` for every trigger:

* `InvalidEventError` / `SignatureError` (the input can never be handled): one WARNING line, one
  `event.rejected` audit record, and the input is acknowledged (the function returns normally, so
  Event Grid does not retry for 24 h and a queue message is not retried into `<queue>-poison`);
  an HTTP request gets the 4xx of `shared.domain.webhooks.to_http`. If the audit write itself
  fails, that is logged and the input is still acknowledged: a rejection never becomes a retry loop.
* anything else (`TransientError`, `AzureError`, a bug): one WARNING (transient) or ERROR line, then
  it propagates and the platform retries.

Every line has one format: `function=<name> event=<id> subject=<what> outcome=<action> detail=<…> ms=<n>`.
URLs are logged without their query string (a SAS never reaches a log).
"""

from __future__ import annotations

import inspect
import logging
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

import azure.functions as func
from azurefunctions.extensions.bindings import blob

from shared import telemetry
from shared.domain.audit import AuditRecord
from shared.domain.events import BlobCreated
from shared.domain.telemetry import TRACEPARENT, TRACEPARENT_TAG, Attr
from shared.domain.urls import strip_query  # the one helper; re-exported for the edge's callers
from shared.domain.vocabulary import EdgeAction
from shared.domain.webhooks import HttpReply, to_http
from shared.errors import InvalidEventError, SignatureError, TransientError

if TYPE_CHECKING:
    from shared.ports import AuditLog

log = logging.getLogger(__name__)

P = TypeVar("P")  # what the platform binds (func.QueueMessage, func.EventGridEvent, blob.BlobClient, …)
E = TypeVar("E")  # the typed event the parser makes of it
R = TypeVar("R")  # what the function returns to the host (None, or func.HttpResponse)

REJECTED_KIND = f"event.{EdgeAction.REJECTED.value}"
Rejection = InvalidEventError | SignatureError


class Settled(Protocol):
    """What a handler returns: every service outcome has an action (a str enum or str) and a detail."""

    @property
    def action(self) -> Any: ...

    @property
    def detail(self) -> str: ...


@dataclass(frozen=True)
class Handled:
    """An outcome for handlers that have no service outcome to return (the timer, the HTTP trigger)."""

    action: EdgeAction
    detail: str
    reply: HttpReply | None = None  # the HTTP answer; only the HTTP source reads it


@dataclass(frozen=True)
class Delivery:
    """Which function got what: the id every log line and audit record carries, and the attempt number."""

    function: str
    id: str
    attempt: int = 1  # a queue message's dequeue count; 1 for inputs the platform does not count


@dataclass(frozen=True, kw_only=True)
class Source(Generic[P, E, R]):
    """One kind of trigger input: how the host binds it, names it, parses it and expects an answer."""

    arg_name: str  # must equal the trigger decorator's arg_name
    binding: Any  # the parameter annotation the host binds by
    returns: Any  # the return annotation the host sees
    identify: Callable[[P], str]
    parse: Callable[[P], E]
    respond: Callable[[Settled], R]
    refuse: Callable[[Rejection], R]
    attempt: Callable[[P], int] = lambda _raw: 1
    traceparent: Callable[[P], str] = lambda _raw: ""  # the trace context the input carries ("" = none)


# -- sources -------------------------------------------------------------------------------------------
def _acknowledge(_outcome: object) -> None:
    """Returning normally is the acknowledgement: the queue message is deleted, the delivery answered 2xx."""


def message_text(msg: func.QueueMessage) -> str:
    """The message body as text; raises InvalidEventError if it is not UTF-8."""
    try:
        return msg.get_body().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidEventError(f"queue message {msg.id} is not UTF-8 text: {exc}") from exc


def queue_message(parse: Callable[[str], E], arg_name: str = "msg") -> Source[func.QueueMessage, E, None]:
    """A queue message whose text `parse` turns into a typed event (raising InvalidEventError if it cannot)."""
    return Source(
        arg_name=arg_name, binding=func.QueueMessage, returns=None,
        identify=lambda msg: str(msg.id or "-"),
        parse=lambda msg: parse(message_text(msg)),
        attempt=lambda msg: msg.dequeue_count or 1,
        traceparent=_message_traceparent,
        respond=_acknowledge, refuse=_acknowledge,
    )


def event_grid_document(event: func.EventGridEvent) -> dict[str, Any]:
    """The Event Grid–schema document of a delivered event (the keys the domain parsers read)."""
    return {"id": event.id, "eventType": event.event_type, "subject": event.subject, "eventTime": event.event_time,
            "topic": event.topic, "dataVersion": event.data_version, "data": event.get_json()}


def event_grid(parse: Callable[[Mapping[str, Any]], E],
               arg_name: str = "event") -> Source[func.EventGridEvent, E, None]:
    """An Event Grid event; `parse` gets its Event Grid–schema document (`id`, `eventType`, `data`, …)."""
    return Source(
        arg_name=arg_name, binding=func.EventGridEvent, returns=None,
        identify=lambda event: str(event.id or "-"),
        parse=lambda event: parse(event_grid_document(event)),
        traceparent=_event_traceparent,
        respond=_acknowledge, refuse=_acknowledge,
    )


def _message_traceparent(msg: func.QueueMessage) -> str:
    """The `traceparent` a queue message carries (the queue adapters add it to every message they send)."""
    try:
        return telemetry.traceparent_of_message(msg.get_body().decode("utf-8"))
    except UnicodeDecodeError:
        return ""


_TAG_FIELDS = ("modelTags", "runTags", "tags")  # Azure ML's ModelRegistered / Run* events carry the asset's tags


def _event_traceparent(event: func.EventGridEvent) -> str:
    """The trace context an event carries: Evergreen's own events have `data.traceparent`; Azure ML's events
    carry the model's or the run's `evergreen.traceparent` tag (the retraining job got it when submitted)."""
    try:
        data = event.get_json()
    except ValueError:
        return ""
    if not isinstance(data, dict):
        return ""
    found = telemetry.valid_traceparent(data.get(TRACEPARENT))
    for key in _TAG_FIELDS:
        tags = data.get(key)
        if not found and isinstance(tags, dict):
            found = telemetry.valid_traceparent(tags.get(TRACEPARENT_TAG))
    return found


def blob_created(client: blob.BlobClient) -> BlobCreated:
    """The blob a blob trigger was invoked for; the URL without its query string (no SAS in keys or logs)."""
    return BlobCreated(container=client.container_name, name=client.blob_name, url=strip_query(client.url))


def blob_client(arg_name: str = "client") -> Source[blob.BlobClient, BlobCreated, None]:
    """A blob trigger bound as an SDK `BlobClient` (Event Grid source); the event is its `BlobCreated`."""
    return Source(
        arg_name=arg_name, binding=blob.BlobClient, returns=None,
        identify=lambda client: strip_query(client.url),
        parse=blob_created,
        respond=_acknowledge, refuse=_acknowledge,
    )


def _http_response(reply: HttpReply) -> func.HttpResponse:
    return func.HttpResponse(reply.body, status_code=reply.status, headers=dict(reply.headers))


def _reply_of(outcome: Settled) -> func.HttpResponse:
    if not isinstance(outcome, Handled) or outcome.reply is None:
        raise TypeError(f"an HTTP handler must return Handled(..., reply=HttpReply), not {outcome!r}")
    return _http_response(outcome.reply)


def http_request(parse: Callable[[func.HttpRequest], E],
                 arg_name: str = "req") -> Source[func.HttpRequest, E, func.HttpResponse]:
    """An HTTP request; a rejection answers with `to_http(error)` (401 for a bad signature, else 4xx)."""
    return Source(
        arg_name=arg_name, binding=func.HttpRequest, returns=func.HttpResponse,
        identify=_request_id, parse=parse,
        traceparent=lambda req: telemetry.valid_traceparent(req.headers.get(TRACEPARENT)),
        respond=_reply_of, refuse=lambda exc: _http_response(to_http(exc)),
    )


def _request_id(req: func.HttpRequest) -> str:
    """A correlation id: the sender's delivery id when it gives one, else a fresh one."""
    for header in ("x-mlflow-delivery-id", "x-request-id", "x-ms-client-request-id"):
        value = (req.headers.get(header) or "").strip()
        if value:
            return value[:128]
    return f"http-{uuid.uuid4().hex[:12]}"


def timer(prefix: str, arg_name: str = "timer") -> Source[func.TimerRequest, func.TimerRequest, None]:
    """A timer firing; its id is a fresh run id `<prefix>-<hex>` (the handler gets it as `delivery.id`)."""
    return Source(
        arg_name=arg_name, binding=func.TimerRequest, returns=None,
        identify=lambda _timer: f"{prefix}-{uuid.uuid4().hex[:12]}",
        parse=lambda t: t,
        respond=_acknowledge, refuse=_acknowledge,
    )


# -- the decorator -------------------------------------------------------------------------------------
def _services_audit() -> AuditLog:
    from shared.composition import get_services  # lazy: building clients is the composition root's job

    return get_services().audit


def edge(
    source: Source[P, E, R],
    *,
    subject: Callable[[E], str] | None = None,
    audit: Callable[[], AuditLog] = _services_audit,
) -> Callable[[Callable[[E, Delivery], Settled]], Callable[..., R]]:
    """Wrap `handler(event, delivery) -> outcome` as a function the host can bind (see the module docstring).

    `subject` names the event in log lines (e.g. `churn-model:3`); `audit` returns the audit log the
    rejections go to (the composition root's, unless a test hands its own).
    """

    def decorate(handler: Callable[[E, Delivery], Settled]) -> Callable[..., R]:
        name = handler.__name__

        def trigger(*args: Any, **kwargs: Any) -> R:
            raw: P = kwargs[source.arg_name] if source.arg_name in kwargs else args[0]
            return _settle(name, source, raw, handler, subject, audit)

        trigger.__name__ = trigger.__qualname__ = name
        trigger.__module__ = handler.__module__
        trigger.__doc__ = handler.__doc__
        # The host binds by the parameter's name and annotation: show it the platform's, not the handler's.
        trigger.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
            [inspect.Parameter(source.arg_name, inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=source.binding)],
            return_annotation=source.returns,
        )
        trigger.__annotations__ = {source.arg_name: source.binding, "return": source.returns}
        trigger.handler = handler  # type: ignore[attr-defined]  # for tests: the undecorated handler
        return trigger

    return decorate


def _settle(
    name: str,
    source: Source[P, E, R],
    raw: P,
    handler: Callable[[E, Delivery], Settled],
    subject: Callable[[E], str] | None,
    audit: Callable[[], AuditLog],
) -> R:
    started = time.monotonic()
    delivery = Delivery(function=name, id=source.identify(raw), attempt=source.attempt(raw))
    with telemetry.handler_span(name, traceparent=source.traceparent(raw), event_id=delivery.id):
        about = "-"
        try:
            event = source.parse(raw)
            if isinstance(event, BlobCreated):
                telemetry.annotate({Attr.BLOB: event.path})
            if subject is not None:
                about = subject(event)
            outcome = handler(event, delivery)
        except (InvalidEventError, SignatureError) as exc:
            _line(logging.WARNING, delivery, about, EdgeAction.REJECTED.value, str(exc), started)
            telemetry.annotate({Attr.REJECTED: True, Attr.OUTCOME: EdgeAction.REJECTED.value})
            _audit_rejection(delivery, exc, audit, about, started)
            return source.refuse(exc)
        except TransientError as exc:
            _line(logging.WARNING, delivery, about, EdgeAction.RETRY.value, f"{type(exc).__name__}: {exc}", started)
            telemetry.annotate({Attr.OUTCOME: EdgeAction.RETRY.value})
            raise
        except Exception as exc:
            _line(logging.ERROR, delivery, about, EdgeAction.FAILED.value, f"{type(exc).__name__}: {exc}", started)
            telemetry.annotate({Attr.OUTCOME: EdgeAction.FAILED.value})
            raise
        _line(logging.INFO, delivery, about, action_value(outcome.action), outcome.detail, started)
        telemetry.annotate({Attr.OUTCOME: action_value(outcome.action), Attr.REJECTED: False})
        return source.respond(outcome)


def _audit_rejection(delivery: Delivery, exc: Rejection, audit: Callable[[], AuditLog], about: str,
                     started: float) -> None:
    """Record the rejection; a failure to record is logged, never raised (that would make the input retry)."""
    record = AuditRecord(kind=REJECTED_KIND, decision=EdgeAction.REJECTED.value, reason=str(exc),
                         event_id=delivery.id, assets={"function": delivery.function})
    try:
        audit().record(record)
    except Exception as failure:
        _line(logging.ERROR, delivery, about, EdgeAction.AUDIT_FAILED.value,
              f"the rejection was not audited ({type(failure).__name__}: {failure}); acknowledged anyway", started)


def _line(level: int, delivery: Delivery, about: str, outcome: str, detail: str, started: float) -> None:
    elapsed = round((time.monotonic() - started) * 1000)
    log.log(level, "function=%s event=%s subject=%s outcome=%s detail=%s ms=%d", delivery.function,
            strip_query(delivery.id), strip_query(about), outcome, strip_query(detail), elapsed)


def action_value(action: object) -> str:
    """An outcome's action as logged and audited: a str enum's value, or the string itself."""
    return str(action.value) if isinstance(action, Enum) else str(action)
