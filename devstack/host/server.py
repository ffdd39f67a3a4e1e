"""The HTTP surface of `func start` plus the trigger listeners, as one starlette app.

Routes: `/api/<route>` (HTTP triggers), `/runtime/webhooks/EventGrid` (Event Grid triggers),
`/runtime/webhooks/blobs` (Event Grid–sourced blob triggers), `/admin/functions[/<fn>]`,
`/admin/host/status` and `/`. Timers and queue listeners run as tasks of the server's loop;
invocations run in the invoker's threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import azure.functions as func
from azure.core.exceptions import AzureError, ResourceExistsError, ResourceNotFoundError
from azure.functions.meta import Datum
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from devstack.host import events
from devstack.host.bindings import BlobReference, TriggerData, encode_queue_message, json_datum, string_datum
from devstack.host.blobqueue import (
    POISON_QUEUE,
    BadBlobTriggerMessage,
    BlobTriggerMessage,
    blob_type_name,
    work_queue_name,
)
from devstack.host.connections import ClientCache, StorageConnectionError
from devstack.host.indexing import FunctionInfo
from devstack.host.invoker import InvocationResult, Invoker
from devstack.host.queues import DequeuedMessage, QueueListener
from devstack.host.settings import HostConfig, SettingsError
from devstack.host.timers import Schedule, TimerListener

log = logging.getLogger(__name__)

HOST_VERSION = "4.0.0-evergreen-local"
_BLOB_FUNCTION_PREFIX = "host.functions."
# What `func start` logs as the reason for HTTP and admin (/admin/functions) invocations.
LISTENER_STOP_SECONDS = 2.0
ADMIN_REASON = "This function was programmatically called via the host APIs."


@dataclass
class Host:
    """The running host: indexed functions, configuration and the invoker."""

    app_dir: Path
    config: HostConfig
    functions: dict[str, FunctionInfo]
    invoker: Invoker
    clients: ClientCache
    drain_timeout: float = 30.0
    host_id: str = "evergreen-local"
    started: float = field(default_factory=time.monotonic)
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    background: set[asyncio.Task[Any]] = field(default_factory=set)
    queue_listeners: list[QueueListener] = field(default_factory=list)
    # The blob trigger's internal queue, one listener per storage connection of Event Grid blob triggers.
    blob_queues: dict[str, QueueListener] = field(default_factory=dict)

    loop: asyncio.AbstractEventLoop | None = None

    def request_stop(self) -> None:
        """Stop pulling queue messages and firing timers; safe to call from a signal handler."""
        if self.loop is not None and not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self._begin_stop)

    def _begin_stop(self) -> None:
        if not self.stopping.is_set():
            log.info("Stop requested: no new queue messages or timer firings; running invocations may finish")
            self.stopping.set()

    def find(self, name: str) -> FunctionInfo | None:
        return self.functions.get(name.lower())

    # ---- trigger data builders (run in threads when they do I/O) ----

    def blob_trigger_data(
        self, fn: FunctionInfo, blob_path: str, binding_data: Mapping[str, str]
    ) -> TriggerData | None:
        """Trigger data for a blob; None if the blob no longer exists (the host then skips it).

        Any other error reading the blob's properties (an odd name the service cannot sign or serve,
        a throttled account) does not stop the invocation: the function gets the blob without
        properties and decides itself (an SDK-type binding does no I/O before the function runs).
        """
        container, _, blob_name = blob_path.partition("/")
        connection = str(fn.trigger.config.get("connection") or "AzureWebJobsStorage")
        client = self.clients.blob(connection).get_blob_client(container, blob_name)
        try:
            props = client.get_blob_properties()
        except ResourceNotFoundError:
            return None
        except (AzureError, ValueError) as exc:
            log.warning("Cannot read the properties of blob '%s' (%s); invoking 'Functions.%s' without them",
                        blob_path, type(exc).__name__, fn.name)
            props = None
        properties = _blob_properties(props) if props is not None else {}
        metadata: dict[str, Datum] = {
            "BlobTrigger": string_datum(blob_path),
            "Uri": string_datum(client.url),
            "Properties": json_datum(properties),
            "Metadata": json_datum(dict(props.metadata or {}) if props is not None else {}),
        }
        metadata.update({key: string_datum(value) for key, value in binding_data.items()})

        def download() -> Datum:
            return Datum(client.download_blob().readall(), "bytes")

        return TriggerData(
            metadata=metadata,
            binding_data={"BlobTrigger": blob_path, **binding_data},
            datum=download,
            blob=BlobReference(connection, container, blob_name),
        )

    async def invoke_queue_message(
        self, fn: FunctionInfo, message: DequeuedMessage, queue: str, reason: str | None = None
    ) -> bool:
        try:
            text: str | None = message.body.decode("utf-8")
        except UnicodeDecodeError:
            text = None
        metadata: dict[str, Datum] = {
            "Id": string_datum(message.id),
            "DequeueCount": Datum(message.dequeue_count, "int"),
            "QueueTrigger": string_datum(text if text is not None else ""),
        }
        for key, moment in (
            ("InsertionTime", message.insertion_time),
            ("ExpirationTime", message.expiration_time),
            ("NextVisibleTime", message.next_visible_time),
        ):
            if moment is not None:
                metadata[key] = string_datum(moment.isoformat())
        if message.pop_receipt:
            metadata["PopReceipt"] = string_datum(message.pop_receipt)
        body_datum = string_datum(text) if text is not None else Datum(message.body, "bytes")
        trigger = TriggerData(
            metadata=metadata,
            binding_data={"QueueTrigger": text or "", "Id": message.id},
            datum=lambda: body_datum,
        )
        result = await self.invoker.invoke(fn, trigger, reason or f"New queue message detected on '{queue}'.")
        return result.succeeded

    async def fire_timer(
        self, fn: FunctionInfo, past_due: bool, at: datetime, following: datetime, reason: str | None = None
    ) -> None:
        info = {
            "Schedule": {"AdjustForDST": True},
            "ScheduleStatus": {"Last": at.isoformat(), "Next": following.isoformat(), "LastUpdated": at.isoformat()},
            "IsPastDue": past_due,
        }
        trigger = TriggerData(datum=lambda: json_datum(info))
        await self.invoker.invoke(fn, trigger, reason or f"Timer fired at {at.isoformat()}")

    async def invoke_event(
        self, fn: FunctionInfo, event: Mapping[str, Any], reason: str | None = None
    ) -> InvocationResult:
        trigger = TriggerData(datum=lambda: json_datum(event))
        reason = reason or f"EventGrid trigger fired at {datetime.now(UTC).isoformat()}"
        return await self.invoker.invoke(fn, trigger, reason)

    async def invoke_blob(
        self, fn: FunctionInfo, blob_path: str, reason: str | None = None
    ) -> InvocationResult | None:
        """Invoke a blob-trigger function for `container/blob` if it matches; None when skipped."""
        assert fn.blob_pattern is not None
        binding_data = fn.blob_pattern.match(blob_path)
        if binding_data is None:
            log.info(
                "Blob '%s' does not match the trigger path '%s' of 'Functions.%s'; ignored",
                blob_path, fn.blob_pattern.template, fn.name,
            )
            return None
        trigger = await asyncio.to_thread(self.blob_trigger_data, fn, blob_path, binding_data)
        if trigger is None:
            log.warning("Blob '%s' no longer exists; 'Functions.%s' not invoked", blob_path, fn.name)
            return None
        return await self.invoker.invoke(fn, trigger, reason or f"New blob detected(EventGrid): {blob_path}")

    def blob_connection(self, fn: FunctionInfo) -> str:
        return str(fn.trigger.config.get("connection") or "AzureWebJobsStorage")

    def enqueue_blob(self, fn: FunctionInfo, container: str, blob_name: str, event: Mapping[str, Any]) -> None:
        """Write the BlobTriggerMessage for one blob to the trigger's queue (runs in a thread).

        Raises AzureError when the queue cannot be written: the Event Grid delivery then fails and
        Event Grid retries it, as in Azure.
        """
        listener = self.blob_queues[self.blob_connection(fn).lower()]
        data = event.get("data") if isinstance(event.get("data"), dict) else {}
        assert isinstance(data, dict)
        etag = data.get("eTag")
        message = BlobTriggerMessage.for_function(
            fn.name, container, blob_name, blob_type=blob_type_name(data.get("blobType")),
            etag=etag if isinstance(etag, str) else None,
        )
        queue = self.clients.queue(self.blob_connection(fn)).get_queue_client(listener.queue_name)
        content = encode_queue_message(message.to_json().encode("utf-8"), self.config.queues.message_encoding)
        try:
            queue.send_message(content)
        except ResourceNotFoundError:
            with contextlib.suppress(ResourceExistsError):
                queue.create_queue()
            queue.send_message(content)
        log.info("Blob '%s/%s' queued for 'Functions.%s' on '%s'", container, blob_name, fn.name,
                 listener.queue_name)

    async def run_blob_message(self, message: DequeuedMessage) -> bool:
        """Run the blob-trigger function a queued BlobTriggerMessage names; True completes the message."""
        try:
            queued = BlobTriggerMessage.from_json(message.body)
        except BadBlobTriggerMessage as exc:
            log.error("Message '%s' on the blob trigger queue is not a BlobTriggerMessage (%s); dropped",
                      message.id, exc)
            return True
        fn = self.find(queued.function_name)
        if fn is None or fn.trigger_type != "blobTrigger" or not fn.runnable:
            log.warning("Message '%s' names function '%s', which this host does not run; dropped",
                        message.id, queued.function_id)
            return True
        reason = f"New blob detected(EventGrid): {queued.blob_path} (dequeue count {message.dequeue_count})"
        result = await self.invoke_blob(fn, queued.blob_path, reason)
        return result is None or result.succeeded

    def in_background(self, coroutine: Any) -> None:
        task = asyncio.create_task(coroutine)
        self.background.add(task)
        task.add_done_callback(self.background.discard)


def _blob_properties(props: Any) -> dict[str, Any]:
    """The trigger metadata `Properties` of a blob, from the SDK's BlobProperties."""
    return {
        "ContentLength": props.size,
        "Length": props.size,
        "ContentType": props.content_settings.content_type,
        "ContentEncoding": props.content_settings.content_encoding,
        "ETag": props.etag,
        "LastModified": props.last_modified.isoformat() if props.last_modified else None,
        "CreatedOn": props.creation_time.isoformat() if props.creation_time else None,
        "BlobType": str(props.blob_type),
    }


