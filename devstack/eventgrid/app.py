"""The local Event Grid server: topics, routing by the subscription file, inspection, and the lifespan
that runs the delivery dispatcher and the storage watcher in the same process."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import sqlite3
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route as HttpRoute

from devstack.eventgrid.config import Subscription, SubscriptionFileError, load_subscriptions
from devstack.eventgrid.delivery import Dispatcher, RetrySettings
from devstack.eventgrid.envelope import EnvelopeError, Schema, parse_batch
from devstack.eventgrid.faults import DeliveryFaults, FaultPlan, FaultSpecError
from devstack.eventgrid.filters import filter_matches
from devstack.eventgrid.store import Route, Store

logger = logging.getLogger(__name__)

DEFAULT_SUBSCRIPTION_ID = "00000000-0000-0000-0000-000000000000"
DEFAULT_RESOURCE_GROUP = "evergreen-local"
DEFAULT_WORKSPACE = "evergreen-ws"
MAX_LIMIT = 5000


@dataclass(frozen=True)
class Settings:
    state_dir: Path
    host_url: str
    subscriptions_path: Path
    topic_key: str
    storage_connection_string: str | None
    subscription_id: str = DEFAULT_SUBSCRIPTION_ID
    resource_group: str = DEFAULT_RESOURCE_GROUP
    workspace_name: str = DEFAULT_WORKSPACE
    retry: RetrySettings = field(default_factory=RetrySettings)
    concurrency: int = 16
    watch_interval: float = 0.5
    emit_existing: bool = False
    faults: DeliveryFaults = field(default_factory=DeliveryFaults)

    def arm_prefix(self) -> str:
        return f"/subscriptions/{self.subscription_id}/resourceGroups/{self.resource_group}/providers"

    def topic_ids(self) -> dict[str, str]:
        prefix = self.arm_prefix()
        return {
            "storage": prefix + "/Microsoft.Storage/storageAccounts/{account}",
            "workspace": f"{prefix}/Microsoft.MachineLearningServices/workspaces/{self.workspace_name}",
            "evergreen": f"{prefix}/Microsoft.EventGrid/topics/evergreen",
        }


class SubscriptionSet:
    """The subscription file, re-read when it changes so edits apply without a restart."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._mtime = path.stat().st_mtime_ns
        self.subscriptions: tuple[Subscription, ...] = load_subscriptions(path)

    def current(self) -> tuple[Subscription, ...]:
        with contextlib.suppress(OSError):
            mtime = self._path.stat().st_mtime_ns
            if mtime != self._mtime:
                self._mtime = mtime
                try:
                    self.subscriptions = load_subscriptions(self._path)
                    logger.info("reloaded %d subscription(s) from %s", len(self.subscriptions), self._path)
                except SubscriptionFileError as exc:
                    logger.error("keeping the previous subscriptions: %s", exc)
        return self.subscriptions

    def routes_for(self, topic: str, event: dict[str, Any]) -> list[Route]:
        return [
            Route(
                subscription=s.name,
                function=s.destination.function,
                kind=s.destination.kind.value,
                dead_letter_container=s.dead_letter.container if s.dead_letter else None,
                max_attempts=s.retry_policy.max_delivery_attempts,
                ttl_seconds=s.retry_policy.event_time_to_live_in_minutes * 60.0,
            )
            for s in self.current()
            if s.topic == topic and filter_matches(s.filter, event)
        ]


class Broker:
    """Publishing: record events and queue one delivery per matching subscription, then wake delivery.

    The delivery faults (duplicates, shuffling, late) act here, on the rows queued for each event.
    """

    def __init__(self, store: Store, subscriptions: SubscriptionSet, faults: FaultPlan | None = None) -> None:
        self.store = store
        self.subscriptions = subscriptions
        self.faults = faults or FaultPlan()
        self.on_queued: Callable[[], None] = lambda: None

    def publish(
        self,
        topic: str,
        schema: Schema,
        events: list[dict[str, Any]],
        also: Callable[[sqlite3.Connection], None] | None = None,
    ) -> int:
        routed = [(event, self.faults.apply(topic, self.subscriptions.routes_for(topic, event))) for event in events]
        queued = self.store.ingest(topic, schema.value, routed, also=also)
        if queued:
            self.on_queued()
        return queued


