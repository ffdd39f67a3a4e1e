"""Real local serving for online deployments: model download, scoring processes, the scoring router.

- `fetch()` copies a model/code asset from Azurite into a local folder (the deployment's
  `AZUREML_MODEL_DIR` / code folder), resolving `azureml://…/datastores/<ds>/paths/<p>` through
  the `DatastoreMap` and plain blob URLs of the same account.
- `launch()` starts `python -m devstack.aml.scoring_server` for one deployment and returns once
  it answers its liveness check (or raises `ProvisioningError` with the reason).
- `ServingManager` keeps the live replica of every deployment and hands them to the
  `ScoringRouter`, an http server whose `/endpoints/<ep>/score` routes requests by the endpoint's
  traffic weights (or the `azureml-model-deployment` header) and checks the endpoint's keys. A
  replica is stopped only after no request is in flight on it, so traffic shifts never fail
  requests. The router knows nothing of SQLite: endpoint state comes from a `resolve` callback.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import logging
import os
import random
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt

from devstack.aml.storage import DatastoreMap

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]
DEPLOYMENT_HEADER = "azureml-model-deployment"
# How long a request waits for a deployment that is being (re)started, e.g. after a restart.
ACQUIRE_WAIT = 30.0
RETIRE_WAIT = 30.0


class ProvisioningError(Exception):
    """Why a deployment could not be served; `code` becomes the ARM error code of the LRO."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


# --- downloads -----------------------------------------------------------------------------------

def _container_and_path(datastores: DatastoreMap, uri: str) -> tuple[Any, str]:
    from azure.storage.blob import ContainerClient

    account = datastores.account
    resolved = datastores.resolve(uri)
    if resolved is not None:
        location, path = resolved
        container = location.container
    elif uri.startswith(account.blob_endpoint + "/"):
        container, _, path = uri[len(account.blob_endpoint) + 1:].partition("/")
    else:
        raise ProvisioningError("UserError", f"The asset URI {uri} is not on a datastore of this workspace.")
    client = ContainerClient(
        account_url=account.blob_endpoint, container_name=container,
        credential={"account_name": account.account_name, "account_key": account.account_key},
    )
    return client, path


def fetch(datastores: DatastoreMap, uri: str, dest: Path, *, keep_folder_name: bool) -> list[Path]:
    """Download the blob or blob folder `uri` under `dest`; returns the local files.

    A single file lands as `dest/<file>`. A folder lands as `dest/<folder name>/…` when
    `keep_folder_name` (what Azure does below `AZUREML_MODEL_DIR`), else its content goes to `dest`.
    """
    client, path = _container_and_path(datastores, uri)
    base = path.rstrip("/")
    try:
        blobs = [b.name for b in client.list_blobs(name_starts_with=base)]
    except Exception as exc:  # storage down or container missing
        raise ProvisioningError("ModelDownloadFailed", f"Listing {uri} failed: {exc}") from exc
    if base in blobs:
        pairs = [(base, dest / base.rsplit("/", 1)[-1])]
    else:
        prefix = f"{base}/" if base else ""
        folder = dest / base.rsplit("/", 1)[-1] if keep_folder_name and base else dest
        pairs = [(name, folder / name[len(prefix):]) for name in blobs if name.startswith(prefix)]
    if not pairs:
        raise ProvisioningError("ModelDownloadFailed", f"No files found at {uri}.")
    files = []
    for name, target in pairs:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(client.download_blob(name).readall())
        files.append(target)
    return files


# --- scoring processes ---------------------------------------------------------------------------

@dataclass
class Replica:
    """A running scoring process of one deployment generation."""

    endpoint: str
    deployment: str
    process: subprocess.Popen[bytes]
    port: int
    log_path: Path
    inflight: int = 0

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)


@dataclass(frozen=True)
class LaunchSpec:
    endpoint: str
    deployment: str
    workdir: Path
    model_dir: Path
    code_dir: Path
    script: str
    environment: dict[str, str] = field(default_factory=dict)
    fault: str = ""
    timeout: float = 60.0