# ---------------------------------------------------------------- routes


def _host(request: Request) -> Host:
    host: Host = request.app.state.host
    return host


async def root(request: Request) -> Response:
    return PlainTextResponse("Your Functions 4.0 app is up and running (Evergreen local host)")


async def host_status(request: Request) -> Response:
    host = _host(request)
    errors = [f"{fn.name}: {fn.error}" for fn in host.functions.values() if fn.error]
    body = {
        "id": host.host_id,
        "state": "Stopping" if host.stopping.is_set() else "Running",
        "version": HOST_VERSION,
        "versionDetails": HOST_VERSION,
        "platformVersion": "",
        "instanceId": host.host_id,
        "computerName": "localhost",
        "processUptime": int((time.monotonic() - host.started) * 1000),
        "functionAppContentEditingState": "NotAllowed",
        "errors": errors or None,
        "runningInvocations": host.invoker.running,
    }
    return JSONResponse({k: v for k, v in body.items() if v is not None})


def _describe(fn: FunctionInfo, base_url: str, prefix: str) -> dict[str, Any]:
    description: dict[str, Any] = {
        "name": fn.name,
        "trigger": fn.trigger_type,
        "language": "python",
        "isDisabled": fn.disabled,
        "config": {"bindings": [dict(b.config) for b in fn.bindings]},
        "href": f"{base_url}/admin/functions/{fn.name}",
    }
    if fn.route is not None:
        route = "/".join(part for part in (prefix, fn.route.template.strip("/")) if part)
        description["invoke_url_template"] = f"{base_url}/{route}"
    if fn.error:
        description["error"] = fn.error
    return description


