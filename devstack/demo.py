"""The end-to-end demo: a data drop lands in Blob Storage and everything after it is automatic.

It starts the local stack (unless one is already up), uploads a sample drop, waits for what the
Function App does in reaction, shows it, and stops what it started.
"""

from __future__ import annotations

import csv
import io
import json
import random
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from devstack.polling import wait_for
from devstack.procs import port_open
from devstack.stack import Ports, Stack, applied_env, read_env, start_stack, stop_stack


def _say(text: str) -> None:
    print(text, flush=True)


def _get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 (local stack URL)
        return json.loads(response.read())


def churn_rows(n: int, seed: int) -> str:
    """A small synthetic churn table (tenure, charges, support calls → churned)."""
    rng = random.Random(seed)
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["customer_id", "tenure_months", "monthly_charges", "support_calls", "contract", "churned"])
    for i in range(n):
        tenure = rng.randint(1, 72)
        charges = round(rng.uniform(20, 120), 2)
        calls = rng.randint(0, 9)
        contract = rng.choice(["monthly", "annual", "biennial"])
        risk = 0.04 * calls + (0.3 if contract == "monthly" else 0.0) + charges / 400 - tenure / 150
        writer.writerow([f"c{seed}-{i}", tenure, charges, calls, contract, int(rng.random() < risk)])
    return out.getvalue()


def run_demo(state_dir: Path, *, keep: bool = False) -> int:
    ports = Ports()
    started: Stack | None = None
    if port_open(ports.host) and (state_dir / "env").exists():
        _say("using the local stack that is already up")
    else:
        _say("starting the local stack (Azurite, Azure ML emulator, Event Grid, Functions host)...")
        started = start_stack(state_dir, ports)
    try:
        with applied_env(read_env(state_dir)):
            _run(read_env(state_dir))
    finally:
        if started is not None and not keep:
            _say("\nstopping the local stack")
            stop_stack(started)
    return 0


def _run(env: dict[str, str]) -> None:
    from azure.ai.ml import MLClient
    from azure.identity import DefaultAzureCredential
    from azure.storage.blob import BlobServiceClient

    blobs = BlobServiceClient.from_connection_string(env["DATA_STORAGE"])
    landing = blobs.get_container_client("landing")
    started_at = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")  # the local Event Grid's format
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    folder = f"churn/drop-{stamp}/"

    _say(f"\n1. uploading a data drop to landing/{folder} (5 parts, then the _SUCCESS marker)")
    for part in range(5):
        name = f"{folder}part-{part:04d}.csv"
        landing.upload_blob(name, churn_rows(400, seed=hash((stamp, part)) & 0xFFFF), overwrite=True)
        _say(f"   uploaded landing/{name}")
    landing.upload_blob(f"{folder}_SUCCESS", b"", overwrite=True)
    _say(f"   uploaded landing/{folder}_SUCCESS")
    reference = f"reference/regions-{stamp}.csv"
    landing.upload_blob(reference, f"region,code,drop\nnorth,N,{stamp}\nsouth,S,{stamp}\n", overwrite=True)
    _say(f"   uploaded landing/{reference}")

    ml = MLClient(DefaultAzureCredential(), env["AZURE_SUBSCRIPTION_ID"], env["AZURE_RESOURCE_GROUP"],
                  env["AZUREML_WORKSPACE_NAME"])

    def version_for(name: str, tag: str, value: str) -> Any:
        try:
            return next((d for d in ml.data.list(name=name) if (d.tags or {}).get(tag) == value), None)
        except Exception:
            return None

    _say("\n2. waiting for Evergreen to register the data versions...")
    drop = wait_for("the drop's data version",
                     lambda: version_for("churn-training", "evergreen.source_folder", f"landing/{folder}"))
    reference_url = landing.get_blob_client(reference).url
    ref = wait_for("the reference file's data version",
                    lambda: version_for("churn-reference", "evergreen.source_url", reference_url))
    _say("\n   registered data versions:")
    for d in (drop, ref):
        tags = d.tags or {}
        _say(f"   - {d.name}:{d.version}  type={d.type}  path={d.path}")
        _say(f"       sha256={tags.get('evergreen.sha256', '')[:16]}…  files={tags.get('evergreen.files', '1')}"
             f"  size={tags.get('evergreen.size')}B")

    eventgrid = env["EVERGREEN_EVENTGRID_URL"]
    copy_body = f"region,code,drop\nnorth,N,{stamp}\nsouth,S,{stamp}\n"
    landing.upload_blob(f"reference/regions-{stamp}-copy.csv", copy_body, overwrite=True)
    _say(f"\n   uploaded landing/reference/regions-{stamp}-copy.csv: the same content again")
    wait_for("the copy's duplicate verdict",
              lambda: len([d for d in _get_json(f"{eventgrid}/deliveries")
                           if "-copy.csv" in json.dumps(d) and d.get("status") == "delivered"]) > 0, timeout=60)
    all_reference = list(ml.data.list(name="churn-reference"))
    copies = [d for d in all_reference if (d.tags or {}).get("evergreen.source_url", "").endswith("-copy.csv")]
    _say(f"\n   the identical copy registered {len(copies)} new version(s) (deduplicated by content hash)")

    _show_retraining(ml, env, str(drop.version))

    _say("\n5. the events that flowed (local Event Grid):")
    deliveries = {d["eventId"]: d for d in _get_json(f"{eventgrid}/deliveries?limit=500")}
    for item in reversed(_get_json(f"{eventgrid}/events?limit=200")):
        if item["receivedAt"] < started_at:
            continue  # an earlier demo's events (the stack keeps its state)
        event = item["event"]
        subject = event.get("subject", "")
        if stamp not in subject and not subject.startswith(("datasets/", "experiments/", "models/")):
            continue
        delivery = deliveries.get(event.get("id"), {})
        route = f"→ {delivery['function']} ({delivery['status']})" if delivery else "(no subscription)"
        _say(f"   [{item['topic']}] {event.get('eventType') or event.get('type')}  {subject}  {route}")
    dead = _get_json(f"{eventgrid}/deadletters")
    _say(f"\n   dead letters: {len(dead)}")
    for letter in dead:
        _say(f"   - {letter['function']}: {letter['deadLetterReason']} {letter.get('detail', '')}")
    _say("\ndemo complete: upload → data version → retraining → registered model, on the local stack")


