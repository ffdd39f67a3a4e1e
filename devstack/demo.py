"""The end-to-end demo: a data drop lands in Blob Storage and everything after it is automatic.

It starts the local stack (unless one is already up), uploads a sample drop, waits for what the
Function App does in reaction, shows it, and stops what it started.
"""

from __future__ import annotations

import csv
import io
import json
import urllib.request
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from devstack.polling import wait_for
from devstack.procs import REPO_ROOT, port_open
from devstack.stack import Ports, Stack, applied_env, read_env, start_stack, stop_stack

ML_SRC = REPO_ROOT / "ml" / "src"


def _say(text: str) -> None:
    print(text, flush=True)


def _get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 (local stack URL)
        return json.loads(response.read())


def churn_rows(n: int, seed: int, label_noise: float = 0.0) -> str:
    """A churn CSV from ml/src/make_churn_data.py (the generator the pipeline's tests use, one place).

    `label_noise` replaces that fraction of labels with coin flips: 0 gives a learnable drop, 0.95 one
    whose model loses the champion gate.
    """
    import importlib.util

    spec = importlib.util.spec_from_file_location("evergreen_make_churn_data", ML_SRC / "make_churn_data.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    rows = module.churn_rows(n, seed, label_noise)
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=module.COLUMNS)
    writer.writeheader()
    writer.writerows(rows)
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


ENDPOINT = "churn-endpoint"
MODEL = "churn-model"


def _run(env: dict[str, str]) -> None:
    from azure.ai.ml import MLClient
    from azure.data.tables import TableServiceClient
    from azure.identity import DefaultAzureCredential
    from azure.storage.blob import BlobServiceClient

    from shared.adapters.azure.tables import AzureTable
    from shared.services.audit import AUDIT_TABLE, TableAuditLog
    from shared.services.ledger import LEDGER_TABLE, Ledger

    blobs = BlobServiceClient.from_connection_string(env["DATA_STORAGE"])
    landing = blobs.get_container_client("landing")
    tables = TableServiceClient.from_connection_string(env["AzureWebJobsStorage"])
    ledger = Ledger(AzureTable(tables.create_table_if_not_exists(LEDGER_TABLE)))
    audit = TableAuditLog(AzureTable(tables.create_table_if_not_exists(AUDIT_TABLE)))
    started_at = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")  # the local Event Grid's format
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    ml = MLClient(DefaultAzureCredential(), env["AZURE_SUBSCRIPTION_ID"], env["AZURE_RESOURCE_GROUP"],
                  env["AZUREML_WORKSPACE_NAME"])
    demo = _Demo(env, ml, landing, ledger, audit, stamp, started_at)
    _reset_endpoint(ml, ledger)
    drop = _step_upload_and_register(demo)
    _step_identical_copy(demo)
    _step_first_model(demo, drop)
    _step_gate_outcomes(demo)
    _step_show_events(demo)
    _step_retention()
    _say("\ndemo complete: upload → data version → retraining → model → gate → blue/green rollout → scoring "
         "→ retention, on the local stack")


@dataclass(frozen=True)
class _Demo:
    """What the demo's steps share: the settings, the clients and this run's stamp."""

    env: dict[str, str]
    ml: Any
    landing: Any
    ledger: Any
    audit: Any
    stamp: str
    started_at: str

    @property
    def eventgrid(self) -> str:
        return self.env["EVERGREEN_EVENTGRID_URL"]

    def version_for(self, name: str, tag: str, value: str) -> Any:
        try:
            return next((d for d in self.ml.data.list(name=name) if (d.tags or {}).get(tag) == value), None)
        except Exception:
            return None