async def list_functions(request: Request) -> Response:
    host = _host(request)
    base = str(request.base_url).rstrip("/")
    return JSONResponse([_describe(fn, base, host.config.route_prefix) for fn in host.functions.values()])


async def function_admin(request: Request) -> Response:
    host = _host(request)
    fn = host.find(request.path_params["name"])
    if fn is None:
        return JSONResponse({"error": f"function '{request.path_params['name']}' not found"}, status_code=404)
    if request.method == "GET":
        return JSONResponse(_describe(fn, str(request.base_url).rstrip("/"), host.config.route_prefix))
    if not fn.runnable:
        return JSONResponse({"error": f"function '{fn.name}' cannot run: {fn.error or 'disabled'}"}, status_code=404)
    raw = await request.body()
    try:
        document = json.loads(raw) if raw.strip() else {}
    except json.JSONDecodeError:
        return JSONResponse({"error": "body must be JSON like {\"input\": \"...\"}"}, status_code=400)
    value = document.get("input", "") if isinstance(document, dict) else ""
    text = value if isinstance(value, str) else json.dumps(value)
    kind = fn.trigger_type
    if kind == "httpTrigger":
        return JSONResponse({"error": "HTTP-triggered functions are called at their route"}, status_code=400)
    if kind == "timerTrigger":
        now = datetime.now(UTC)
        host.in_background(host.fire_timer(fn, False, now, now, ADMIN_REASON))
    elif kind == "queueTrigger":
        message = DequeuedMessage(
            id=str(uuid.uuid4()), body=text.encode("utf-8"), dequeue_count=1, insertion_time=datetime.now(UTC),
            expiration_time=None, next_visible_time=None, pop_receipt=None,
        )
        host.in_background(
            host.invoke_queue_message(fn, message, str(fn.trigger.config["queueName"]), ADMIN_REASON)
        )
    elif kind == "eventGridTrigger":
        try:
            event = value if isinstance(value, dict) else json.loads(text)
        except json.JSONDecodeError:
            return JSONResponse({"error": "input must be an Event Grid event as JSON"}, status_code=400)
        if not isinstance(event, dict):
            return JSONResponse({"error": "input must be one event object"}, status_code=400)
        host.in_background(host.invoke_event(fn, event, ADMIN_REASON))
    elif kind == "blobTrigger":
        host.in_background(host.invoke_blob(fn, text.strip("/"), ADMIN_REASON))
    return Response(status_code=202)


