"""The end-to-end demo: data drops land in Blob Storage and everything after it is automatic.

It starts the local stack (unless one is already up) with its Functions host on the demo's policy
(the shipped evergreen.yaml, fair gate on for churn-model, plus a `threshold`), uploads the drops of
`devstack/demo_data.py` one by one, waits for what the Function App does in reaction and shows it:
each model's comparison job and the table the gate judged (read from the audit record, never
recomputed; `devstack/demo_tables.py`), the gate's coded decision, the rollouts, the decaying
champion's re-score and the retrain it starts. It stops what it started, and stops with an error if a
scenario does not come out as intended.
"""

from __future__ import annotations

import csv
import functools
import io
import json
import tempfile
import urllib.request
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from devstack import demo_data
from devstack.demo_data import DemoDrop, write_drop
from devstack.demo_tables import comparison_lines, parse_recorded
from devstack.polling import wait_for
from devstack.procs import REPO_ROOT, port_open
from devstack.stack import Ports, Stack, applied_env, read_env, start_stack, stop_stack
from shared.domain.retrain import job_name_for

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


def demo_policy(app_dir: Path) -> Path:
    """The policy the demo's Functions host runs: the shipped evergreen.yaml (fair gate on for churn-model)
    plus a `threshold`, so that the model trained after the drift is refused as `below_threshold`.

    The app folder links the repo's `ml/`, so the pipelines resolve as in a deployment.
    """
    import yaml

    policy = yaml.safe_load((REPO_ROOT / "evergreen.yaml").read_text(encoding="utf-8"))
    churn = next(m for m in policy["models"] if m["name"] == MODEL)
    churn["promotion"]["threshold"] = THRESHOLD
    app_dir.mkdir(parents=True, exist_ok=True)
    ml = app_dir / "ml"
    if not ml.is_symlink():
        ml.symlink_to(REPO_ROOT / "ml")
    path = app_dir / "evergreen.yaml"
    header = "# written by `python -m devstack demo`: evergreen.yaml plus churn-model's promotion.threshold\n"
    path.write_text(header + yaml.safe_dump(policy, sort_keys=False), encoding="utf-8")
    return path


def _host_on_policy(state_dir: Path, ports: Ports, stack: Stack | None, policy: Path) -> None:
    """(Re)start the Functions host with EVERGREEN_POLICY_PATH = the demo's policy; record it in the env file."""
    from devstack.host import start_host
    from devstack.procs import stop_pid

    env = {**read_env(state_dir), "EVERGREEN_POLICY_PATH": str(policy)}
    pid_file = state_dir / "pids.json"
    pids: dict[str, int] = json.loads(pid_file.read_text(encoding="utf-8")) if pid_file.exists() else {}
    if stack is None and "functions-host" in pids:
        stop_pid(pids["functions-host"])
    host = start_host(REPO_ROOT, ports.host, state_dir=state_dir, env=env)
    if stack is not None:
        stack.services.append(host)
    host.wait_ready(timeout=60)
    pids["functions-host"] = host.process.pid
    pid_file.write_text(json.dumps(pids, indent=2), encoding="utf-8")
    (state_dir / "env").write_text("\n".join(f"{k}={v}" for k, v in sorted(env.items())) + "\n", encoding="utf-8")


def run_demo(state_dir: Path, *, keep: bool = False) -> int:
    ports = Ports()
    started: Stack | None = None
    policy = demo_policy(state_dir / "demo-app")
    try:
        if port_open(ports.host) and (state_dir / "env").exists():
            _say("using the local stack that is already up; restarting its Functions host on the demo's policy")
        else:
            _say("starting the local stack (Azurite, Azure ML emulator, Event Grid, Functions host)...")
            started = start_stack(state_dir, ports, with_host=False)
        _host_on_policy(state_dir, ports, started, policy)
        _say(f"   the host runs {policy}: evergreen.yaml (fair gate on for churn-model) "
         f"(and threshold roc_auc >= {THRESHOLD})")
        with applied_env(read_env(state_dir)):
            _run(read_env(state_dir))
        _say(f"\nstatus page: http://127.0.0.1:{ports.host}/api/status  (JSON: /api/status.json)")
        _say("it stays up while the stack does: run the demo with --keep to leave the stack up, `make down` to stop it")
    finally:
        if started is not None and not keep:
            _say("\nstopping the local stack")
            stop_stack(started)
    return 0