def _step_upload_and_register(demo: _Demo) -> Any:
    """Steps 1-2: a drop and a reference file land; both become data versions. Returns the drop's."""
    landing, stamp = demo.landing, demo.stamp
    folder = f"churn/drop-{stamp}/"
    _say(f"\n1. uploading a data drop to landing/{folder} (5 parts, then the _SUCCESS marker)")
    _upload_drop(landing, folder, stamp, label_noise=0.4, verbose=True)
    reference = f"reference/regions-{stamp}.csv"
    landing.upload_blob(reference, f"region,code,drop\nnorth,N,{stamp}\nsouth,S,{stamp}\n", overwrite=True)
    _say(f"   uploaded landing/{reference}")

    _say("\n2. waiting for Evergreen to register the data versions...")
    drop = wait_for("the drop's data version",
                     lambda: demo.version_for("churn-training", "evergreen.source_folder", f"landing/{folder}"))
    reference_url = landing.get_blob_client(reference).url
    ref = wait_for("the reference file's data version",
                    lambda: demo.version_for("churn-reference", "evergreen.source_url", reference_url))
    _say("\n   registered data versions:")
    for d in (drop, ref):
        tags = d.tags or {}
        _say(f"   - {d.name}:{d.version}  type={d.type}  path={d.path}")
        _say(f"       sha256={tags.get('evergreen.sha256', '')[:16]}…  files={tags.get('evergreen.files', '1')}"
             f"  size={tags.get('evergreen.size')}B")
    return drop


def _step_identical_copy(demo: _Demo) -> None:
    """The same content under another name registers nothing new (deduplicated by content hash)."""
    stamp, eventgrid = demo.stamp, demo.eventgrid
    copy_body = f"region,code,drop\nnorth,N,{stamp}\nsouth,S,{stamp}\n"
    demo.landing.upload_blob(f"reference/regions-{stamp}-copy.csv", copy_body, overwrite=True)
    _say(f"\n   uploaded landing/reference/regions-{stamp}-copy.csv: the same content again")
    wait_for("the copy's duplicate verdict",
              lambda: len([d for d in _get_json(f"{eventgrid}/deliveries")
                           if "-copy.csv" in json.dumps(d) and d.get("status") == "delivered"]) > 0, timeout=60)
    all_reference = list(demo.ml.data.list(name="churn-reference"))
    copies = [d for d in all_reference
              if (d.tags or {}).get("evergreen.source_url", "").endswith(f"regions-{stamp}-copy.csv")]
    _say(f"\n   the identical copy registered {len(copies)} new version(s) (deduplicated by content hash)")


def _step_first_model(demo: _Demo, drop: Any) -> None:
    """Steps 3-5: retraining on the drop, its model, and the gate's first rollout."""
    champion = _show_retraining(demo.ml, demo.env, str(drop.version), step="3")
    _say(f"\n5. ModelRegistered → on_model_registered: the champion/challenger gate on {ENDPOINT}")
    first = _await_decision(demo.ml, demo.ledger, demo.audit, champion)
    if first.state != "succeeded":
        raise RuntimeError(f"the first model was not rolled out: {first.state} {first.failure}")
    _show_endpoint(demo.ml, demo.env, "   a scoring request to the endpoint is answered by")


def _step_gate_outcomes(demo: _Demo) -> None:
    """Steps 6-8: a model that loses the gate, one whose rollout is rolled back, one that wins."""
    _say("\n6. a second drop whose labels are mostly noise: its model must lose the gate")
    _drop_and_decide(demo, "6", "noisy", 0.95, "skipped", "   the endpoint still answers with")

    _say("\n7. a third, clean drop gives a better model, but its deployment is faulty (injected: smoke test fails)")
    _inject_fault(demo.env, "smoke")
    _drop_and_decide(demo, "7", "clean", 0.0, "rolled_back", "   after the rollback the champion still answers:")

    _say("\n8. the fault is gone; another clean drop: a better model, rolled out blue/green in canary steps")
    _drop_and_decide(demo, "8", "clean2", 0.0, "succeeded", "   the new champion answers:")