def _show_retraining(ml: Any, env: dict[str, str], data_version: str) -> None:
    import httpx
    from azure.core.exceptions import ResourceNotFoundError
    from azure.identity import DefaultAzureCredential

    from shared.retrain import job_name_for

    job_name = job_name_for("churn-training", data_version)
    _say(f"\n3. the new data version starts the retraining pipeline ml/pipeline.yml as job {job_name}")

    def finished() -> Any:
        try:
            job = ml.jobs.get(job_name)
        except ResourceNotFoundError:
            return None
        return job if job.status in ("Completed", "Failed", "Canceled") else None

    job = wait_for(f"pipeline job {job_name}", finished, timeout=300)
    token = DefaultAzureCredential().get_token("https://management.azure.com/.default").token
    logs = httpx.get(f"{env['AZUREML_DEV_URL_MFE'].rstrip('/')}/_emulator/jobs/{job_name}/logs",
                     headers={"Authorization": f"Bearer {token}"}, verify=env["REQUESTS_CA_BUNDLE"]).json()
    _say(f"   job {job_name}: {logs['status']}")
    for node, step in logs["steps"].items():
        tail = [line for line in step["log"].splitlines() if line.strip()][-3:]
        _say(f"   - step {node:<9} {step['status']}")
        for line in tail:
            _say(f"       | {line[:150]}")
    if job.status != "Completed":
        raise RuntimeError(f"the retraining job ended {job.status}: {logs.get('error')}")

    def model() -> Any:
        try:
            models = ml.models.list(name="churn-model")
            return next((m for m in models if (m.tags or {}).get("evergreen.job_name") == job_name), None)
        except ResourceNotFoundError:
            return None

    registered = wait_for("the registered model", model, timeout=60)
    tags = registered.tags or {}
    _say(f"\n4. registered model {registered.name}:{registered.version}  path={registered.path}")
    _say(f"   lineage: data {tags.get('evergreen.data_asset')}:{tags.get('evergreen.data_version')}"
         f" → job {tags.get('evergreen.job_name')} → model; code sha256 {tags.get('evergreen.code_sha256', '')[:12]}…")
    metrics = {k.removeprefix("evergreen.metric."): v for k, v in tags.items()
               if k.startswith("evergreen.metric.")}
    _say("   metrics: " + ", ".join(f"{k}={float(v):.3f}" for k, v in sorted(metrics.items())))