def _error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status)


def _limit(request: Request, default: int = 100) -> int:
    try:
        return max(1, min(MAX_LIMIT, int(request.query_params.get("limit", default))))
    except ValueError:
        return default


@dataclass
class Runtime:
    """What the routes share: settings, subscriptions, the delivery faults and, once started, the broker."""

    settings: Settings
    subscriptions: SubscriptionSet
    topic_ids: dict[str, str]
    faults: FaultPlan
    broker: Broker | None = None
    watcher: Any = None
    account: str = "devstoreaccount1"

    def the_broker(self) -> Broker:
        if self.broker is None:
            raise RuntimeError("the local Event Grid is not started")
        return self.broker


def _runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


async def publish(request: Request) -> Response:
    runtime = _runtime(request)
    topic = request.path_params["topic"]
    if topic not in runtime.topic_ids:
        return _error(
            404, "NotFound", f"Topic {topic!r} does not exist; topics are {', '.join(runtime.topic_ids)}."
        )
    key = request.headers.get("aeg-sas-key")
    if key is None or not hmac.compare_digest(key.encode(), runtime.settings.topic_key.encode()):
        reason = "is missing" if key is None else "is not valid for this topic"
        return _error(401, "Unauthorized", f"The request header 'aeg-sas-key' {reason}.")
    topic_id = runtime.topic_ids[topic].format(account=runtime.account)
    try:
        batch = parse_batch(await request.body(), request.headers.get("content-type", ""), topic_id=topic_id)
    except EnvelopeError as exc:
        logger.info("rejected publish to %s: %s", topic, exc.message)
        return JSONResponse(exc.to_json(), status_code=exc.status)
    queued = runtime.the_broker().publish(topic, batch.schema, batch.events)
    logger.info("topic %s: %d event(s) published, %d delivery(ies) queued", topic, len(batch.events), queued)
    return Response(status_code=200)


async def list_events(request: Request) -> Response:
    q = request.query_params
    return JSONResponse(
        _runtime(request).the_broker().store.list_events(
            topic=q.get("topic"), event_type=q.get("type"), subject_prefix=q.get("subject"), limit=_limit(request)
        )
    )


async def list_deliveries(request: Request) -> Response:
    q = request.query_params
    return JSONResponse(
        _runtime(request).the_broker().store.list_deliveries(
            status=q.get("status"), subscription=q.get("subscription"), limit=_limit(request)
        )
    )


async def list_dead_letters(request: Request) -> Response:
    return JSONResponse(
        _runtime(request).the_broker().store.list_dead_letters(
            subscription=request.query_params.get("subscription"), limit=_limit(request)
        )
    )


async def redeliver(request: Request) -> Response:
    broker = _runtime(request).the_broker()
    delivery_id = broker.store.redeliver(request.path_params["id"])
    if delivery_id is None:
        return _error(404, "NotFound", f"No dead letter with id {request.path_params['id']!r}.")
    broker.on_queued()
    return JSONResponse({"deliveryId": delivery_id}, status_code=202)


async def list_subscriptions(request: Request) -> Response:
    current = _runtime(request).subscriptions.current()
    return JSONResponse([s.model_dump(by_alias=True, mode="json") for s in current])


async def faults(request: Request) -> Response:
    """`GET /faults` shows the delivery faults, `PUT` replaces them, `DELETE` turns them off."""
    plan = _runtime(request).faults
    if request.method == "PUT":
        try:
            body = json.loads(await request.body() or b"{}")
            plan.set(DeliveryFaults.from_json(body))
        except (ValueError, FaultSpecError) as exc:
            return _error(400, "InvalidFaults", str(exc))
    elif request.method == "DELETE":
        plan.set(DeliveryFaults())
    return JSONResponse(plan.status())