ENDPOINT = "churn-endpoint"
MODEL = "churn-model"
TRAINING = "churn-training"
THRESHOLD = 0.7  # the demo's `promotion.threshold` for churn-model: any model must reach this roc_auc


@functools.cache
def shipped_evaluation() -> dict[str, Any]:
    """churn-model's `promotion.evaluation` in the shipped evergreen.yaml (the demo prints against it); read
    when first needed, not when the module is imported (tests import `churn_rows` from here)."""
    import yaml

    policy = yaml.safe_load((REPO_ROOT / "evergreen.yaml").read_text(encoding="utf-8"))
    return dict(next(m for m in policy["models"] if m["name"] == MODEL)["promotion"]["evaluation"])



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
    _step_better_but_faulty(demo)
    _step_canary(demo)
    _step_rejections(demo)
    _step_decay(demo)
    _step_show_events(demo)
    _step_retention()
    _say("\ndemo complete: upload → data version → retraining → model → comparison on shared evaluation rows → "
         "gate → blue/green rollout → scoring → re-scoring the champion → retention, on the local stack")


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


def _upload(demo: _Demo, drop: DemoDrop) -> Any:
    """Upload one demo drop (its CSV, then `_SUCCESS`) and wait for its data version; returns it."""
    prefix = "churn" if drop.dataset == TRAINING else "holdout"
    folder = f"{prefix}/{drop.name}-{demo.stamp}/"
    with tempfile.TemporaryDirectory() as tmp:
        for path in write_drop(drop, Path(tmp), success_marker=False):
            demo.landing.upload_blob(f"{folder}{path.name}", path.read_bytes(), overwrite=True)
    demo.landing.upload_blob(f"{folder}_SUCCESS", b"", overwrite=True)
    noise = f", label noise {drop.label_noise:.0%}" if drop.label_noise else ""
    _say(f"   uploaded landing/{folder} ({drop.rows} rows{noise}) and its _SUCCESS marker")
    data = wait_for(f"the {drop.name} drop's data version",
                    lambda: demo.version_for(drop.dataset, "evergreen.source_folder", f"landing/{folder}"))
    _say(f"   → data version {data.name}:{data.version}")
    return data


def _step_upload_and_register(demo: _Demo) -> Any:
    """Steps 1-2: labelled evaluation rows, a training drop and a reference file land; each becomes a data
    version. Returns the training drop's."""
    landing, stamp = demo.landing, demo.stamp
    _say("\n1. uploading labelled evaluation rows (churn-holdout: the champion and every challenger are scored on "
         "the same rows), a first training drop and a reference file")
    _upload(demo, demo_data.HOLDOUT_1)
    reference = f"reference/regions-{stamp}.csv"
    landing.upload_blob(reference, f"region,code,drop\nnorth,N,{stamp}\nsouth,S,{stamp}\n", overwrite=True)
    _say(f"   uploaded landing/{reference}")
    drop = _upload(demo, demo_data.FIRST)

    _say("\n2. waiting for Evergreen to register the reference file's data version...")
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
    """Steps 3-5: retraining on the first drop, its model scored alone, deployed (no threshold to miss)."""
    champion = _show_retraining(demo, job_name_for(TRAINING, str(drop.version)), step="3")
    _say(f"\n5. ModelRegistered → a comparison job scores {champion.name}:{champion.version} alone on the "
         f"evaluation rows ({ENDPOINT} has no champion yet); it is deployed if it meets threshold {THRESHOLD}")
    _expect(_await_decision(demo, champion), "succeeded", champion, "first_model")
    _show_endpoint(demo.ml, demo.env, "   a scoring request to the endpoint is answered by")