def launch(spec: LaunchSpec) -> Replica:
    """Start the scoring process and wait until `GET /` answers 200; `ProvisioningError` otherwise."""
    spec.workdir.mkdir(parents=True, exist_ok=True)
    log_path = spec.workdir / "inference-server.log"
    port_file = spec.workdir / "port"
    port_file.unlink(missing_ok=True)
    env = {**os.environ, **spec.environment}
    env.update(
        AZUREML_MODEL_DIR=str(spec.model_dir),
        PYTHONUNBUFFERED="1",
        EVERGREEN_FAULT=spec.fault,
        PYTHONPATH=os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])),
    )
    argv = [sys.executable, "-m", "devstack.aml.scoring_server", "--code-dir", str(spec.code_dir),
            "--script", spec.script, "--port-file", str(port_file), "--parent-pid", str(os.getpid())]
    with log_path.open("ab") as out:
        process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=spec.workdir,
                                   start_new_session=True)
    deadline = time.monotonic() + spec.timeout
    while time.monotonic() < deadline:
        code = process.poll()
        if code is not None:
            raise ProvisioningError(
                "ResourceNotReady",
                f"User container has crashed or terminated: the scoring process of deployment {spec.deployment} "
                f"exited with code {code} during start-up (init() failed?). See the deployment logs (getLogs).",
            )
        if port_file.exists():
            port = int(port_file.read_text())
            if _alive(port):
                log.info("deployment %s/%s serves on port %s (pid %s)", spec.endpoint, spec.deployment, port,
                         process.pid)
                return Replica(spec.endpoint, spec.deployment, process, port, log_path)
        time.sleep(0.05)
    Replica(spec.endpoint, spec.deployment, process, 0, log_path).stop()
    raise ProvisioningError("ResourceNotReady",
                            f"The scoring process of deployment {spec.deployment} did not answer its liveness "
                            f"check within {spec.timeout:g} s.")


def _alive(port: int) -> bool:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        conn.request("GET", "/")
        return conn.getresponse().status == 200
    except OSError:
        return False
    finally:
        conn.close()


# --- routing -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class RouteInfo:
    """What the router needs to know about an endpoint, read fresh for every request."""

    name: str
    keys: tuple[str, ...]
    traffic: dict[str, int]
    mirror_traffic: dict[str, int]
    deployments: frozenset[str]  # lower-case names of existing deployments


def pick_deployment(traffic: dict[str, int], rng: random.Random | None = None) -> str | None:
    """Weighted random choice among deployments with positive weight; None if none has any."""
    weighted = [(name, weight) for name, weight in traffic.items() if weight > 0]
    if not weighted:
        return None
    names, weights = zip(*weighted, strict=True)
    return str((rng or random).choices(names, weights=weights, k=1)[0])