async def healthz(request: Request) -> Response:
    runtime = _runtime(request)
    body: dict[str, Any] = {"status": "ok", "counts": runtime.the_broker().store.counts()}
    watcher = runtime.watcher
    if watcher is not None:
        body["watcher"] = {
            "scans": watcher.scans,
            "lastError": watcher.last_error,
            "lastScanAt": watcher.last_scan_at,
            "account": watcher.account,
        }
    if runtime.faults.faults.active:
        body["faults"] = runtime.faults.status()
    return JSONResponse(body)


def _start_watcher(runtime: Runtime, broker: Broker) -> Any:
    """The storage watcher publishing to `broker`, or None when no storage account is configured."""
    settings = runtime.settings
    if not settings.storage_connection_string:
        return None
    from devstack.eventgrid.watcher import StorageWatcher

    def publish_storage(
        topic: str, events: list[dict[str, Any]], also: Callable[[sqlite3.Connection], None]
    ) -> int:
        return broker.publish(topic, Schema.EVENT_GRID, events, also)

    watcher = StorageWatcher(
        broker.store,
        settings.storage_connection_string,
        publish_storage,
        topic_id_template=runtime.topic_ids["storage"],
        interval=settings.watch_interval,
        emit_existing=settings.emit_existing,
    )
    runtime.watcher, runtime.account = watcher, watcher.account
    return watcher


def _lifespan(runtime: Runtime) -> Callable[[Starlette], contextlib.AbstractAsyncContextManager[None]]:
    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        settings = runtime.settings
        store = Store(settings.state_dir / "eventgrid.sqlite")
        runtime.broker = broker = Broker(store, runtime.subscriptions, runtime.faults)
        dispatcher = Dispatcher(
            store,
            settings.host_url,
            retry=settings.retry,
            concurrency=settings.concurrency,
            blob_connection_string=settings.storage_connection_string,
        )
        broker.on_queued = dispatcher.wake
        tasks = [asyncio.create_task(dispatcher.run(), name="dispatcher")]
        watcher = _start_watcher(runtime, broker)
        if watcher is not None:
            await _first_scan(watcher)
            tasks.append(asyncio.create_task(watcher.run(), name="storage-watcher"))
        logger.info(
            "local Event Grid ready: host %s, %d subscription(s)",
            settings.host_url,
            len(runtime.subscriptions.current()),
        )
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if watcher is not None:
                watcher.close()
            store.close()

    return lifespan


def create_app(settings: Settings) -> Starlette:
    runtime = Runtime(
        settings=settings,
        subscriptions=SubscriptionSet(settings.subscriptions_path),
        topic_ids=settings.topic_ids(),
        faults=FaultPlan(settings.faults),
    )
    routes = [
        HttpRoute("/topics/{topic}/api/events", publish, methods=["POST"]),
        HttpRoute("/events", list_events, methods=["GET"]),
        HttpRoute("/deliveries", list_deliveries, methods=["GET"]),
        HttpRoute("/deadletters", list_dead_letters, methods=["GET"]),
        HttpRoute("/deadletters/{id}/redeliver", redeliver, methods=["POST"]),
        HttpRoute("/subscriptions", list_subscriptions, methods=["GET"]),
        HttpRoute("/faults", faults, methods=["GET", "PUT", "DELETE"]),
        HttpRoute("/healthz", healthz, methods=["GET"]),
    ]
    app = Starlette(routes=routes, lifespan=_lifespan(runtime))
    app.state.runtime = runtime
    return app


async def _first_scan(watcher: Any, deadline_seconds: float = 2.0) -> None:
    """Scan once before the port opens, so a client that sees the port up cannot race the baseline."""
    deadline = time.monotonic() + deadline_seconds
    while True:
        try:
            await watcher.scan_once()
            return
        except Exception as exc:
            if time.monotonic() > deadline:
                logger.warning("blob service unreachable at start (%s); the watcher keeps trying", exc)
                return
            await asyncio.sleep(0.25)


def serve(settings: Settings, port: int, host: str = "127.0.0.1") -> None:
    import uvicorn

    settings.state_dir.mkdir(parents=True, exist_ok=True)
    config = uvicorn.Config(
        create_app(settings),
        host=host,
        port=port,
        log_level="info",
        access_log=False,
        lifespan="on",
        log_config=None,
    )
    uvicorn.Server(config).run()