def _step_better_but_faulty(demo: _Demo) -> None:
    """Step 6: a clearly better model wins the comparison, but its deployment is faulty: rolled back."""
    _say("\n6. a bigger, clean training drop gives a clearly better model, but its deployment is faulty "
         "(injected: its smoke test fails)")
    _inject_fault(demo.env, "smoke")
    _drop_and_decide(demo, demo_data.ROLLED_BACK, "6", "rolled_back", "improved")
    _show_endpoint(demo.ml, demo.env, "   after the rollback the champion still answers:")


def _step_canary(demo: _Demo) -> None:
    """Step 7: the fault is gone; the next clean drop's model is promoted, canary 25 % → 100 %."""
    _say("\n7. the fault is gone; the next clean drop gives a better model again: rolled out blue/green in canary "
         "steps")
    _drop_and_decide(demo, demo_data.BETTER, "7", "succeeded", "improved")
    _show_endpoint(demo.ml, demo.env, "   the new champion answers:")


def _step_rejections(demo: _Demo) -> None:
    """Steps 8-9: a noise-level model (not_significant) and one worse on a slice (slice_regressed)."""
    _say("\n8. a drop with 10 % label noise: its model differs from the champion at noise level")
    _drop_and_decide(demo, demo_data.NOISY, "8", "skipped", "not_significant")
    _say("\n9. a drop that lets the model see region but learns north like the rest: better overall, worse in "
         "north")
    _drop_and_decide(demo, demo_data.SLICE, "9", "skipped", "slice_regressed")


def _step_decay(demo: _Demo) -> None:
    """Steps 10-11: a drop from after a drift loses on today's rows; a new evaluation drop shows the champion
    has decayed → Evergreen.ChampionDegraded → that drop retrained → compared on the new rows → promoted."""
    _say("\n10. a training drop from after a drift (long-tenure customers now churn): on today's evaluation rows "
         f"its model is worse, below threshold {THRESHOLD}")
    data = _drop_and_decide(demo, demo_data.RETRAIN, "10", "skipped", "below_threshold")
    _say("\n11. new labelled evaluation rows land: the world has drifted; the champion is re-scored alone on them")
    before = {m.version for m in _models_on(demo, str(data.version))}
    holdout = _upload(demo, demo_data.HOLDOUT_2)
    degraded = wait_for("the champion's re-score", lambda: _champion_verdict(demo, f"{holdout.name}:{holdout.version}"),
                        timeout=240)
    _say(f"   champion.{degraded.kind.removeprefix('champion.')}: {degraded.reason[:300]}")
    _show_champion_record(demo, degraded.assets.get("model", ""))
    if degraded.kind != "champion.degraded":
        raise RuntimeError(f"the champion should have decayed on {holdout.name}:{holdout.version}: {degraded}")
    model = _show_retraining(demo, _new_model(demo, str(data.version), before), step="12", verbose=False,
                             lead="\n12. Evergreen.ChampionDegraded → the newest training drop is retrained")
    _expect(_await_decision(demo, model), "succeeded", model)
    _show_endpoint(demo.ml, demo.env, "   the retrained champion answers:")


def _show_champion_record(demo: _Demo, champion: str) -> None:
    """The champion's metric over time: on the evaluation rows it was promoted on (its `promotion.compared`
    record), then each re-score (the ledger's `champion_scores`)."""
    promoted = next((r for r in demo.audit.query(kind_prefix="promotion.compared")
                     if r.assets.get("model") == champion), None)
    document = parse_recorded(promoted.assets.get("comparison", "")) if promoted is not None else None
    if document is not None:
        evaluation, metric = document.get("evaluation") or {}, str(document.get("metric", ""))
        value = ((document.get("challenger") or {}).get("metrics") or {}).get(metric)
        _say(f"   the champion's record: {promoted.at.strftime('%H:%M:%S') if promoted else ''} {champion} on "
             f"{evaluation.get('data_asset')}:{evaluation.get('data_version')}: {metric} {value}  (promoted)")
    for score in [s for s in demo.ledger.champion_scores(ENDPOINT) if s.model == champion]:
        _say(f"                          {score.at.strftime('%H:%M:%S')} {score.model} on "
             f"{score.data_asset}:{score.data_version}: {score.metric} {score.value or '—'}"
             f"{'  (degraded)' if score.degraded else ''}")


