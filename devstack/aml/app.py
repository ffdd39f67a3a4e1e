"""The emulator as an ASGI app: authentication, routing, error translation, event publishing.

Each resource family lives in its own module (workspace.py, assets.py, lro.py, components.py,
jobs.py, endpoints.py) and adds its routes to the Router passed to its `register(router)`; the
handlers take the `Emulator` (emulator.py), so no module imports this one. `open_emulator()`
builds the state, `build_router()` collects the routes, `create_app()` serves them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import jwt
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route as StarletteRoute

from devstack.aml import assets, components, endpoints, identity, jobs, lro, request_faults, stats, workspace
from devstack.aml.config import AmlConfig
from devstack.aml.emulator import Emulator
from devstack.aml.errors import ArmError
from devstack.aml.storage import DatastoreMap, StorageAccount
from devstack.aml.store import Store
from devstack.aml.web import Call, Principal, Reply, Router

log = logging.getLogger(__name__)

_METHODS = ["GET", "PUT", "POST", "DELETE", "PATCH", "HEAD"]


def build_router() -> Router:
    r = Router()
    workspace.register(r)  # workspace, datastores, computes
    assets.register(r)  # data and model containers and versions
    lro.register(r)  # operation status and results
    endpoints.register(r)  # online endpoints/deployments + /_emulator/faults
    assets.register_admin(r)  # /_emulator/seed (bulk versions)
    request_faults.register(r)  # /_emulator/request-faults (429, 5xx, hangs) and /_emulator/throttle
    components.register(r)  # codes, environments, components
    jobs.register(r)  # jobs (+ local execution) and /_emulator/jobs/{name}/logs
    stats.register(r)  # /_emulator/stats (Azure ML calls counted) and /_emulator/compute (hold jobs)
    return r


def open_emulator(config: AmlConfig) -> Emulator:
    """The emulator's state over `config.state_dir`, with the workspace's fixed resources seeded."""
    config.state_dir.mkdir(parents=True, exist_ok=True)
    emu = Emulator(
        config=config,
        store=Store(config.db_path),
        datastores=DatastoreMap(StorageAccount.from_connection_string(config.storage_connection_string)),
        token_key=identity.signing_key(config.state_dir),
        started_at=datetime.now(UTC).isoformat(),
    )
    with emu.store.write() as tx:
        workspace.seed(tx, config, emu.datastores.account.account_name)
    return emu


class EventPublisher:
    """Sends queued events to the local Event Grid topic `workspace`; failures are retried later."""

    def __init__(self, emu: Emulator, url: str, key: str | None, interval: float = 0.2) -> None:
        self.emu, self.url, self.key, self.interval = emu, url.rstrip("/"), key, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="aml-event-publisher", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        import httpx

        headers = {"aeg-sas-key": self.key} if self.key else {}
        backoff = self.interval
        with httpx.Client(timeout=10) as client:
            while not self._stop.wait(backoff):
                with self.emu.store.write() as tx:
                    batch = tx.claim_events(20, time.time())
                failed = False
                for event_id, topic, event in batch:
                    try:
                        resp = client.post(f"{self.url}/topics/{topic}/api/events", json=[event], headers=headers)
                        resp.raise_for_status()
                    except httpx.HTTPError as exc:
                        log.warning("publishing %s to topic %s failed (%s); will retry", event["eventType"], topic, exc)
                        with self.emu.store.write() as tx:
                            tx.release_event(event_id)
                        failed = True
                backoff = min(backoff * 2, 10.0) if failed else self.interval


def _principal(authorization: str) -> Principal:
    """Who signed the bearer token (unverified: the emulator accepts any token)."""
    token = authorization.split(" ", 1)[1].strip() if " " in authorization else ""
    try:
        claims = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError:
        return Principal()
    name = claims.get("name") or claims.get("upn") or claims.get("oid") or "Local User"
    return Principal(name=str(name), kind="Application" if claims.get("idtyp") == "app" else "User")


def _json(status: int, body: Any, headers: dict[str, str] | None = None) -> Response:
    return Response(json.dumps(body), status, headers=headers, media_type="application/json; charset=utf-8")


def _reply(reply: Reply) -> Response:
    if reply.empty:
        return Response(b"", reply.status, headers=reply.headers)
    return _json(reply.status, reply.body, reply.headers)


def _unauthenticated() -> Response:
    return _json(
        401,
        {"error": {"code": "AuthenticationFailed",
                   "message": "Authentication failed. The 'Authorization' header is missing."}},
        {"WWW-Authenticate": 'Bearer authorization_uri="https://login.microsoftonline.com/", '
                             'error="invalid_token", error_description="The authentication failed '
                             "because of missing 'Authorization' header.\""},
    )


def _unrouted(method: str, path: str, matched: bool | None) -> Response:
    """404 for a path the emulator does not serve, 405 for a known path with another method."""
    if matched is None:
        log.warning("unserved route: %s %s", method, path)
        return _json(404, {"error": {"code": "NoRouteFound",
                                     "message": f"The emulator does not serve {method} {path}."}})
    return _json(405, {"error": {"code": "MethodNotAllowed", "message": f"{method} is not supported on {path}."}})


async def _inject(injected: request_faults.Injection, method: str, path: str) -> ArmError | None:
    """Apply an injected fault: the error to answer, or None when the request is to be processed
    (after a `hang` with `then: process`, whose client has usually given up by then)."""
    log.warning("injected fault %s (rule %s) on %s %s", injected.fault, injected.rule_id, method, path)
    if injected.fault != "hang":
        return injected.error()
    await asyncio.sleep(injected.hang_seconds)
    return injected.error() if injected.then == "abort" else None


def create_app(config: AmlConfig) -> Starlette:
    emu = open_emulator(config)
    router = build_router()
    location = config.coords.location

    async def dispatch(request: Request) -> Response:
        path = request.url.path
        base_url = f"{request.url.scheme}://{request.headers.get('host', request.url.netloc)}"
        query = {k.lower(): v for k, v in request.query_params.multi_items()}
        raw_path = request.scope.get("raw_path", path.encode()).decode("latin-1")
        if path.rstrip("/").lower() == "/msi/token":
            call = Call(request.method, path, raw_path, {}, query, None, base_url)
            reply = await run_in_threadpool(identity.get_token, emu, call, request.headers.get("x-identity-header"))
            return _reply(reply)
        authorization = request.headers.get("authorization")
        if not authorization:
            return _unauthenticated()
        matched = router.match(request.method, path)
        if isinstance(matched, bool) or matched is None:
            return _unrouted(request.method, path, matched)
        route, params = matched
        stats.count(emu, request.method, path)
        if route.workspace_scoped and not config.coords.matches(params["sub"], params["rg"], params["ws"]):
            return _json(404, {"error": {
                "code": "ResourceNotFound",
                "message": f"The Resource 'Microsoft.MachineLearningServices/workspaces/{params['ws']}' under "
                           f"resource group '{params['rg']}' was not found.",
            }})
        raw = await request.body()
        try:
            body = json.loads(raw) if raw.strip() else None
        except ValueError as exc:
            return _json(400, ArmError(400, "UserError", f"The request body is not valid JSON: {exc}.").body(location))
        injected = await run_in_threadpool(request_faults.decide, emu, request.method, path)
        if injected is not None:
            failed = await _inject(injected, request.method, path)
            if failed is not None:
                return _json(failed.status, failed.body(location), failed.headers)
        call = Call(request.method, path, raw_path, params, query, body, base_url, _principal(authorization))
        try:
            reply = await run_in_threadpool(route.handler, emu, call)
        except ArmError as err:
            return _json(err.status, err.body(location), err.headers)
        return _reply(reply)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        publisher = EventPublisher(emu, config.eventgrid_url, config.eventgrid_key) if config.eventgrid_url else None
        if publisher:
            publisher.start()
        log.info("Azure ML emulator ready: workspace %s (%s)", config.coords.arm_id, config.db_path)
        try:
            yield
        finally:
            if publisher:
                publisher.stop()

    app = Starlette(
        routes=[
            StarletteRoute("/discovery", lambda r: _json(200, workspace.discovery(emu, _bare_call(r)).body)),
            StarletteRoute("/{path:path}", dispatch, methods=_METHODS),
        ],
        lifespan=lifespan,
    )
    app.state.emulator = emu
    return app


def _bare_call(request: Request) -> Call:
    base_url = f"{request.url.scheme}://{request.headers.get('host', request.url.netloc)}"
    return Call(request.method, request.url.path, request.url.path, {}, {}, None, base_url)
