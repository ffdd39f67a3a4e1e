"""What the stack benchmarks share: a local stack on free ports with two hosts, deliveries, and the host's log.

`BenchStack` starts Azurite, the Azure ML emulator and the local Event Grid on free ports (as
`tests/e2e/conftest.py::local_stack` does), then the local Functions host twice on the same code:
Evergreen's app (the repo root) and the comparison app `bench/naive_app` (the naive recipe and a
no-op trigger). Evergreen runs with a benchmark policy: one folder dataset in the
`azureml-blobstore` container (datastore `workspaceblobstore`), which the local Event Grid's
subscriptions do not route, so the only BlobCreated deliveries are the ones the benchmark posts.

Deliveries are posted by the benchmark itself to each host's Event Grid blob-trigger webhook
(`/runtime/webhooks/blobs?functionName=Host.Functions.<name>`), one event per POST, the way the local
Event Grid delivers. Azure ML calls are counted at the emulator (`/_emulator/stats`); the emulator's
compute is held (`/_emulator/compute`), so submitted jobs are stored and counted but not run.
Handler times and failures come from the host's own execution log (`Executed 'Functions.<name>'
(Succeeded|Failed, Id=…, Duration=…ms)`).
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import shutil
import statistics
import tempfile
import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from devstack.procs import REPO_ROOT, Service, free_port
from devstack.stack import Ports, Stack, start_stack, stop_stack

log = logging.getLogger(__name__)

CONTAINER = "azureml-blobstore"  # exists in every local stack; no Event Grid subscription routes it
DATASTORE = "workspaceblobstore"
DATASET = "bench-burst"
PREFIX = "bench/"
SENDERS = 8
KEEP = "EVERGREEN_BENCH_KEEP"  # set: keep the stack's directory (logs, traces) after the run
NAIVE_APP = REPO_ROOT / "bench" / "naive_app"
_EXECUTED = re.compile(r"Executed 'Functions\.(?P<fn>[\w-]+)' \((?P<ok>Succeeded|Failed), Id=(?P<id>[^,]+), "
                       r"Duration=(?P<ms>[\d.]+)ms\)")
POLICY = """\
version: 1
datasets:
  - name: {dataset}
    container: {container}
    prefix: {prefix}
    type: uri_folder
    datastore: {datastore}
    batch:
      marker: _SUCCESS
      quiet_period_seconds: 3600
    description: The burst benchmark's drop folder.
retraining:
  - dataset: {dataset}
    pipeline: {pipeline}
    experiment: bench-burst
    model_name: bench-model
    min_interval_minutes: 0
    inputs:
      target_column: churned
      metric: roc_auc
    metrics: [roc_auc, accuracy, f1, log_loss]