def _abuse_protection(request: Request) -> Response:
    """CloudEvents webhook validation (OPTIONS): consent to deliveries from the requesting origin."""
    origin = request.headers.get("webhook-request-origin")
    if not origin:
        return Response(status_code=400)
    headers = {"WebHook-Allowed-Origin": origin, "Allow": "POST"}
    rate = request.headers.get("webhook-request-rate")
    if rate:
        headers["WebHook-Allowed-Rate"] = rate
    return Response(status_code=200, headers=headers)


async def _read_events(request: Request) -> list[dict[str, Any]] | Response:
    try:
        return events.parse_events(await request.body())
    except events.MalformedEventsError as exc:
        log.warning("Rejected an Event Grid delivery: %s", exc)
        return JSONResponse({"error": str(exc)}, status_code=400)


def _handshake(request: Request, delivered: list[dict[str, Any]]) -> Response | None:
    kind = request.headers.get("aeg-event-type", "").lower()
    try:
        handshake = events.validation_handshake(delivered)
    except events.MalformedEventsError as exc:
        return JSONResponse({"error": str(exc)}, status_code=400)
    if kind == "subscriptionvalidation" or handshake is not None:
        if handshake is None:
            return JSONResponse({"error": "no SubscriptionValidationEvent in the body"}, status_code=400)
        log.info("Answered Event Grid subscription validation")
        return JSONResponse({"validationResponse": handshake.validation_code})
    if kind == "unsubscribe":
        return Response(status_code=202)
    return None


