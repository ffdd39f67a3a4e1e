"""Retention on the local stack at the issue's size and at 10×: how a dry run grows, and apply under 429s.

For each size, a fresh Azurite and Azure ML emulator (free ports, temporary state, the emulator's
default page size of 100) are seeded with 10,000·k data versions (10 data assets of 1,000·k versions
each, so paging goes deep), 2,000·k model versions with metrics and lineage tags, and 20,000·k
blobs (two per data version, modified over the past year like the versions). Seeding is not
measured: the emulator's bulk route, and Azurite's own store written before it starts
(`write_blob_store`; through the Blob API, 200,000 blobs took over 25 minutes). k is 1 and 10
(`make bench`), 0.01 and 0.1 (`QUICK=1`).

What is measured is the retention run as the timer runs it: listing (Azure ML's public REST API for
data, models and jobs through `shared.adapters.azure.aml_rest`, the SDK's public listings for
datastores and endpoints, azure-storage-blob for blobs), then planning; a dry run. Goals: the larger
size takes ≤ 10.5× the smaller (linear is 10×), and the 10× dry run ≤ 60 s.

Then, on the same stack, apply: rules that delete the oldest data versions and archive old models
(`APPLY_RULES`), with the emulator's 429 switch on for 10 % of every Azure ML call
(`/_emulator/request-faults`, Retry-After 1 s). Reported: actions/s, retries (429s answered), and
that nothing was applied twice: the DELETE and PUT calls the emulator processed (counted at
`/_emulator/stats`, minus the 429s) equal the deletes and archives the plan made.

    python -m bench.bench_retention_stack [--quick] [--scales 1,10] [--no-apply]
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import os
import shutil
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import yaml

from bench.report import BenchResult, details, table
from devstack.aml import client_env, start_aml
from devstack.azurite import connection_string, ensure_installed, start_azurite
from devstack.procs import Service, free_port
from shared.adapters.azure.tables import AzureTable
from shared.config.retention import parse_retention

DATA_NAMES = 10
MODEL_NAMES = 4
RULES = yaml.safe_load("""
rules:
  - name: data
    type: data_versions
    actions: {keep_latest: 100, archive: {days_after_creation_greater_than: 30}}
  - name: models
    type: model_versions
    actions: {keep_latest: 10, keep_top_k: {k: 3, metric: auc}, archive: {days_after_creation_greater_than: 30}}
  - name: raw
    type: blobs
    filters: {prefixes: [landing/]}
    actions:
      tier_to_cool: {days_after_modification_greater_than: 30}
      delete: {days_after_modification_greater_than: 90}
