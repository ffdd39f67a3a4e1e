"""The whole local stack: start every piece, write the settings a client needs, stop it again.

`python -m devstack up` runs it on the fixed ports of the contract (devstack/README.md); the
end-to-end tests run the very same code on free ports in a temporary directory.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

from devstack.azurite import connection_string, start_azurite
from devstack.procs import REPO_ROOT, Service, ServiceStartError, port_open, stop_pid

log = logging.getLogger(__name__)

TOPIC_KEY = "evergreen-local-topic-key"
WEBHOOK_SECRET = "evergreen-local-webhook-secret"  # local only; Azure reads it from Key Vault
CONTAINERS = ("landing", "azureml-blobstore", "deadletter")


@dataclass(frozen=True)
class Ports:
    blob: int = 10000
    queue: int = 10001
    table: int = 10002
    aml: int = 5443
    eventgrid: int = 7172
    host: int = 7071

    def all(self) -> dict[str, int]:
        return {
            "Azurite blob": self.blob, "Azurite queue": self.queue, "Azurite table": self.table,
            "Azure ML emulator": self.aml, "local Event Grid": self.eventgrid, "Functions host": self.host,
        }


@dataclass
class Stack:
    state_dir: Path
    ports: Ports
    env: dict[str, str] = field(default_factory=dict)
    services: list[Service] = field(default_factory=list)

    @property
    def env_file(self) -> Path:
        return self.state_dir / "env"

    @property
    def pid_file(self) -> Path:
        return self.state_dir / "pids.json"


def stack_env(state_dir: Path, ports: Ports) -> dict[str, str]:
    """Every setting a client (or the Function App) needs to reach the local stack."""
    from devstack.aml import client_env

    storage = connection_string(ports.blob, ports.queue, ports.table)
    env: dict[str, str] = dict(client_env(ports.aml, state_dir))
    env.update(
        {
            "AzureWebJobsStorage": storage,
            "DATA_STORAGE": storage,
            "EVERGREEN_EVENTS_TOPIC_ENDPOINT": f"http://127.0.0.1:{ports.eventgrid}/topics/evergreen/api/events",
            "EVERGREEN_EVENTS_TOPIC_KEY": TOPIC_KEY,
            "EVERGREEN_LANDING_CONTAINER": "landing",
            "EVERGREEN_EVENTGRID_URL": f"http://127.0.0.1:{ports.eventgrid}",
            "EVERGREEN_HOST_URL": f"http://127.0.0.1:{ports.host}",
            "EVERGREEN_RETENTION_SCHEDULE": "0 0 3 * * *",  # the retention timer (03:00 UTC daily)
            "EVERGREEN_RECONCILE_SCHEDULE": "0 */5 * * * *",  # the reconciler timer (every 5 minutes)
            "EVERGREEN_RESCORE_SCHEDULE": "0 30 4 * * *",  # champions re-scored (04:30 UTC daily)
            "EVERGREEN_WEBHOOK_SECRET": WEBHOOK_SECRET,  # registry webhooks (MLflow/Databricks) sign with it
            "FUNCTIONS_WORKER_RUNTIME": "python",
            "EVERGREEN_TRACE_FILE": str(state_dir / "traces.jsonl"),  # one JSON line per finished span
        }
    )
    return env


def _create_containers(storage: str) -> None:
    from azure.core.exceptions import ResourceExistsError
    from azure.storage.blob import BlobServiceClient

    service = BlobServiceClient.from_connection_string(storage)
    for name in CONTAINERS:
        with suppress(ResourceExistsError):
            service.create_container(name)


def start_stack(state_dir: Path, ports: Ports, *, app_dir: Path = REPO_ROOT, with_host: bool = True,
                env: Mapping[str, str] | None = None) -> Stack:
    """Start Azurite, the Azure ML emulator, the local Event Grid and the Functions host, in that order.

    `env`: settings added to (or overriding) the stack's, e.g. `EVERGREEN_POLICY_PATH`; they are part of
    `Stack.env`, so the host, a restarted host and a client given that environment all see them.
    """
    from devstack.aml import start_aml
    from devstack.eventgrid import start_eventgrid
    from devstack.host import start_host

    busy = [f"{name} port {port}" for name, port in ports.all().items() if port_open(port)]
    if busy:
        raise ServiceStartError(
            "ports already in use: " + ", ".join(busy) + " (is a stack already up? run `make down`)"
        )
    state_dir.mkdir(parents=True, exist_ok=True)
    stack = Stack(state_dir=state_dir, ports=ports)
    try:
        azurite = start_azurite(state_dir, ports.blob, ports.queue, ports.table)
        stack.services.append(azurite)
        azurite.wait_ready()
        storage = connection_string(ports.blob, ports.queue, ports.table)
        _create_containers(storage)
        eventgrid_url = f"http://127.0.0.1:{ports.eventgrid}"
        aml = start_aml(state_dir, ports.aml, storage_connection_string=storage, eventgrid_url=eventgrid_url,
                        eventgrid_key=TOPIC_KEY)
        stack.services.append(aml)
        eventgrid = start_eventgrid(
            state_dir, ports.eventgrid, host_url=f"http://127.0.0.1:{ports.host}",
            storage_connection_string=storage, subscriptions_path=REPO_ROOT / "infra" / "eventgrid-subscriptions.json",
            topic_key=TOPIC_KEY,
        )
        stack.services.append(eventgrid)
        aml.wait_ready()
        eventgrid.wait_ready()
        stack.env = {**stack_env(state_dir, ports), **(env or {})}
        if with_host:
            host = start_host(app_dir, ports.host, state_dir=state_dir, env=stack.env)
            stack.services.append(host)
            host.wait_ready(timeout=60)
    except BaseException:
        stop_stack(stack)
        raise
    write_state(stack)
    return stack


def write_state(stack: Stack) -> None:
    lines = [f"{k}={v}" for k, v in sorted(stack.env.items())]
    stack.env_file.write_text("\n".join(lines) + "\n", encoding="utf-8")
    stack.pid_file.write_text(
        json.dumps({s.name: s.process.pid for s in stack.services}, indent=2), encoding="utf-8"
    )


def stop_stack(stack: Stack) -> None:
    for service in reversed(stack.services):
        service.stop()
    with suppress(FileNotFoundError):
        stack.pid_file.unlink()


def stop_recorded(state_dir: Path) -> list[str]:
    """Stop the services a previous `up` recorded in pids.json (they outlive the process that started them)."""
    pid_file = state_dir / "pids.json"
    if not pid_file.exists():
        return []
    pids: dict[str, int] = json.loads(pid_file.read_text(encoding="utf-8"))
    for pid in reversed(list(pids.values())):
        stop_pid(pid)
    pid_file.unlink()
    return list(pids)


def read_env(state_dir: Path) -> dict[str, str]:
    env_file = state_dir / "env"
    if not env_file.exists():
        raise FileNotFoundError(f"{env_file} does not exist: start the stack with `make up`")
    pairs = (line.split("=", 1) for line in env_file.read_text(encoding="utf-8").splitlines() if "=" in line)
    return {k: v for k, v in pairs}


@contextmanager
def applied_env(env: dict[str, str]) -> Iterator[None]:
    """Set env vars for the duration (clients such as MLClient read them at construction)."""
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