async def eventgrid_webhook(request: Request) -> Response:
    if request.method == "OPTIONS":
        return _abuse_protection(request)
    host = _host(request)
    name = request.query_params.get("functionName", "")
    fn = host.find(name)
    if fn is None or fn.trigger_type != "eventGridTrigger" or not fn.runnable:
        return JSONResponse({"error": f"No Event Grid function named '{name}'"}, status_code=404)
    delivered = await _read_events(request)
    if isinstance(delivered, Response):
        return delivered
    answered = _handshake(request, delivered)
    if answered is not None:
        return answered
    failed = [r for r in [await host.invoke_event(fn, event) for event in delivered] if not r.succeeded]
    return Response(status_code=500 if failed else 202)


async def blobs_webhook(request: Request) -> Response:
    if request.method == "OPTIONS":
        return _abuse_protection(request)
    host = _host(request)
    name = request.query_params.get("functionName", "")
    short = name[len(_BLOB_FUNCTION_PREFIX) :] if name.lower().startswith(_BLOB_FUNCTION_PREFIX) else name
    fn = host.find(short)
    if (
        fn is None
        or fn.trigger_type != "blobTrigger"
        or str(fn.trigger.config.get("source", "")).lower() != "eventgrid"
        or not fn.runnable
    ):
        return JSONResponse({"error": f"No Event Grid blob trigger function named '{name}'"}, status_code=404)
    delivered = await _read_events(request)
    if isinstance(delivered, Response):
        return delivered
    answered = _handshake(request, delivered)
    if answered is not None:
        return answered
    try:
        paths = [
            events.blob_path(event) if events.event_type(event) == events.BLOB_CREATED else None
            for event in delivered
        ]
    except events.MalformedEventsError as exc:
        return JSONResponse({"error": str(exc)}, status_code=400)
    try:
        for event, path in zip(delivered, paths, strict=True):
            await _queue_blob_event(host, fn, event, path)
    except (AzureError, StorageConnectionError) as exc:
        # Nothing durable was written for this delivery: fail it so that Event Grid retries it.
        log.error("Cannot queue a blob event for 'Functions.%s': %s", fn.name, exc)
        return Response(status_code=500)
    return Response(status_code=202)


async def _queue_blob_event(host: Host, fn: FunctionInfo, event: dict[str, Any], path: str | None) -> None:
    """Hand one BlobCreated event to the trigger's queue (the function runs from there, not here)."""
    if path is None:
        log.info("Ignored event '%s' of type '%s' (blob triggers act on BlobCreated)", event.get("id"),
                 events.event_type(event))
        return
    assert fn.blob_pattern is not None
    if fn.blob_pattern.match(path) is None:
        log.info(
            "Blob '%s' does not match the trigger path '%s' of 'Functions.%s'; ignored",
            path, fn.blob_pattern.template, fn.name,
        )
        return
    container, _, blob_name = path.partition("/")
    await asyncio.to_thread(host.enqueue_blob, fn, container, blob_name, event)
    listener = host.blob_queues.get(host.blob_connection(fn).lower())
    if listener is not None:
        listener.nudge()


def _route_specificity(fn: FunctionInfo) -> int:
    assert fn.route is not None
    return sum(1 for segment in fn.route.template.split("/") if segment and "{" not in segment)


async def http_trigger(request: Request) -> Response:
    host = _host(request)
    path = request.path_params.get("path", "")
    matches = [
        (fn, params)
        for fn in host.functions.values()
        if fn.route is not None and fn.runnable and (params := fn.route.match(path)) is not None
    ]
    matches = [(fn, p) for fn, p in matches if fn.methods is None or request.method in fn.methods]
    if not matches:
        return Response(status_code=404)
    fn, route_params = max(matches, key=lambda pair: _route_specificity(pair[0]))
    body = await request.body()
    headers: dict[str, str] = {}
    for key, value in request.headers.items():
        headers[key] = f"{headers[key]}, {value}" if key in headers else value
    http_request = func.HttpRequest(
        request.method,
        str(request.url),
        headers=headers,
        params=dict(request.query_params),
        route_params=route_params,
        body=body,
    )
    trigger = TriggerData(value=http_request, binding_data={**dict(request.query_params), **route_params})
    result = await host.invoker.invoke(fn, trigger, ADMIN_REASON)
    if not result.succeeded:
        return Response(status_code=500)
    return _to_response(fn, result.value)