def _champion_verdict(demo: _Demo, data: str) -> Any:
    """The monitor's verdict (audit `champion.healthy|degraded|skipped`) on the re-score on `data`."""
    for record in demo.audit.query(kind_prefix="champion."):
        if record.assets.get("data") == data and record.kind != "champion.rescore_submitted":
            return record
    return None


def _drop_and_decide(demo: _Demo, drop: DemoDrop, step: str, expected: str, code: str = "") -> Any:
    """Another drop → its data version → retraining → the comparison and the gate; checks the outcome."""
    data = _upload(demo, drop)
    model = _show_retraining(demo, job_name_for(TRAINING, str(data.version)), step=step,
                             verbose=False)
    _expect(_await_decision(demo, model), expected, model, code)
    return data


def _expect(decision: Decision, expected: str, model: Any, code: str = "") -> None:
    """The demo stops if a scenario did not come out as intended (its data, or the flow, changed)."""
    if decision.state != expected or (code and decision.code != code):
        raise RuntimeError(f"{model.name}:{model.version} should have ended {expected}, not {decision}")


def _step_show_events(demo: _Demo) -> None:
    """Step 9: this run's events as the local Event Grid saw and routed them, and the dead letters."""
    eventgrid, stamp = demo.eventgrid, demo.stamp
    _say("\n13. the events that flowed (local Event Grid):")
    deliveries = {d["eventId"]: d for d in _get_json(f"{eventgrid}/deliveries?limit=1000")}
    for item in reversed(_get_json(f"{eventgrid}/events?limit=2000")):
        if item["receivedAt"] < demo.started_at:
            continue  # an earlier demo's events (the stack keeps its state)
        event = item["event"]
        subject = event.get("subject", "")
        if stamp not in subject and not subject.startswith(("datasets/", "experiments/", "models/", "endpoints/")):
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

    _say("\n14. retention (evergreen.yaml `retention:`), first as a dry run, then for real")
    run_retention_step(_say)


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
    code: str = ""  # the gate's code on the comparison (first_model, improved, not_significant, slice_regressed…)


def _await_decision(demo: _Demo, model: Any) -> Decision:
    """Follow the gate's decision for `model` (its comparison, as recorded) and, if it won, its rollout to the
    end (from the audit log and the ledger)."""
    ref = f"{model.name}:{model.version}"

    def decided() -> Any:
        for record in demo.audit.query(kind_prefix="promotion."):
            if record.assets.get("model") == ref and record.kind in ("promotion.skipped", "promotion.started"):
                return record
        return None

    record = wait_for(f"the gate's decision on {ref}", decided, timeout=300)
    code = _show_comparison(demo, ref)
    state = record.kind.removeprefix("promotion.")
    _say(f"   gate: {'promote' if state == 'started' else 'reject'} {ref} — {record.reason[:300]}")
    if state != "started":
        return Decision(state, record.reason, code=code)

    def finished() -> Any:
        rollout = demo.ledger.get_rollout(ENDPOINT)
        return rollout if rollout and rollout.candidate == ref and not rollout.active else None

    rollout = wait_for(f"the rollout of {ref}", finished, timeout=300)
    steps = [r for r in demo.audit.query(kind_prefix="rollout.") if r.assets.get("model") == ref]
    _say(f"   rollout of {ref} as deployment {rollout.deployment} (a persisted state machine, one queue message "
         "per step):")
    for step in reversed(steps):
        _say(f"     {step.at.strftime('%H:%M:%S')} {step.decision:<12} {step.reason[:140]}")
    return Decision(rollout.state, rollout.reason, rollout.failure, code)


def _show_comparison(demo: _Demo, ref: str) -> str:
    """Print the comparison the gate judged `ref` on, as the audit record `promotion.compared` holds it;
    returns the gate's code ("" if there was no comparison)."""
    compared = next((r for r in demo.audit.query(kind_prefix="promotion.compared")
                     if r.assets.get("model") == ref), None)
    if compared is None:
        return ""
    _say(f"   comparison job {compared.assets.get('job', '?')} → {compared.decision}")
    document = parse_recorded(compared.assets.get("comparison", ""))
    if document is not None:
        for line in comparison_lines(document, min_slice_rows=int(shipped_evaluation()["min_slice_rows"]),
                                     max_slice_regression=float(shipped_evaluation()["max_slice_regression"])):
            _say(line)
    return str(compared.decision)


