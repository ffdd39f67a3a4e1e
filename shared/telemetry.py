"""Evergreen's tracing: set up once, one span per handler, and the W3C trace context carried with the work.

Where spans go is decided once, at start-up, by `configure` (from `TelemetrySettings`):

* `APPLICATIONINSIGHTS_CONNECTION_STRING` set: Application Insights, through the Azure Monitor
  OpenTelemetry distro, authenticated with Entra ID (the app's user-assigned identity);
* `EVERGREEN_TRACE_FILE` set: one JSON line per finished span appended to that file (the local stack
  sets it to `<state dir>/traces.jsonl`); both may be set;
* neither: nothing is configured and every helper here is a cheap no-op (OpenTelemetry's API without
  an SDK), so tests and the CLI pay nothing. The SDK and the distro are imported only when needed,
  keeping `import function_app` (the cold start) free of them.

How the trace travels: whatever leaves a handler (a queue message, Evergreen's own event, a job tag,
a ledger row) carries `traceparent` (`current_traceparent()`), and the handler that picks the work up
starts its span as a *child* of it (`handler_span`). A child, not a link: the chain blob → batch →
data version → job → model → gate → rollout steps is one causal story, and one trace id is what an
operator searches by; Application Insights' transaction view shows a trace, not a graph of links.

This module imports only `opentelemetry`'s API and the domain, so services may call `annotate`
without breaking their layer rule.
"""

from __future__ import annotations

import atexit
import json
import logging
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Span
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from shared.domain.telemetry import SPAN_PREFIX, TRACEPARENT, TRACEPARENT_TAG, Attr
from shared.domain.urls import strip_query

if TYPE_CHECKING:
    from shared.config.settings import TelemetrySettings

log = logging.getLogger(__name__)

TRACER_NAME = "evergreen"
SERVICE_NAME = "evergreen"
_PROPAGATOR = TraceContextTextMapPropagator()
_lock = threading.Lock()
_configured: list[str] = []  # the sinks `configure` set up (empty: not configured, or nothing to set up)
_done = threading.Event()


# -- set-up, once ------------------------------------------------------------------------------------
def configure(settings: TelemetrySettings | None = None) -> tuple[str, ...]:
    """Set up tracing for this process once; returns the sinks in use (`azure_monitor`, `file`), or ().

    Called at start-up (`function_app.py`); later calls return what the first one did. Raises
    ConfigurationError (from `load_telemetry_settings`) naming every bad telemetry setting.
    """
    with _lock:
        if _done.is_set():
            return tuple(_configured)
        if settings is None:
            from shared.config.settings import load_telemetry_settings

            settings = load_telemetry_settings()
        processors = [_file_processor(settings.trace_file)] if settings.trace_file else []
        if settings.connection_string:
            _configure_azure_monitor(settings.connection_string, settings.client_id, processors)
            _configured.append("azure_monitor")
        elif processors:
            _configure_sdk(processors)
        if settings.trace_file:
            _configured.append("file")
        _done.set()
        log.info("telemetry configured: %s", ", ".join(_configured) or "off")
        return tuple(_configured)


def _file_processor(path: Path) -> Any:
    """A processor that writes each span as it ends (simple, not batched: a test reads the file right after)."""
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor

    from shared.adapters.trace_file import JsonLinesSpanExporter

    return SimpleSpanProcessor(JsonLinesSpanExporter(path))


def _configure_sdk(processors: Sequence[Any]) -> None:
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider

    provider = TracerProvider(resource=Resource.create({"service.name": SERVICE_NAME}))
    for processor in processors:
        provider.add_span_processor(processor)
    trace.set_tracer_provider(provider)
    atexit.register(provider.shutdown)  # flush whatever is still buffered when the worker exits


def _configure_azure_monitor(connection_string: str, client_id: str | None, processors: Sequence[Any]) -> None:
    """The Azure Monitor distro with Entra ID auth: the app's user-assigned identity (AZURE_CLIENT_ID) when
    named, else `DefaultAzureCredential` (a developer's login). Local auth is disabled on the component.

    Spans (and the Azure SDK's dependency spans) only: the Functions host already exports the worker's
    log lines, so the distro's log export stays off and no line is sent twice.
    """
    from azure.identity import DefaultAzureCredential, ManagedIdentityCredential
    from azure.monitor.opentelemetry import configure_azure_monitor

    credential = ManagedIdentityCredential(client_id=client_id) if client_id else DefaultAzureCredential()
    configure_azure_monitor(connection_string=connection_string, credential=credential,
                            span_processors=list(processors), disable_logging=True)