def _to_response(fn: FunctionInfo, value: Any) -> Response:
    """The HTTP response for a function's return value (what the worker's HTTP converter accepts)."""
    if isinstance(value, func.HttpResponse):
        headers = dict(value.headers)
        if not any(key.lower() == "content-type" for key in headers):
            mimetype = value.mimetype or "text/plain"
            headers["content-type"] = (
                f"{mimetype}; charset={value.charset}" if mimetype.startswith("text/") else mimetype
            )
        return Response(content=value.get_body() or b"", status_code=value.status_code, headers=headers)
    if isinstance(value, str):
        return PlainTextResponse(value)
    if isinstance(value, bytes):
        return Response(content=value, media_type="application/octet-stream")
    log.error("'Functions.%s' returned %s; an HTTP function must return func.HttpResponse or str",
              fn.name, type(value).__name__)
    return Response(status_code=500)


class CaseInsensitiveSystemRoutes:
    """The host's routes ignore case (`/runtime/webhooks/EventGrid`, `/API/...`); route templates
    match case-insensitively themselves, so only the fixed prefixes are folded here."""

    def __init__(self, app: ASGIApp, route_prefix: str) -> None:
        self.app = app
        self.route_prefix = f"/{route_prefix.lower()}/" if route_prefix else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path: str = scope["path"]
            lowered = path.lower()
            if lowered.startswith(("/admin/", "/runtime/")):
                if lowered.startswith("/admin/functions/"):
                    head = "/admin/functions/"
                    scope = dict(scope, path=head + path[len(head) :])
                else:
                    scope = dict(scope, path=lowered)
            elif self.route_prefix and lowered.startswith(self.route_prefix):
                scope = dict(scope, path=self.route_prefix + path[len(self.route_prefix) :])
        await self.app(scope, receive, send)


# ---------------------------------------------------------------- listeners and lifecycle


def _listeners(host: Host) -> list[Any]:
    runners: list[Any] = []
    for fn in host.functions.values():
        if not fn.runnable:
            continue
        if fn.trigger_type == "timerTrigger":
            try:
                schedule = Schedule(str(fn.trigger.config["schedule"]))
            except SettingsError as exc:
                fn.error = str(exc)
                log.error("Function '%s' is in error and will not run: %s", fn.name, exc)
                continue

            async def fire(past_due: bool, at: datetime, following: datetime, fn: FunctionInfo = fn) -> None:
                await host.fire_timer(fn, past_due, at, following)

            runners.append(
                TimerListener(
                    fn.name, schedule, fire,
                    run_on_startup=bool(fn.trigger.config.get("runOnStartup")), stopping=host.stopping,
                )
            )
        elif fn.trigger_type == "queueTrigger":
            queue_name = str(fn.trigger.config["queueName"]).lower()
            try:
                service = host.clients.queue(str(fn.trigger.config.get("connection") or ""))
            except StorageConnectionError as exc:
                fn.error = str(exc)
                log.error("Function '%s' is in error and will not run: %s", fn.name, exc)
                continue

            async def process(message: DequeuedMessage, fn: FunctionInfo = fn, queue: str = queue_name) -> bool:
                return await host.invoke_queue_message(fn, message, queue)

            listener = QueueListener(
                fn.name,
                service.get_queue_client(queue_name),
                service.get_queue_client(f"{queue_name}-poison"),
                host.config.queues,
                process,
                stopping=host.stopping,
            )
            host.queue_listeners.append(listener)
            runners.append(listener)
        elif fn.trigger_type == "blobTrigger" and str(fn.trigger.config.get("source", "")).lower() == "eventgrid":
            blob_listener = _blob_queue_listener(host, fn)
            if blob_listener is not None:
                runners.append(blob_listener)
        elif fn.trigger_type == "blobTrigger":
            log.warning(
                "Function '%s': polling blob triggers are not supported locally; use source='EventGrid' "
                "(deliveries to /runtime/webhooks/blobs)", fn.name,
            )
    return runners


