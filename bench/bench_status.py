"""The status page's server time (read model + HTML render) at the issue's sizes and at 10× them.

1× is 1,000 data versions (5 datasets), 500 model versions (10 models, one endpoint each), 10,000 audit
records over the last 7 days and 50 rollouts (their phase-by-phase audit records and the endpoints'
rollout rows); 10× multiplies every count, on the same policy. Everything runs on the in-memory adapters
(`MemoryTable` for the ledger and the audit log, `MemoryWorkspace`, `MemoryEndpoints`): the read model's
cost is the number and size of its reads, which the in-memory adapters reproduce without network time.
A deployed page adds one round trip per read (about 60 table queries and Azure ML gets at these sizes).

The retention dry run lists the whole inventory (it must), so the page computes it at most once per
`plan_ttl_seconds`; the page's steady-state time ("warm") reuses it, the first view ("cold") pays for it.
Both are reported. Runnable alone: `python -m bench.bench_status [--quick]`.
"""

from __future__ import annotations

import argparse
import statistics
import time
from datetime import UTC, datetime, timedelta

from bench.report import BenchResult
from shared.adapters.memory.azureml import MemoryWorkspace
from shared.adapters.memory.endpoints import MemoryEndpoints
from shared.adapters.memory.retention import MemoryRetentionBlobs, MemoryRetentionWorkspace
from shared.adapters.memory.tables import MemoryTable
from shared.config.policy import Policy
from shared.config.retention import parse_retention
from shared.domain.audit import AuditRecord
from shared.domain.records import RolloutRecord
from shared.domain.retention.inventory import DataVersion, ModelVersion
from shared.domain.vocabulary import Phase, Tag, metric_tag
from shared.domain.workspace import DataVersionSpec, DeploymentSpec
from shared.services.audit import TableAuditLog
from shared.services.ledger import Ledger
from shared.services.retention import RetentionRunner
from shared.services.status import StatusReader
from shared.status_page import render_html

NOW = datetime(2026, 12, 1, 12, tzinfo=UTC)
DATASETS, MODELS = 5, 10
BASE = {"data_versions": 1_000, "model_versions": 500, "audit_records": 10_000, "rollouts": 50}
GOAL_MS = 300.0
PHASES = (Phase.DEPLOY, Phase.PROVISIONING, Phase.SMOKE, Phase.SHIFT, Phase.SHIFTING, Phase.GRACE, Phase.SUCCEEDED)
ARCHIVE_AFTER_30_DAYS = {"archive": {"daysAfterCreationGreaterThan": 30}}
RULES = {"rules": [
    {"name": "data", "type": "dataVersions", "actions": {"keepLatest": 10, **ARCHIVE_AFTER_30_DAYS}},
    {"name": "models", "type": "modelVersions", "actions": {"keepLatest": 5, **ARCHIVE_AFTER_30_DAYS}},
]}


def policy() -> Policy:
    promotion = {"metric": "roc_auc", "direction": "higher_is_better",
                 "deployment": {"instance_type": "Standard_DS3_v2"}, "smoke_test": {"request": {"x": [1]}}}
    return Policy.model_validate({
        "datasets": [{"name": f"ds{d}", "container": "landing", "prefix": f"ds{d}/", "type": "uri_file",
                      "datastore": "landing"} for d in range(DATASETS)],
        "models": [{"name": f"model{m}", "registered_elsewhere": True,
                    "promotion": {**promotion, "endpoint": f"ep{m}"}} for m in range(MODELS)],
    })


def build(scale: float) -> StatusReader:
    """A reader over stores holding `scale` × the issue's sizes."""
    sizes = {k: round(v * scale) for k, v in BASE.items()}
    registry, endpoints = MemoryWorkspace(), MemoryEndpoints(operation_ticks=0)
    audit, ledger = TableAuditLog(MemoryTable()), Ledger(MemoryTable(), clock=lambda: NOW)
    retention_ws = MemoryRetentionWorkspace()
    for n in range(sizes["data_versions"]):
        name = f"ds{n % DATASETS}"
        registered = registry.register_data_version(DataVersionSpec(
            name, "uri_file", f"azureml://datastores/landing/paths/{name}/{n}.csv", "",
            {Tag.SOURCE_URL.value: f"https://acct.blob.core.windows.net/landing/{name}/{n}.csv"}))
        retention_ws.put(DataVersion(name, registered.version, NOW - timedelta(days=n % 90)))
    per_model = sizes["model_versions"] // MODELS
    for m in range(MODELS):
        for v in range(1, per_model + 1):
            endpoints.add_model(f"model{m}", str(v), {metric_tag("roc_auc"): f"{0.7 + (v % 20) / 100:.2f}"})
            retention_ws.put(ModelVersion(f"model{m}", str(v), NOW - timedelta(days=v % 60),
                                          metrics={"roc_auc": 0.7 + (v % 20) / 100}))
        _serve(endpoints, m, per_model)
    _rollouts(audit, ledger, sizes["rollouts"], per_model)
    _audit(audit, sizes["audit_records"] - sizes["rollouts"] * len(PHASES))
    runner = RetentionRunner(policy=parse_retention(RULES), workspace=retention_ws,
                             blobs=MemoryRetentionBlobs(clock=lambda: NOW), rollouts=ledger.rollouts,
                             approvals=ledger.open_approvals, comparisons=lambda: [], waiting=lambda: [], audit=audit,
                             clock=lambda: NOW)
    return StatusReader(policy=policy(), registry=registry, endpoints=endpoints, ledger=ledger, audit=audit,
                        retention_schedule="0 0 3 * * *", retention=runner, plan_ttl_seconds=3600,
                        clock=lambda: NOW)