# -- the trace context that travels with the work -------------------------------------------------------
def current_traceparent() -> str:
    """The W3C `traceparent` of the current span ("" when there is none: tracing off and nothing inherited)."""
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier)
    return carrier.get(TRACEPARENT, "")


def valid_traceparent(value: object) -> str:
    """`value` if it is a well-formed W3C traceparent, else "" (a malformed one never fails the work)."""
    if not isinstance(value, str) or not value:
        return ""
    extracted = trace.get_current_span(_PROPAGATOR.extract({TRACEPARENT: value})).get_span_context()
    return value if extracted.is_valid else ""


def _parent(traceparent: str | None) -> otel_context.Context | None:
    return _PROPAGATOR.extract({TRACEPARENT: traceparent}) if valid_traceparent(traceparent) else None


@contextmanager
def continued(traceparent: str | None) -> Iterator[None]:
    """Make `traceparent` the current context for the block: work the reconciler re-drives from a ledger row
    goes on in the row's own trace (what it sends carries that trace on, and the next handler is a child of
    the span that wrote the row). No span of its own: a reconciler pass looks at every row, and most need
    nothing; the re-drive is in the audit log. A missing or malformed `traceparent` changes nothing.
    """
    parent = _parent(traceparent)
    token = otel_context.attach(parent) if parent is not None else None
    try:
        yield
    finally:
        if token is not None:
            otel_context.detach(token)


def with_traceparent(text: str) -> str:
    """A JSON-object message with the current `traceparent` added (kept if it already has one).

    What the queue adapters send: the trace context rides in the message like an HTTP header, so every
    message type carries it without a field of its own. Text that is not a JSON object goes unchanged.
    """
    traceparent = current_traceparent()
    if not traceparent or not text.startswith("{"):
        return text
    try:
        document = json.loads(text)
    except (ValueError, RecursionError):
        return text
    if not isinstance(document, dict) or document.get(TRACEPARENT):
        return text
    document[TRACEPARENT] = traceparent
    return json.dumps(document)


def traceparent_of_message(text: str) -> str:
    """The `traceparent` a queue message carries ("" if none, or if the text is not a JSON object)."""
    if not text.startswith("{"):
        return ""
    try:
        document = json.loads(text)
    except (ValueError, RecursionError):
        return ""
    return valid_traceparent(document.get(TRACEPARENT)) if isinstance(document, dict) else ""


# -- spans and attributes ----------------------------------------------------------------------------
@contextmanager
def handler_span(function: str, *, traceparent: str = "", event_id: str = "") -> Iterator[Span]:
    """The span of one handler run, `evergreen.<function>`, a child of `traceparent` when the work carried one.

    Otherwise it is a child of the current context: in Azure, the Functions host's invocation (the worker
    hands it over with PYTHON_ENABLE_OPENTELEMETRY); when the work's context wins, the span links to that
    invocation instead. Exceptions propagate; the span records them and ends with status ERROR.
    """
    tracer = trace.get_tracer(TRACER_NAME)
    attributes = {Attr.TRIGGER.value: function, Attr.EVENT_ID.value: strip_query(event_id)}
    parent = _parent(traceparent)
    invocation = trace.get_current_span().get_span_context()
    links = [trace.Link(invocation)] if parent is not None and invocation.is_valid else []
    with tracer.start_as_current_span(SPAN_PREFIX + function, context=parent, links=links,
                                      kind=trace.SpanKind.CONSUMER, attributes=attributes,
                                      record_exception=True, set_status_on_exception=True) as span:
        yield span


def annotate(attributes: Mapping[Attr, object | None]) -> None:
    """Set domain attributes on the current span; None values are left out, strings lose any query string.

    A no-op when nothing records (tracing off): services call it freely.
    """
    span = trace.get_current_span()
    if not span.is_recording():
        return
    for name, value in attributes.items():
        if value is not None:
            span.set_attribute(name.value, _attribute_value(value))


def _attribute_value(value: object) -> str | bool | int | float:
    if isinstance(value, Enum):
        value = value.value
    if isinstance(value, bool | int | float):
        return value
    return strip_query(str(value))


def traced_tags(tags: Mapping[str, str]) -> dict[str, str]:
    """`tags` plus `evergreen.traceparent` = the current trace context (for an Azure ML job: the pipeline's
    register step copies it onto the model, and the model's ModelRegistered event brings it back)."""
    traceparent = current_traceparent()
    return {**tags, TRACEPARENT_TAG: traceparent} if traceparent else dict(tags)