class ServingManager:
    """Live replicas by (endpoint, deployment), lower case; thread-safe."""

    def __init__(self, resolve: Callable[[str], RouteInfo | None], token_key: bytes, port: int = 0) -> None:
        self.resolve = resolve
        self.token_key = token_key
        self._lock = threading.Condition()
        self._live: dict[tuple[str, str], Replica] = {}
        self._pending: set[tuple[str, str]] = set()
        self._requested_port = port
        self._server: ThreadingHTTPServer | None = None

    # router lifecycle
    @property
    def port(self) -> int:
        with self._lock:
            if self._server is None:
                self._server = ThreadingHTTPServer(("127.0.0.1", self._requested_port), _router_handler(self))
                self._server.daemon_threads = True
                threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.2},
                                 name="aml-scoring-router", daemon=True).start()
                log.info("scoring router listening on http://127.0.0.1:%s", self._server.server_address[1])
            return int(self._server.server_address[1])

    def scoring_base(self, endpoint: str) -> str:
        return f"http://127.0.0.1:{self.port}/endpoints/{endpoint}"

    # replicas
    @staticmethod
    def _key(endpoint: str, deployment: str) -> tuple[str, str]:
        return endpoint.lower(), deployment.lower()

    def expect(self, endpoint: str, deployment: str) -> None:
        """A replica is being (re)started: requests for it wait instead of failing."""
        with self._lock:
            self._pending.add(self._key(endpoint, deployment))

    def abandon(self, endpoint: str, deployment: str) -> None:
        with self._lock:
            self._pending.discard(self._key(endpoint, deployment))
            self._lock.notify_all()

    def activate(self, replica: Replica) -> None:
        """Make `replica` the one that serves; the previous one is retired once idle."""
        key = self._key(replica.endpoint, replica.deployment)
        with self._lock:
            old = self._live.get(key)
            self._live[key] = replica
            self._pending.discard(key)
            self._lock.notify_all()
        if old is not None and old is not replica:
            threading.Thread(target=self._retire, args=(old,), daemon=True).start()

    def has(self, endpoint: str, deployment: str) -> bool:
        with self._lock:
            return self._key(endpoint, deployment) in self._live

    def retire(self, endpoint: str, deployment: str) -> None:
        """Stop serving the deployment: new requests no longer reach it, in-flight ones finish."""
        key = self._key(endpoint, deployment)
        with self._lock:
            old = self._live.pop(key, None)
            self._pending.discard(key)
            self._lock.notify_all()
        if old is not None:
            self._retire(old)

    def _retire(self, replica: Replica) -> None:
        deadline = time.monotonic() + RETIRE_WAIT
        with self._lock:
            while replica.inflight > 0 and time.monotonic() < deadline:
                self._lock.wait(timeout=0.1)
        replica.stop()
        log.info("stopped scoring process of %s/%s (pid %s)", replica.endpoint, replica.deployment,
                 replica.process.pid)

    def acquire(self, endpoint: str, deployment: str, wait: float = ACQUIRE_WAIT) -> Replica | None:
        key = self._key(endpoint, deployment)
        deadline = time.monotonic() + wait
        with self._lock:
            while True:
                replica = self._live.get(key)
                if replica is not None:
                    replica.inflight += 1
                    return replica
                remaining = deadline - time.monotonic()
                if key not in self._pending or remaining <= 0:
                    return None
                self._lock.wait(timeout=remaining)

    def release(self, replica: Replica) -> None:
        with self._lock:
            replica.inflight -= 1
            self._lock.notify_all()

    def stop_all(self) -> None:
        with self._lock:
            replicas = list(self._live.values())
            self._live.clear()
            server, self._server = self._server, None
        for replica in replicas:
            replica.stop()
        if server is not None:
            server.shutdown()
            server.server_close()

    # auth
    def issue_token(self, endpoint: str, lifetime: int = 3600) -> dict[str, Any]:
        now = int(time.time())
        token = jwt.encode({"aud": f"endpoint:{endpoint.lower()}", "iat": now, "exp": now + lifetime},
                           self.token_key, algorithm="HS256")
        return {"accessToken": token, "tokenType": "Bearer", "expiryTimeUtc": now + lifetime,
                "refreshAfterTimeUtc": now + lifetime // 2}

    def authorized(self, info: RouteInfo, authorization: str | None) -> bool:
        """Bearer <primary|secondary key>, an endpoint token from `/token`, or an Azure ML AAD token."""
        if not authorization or not authorization.lower().startswith("bearer "):
            return False
        credential = authorization[7:].strip()
        if credential and credential in info.keys:
            return True
        with contextlib.suppress(jwt.PyJWTError):
            jwt.decode(credential, self.token_key, algorithms=["HS256"], audience=f"endpoint:{info.name.lower()}")
            return True
        with contextlib.suppress(jwt.PyJWTError):
            claims = jwt.decode(credential, options={"verify_signature": False})
            return str(claims.get("aud", "")).rstrip("/") == "https://ml.azure.com"
        return False


class _Refused(Exception):
    """A scoring request the router answers itself (404, 401) instead of forwarding it."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


NO_DEPLOYMENT = ("No valid deployments to route to. Please check that the endpoint has at least one deployment "
                 "with positive weight values or use a deployment specific header to route.")


class _RouterHandler(BaseHTTPRequestHandler):
    """The endpoint's scoring URI: authenticate, pick a deployment by traffic (or header), forward."""

    protocol_version = "HTTP/1.1"
    manager: ServingManager  # set on the subclass `_router_handler` builds

    def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None,
              content_type: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(body)

    def _error(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        self._send(status, json.dumps({"message": message}).encode(), headers)

    def _target(self) -> tuple[str, str] | None:
        parts = self.path.split("?")[0].strip("/").split("/")
        if len(parts) == 3 and parts[0] == "endpoints":
            return parts[1], parts[2]
        return None

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    def _handle(self, method: str) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        try:
            endpoint, info, action = self._endpoint(method)
            requested = self.headers.get(DEPLOYMENT_HEADER)
            name = self._deployment(endpoint, info, requested)
        except _Refused as refused:
            self._error(refused.status, refused.message, refused.headers)
            return
        self._forward(info, name, method, action, body)
        if method == "POST" and not requested:
            self._mirror(endpoint, info, body)

    def _endpoint(self, method: str) -> tuple[str, RouteInfo, str]:
        """The endpoint addressed (as named in the URL, and resolved) and the action; raises _Refused."""
        target = self._target()
        if target is None or (method, target[1]) not in {("POST", "score"), ("GET", "swagger.json")}:
            raise _Refused(404, "Not found. Scoring URIs look like /endpoints/<endpoint>/score.")
        endpoint, action = target
        info = self.manager.resolve(endpoint)
        if info is None:
            raise _Refused(404, f"Endpoint {endpoint} not found.")
        if not self.manager.authorized(info, self.headers.get("Authorization")):
            raise _Refused(401, "Unauthorized: a valid key or token is required (Authorization: Bearer <key>).",
                           {"WWW-Authenticate": "Bearer"})
        return endpoint, info, action

    @staticmethod
    def _deployment(endpoint: str, info: RouteInfo, requested: str | None) -> str:
        """The deployment named by the header, else one picked by traffic weight; raises _Refused."""
        if requested:
            if requested.lower() not in info.deployments:
                raise _Refused(404, f"Deployment {requested} not found in endpoint {endpoint}.")
            return requested
        name = pick_deployment(info.traffic)
        if name is None:
            raise _Refused(404, NO_DEPLOYMENT)
        return name

    def _mirror(self, endpoint: str, info: RouteInfo, body: bytes) -> None:
        mirror = pick_deployment({**info.mirror_traffic, "": 100 - sum(info.mirror_traffic.values())})
        if mirror:
            threading.Thread(target=_shadow, args=(self.manager, endpoint, mirror, body, self.headers),
                             daemon=True).start()

    def _forward(self, info: RouteInfo, name: str, method: str, action: str, body: bytes) -> None:
        replica = self.manager.acquire(info.name, name)
        if replica is None:
            self._error(503, f"Deployment {name} is not serving (provisioning failed or in progress).")
            return
        try:
            status, payload, content_type = _call(replica, method, f"/{action}", body,
                                                  self.headers.get("Content-Type") or "application/json")
        except OSError as exc:
            self._error(502, f"Deployment {name} did not answer: {exc}")
            return
        finally:
            self.manager.release(replica)
        self._send(status, payload, {DEPLOYMENT_HEADER: replica.deployment}, content_type)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("scoring router: " + format, *args)


def _router_handler(manager: ServingManager) -> type[BaseHTTPRequestHandler]:
    """The router's request handler class, bound to `manager`."""
    return type("Handler", (_RouterHandler,), {"manager": manager})


def _call(replica: Replica, method: str, path: str, body: bytes, content_type: str) -> tuple[int, bytes, str]:
    conn = http.client.HTTPConnection("127.0.0.1", replica.port, timeout=90)
    try:
        conn.request(method, path, body=body if method == "POST" else None, headers={"Content-Type": content_type})
        resp = conn.getresponse()
        return resp.status, resp.read(), resp.getheader("Content-Type") or "application/json"
    finally:
        conn.close()


def _shadow(manager: ServingManager, endpoint: str, deployment: str, body: bytes, headers: Any) -> None:
    """Mirrored traffic: a copy of the request whose answer nobody sees."""
    replica = manager.acquire(endpoint, deployment, wait=0)
    if replica is None:
        return
    try:
        _call(replica, "POST", "/score", body, headers.get("Content-Type") or "application/json")
    except OSError as exc:
        log.info("mirrored request to %s/%s failed: %s", endpoint, deployment, exc)
    finally:
        manager.release(replica)