def _drop_and_decide(demo: _Demo, step: str, suffix: str, label_noise: float, expected: str, lead: str) -> None:
    """Another drop → its data version → retraining → the gate (and rollout); checks the outcome."""
    folder = f"churn/drop-{demo.stamp}-{suffix}/"
    _upload_drop(demo.landing, folder, demo.stamp + suffix, label_noise=label_noise)
    data = wait_for(f"the {suffix} drop's data version",
                    lambda: demo.version_for("churn-training", "evergreen.source_folder", f"landing/{folder}"))
    model = _show_retraining(demo.ml, demo.env, str(data.version), step=step, verbose=False)
    decision = _await_decision(demo.ml, demo.ledger, demo.audit, model)
    if decision.state != expected:
        raise RuntimeError(f"{model.name}:{model.version} should have ended {expected}, not {decision}")
    _show_endpoint(demo.ml, demo.env, lead)


def _step_show_events(demo: _Demo) -> None:
    """Step 9: this run's events as the local Event Grid saw and routed them, and the dead letters."""
    eventgrid, stamp = demo.eventgrid, demo.stamp
    _say("\n9. the events that flowed (local Event Grid):")
    deliveries = {d["eventId"]: d for d in _get_json(f"{eventgrid}/deliveries?limit=1000")}
    for item in reversed(_get_json(f"{eventgrid}/events?limit=400")):
        if item["receivedAt"] < demo.started_at:
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


def _step_retention() -> None:
    """Step 10: the retention policy, first as a dry run, then applied."""
    from devstack.demo_retention import run_retention_step

    _say("\n10. retention (evergreen.yaml `retention:`), first as a dry run, then for real")
    run_retention_step(_say)


def _upload_drop(landing: Any, folder: str, stamp: str, *, label_noise: float, verbose: bool = False) -> None:
    for part in range(5):
        name = f"{folder}part-{part:04d}.csv"
        landing.upload_blob(name, churn_rows(400, seed=hash((stamp, part)) & 0xFFFF, label_noise=label_noise),
                            overwrite=True)
        if verbose:
            _say(f"   uploaded landing/{name}")
    landing.upload_blob(f"{folder}_SUCCESS", b"", overwrite=True)
    _say(f"   uploaded landing/{folder} (5 parts, label noise {label_noise:.0%}) and its _SUCCESS marker")


def _reset_endpoint(ml: Any, ledger: Any) -> None:
    """The demo shows a first deployment, so it starts without the endpoint an earlier run left behind."""
    from azure.core.exceptions import ResourceNotFoundError

    try:
        ml.online_endpoints.get(ENDPOINT)
    except ResourceNotFoundError:
        return
    _say(f"0. deleting {ENDPOINT} left by an earlier demo run (the demo starts from no champion)")
    ml.online_endpoints.begin_delete(name=ENDPOINT).result()

    def settled() -> bool:
        record = ledger.get_rollout(ENDPOINT)
        return record is None or not record.active

    wait_for("an earlier demo's rollout to settle", settled, timeout=120)


def _inject_fault(env: dict[str, str], fault: str) -> None:
    import httpx
    from azure.identity import DefaultAzureCredential

    token = DefaultAzureCredential().get_token("https://management.azure.com/.default").token
    httpx.post(f"{env['AZUREML_DEV_URL_MFE'].rstrip('/')}/_emulator/faults",
               json={"model": MODEL, "fault": fault, "times": 1}, headers={"Authorization": f"Bearer {token}"},
               verify=env["REQUESTS_CA_BUNDLE"]).raise_for_status()
    _say(f"   emulator: the next deployment of {MODEL} will fail its {fault} test")


@dataclass(frozen=True)
class Decision:
    state: str  # skipped | succeeded | rolled_back
    reason: str
    failure: str = ""