""")


class Stack:
    """Azurite + the emulator for one size; its env is applied to os.environ while in use.

    `blobs` (name, last modified) are written into Azurite's store before it serves (`write_blob_store`).
    """

    def __init__(self, blobs: list[tuple[str, datetime]] | None = None) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="evergreen-bench-"))
        ports = free_port(), free_port(), free_port()
        self.storage = connection_string(*ports)
        self.services: list[Service] = []
        try:
            if blobs:
                write_blob_store(self.dir / "azurite", blobs)
            self.services.append(start_azurite(self.dir / "azurite", *ports))
            self.services[0].wait_ready(timeout=300)  # Azurite reads a large store before it listens
            port = free_port()
            self.services.append(start_aml(self.dir / "aml", port, storage_connection_string=self.storage))
            self.services[1].wait_ready()
        except Exception:
            self._stop()
            raise
        self.env = {**client_env(port, self.dir / "aml"), "DATA_STORAGE": self.storage}
        self.saved = {k: os.environ.get(k) for k in self.env}
        os.environ.update(self.env)

    def _stop(self) -> None:
        for service in reversed(self.services):
            service.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def close(self) -> None:
        for key, value in self.saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        self._stop()


BLOB_STORE = "__azurite_db_blob__.json"  # Azurite's blob metadata (LokiJS), in its --location
BLOBS_COLLECTION = "$BLOBS_COLLECTION$"
LANDING = "landing"


@functools.cache
def _store_template() -> str:
    """The blob store Azurite writes after creating `landing` and one empty blob in it (JSON text).

    Azurite is started once per process for it, on free ports in a temporary directory, and stopped
    (it saves its store on the way out).
    """
    from azure.storage.blob import BlobServiceClient

    with tempfile.TemporaryDirectory(prefix="evergreen-bench-") as tmp:
        ports = free_port(), free_port(), free_port()
        service = start_azurite(Path(tmp), *ports)
        try:
            service.wait_ready()
            client = BlobServiceClient.from_connection_string(connection_string(*ports))
            client.create_container(LANDING).upload_blob("template", b"")
        finally:
            service.stop()
        return (Path(tmp) / "azurite" / BLOB_STORE).read_text()  # start_azurite's --location


def write_blob_store(state_dir: Path, blobs: list[tuple[str, datetime]]) -> None:
    """Write Azurite's store for `start_azurite(state_dir, …)`: empty block blobs in `landing`, as Azurite writes them.

    Why not the Blob API: Azurite spends 1.5-2.5 ms of its one thread per Put Blob, so 200,000 blobs
    took over 25 minutes here. Instead the store Azurite itself saved with one empty blob
    (`_store_template`) gets that blob's document repeated for every name, with its own ETag and times,
    and the store's indexes rebuilt; Azurite reads it at start. Listing then runs through Azurite's
    own Blob API as before. Raises RuntimeError when the saved store has not exactly that one blob
    (another Azurite store format).
    """
    store = json.loads(_store_template())
    path = state_dir / "azurite" / BLOB_STORE
    collection = next((c for c in store["collections"] if c.get("name") == BLOBS_COLLECTION), None)
    if collection is None or len(collection.get("data", [])) != 1:
        raise RuntimeError(f"not the Azurite blob store this seeding knows (one blob in {BLOBS_COLLECTION})")
    template = collection["data"][0]
    docs = []
    for loki_id, (name, modified) in enumerate(blobs, start=1):
        at = modified.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
        docs.append({**template, "name": name, "$loki": loki_id, "meta": dict(template["meta"]),
                     "properties": {**template["properties"], "creationTime": at, "lastModified": at,
                                    "accessTierChangeTime": at, "etag": f'"0x8DD{loki_id:013X}"'}})
    collection["data"] = docs
    collection["maxId"] = len(docs)
    store["filename"] = str(path)
    by_position = list(range(len(docs)))
    for prop, index in collection.get("binaryIndices", {}).items():  # positions in `data`, sorted by the property
        index["values"] = sorted(by_position, key=lambda i: docs[i][prop])
        index["dirty"] = False
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(store))


APPLY_RULES = yaml.safe_load("""
rules:
  - name: oldest-data
    type: data_versions
    actions: {keep_latest: 100, delete: {days_after_creation_greater_than: 355}}
  - name: oldest-models
    type: model_versions
    actions: {keep_latest: 10, keep_top_k: {k: 3, metric: auc}, archive: {days_after_creation_greater_than: 355}}
