"""The end-to-end demo: a data drop lands in Blob Storage and everything after it is automatic.

It starts the local stack (unless one is already up), uploads a sample drop, waits for what the
Function App does in reaction, shows it, and stops what it started.
"""

from __future__ import annotations

import csv
import io
import json
import random
import time
import urllib.request
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from devstack.procs import port_open
from devstack.stack import Ports, Stack, applied_env, read_env, start_stack, stop_stack

T = TypeVar("T")


def _say(text: str) -> None:
    print(text, flush=True)


def _wait_for(what: str, probe: Callable[[], T | None], timeout: float = 120.0) -> T:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = probe()
        if value:
            return value
        time.sleep(0.5)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")


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
    landing.upload_blob(reference, "region,code\nnorth,N\nsouth,S\n", overwrite=True)
    _say(f"   uploaded landing/{reference}")

    ml = MLClient(DefaultAzureCredential(), env["AZURE_SUBSCRIPTION_ID"], env["AZURE_RESOURCE_GROUP"],
                  env["AZUREML_WORKSPACE_NAME"])

    def version_for(name: str, tag: str, value: str) -> Any:
        try:
            return next((d for d in ml.data.list(name=name) if (d.tags or {}).get(tag) == value), None)
        except Exception:
            return None

    _say("\n2. waiting for Evergreen to register the data versions...")
    drop = _wait_for("the drop's data version",
                     lambda: version_for("churn-training", "evergreen.source_folder", f"landing/{folder}"))
    reference_url = landing.get_blob_client(reference).url
    ref = _wait_for("the reference file's data version",
                    lambda: version_for("churn-reference", "evergreen.source_url", reference_url))
    _say("\n   registered data versions:")
    for d in (drop, ref):
        tags = d.tags or {}
        _say(f"   - {d.name}:{d.version}  type={d.type}  path={d.path}")
        _say(f"       sha256={tags.get('evergreen.sha256', '')[:16]}…  files={tags.get('evergreen.files', '1')}"
             f"  size={tags.get('evergreen.size')}B")

    eventgrid = env["EVERGREEN_EVENTGRID_URL"]
    landing.upload_blob(f"reference/regions-{stamp}-copy.csv", "region,code\nnorth,N\nsouth,S\n", overwrite=True)
    _say(f"\n   uploaded landing/reference/regions-{stamp}-copy.csv: the same content again")
    _wait_for("the copy's duplicate verdict",
              lambda: len([d for d in _get_json(f"{eventgrid}/deliveries")
                           if "-copy.csv" in json.dumps(d) and d.get("status") == "delivered"]) > 0, timeout=60)
    all_reference = list(ml.data.list(name="churn-reference"))
    copies = [d for d in all_reference if (d.tags or {}).get("evergreen.source_url", "").endswith("-copy.csv")]
    _say(f"\n   the identical copy registered {len(copies)} new version(s) (deduplicated by content hash)")

    _say("\n3. the events that flowed (local Event Grid):")
    deliveries = {d["eventId"]: d for d in _get_json(f"{eventgrid}/deliveries?limit=500")}
    for item in reversed(_get_json(f"{eventgrid}/events?limit=200")):
        event = item["event"]
        subject = event.get("subject", "")
        if stamp not in subject and not subject.startswith("datasets/"):
            continue
        delivery = deliveries.get(event.get("id"), {})
        route = f"→ {delivery['function']} ({delivery['status']})" if delivery else "(no subscription)"
        _say(f"   [{item['topic']}] {event.get('eventType') or event.get('type')}  {subject}  {route}")
    dead = _get_json(f"{eventgrid}/deadletters")
    _say(f"\n   dead letters: {len(dead)}")
    for letter in dead:
        _say(f"   - {letter['function']}: {letter['deadLetterReason']} {letter.get('detail', '')}")
    _say("\ndemo complete: upload → data version works end to end on the local stack")