"""


@dataclass(frozen=True)
class Execution:
    function: str
    succeeded: bool
    duration_ms: float


@dataclass
class BenchStack:
    """A running stack with Evergreen's host (`stack`) and, once started, the comparison host (`naive`)."""

    root: Path
    stack: Stack
    naive: Service | None = None
    naive_port: int = 0
    host_env: dict[str, str] = field(default_factory=dict)  # Evergreen's host: the stack's env + the bench policy
    own_calls: int = 0  # Azure ML calls the benchmark itself made (subtracted from the counts)
    _token: str = field(default="", repr=False)

    @property
    def env(self) -> dict[str, str]:
        return self.stack.env

    @property
    def evergreen_url(self) -> str:
        return f"http://127.0.0.1:{self.stack.ports.host}"

    @property
    def naive_url(self) -> str:
        return f"http://127.0.0.1:{self.naive_port}"

    @property
    def aml_url(self) -> str:
        return f"https://127.0.0.1:{self.stack.ports.aml}"

    @property
    def workspace_url(self) -> str:
        e = self.env
        return (f"{self.aml_url}/subscriptions/{e['AZURE_SUBSCRIPTION_ID']}/resourceGroups/{e['AZURE_RESOURCE_GROUP']}"
                f"/providers/Microsoft.MachineLearningServices/workspaces/{e['AZUREML_WORKSPACE_NAME']}")

    # -- the emulator ------------------------------------------------------------------------------
    def _aml(self, method: str, path: str, **kwargs: Any) -> Any:
        if not self._token:
            resp = httpx.get(f"{self.aml_url}/msi/token", verify=self.env["REQUESTS_CA_BUNDLE"],
                             params={"api-version": "2019-08-01", "resource": "https://management.azure.com"},
                             headers={"X-IDENTITY-HEADER": self.env["IDENTITY_HEADER"]})
            resp.raise_for_status()
            self._token = resp.json()["access_token"]
        url = path if path.startswith("https://") else f"{self.aml_url}{path}"
        resp = httpx.request(method, url, headers={"Authorization": f"Bearer {self._token}"},
                             verify=self.env["REQUESTS_CA_BUNDLE"], timeout=60, **kwargs)
        if not path.startswith("/_emulator/"):
            self.own_calls += 1
        resp.raise_for_status()
        return resp.json() if resp.content else None

    def aml_calls(self) -> dict[str, Any]:
        """The emulator's counts since the last reset, less the benchmark's own calls."""
        stats: dict[str, Any] = self._aml("GET", "/_emulator/stats")
        stats["total"] -= self.own_calls
        return stats

    def reset_aml_calls(self) -> None:
        self._aml("DELETE", "/_emulator/stats")
        self.own_calls = 0

    def data_versions(self, asset: str) -> list[dict[str, Any]]:
        return self._list(f"{self.workspace_url}/data/{asset}/versions?api-version=2023-04-01")

    def jobs(self) -> list[dict[str, Any]]:
        return self._list(f"{self.workspace_url}/jobs?api-version=2023-04-01&listViewType=All")

    def _list(self, url: str) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        next_url: str | None = url
        while next_url:
            try:
                page = self._aml("GET", next_url)
            except httpx.HTTPStatusError as exc:
                if exc.response.status_code == 404:
                    return items
                raise
            items.extend(page.get("value", []))
            next_url = page.get("nextLink")
        return items

    # -- the hosts -----------------------------------------------------------------------------------
    def start_naive(self) -> None:
        """Start the comparison app on the same host code, its own port and its own blob-trigger queue."""
        from devstack.host import start_host

        if self.naive is not None and self.naive.process.poll() is None:
            return
        self.naive_port = free_port()
        host_id = f"naive-bench-{uuid.uuid4().hex[:8]}"  # its own blob-trigger queue: nothing left from a previous one
        env = {**self.env, "NAIVE_CONTAINER": CONTAINER, "NAIVE_DATASTORE": DATASTORE,
               "AzureFunctionsWebHost__hostid": host_id}
        self.naive = start_host(NAIVE_APP, self.naive_port, state_dir=self.root / host_id, env=env)
        self.naive.wait_ready(timeout=90)

    def stop_naive(self) -> None:
        """Stop the comparison host; its counts are read already, so it gets 2 s to exit, not the usual 10 s."""
        if self.naive is not None:
            self.naive.stop(timeout=2)

    def executions(self, which: str) -> list[Execution]:
        """Every execution the host logged ("evergreen" or "naive")."""
        service = self.naive if which == "naive" else self.stack.services[-1]
        assert service is not None
        text = service.log_path.read_text(errors="replace") if service.log_path.exists() else ""
        return [Execution(m["fn"], m["ok"] == "Succeeded", float(m["ms"])) for m in _EXECUTED.finditer(text)]


_shared: list[BenchStack] = []  # the stack `shared_stacks()` keeps for the benchmarks run inside it
_sharing: list[bool] = []


@contextmanager
def shared_stacks() -> Iterator[None]:
    """Inside this block every `bench_stack()` is one stack, started on first use and stopped at the end.

    `make bench QUICK=1` runs the burst and the overhead benchmark on one stack: a stack's start-up
    (Azurite, the emulator, the Event Grid and a Functions host) costs more than their quick sizes.
    Their files live under different folders, so neither sees the other's blobs.
    """
    _sharing.append(True)
    try:
        yield
    finally:
        _sharing.pop()
        if not _sharing:
            while _shared:
                _stop(_shared.pop())


@contextmanager
def bench_stack() -> Iterator[BenchStack]:
    """The stack on free ports with Evergreen's host on the benchmark policy, stopped afterwards.

    Inside `shared_stacks()` it is the block's one stack (started here on first use, stopped by the block).
    """
    if not _sharing:
        bench = _start()
        try:
            yield bench
        finally:
            _stop(bench)
        return
    if not _shared:
        _shared.append(_start())
    yield _shared[0]