""")
THROTTLED_FRACTION = 0.1
GROWTH_GOAL = 10.5
TEN_X_GOAL_S = 60.0


def seed(stack: Stack, scale: float) -> None:
    """Seed the emulator at `scale` × the issue's sizes through its bulk route (not measured)."""
    now = datetime.now(UTC)
    per_name = max(1, round(1000 * scale))
    base = stack.env["AZUREML_DEV_URL_MFE"].rstrip("/")
    with httpx.Client(verify=stack.env["REQUESTS_CA_BUNDLE"], timeout=600,
                      headers={"Authorization": "Bearer bench"}) as client:
        def post(kind: str, name: str, versions: list[dict[str, Any]]) -> None:
            client.post(f"{base}/_emulator/seed/{kind}/{name}", json={"versions": versions}).raise_for_status()

        for n in range(DATA_NAMES):
            for start in range(1, per_name + 1, 5000):
                post("data", f"ds{n}", [
                    {"version": str(v), "uri": f"azureml://datastores/landing/paths/ds{n}/{v}/",
                     "dataType": "uri_folder", "isArchived": v <= per_name * 4 // 10,
                     "createdAt": (now - timedelta(days=365 * (per_name - v) / per_name)).isoformat()}
                    for v in range(start, min(start + 5000, per_name + 1))])
        models = max(1, round(2000 * scale) // MODEL_NAMES)
        for n in range(MODEL_NAMES):
            for start in range(1, models + 1, 5000):
                post("models", f"m{n}", [
                    {"version": str(v), "uri": f"azureml://datastores/workspaceblobstore/paths/m{n}/{v}/",
                     "createdAt": (now - timedelta(days=365 * (models - v) / models)).isoformat(),
                     "tags": {"evergreen.metric.auc": repr((v * 37 % 100) / 100),
                              "evergreen.data_asset": f"ds{n}", "evergreen.data_version": str(v)}}
                    for v in range(start, min(start + 5000, models + 1))])


def landing_blobs(scale: float, now: datetime) -> list[tuple[str, datetime]]:
    """Two blobs per data version (`landing/ds<n>/<v>/part-<i>.csv`), modified over the past year like the versions."""
    per_name = max(1, round(1000 * scale))
    return [(f"ds{n}/{v}/part-{i}.csv", now - timedelta(days=365 * (per_name - v) / per_name))
            for n in range(DATA_NAMES) for v in range(1, per_name + 1) for i in range(2)]


def runner_for(stack: Stack, rules: dict[str, Any], audit_table: str) -> Any:
    """A RetentionRunner built as the composition root builds it, on this stack."""
    from azure.data.tables import TableServiceClient
    from azure.identity import DefaultAzureCredential
    from azure.storage.blob import BlobServiceClient

    from shared.adapters.azure.aml_retention import AmlRetention
    from shared.adapters.azure.azureml import AzureML
    from shared.adapters.azure.blob_retention import BlobRetention
    from shared.services.audit import TableAuditLog
    from shared.services.retention import RetentionRunner

    env = stack.env
    azureml = AzureML(DefaultAzureCredential(), env["AZURE_SUBSCRIPTION_ID"], env["AZURE_RESOURCE_GROUP"],
                      env["AZUREML_WORKSPACE_NAME"])
    azureml.client  # noqa: B018 - import azure.ai.ml (~1.3 s) before the clock starts, as a warm function would
    blobs = BlobRetention(BlobServiceClient.from_connection_string(stack.storage))
    tables = TableServiceClient.from_connection_string(stack.storage)
    audit = TableAuditLog(AzureTable(tables.create_table_if_not_exists(audit_table)))
    return RetentionRunner(policy=parse_retention(rules), workspace=AmlRetention(azureml), blobs=blobs,
                           rollouts=lambda: [], approvals=lambda: [], comparisons=lambda: [], waiting=lambda: [],
                           audit=audit)


def _cpu_s(service: Service) -> float | None:
    """CPU seconds (user + system) the service's process has used; None without Linux's /proc."""
    try:
        fields = Path(f"/proc/{service.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def dry_run(stack: Stack) -> tuple[Any, float, float, dict[str, float]]:
    """The measured dry run: its summary, wall seconds, this process's CPU seconds and Azurite's and the emulator's.

    The servers' CPU says how much of the wall time is the local stand-ins' work (Azurite answers
    every page of a listing by scanning and sorting the whole container) rather than Evergreen's.
    """
    from shared.services.audit import AUDIT_TABLE

    runner = runner_for(stack, RULES, AUDIT_TABLE)
    servers = dict(zip(("azurite", "emulator"), stack.services, strict=True))
    before = {name: _cpu_s(service) for name, service in servers.items()}
    started, cpu = time.perf_counter(), time.process_time()
    summary = runner.run(run_id="bench", dry_run=True)
    wall, own = time.perf_counter() - started, time.process_time() - cpu
    after = {name: _cpu_s(service) for name, service in servers.items()}
    server_cpu = {name: round(end - start, 2) for name in servers
                  if (start := before[name]) is not None and (end := after[name]) is not None}
    return summary, wall, own, server_cpu


def _emulator(stack: Stack) -> httpx.Client:
    # No kept-alive connections: these admin calls are minutes apart, around a run that keeps the emulator busy.
    transport = httpx.HTTPTransport(verify=stack.env["REQUESTS_CA_BUNDLE"], retries=2,
                                    limits=httpx.Limits(max_keepalive_connections=0))
    return httpx.Client(base_url=stack.env["AZUREML_DEV_URL_MFE"].rstrip("/"), timeout=60, transport=transport,
                        headers={"Authorization": "Bearer bench"})


def apply_throttled(stack: Stack) -> dict[str, float | int]:
    """Plan APPLY_RULES, then apply it with 10 % of Azure ML calls answered 429; count at the emulator."""
    from shared.domain.retention.planner import ActionKind

    runner = runner_for(stack, APPLY_RULES, "benchapplyaudit")
    plan = runner.run(run_id="bench-plan", dry_run=True).plan
    kinds = [a.kind for a in plan.actions]
    deletes = sum(k in (ActionKind.DELETE_DATA, ActionKind.DELETE_MODEL) for k in kinds)
    archives = sum(k in (ActionKind.ARCHIVE_DATA, ActionKind.ARCHIVE_MODEL) for k in kinds)
    with _emulator(stack) as emu:
        emu.delete("/_emulator/stats").raise_for_status()
        for seed_, method in enumerate(("GET", "PUT", "DELETE")):
            emu.post("/_emulator/request-faults", json={"fault": "throttle", "method": method, "pathContains": "/",
                                                        "fraction": THROTTLED_FRACTION, "seed": seed_,
                                                        "retryAfter": 1}).raise_for_status()
        started = time.perf_counter()
        outcomes = runner.apply(plan, "bench-apply")
        seconds = time.perf_counter() - started
        rules = emu.get("/_emulator/request-faults").json()["value"]
        stats = emu.get("/_emulator/stats").json()
        emu.delete("/_emulator/request-faults").raise_for_status()
    fired = {r["method"]: int(r.get("fired", 0)) for r in rules}
    by_method = stats.get("byMethod", {})
    statuses = [o.status for o in outcomes]
    return {
        "actions": len(outcomes), "apply_s": round(seconds, 2),
        "actions_per_s": round(len(outcomes) / seconds, 1) if seconds else 0.0,
        "failed": statuses.count("failed"), "retries_429": sum(fired.values()),
        "deletes_planned": deletes, "deletes_processed": int(by_method.get("DELETE", 0)) - fired.get("DELETE", 0),
        "archives_planned": archives, "archive_puts_processed": int(by_method.get("PUT", 0)) - fired.get("PUT", 0),
    }


def measure(scale: float, *, apply: bool) -> dict[str, Any]:
    """Seed one fresh stack at `scale`, time a dry run, then (with `apply`) apply under 429s."""
    started = time.perf_counter()
    stack = Stack(blobs=landing_blobs(scale, datetime.now(UTC)))
    try:
        seed(stack, scale)
        print(f"   retention {scale:g}x: seeded in {time.perf_counter() - started:.0f} s (not measured)", flush=True)
        summary, total, cpu, server_cpu = dry_run(stack)
        applied = apply_throttled(stack) if apply else {}
    finally:
        stack.close()
    return {"total": total, "cpu": cpu, "server_cpu": server_cpu, "listed": dict(summary.listed),
            "timings": dict(summary.timings), "actions": len(summary.plan.actions), "applied": applied}


def _scale_name(scale: float) -> str:
    return f"{scale:g}x"


def run(quick: bool, *, scales: tuple[float, float] | None = None, apply: bool = True) -> list[BenchResult]:
    """Two rows: the dry run's growth from the small to the large size (10×), and apply under 429s."""
    small, large = scales or ((0.01, 0.1) if quick else (1.0, 10.0))
    runs = {scale: measure(scale, apply=apply) for scale in (small, large)}
    growth = runs[large]["total"] / runs[small]["total"]
    figures: dict[str, float | int | str] = {}
    for scale, r in runs.items():
        name = _scale_name(scale)
        figures |= {f"{name}_dry_run_s": round(r["total"], 2), f"{name}_cpu_s": round(r["cpu"], 2),
                    **{f"{name}_{server}_cpu_s": seconds for server, seconds in r["server_cpu"].items()},
                    f"{name}_data_versions": r["listed"].get("data_versions", 0),
                    f"{name}_model_versions": r["listed"].get("model_versions", 0),
                    f"{name}_blobs": r["listed"].get("blobs", 0), f"{name}_actions": r["actions"]}
        figures |= {f"{name}_{phase}_s": round(seconds, 2) for phase, seconds in r["timings"].items()}
    size_ratio = large / small
    ten_x = runs[large]["total"] if large == 10 else None
    met = growth <= GROWTH_GOAL * size_ratio / 10 and (ten_x is None or ten_x <= TEN_X_GOAL_S)
    results = [BenchResult(
        name="retention_10x", title=f"retention dry run on the stack, {_scale_name(small)} vs {_scale_name(large)}",
        figures=figures,
        ratio_name=f"dry run time {_scale_name(large)} / {_scale_name(small)} (linear = {size_ratio:g})",
        ratio=round(growth, 2), goal=f"<= {GROWTH_GOAL * size_ratio / 10:g}" + (", 10x <= 60 s" if ten_x else ""),
        met=met, notes="Listing over Azure ML's public REST API (raw JSON, names concurrently) and blobs (8 "
                       "top-level folders at a time); seeding is not measured. cpu_s is this process's CPU "
                       "(Evergreen's listing and planning); azurite_cpu_s and emulator_cpu_s the local servers'.")]
    if apply:
        apply_figures: dict[str, float | int | str] = {}
        twice = False
        for scale, r in runs.items():
            a = r["applied"]
            apply_figures |= {f"{_scale_name(scale)}_{k}": v for k, v in a.items()}
            twice = twice or a["deletes_processed"] != a["deletes_planned"] or \
                a["archive_puts_processed"] != a["archives_planned"] or a["failed"] > 0
        big = runs[large]["applied"]
        results.append(BenchResult(
            name="retention_apply_429", title=f"retention apply with {THROTTLED_FRACTION:.0%} of Azure ML calls 429",
            figures=apply_figures, ratio_name=f"actions/s at {_scale_name(large)} under 429s",
            ratio=big["actions_per_s"], goal="0 failed, none twice", met=not twice,
            notes="deletes/archive PUTs processed are counted at the emulator minus the 429s it answered; "
                  "equal to the plan's count means nothing was applied twice. Retry-After is 1 s."))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_retention_stack")
    parser.add_argument("--quick", action="store_true", help="0.01x and 0.1x instead of 1x and 10x")
    parser.add_argument("--scales", default=None, help="two comma-separated multiples of the issue's sizes")
    parser.add_argument("--no-apply", action="store_true", help="only the dry runs")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    ensure_installed()
    scales: tuple[float, float] | None = None
    if args.scales:
        small, _, large = args.scales.partition(",")
        scales = (float(small), float(large))
    results = run(args.quick, scales=scales, apply=not args.no_apply)
    print(table(results))
    print(details(results))


if __name__ == "__main__":
    main()