def _serve(endpoints: MemoryEndpoints, m: int, version: int) -> None:
    endpoints.begin_create_endpoint(f"ep{m}", {})
    endpoints.begin_create_deployment(DeploymentSpec(f"ep{m}", f"model{m}-{version}", f"model{m}", str(version),
                                                     "Standard_DS3_v2", 1, None, None, None, {}))
    endpoints.settle_all()
    endpoints.begin_set_traffic(f"ep{m}", {f"model{m}-{version}": 100})
    endpoints.settle_all()


def _rollouts(audit: TableAuditLog, ledger: Ledger, count: int, per_model: int) -> None:
    """`count` finished rollouts spread over the endpoints: each phase audited; the newest is the endpoint's row."""
    for r in range(count):
        m, version = r % MODELS, per_model - r // MODELS
        started = NOW - timedelta(hours=r + 1)
        assets = {"model": f"model{m}:{version}", "endpoint": f"ep{m}", "deployment": f"model{m}-{version}",
                  "champion": f"model{m}:{version - 1}"}
        for step, phase in enumerate(PHASES):
            audit.record(AuditRecord(f"rollout.{phase.value}", f"{phase.value} (step {step})", "as planned",
                                     f"evt-r{r}", assets, at=started + timedelta(minutes=step)))
        if r < MODELS:
            ledger.create_rollout(RolloutRecord(
                endpoint=f"ep{m}", rollout_id=f"r{r}", seq=len(PHASES), state=Phase.SUCCEEDED.value,
                candidate_name=f"model{m}", candidate_version=str(version), deployment=f"model{m}-{version}",
                champion_deployment="", champion_model="", step=1, due_at=None, started_at=started, reason="better",
                queued_name="", queued_version="", queued_event="", event_id=f"evt-r{r}", phase_since=started,
                attempts=0, failure=""))


def _audit(audit: TableAuditLog, count: int) -> None:
    """Data, retraining and gate records, spread evenly over the last 7 days."""
    spacing = timedelta(days=7) / max(count, 1)
    kinds = ("data.registered", "retrain.submitted", "promotion.skipped", "retrain.finished")
    for n in range(count):
        kind = kinds[n % len(kinds)]
        owner = (n // len(kinds)) % MODELS  # each model (and dataset) gets its share of every kind
        assets = ({"model": f"model{owner}:{n}", "endpoint": f"ep{owner}"} if kind.startswith("promotion")
                  else {"data": f"ds{owner % DATASETS}:{n}"})
        audit.record(AuditRecord(kind, kind.split(".")[1], f"record {n}", f"evt-{n}", assets,
                                 at=NOW - spacing * (n + 1)))


def page_ms(reader: StatusReader, repeat: int) -> tuple[float, float, float]:
    """(first view incl. the retention dry run, median of `repeat` later views, the same as wall time), in ms.

    The first two are CPU time of this process (`time.process_time`): on a shared machine, wall time
    also counts the time other processes had the CPU.
    """
    def once() -> tuple[float, float]:
        cpu, wall = time.process_time(), time.perf_counter()
        render_html(reader.read())
        return (time.process_time() - cpu) * 1000, (time.perf_counter() - wall) * 1000

    cold = once()[0]
    views = [once() for _ in range(repeat)]
    return cold, statistics.median(v[0] for v in views), statistics.median(v[1] for v in views)


def run(quick: bool) -> list[BenchResult]:
    """1× against 10× (quick: 0.1× against 1×, fewer views); the goal on the 1× page holds in both."""
    repeat = 3 if quick else 15
    small, large = (0.1, 1.0) if quick else (1.0, 10.0)
    cold1, warm1, wall1 = page_ms(build(small), repeat)
    cold10, warm10, wall10 = page_ms(build(large), repeat)
    ratio = warm10 / warm1
    s, x = f"{small:g}x", f"{large:g}x"
    return [BenchResult(
        name="status_page", title="status page server time (read model + render), in-memory adapters",
        figures={f"warm_ms_{s}": round(warm1, 1), f"warm_ms_{x}": round(warm10, 1),
                 f"wall_ms_{s}": round(wall1, 1), f"wall_ms_{x}": round(wall10, 1),
                 f"cold_ms_{s}": round(cold1, 1), f"cold_ms_{x}": round(cold10, 1),
                 f"cold_ratio_{x}_{s}": round(cold10 / cold1, 2)},
        ratio_name=f"page time at {x} / at {s} (warm: retention plan cached)", ratio=round(ratio, 2), goal="<= 10",
        met=ratio <= 10 and (warm10 if quick else warm1) < GOAL_MS,
        notes=(f"goal also: warm 1× < {GOAL_MS:g} ms (CPU time; wall time shown too). 1× = 1,000 data versions, "
               "500 model versions, 10,000 audit records, 50 rollouts; in-memory adapters. Cold = the first view, "
               "which also computes the retention dry run over the whole inventory (cached per process for "
               "plan_ttl_seconds, 300 s by default). What still grows at 10x: the in-memory registry's scans "
               "(MemoryEndpoints.latest_model, MemoryWorkspace.get_data_version), which Azure ML answers by index."),
    )]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="0.1x and 1x, fewer repetitions")
    from bench.report import details

    print(details(run(parser.parse_args().quick)))


if __name__ == "__main__":
    main()