def _models_on(demo: _Demo, data_version: str) -> list[Any]:
    """The churn-model versions trained on `churn-training:<data_version>`."""
    from azure.core.exceptions import ResourceNotFoundError

    try:
        return [m for m in demo.ml.models.list(name=MODEL)
                if (m.tags or {}).get("evergreen.data_asset") == TRAINING
                and (m.tags or {}).get("evergreen.data_version") == data_version]
    except ResourceNotFoundError:
        return []


def _new_model(demo: _Demo, data_version: str, before: set[str]) -> str:
    """Wait for a new model trained on `data_version` (a retrain of it); returns its pipeline job's name."""
    model = wait_for(f"a retrained model on {TRAINING}:{data_version}",
                     lambda: next((m for m in _models_on(demo, data_version) if m.version not in before), None),
                     timeout=300)
    return str((model.tags or {}).get("evergreen.job_name", ""))


def _show_endpoint(ml: Any, env: dict[str, str], lead: str) -> None:
    import httpx

    endpoint = ml.online_endpoints.get(ENDPOINT)
    deployments = {d.name: d for d in ml.online_deployments.list(endpoint_name=ENDPOINT)}
    _say(f"   endpoint {ENDPOINT}: traffic {dict(endpoint.traffic or {})}; deployments "
         + ", ".join(f"{n} ({(d.tags or {}).get('evergreen.model', '?')})" for n, d in deployments.items()))
    key = ml.online_endpoints.get_keys(ENDPOINT).primary_key
    request = {"input_data": [{"tenure_months": 2, "monthly_charges": 110.0, "support_calls": 6,
                               "contract": "month-to-month", "region": "north", "num_products": 1},
                              {"tenure_months": 70, "monthly_charges": 25.0, "support_calls": 0,
                               "contract": "two-year", "region": "south", "num_products": 3}]}
    uri = str(endpoint.scoring_uri)
    verify: Any = env["REQUESTS_CA_BUNDLE"] if uri.startswith("https") else True
    reply = httpx.post(uri, json=request, headers={"Authorization": f"Bearer {key}"}, verify=verify, timeout=30)
    reply.raise_for_status()
    answered = reply.headers.get("azureml-model-deployment", "?")
    model = (deployments[answered].tags or {}).get("evergreen.model", "?") if answered in deployments else "?"
    _say(f"{lead} deployment {answered} = model {model}: {reply.json()}")


def _show_retraining(demo: _Demo, job_name: str, *, step: str, verbose: bool = True, lead: str = "") -> Any:
    """The retraining pipeline job `job_name` to its end, its steps, and the model it registered."""
    import httpx
    from azure.core.exceptions import ResourceNotFoundError
    from azure.identity import DefaultAzureCredential

    ml, env = demo.ml, demo.env
    first = f"\n{step}. the new data version starts" if step == "3" else "   it starts"
    _say(f"{lead or first + ' the retraining pipeline ml/pipeline.yml'} (job {job_name})")

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
            models = ml.models.list(name=MODEL)
            return next((m for m in models if (m.tags or {}).get("evergreen.job_name") == job_name), None)
        except ResourceNotFoundError:
            return None

    registered = wait_for("the registered model", model, timeout=60)
    tags = registered.tags or {}
    _say(f"\n{'4. r' if step == '3' else '   r'}egistered model {registered.name}:{registered.version}  "
         f"path={registered.path}")
    _say(f"   lineage: data {tags.get('evergreen.data_asset')}:{tags.get('evergreen.data_version')}"
         f" → job {tags.get('evergreen.job_name')} → model; code sha256 {tags.get('evergreen.code_sha256', '')[:12]}…")
    metrics = {k.removeprefix("evergreen.metric."): v for k, v in tags.items()
               if k.startswith("evergreen.metric.")}
    _say("   metrics: " + ", ".join(f"{k}={float(v):.3f}" for k, v in sorted(metrics.items())))
    return registered