def _await_decision(ml: Any, ledger: Any, audit: Any, model: Any) -> Decision:
    """Follow the gate's decision for `model` and, if it won, its rollout to the end (from the audit log)."""
    ref = f"{model.name}:{model.version}"

    def decided() -> Decision | None:
        for record in audit.query(kind_prefix="promotion."):
            if record.assets.get("model") == ref and record.kind in ("promotion.skipped", "promotion.started"):
                return Decision(record.kind.removeprefix("promotion."), record.reason)
        return None

    decision = wait_for(f"the gate's decision on {ref}", decided, timeout=120)
    verb = "promote" if decision.state == "started" else "reject"
    _say(f"   gate: {verb} {ref} — {decision.reason}")
    if decision.state != "started":
        return decision

    def finished() -> Any:
        record = ledger.get_rollout(ENDPOINT)
        return record if record and record.candidate == ref and not record.active else None

    record = wait_for(f"the rollout of {ref}", finished, timeout=300)
    steps = [r for r in audit.query(kind_prefix="rollout.") if r.assets.get("model") == ref]
    _say(f"   rollout of {ref} as deployment {record.deployment} (a persisted state machine, one queue message "
         "per step):")
    for step in reversed(steps):
        _say(f"     {step.at.strftime('%H:%M:%S')} {step.decision:<12} {step.reason[:140]}")
    return Decision(record.state, record.reason, record.failure)


def _show_endpoint(ml: Any, env: dict[str, str], lead: str) -> None:
    import httpx

    endpoint = ml.online_endpoints.get(ENDPOINT)
    deployments = {d.name: d for d in ml.online_deployments.list(endpoint_name=ENDPOINT)}
    _say(f"   endpoint {ENDPOINT}: traffic {dict(endpoint.traffic or {})}; deployments "
         + ", ".join(f"{n} ({(d.tags or {}).get('evergreen.model', '?')})" for n, d in deployments.items()))
    key = ml.online_endpoints.get_keys(ENDPOINT).primary_key
    request = {"input_data": [{"tenure_months": 2, "monthly_charges": 110.0, "support_calls": 6,
                               "contract": "month-to-month"},
                              {"tenure_months": 70, "monthly_charges": 25.0, "support_calls": 0,
                               "contract": "two-year"}]}
    uri = str(endpoint.scoring_uri)
    verify: Any = env["REQUESTS_CA_BUNDLE"] if uri.startswith("https") else True
    reply = httpx.post(uri, json=request, headers={"Authorization": f"Bearer {key}"}, verify=verify, timeout=30)
    reply.raise_for_status()
    answered = reply.headers.get("azureml-model-deployment", "?")
    model = (deployments[answered].tags or {}).get("evergreen.model", "?") if answered in deployments else "?"
    _say(f"{lead} deployment {answered} = model {model}: {reply.json()}")


def _show_retraining(ml: Any, env: dict[str, str], data_version: str, *, step: str, verbose: bool = True) -> Any:
    import httpx
    from azure.core.exceptions import ResourceNotFoundError
    from azure.identity import DefaultAzureCredential

    from shared.domain.retrain import job_name_for

    job_name = job_name_for("churn-training", data_version)
    _say(f"\n{step}. the new data version starts the retraining pipeline ml/pipeline.yml as job {job_name}")

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
    for node, detail in logs["steps"].items():
        tail = [line for line in detail["log"].splitlines() if line.strip()][-3:]
        _say(f"   - step {node:<9} {detail['status']}")
        for line in tail if verbose else []:
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
    _say(f"\n{'4' if step == '3' else step}. registered model {registered.name}:{registered.version}  "
         f"path={registered.path}")
    _say(f"   lineage: data {tags.get('evergreen.data_asset')}:{tags.get('evergreen.data_version')}"
         f" → job {tags.get('evergreen.job_name')} → model; code sha256 {tags.get('evergreen.code_sha256', '')[:12]}…")
    metrics = {k.removeprefix("evergreen.metric."): v for k, v in tags.items()
               if k.startswith("evergreen.metric.")}
    _say("   metrics: " + ", ".join(f"{k}={float(v):.3f}" for k, v in sorted(metrics.items())))
    return registered
