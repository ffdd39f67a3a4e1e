"""A retention run on the local stack at the issue's size, then at 10×: how its cost grows.

For each size, a fresh Azurite and Azure ML emulator (free ports, temporary state, the emulator's
default page size of 100) are seeded with 10,000·k data versions (10 data assets of 1,000·k versions
each, so paging goes deep), 2,000·k model versions with metrics and lineage tags, and 20,000·k
blobs (two per data version). Seeding uses the emulator's bulk route and threaded uploads and is
not measured.

What is measured is the retention run as the timer runs it, through the real SDKs: listing
(azure-ai-ml for data and models, azure-storage-blob for blobs), then planning. The run is a dry
run: apply costs a fixed number of requests per action (archive = GET + PUT), so its cost follows
the size of the plan, which the rules choose, not the size of the workspace; `--apply` also
applies the plan and reports its throughput.

    python -m bench.bench_retention_stack [--scales 1,10] [--apply]
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import yaml

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
    """Azurite + the emulator for one size; its env is applied to os.environ while in use."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="evergreen-bench-"))
        ports = free_port(), free_port(), free_port()
        self.storage = connection_string(*ports)
        self.services: list[Service] = [start_azurite(self.dir / "azurite", *ports)]
        self.services[0].wait_ready()
        port = free_port()
        self.services.append(start_aml(self.dir / "aml", port, storage_connection_string=self.storage))
        self.services[1].wait_ready()
        self.env = {**client_env(port, self.dir / "aml"), "DATA_STORAGE": self.storage}
        self.saved = {k: os.environ.get(k) for k in self.env}
        os.environ.update(self.env)

    def close(self) -> None:
        for key, value in self.saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        for service in reversed(self.services):
            service.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


def seed(stack: Stack, scale: int) -> None:
    from azure.storage.blob import BlobServiceClient

    now = datetime.now(UTC)
    per_name = 1000 * scale
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
        models = 2000 * scale // MODEL_NAMES
        for n in range(MODEL_NAMES):
            for start in range(1, models + 1, 5000):
                post("models", f"m{n}", [
                    {"version": str(v), "uri": f"azureml://datastores/workspaceblobstore/paths/m{n}/{v}/",
                     "createdAt": (now - timedelta(days=365 * (models - v) / models)).isoformat(),
                     "tags": {"evergreen.metric.auc": repr((v * 37 % 100) / 100),
                              "evergreen.data_asset": f"ds{n}", "evergreen.data_version": str(v)}}
                    for v in range(start, min(start + 5000, models + 1))])
    import requests
    from azure.core.pipeline.transport import RequestsTransport

    session = requests.Session()
    session.mount("http://", requests.adapters.HTTPAdapter(pool_connections=4, pool_maxsize=32))
    landing = BlobServiceClient.from_connection_string(stack.storage, transport=RequestsTransport(session=session))
    landing.create_container("landing")
    container = landing.get_container_client("landing")
    names = [f"ds{n}/{v}/part-{i}.csv" for n in range(DATA_NAMES) for v in range(1, per_name + 1) for i in range(2)]
    with ThreadPoolExecutor(max_workers=32) as pool:
        list(pool.map(lambda name: container.upload_blob(name, b"a,b\n1,2\n"), names, chunksize=64))


def retention_run(stack: Stack, *, apply: bool) -> Any:
    from azure.data.tables import TableServiceClient
    from azure.identity import DefaultAzureCredential
    from azure.storage.blob import BlobServiceClient

    from shared.adapters.azure.aml_retention import AmlRetention
    from shared.adapters.azure.azureml import AzureML
    from shared.adapters.azure.blob_retention import BlobRetention
    from shared.services.audit import AUDIT_TABLE, TableAuditLog
    from shared.services.retention import RetentionRunner

    env = stack.env
    azureml = AzureML(DefaultAzureCredential(), env["AZURE_SUBSCRIPTION_ID"], env["AZURE_RESOURCE_GROUP"],
                      env["AZUREML_WORKSPACE_NAME"])
    azureml.client  # noqa: B018 - import azure.ai.ml (~1.3 s) before the clock starts, as a warm function would
    blobs = BlobRetention(BlobServiceClient.from_connection_string(stack.storage))
    tables = TableServiceClient.from_connection_string(stack.storage)
    audit = TableAuditLog(AzureTable(tables.create_table(AUDIT_TABLE)))
    runner = RetentionRunner(policy=parse_retention(RULES), workspace=AmlRetention(azureml), blobs=blobs,
                             rollouts=lambda: [], audit=audit)
    started, cpu = time.perf_counter(), time.process_time()
    summary = runner.run(run_id="bench", dry_run=True)
    total, cpu = time.perf_counter() - started, time.process_time() - cpu
    applied = None
    if apply:
        mark = time.perf_counter()
        outcomes = runner.apply(summary.plan, "bench-apply")
        applied = (len(outcomes), time.perf_counter() - mark)
    return summary, (total, cpu), applied


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_retention_stack")
    parser.add_argument("--scales", default="1,10", help="comma-separated multiples of the issue's sizes")
    parser.add_argument("--apply", action="store_true", help="also apply the plan and report its throughput")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    ensure_installed()
    print("retention run on the local stack (real SDKs against Azurite + the Azure ML emulator; dry run)")
    totals: dict[int, float] = {}
    cpus: dict[int, float] = {}
    phases: dict[int, dict[str, float]] = {}
    for scale in (int(s) for s in args.scales.split(",")):
        stack = Stack()
        try:
            mark = time.perf_counter()
            seed(stack, scale)
            seeded = time.perf_counter() - mark
            summary, (total, cpu), applied = retention_run(stack, apply=args.apply)
        finally:
            stack.close()
        listed = summary.listed
        totals[scale], cpus[scale], phases[scale] = total, cpu, dict(summary.timings)
        print(f"\n  {scale}×: {listed['data_versions']:,} data versions, {listed['model_versions']:,} model versions, "
              f"{listed['blobs']:,} blobs (seeded in {seeded:.0f} s, not measured)")
        for phase, seconds in summary.timings.items():
            print(f"    {phase:<32} {seconds:8.2f} s")
        print(f"    {'total':<32} {total:8.2f} s   plan: {len(summary.plan.actions):,} actions, "
              f"{len(summary.plan.protected):,} spared")
        pages = -(-listed["blobs"] // 5000)
        print(f"    {'list_blobs per page (5,000)':<32} {summary.timings['list_blobs'] / pages:8.2f} s   "
              f"({pages} pages)")
        print(f"    {'of which CPU in this process':<32} {cpu:8.2f} s   (SDK parsing + planning; the rest is "
              "waiting on the emulator and Azurite)")
        if applied:
            count, seconds = applied
            print(f"    apply (8 workers)                {seconds:8.2f} s   {count:,} actions, "
                  f"{count / seconds:,.0f} actions/s")
    if 1 in totals and 10 in totals:
        print("\n  10× / 1× time ratio (linear = 10):")
        for phase in phases[1]:
            print(f"    {phase:<32} {phases[10][phase] / phases[1][phase]:8.1f}")
        print(f"    {'total':<32} {totals[10] / totals[1]:8.1f}")
        print(f"    {'CPU in this process':<32} {cpus[10] / cpus[1]:8.1f}")


if __name__ == "__main__":
    main()