def _start() -> BenchStack:
    """Start Azurite, the emulator, the Event Grid and Evergreen's host on free ports; raises ServiceStartError."""
    from devstack.azurite import ensure_installed
    from devstack.host import start_host

    ensure_installed()
    root = Path(tempfile.mkdtemp(prefix="evergreen-bench-"))
    ports = Ports(blob=free_port(), queue=free_port(), table=free_port(), aml=free_port(),
                  eventgrid=free_port(), host=free_port())
    stack = start_stack(root / "stack", ports, with_host=False)
    bench = BenchStack(root=root, stack=stack)
    try:
        policy = root / "evergreen.yaml"  # the pipeline path is relative to the policy: link the repo's ml/
        (root / "ml").symlink_to(REPO_ROOT / "ml", target_is_directory=True)
        policy.write_text(POLICY.format(dataset=DATASET, container=CONTAINER, prefix=PREFIX, datastore=DATASTORE,
                                        pipeline="ml/pipeline.yml"))
        env = {**stack.env, "EVERGREEN_POLICY_PATH": str(policy), "EVERGREEN_LANDING_CONTAINER": CONTAINER}
        bench.host_env = env
        host = start_host(REPO_ROOT, ports.host, state_dir=root / "stack", env=env)
        stack.services.append(host)
        host.wait_ready(timeout=90)
        bench._aml("POST", "/_emulator/compute", json={"hold": True})
    except BaseException:
        _stop(bench)
        raise
    return bench


def _stop(bench: BenchStack) -> None:
    bench.stop_naive()
    stop_stack(bench.stack)
    if os.environ.get(KEEP):
        print(f"{KEEP} is set: logs kept in {bench.root}")
    else:
        shutil.rmtree(bench.root, ignore_errors=True)


# -- blobs and deliveries ---------------------------------------------------------------------------
def upload(env: dict[str, str], names: Iterable[str], *, size: int = 64) -> dict[str, str]:
    """Upload small CSV files (distinct content) with 8 writers; returns name → eTag."""
    from azure.storage.blob import BlobServiceClient

    container = BlobServiceClient.from_connection_string(env["DATA_STORAGE"]).get_container_client(CONTAINER)

    def put(name: str) -> tuple[str, str]:
        body = (f"id,value,churned\n{name},{uuid.uuid4().hex},0\n" + "x" * size).encode()
        return name, str(container.get_blob_client(name).upload_blob(body, overwrite=True)["etag"]).strip('"')

    with ThreadPoolExecutor(SENDERS) as pool:
        return dict(pool.map(put, names))


def blob_created(env: dict[str, str], name: str, etag: str) -> dict[str, Any]:
    """One BlobCreated event as Event Grid (and the local Event Grid) delivers it."""
    account_url = env["DATA_STORAGE"].split("BlobEndpoint=", 1)[1].split(";", 1)[0].rstrip("/")
    return {
        "id": str(uuid.uuid4()), "eventType": "Microsoft.Storage.BlobCreated",
        "subject": f"/blobServices/default/containers/{CONTAINER}/blobs/{name}",
        "eventTime": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "dataVersion": "", "metadataVersion": "1",
        "topic": "/subscriptions/local/resourceGroups/local/providers/Microsoft.Storage/storageAccounts/local",
        "data": {"api": "PutBlob", "eTag": etag, "contentType": "text/csv", "contentLength": 80,
                 "blobType": "BlockBlob", "url": f"{account_url}/{CONTAINER}/{name}"},
    }


def under_pressure(events: Sequence[dict[str, Any]], duplicates: float, seed: int) -> list[dict[str, Any]]:
    """The deliveries as Event Grid makes them under pressure: `duplicates` of them again (same id), shuffled."""
    rng = random.Random(seed)
    again = rng.sample(list(events), round(len(events) * duplicates))
    deliveries = [*events, *again]
    rng.shuffle(deliveries)
    return deliveries


def deliver(base_url: str, function: str, deliveries: Sequence[dict[str, Any]], *, senders: int = SENDERS,
            stop_at: float | None = None) -> int:
    """POST each delivery to the host's blob webhook with `senders` concurrent senders; returns how many were sent.

    A delivery the host does not accept (not 2xx) is sent again, as Event Grid retries it.
    With `stop_at` (a `time.monotonic()` deadline) the senders stop there.
    """
    url = f"{base_url}/runtime/webhooks/blobs?functionName=Host.Functions.{function}"
    lock = threading.Lock()
    sent = 0
    queue = list(reversed(deliveries))

    def sender() -> None:
        nonlocal sent
        with httpx.Client(timeout=60, headers={"aeg-event-type": "Notification"}) as client:
            while True:
                with lock:
                    if not queue or (stop_at is not None and time.monotonic() > stop_at):
                        return
                    event = queue.pop()
                for _ in range(10):
                    if client.post(url, content=json.dumps([event])).is_success:
                        break
                    time.sleep(0.5)
                with lock:
                    sent += 1

    threads = [threading.Thread(target=sender, daemon=True) for _ in range(senders)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sent


def wait_until(predicate: Any, timeout: float, interval: float = 0.25) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0–100) by the nearest-rank rule; 0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))]


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else 0.0