def _blob_queue_listener(host: Host, fn: FunctionInfo) -> QueueListener | None:
    """The listener of the blob trigger queue in `fn`'s storage account; None when it already runs
    (functions on one connection share it) or the connection cannot reach a queue service."""
    connection = host.blob_connection(fn)
    if connection.lower() in host.blob_queues:
        return None
    try:
        service = host.clients.queue(connection)
    except StorageConnectionError as exc:
        fn.error = f"{exc} (the blob trigger keeps its queue and poison queue in that account)"
        log.error("Function '%s' is in error and will not run: %s", fn.name, fn.error)
        return None
    listener = QueueListener(
        f"blob triggers on {connection}",
        service.get_queue_client(work_queue_name(host.host_id)),
        service.get_queue_client(POISON_QUEUE),
        host.config.queues,
        host.run_blob_message,
        stopping=host.stopping,
    )
    host.blob_queues[connection.lower()] = listener
    host.queue_listeners.append(listener)
    return listener


def build_app(host: Host) -> ASGIApp:
    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        host.stopping = asyncio.Event()
        host.loop = asyncio.get_running_loop()
        tasks = [asyncio.create_task(runner.run(), name=type(runner).__name__) for runner in _listeners(host)]
        for fn in host.functions.values():
            log.info("Function '%s' (%s)%s", fn.name, fn.trigger_type,
                     f" in error: {fn.error}" if fn.error else " disabled" if fn.disabled else "")
        log.info("Host started: %d functions, %d listeners", len(host.functions), len(tasks))
        try:
            yield
        finally:
            await _shutdown(host, tasks)

    routes = [
        Route("/", root, methods=["GET"]),
        Route("/admin/host/status", host_status, methods=["GET"]),
        Route("/admin/functions", list_functions, methods=["GET"]),
        Route("/admin/functions/{name}", function_admin, methods=["GET", "POST"]),
        Route("/runtime/webhooks/eventgrid", eventgrid_webhook, methods=["POST", "OPTIONS"]),
        Route("/runtime/webhooks/blobs", blobs_webhook, methods=["POST", "OPTIONS"]),
    ]
    all_methods = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]
    prefix = host.config.route_prefix
    routes.append(Route(f"/{prefix}/{{path:path}}" if prefix else "/{path:path}", http_trigger, methods=all_methods))
    if prefix:
        routes.append(Route(f"/{prefix}", http_trigger, methods=all_methods))
    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.host = host
    return CaseInsensitiveSystemRoutes(app, prefix)


async def _shutdown(host: Host, tasks: list[asyncio.Task[None]]) -> None:
    """Stop pulling work, then give running invocations up to `drain_timeout` to finish."""
    host._begin_stop()
    log.info("Host stopping: waiting up to %.0fs for running invocations", host.drain_timeout)
    deadline = time.monotonic() + host.drain_timeout
    if tasks:
        # Listeners only poll; they get a moment to finish a receive, then are cancelled.
        _done, polling = await asyncio.wait(tasks, timeout=min(LISTENER_STOP_SECONDS, host.drain_timeout))
        for task in polling:
            task.cancel()
    pending: set[asyncio.Task[Any]] = set(host.background)
    for listener in host.queue_listeners:
        pending |= listener.in_flight
    if pending:
        await asyncio.wait(pending, timeout=max(0.1, deadline - time.monotonic()))
    idle = await asyncio.to_thread(host.invoker.wait_idle, max(0.1, deadline - time.monotonic()))
    if not idle:
        log.warning("Stopped with %d invocation(s) still running after %.0fs", host.invoker.running,
                    host.drain_timeout)
    host.invoker.close()
    log.info("Host stopped")
