"""The operator's commands: `audit`, `status`, `rollout abort|resume`, `retrain` (parsing, settings, rendering).

Each command asks only for the settings it needs (`NEEDS`); the environment is completed from
`local.settings.json` as `func start` does (`shared.cli.main`). The work is done by
`shared.services.operator.Operator`, built by the composition root.
"""

from __future__ import annotations

import argparse
import getpass
import json
import logging
import os
import sys
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from shared.cli.tables import table
from shared.domain.audit import AuditRecord
from shared.ports import AuditLog
from shared.services.operator import Operator, OperatorRefused, Status, audit_json

log = logging.getLogger(__name__)

STORAGE = frozenset({"AzureWebJobsStorage"})
POLICY = frozenset({"EVERGREEN_POLICY_PATH", "EVERGREEN_LANDING_CONTAINER"})
WORKSPACE = frozenset({"AZURE_SUBSCRIPTION_ID", "AZURE_RESOURCE_GROUP", "AZUREML_WORKSPACE_NAME"})
NEEDS: dict[str, frozenset[str]] = {
    "audit": STORAGE,
    "status": STORAGE | POLICY,
    "rollout": STORAGE | POLICY,
    "retrain": STORAGE | POLICY | WORKSPACE,
    "retention": STORAGE | POLICY | WORKSPACE | {"DATA_STORAGE"},
}
"""The settings each command requires (the others are read if present); reconcile and redrive need them all."""


def add_operator_parsers(sub: Any) -> None:
    """`audit`, `status`, `rollout abort|resume`, `retrain` on the CLI's subparsers."""
    audit = sub.add_parser("audit", help="list automated decisions, newest first")
    audit.add_argument("--days", type=int, default=1, help="how many UTC days back (default 1: today)")
    audit.add_argument("--kind", default="", help="only kinds starting with this, e.g. data. or retrain.")
    audit.add_argument("--limit", type=int, default=50, help="at most this many records (default 50)")
    audit.add_argument("--model", default="", help="only records about this model (name, or name:version)")
    audit.add_argument("--endpoint", default="", help="only records about this endpoint")
    audit.add_argument("--dataset", default="", help="only records about this dataset (name, or name:version)")
    audit.add_argument("--event", default="", help="only records of this event id")
    audit.add_argument("--wide", action="store_true", help="never wrap a cell (one line per record)")
    status = sub.add_parser("status", help="open batches, retraining per dataset, active rollouts, last retention")
    rollout = sub.add_parser("rollout", help="abort or resume an endpoint's rollout")
    actions = rollout.add_subparsers(dest="action", required=True)
    abort = actions.add_parser("abort", help="roll back the active rollout (traffic returns to the champion)")
    resume = actions.add_parser("resume", help="re-send the current step of the active rollout")
    for p in (abort, resume):
        p.add_argument("endpoint", help="the online endpoint's name")
    retrain = sub.add_parser("retrain", help="retrain a dataset on a data version (the latest by default), "
                                              "through the same decision as a new version")
    retrain.add_argument("target", metavar="DATASET[:VERSION]", help="e.g. churn-training or churn-training:4")
    for p in (abort, resume, retrain):
        p.add_argument("--reason", default="", help="why (written to the audit log)")
        p.add_argument("--by", default="", help="who (default: $EVERGREEN_OPERATOR, else the login name)")
    for p in (audit, status, abort, resume, retrain):
        p.add_argument("--json", action="store_true", help="print JSON")


def operator_name(given: str) -> str:
    """Who runs the command, for the audit log: --by, $EVERGREEN_OPERATOR, else the login name."""
    if given:
        return given
    try:
        return os.environ.get("EVERGREEN_OPERATOR") or getpass.getuser()
    except (KeyError, OSError):  # no login name (a container without a passwd entry)
        return "operator"


def parse_target(text: str) -> tuple[str, str | None]:
    """`dataset[:version]` → (dataset, version or None). Raises ValueError for an empty part."""
    dataset, _, version = text.partition(":")
    if not dataset or (_ and not version):
        raise ValueError(f"{text!r}: expected DATASET or DATASET:VERSION")
    return dataset, version or None


# -- audit ---------------------------------------------------------------------------------------------
def matches(record: AuditRecord, *, model: str = "", endpoint: str = "", dataset: str = "", event: str = "") -> bool:
    """Whether a record is about what the filters name (each given filter must hold)."""
    assets = record.assets
    if model and not _names(assets.get("model", ""), model):
        return False
    if endpoint and assets.get("endpoint", "") != endpoint:
        return False
    if dataset and not any(_names(assets.get(key, ""), dataset) for key in ("data", "batch", "dataset")):
        return False
    return not event or record.event_id == event


def _names(value: str, wanted: str) -> bool:
    """`churn` names `churn:3` (and `churn`); `churn:3` names only `churn:3`."""
    return value == wanted or (":" not in wanted and value.startswith(f"{wanted}:"))


def select(records: Iterable[AuditRecord], args: argparse.Namespace) -> list[AuditRecord]:
    """The first `args.limit` records that pass the filters."""
    chosen: list[AuditRecord] = []
    for record in records:
        if len(chosen) >= args.limit:
            break
        if matches(record, model=args.model, endpoint=args.endpoint, dataset=args.dataset, event=args.event):
            chosen.append(record)
    return chosen


def render_audit(records: Sequence[AuditRecord], *, wide: bool = False) -> str:
    """The audit records as a table; long cells wrap (nothing is cut), or stay on one line with `wide`."""
    rows = [("time (UTC)", "kind", "decision", "reason", "assets", "event")]
    for r in records:
        assets = " ".join(f"{k}={v}" for k, v in sorted(r.assets.items()))
        rows.append((r.at.strftime("%Y-%m-%d %H:%M:%S"), r.kind, r.decision, r.reason, assets, r.event_id))
    return table(rows, wide=wide)


def run_audit(args: argparse.Namespace, audit: AuditLog) -> int:
    records = select(audit.query(days=args.days, kind_prefix=args.kind), args)
    write([audit_json(r) for r in records] if args.json else render_audit(records, wide=args.wide))
    return 0


# -- status, rollout, retrain --------------------------------------------------------------------------
def run_status(args: argparse.Namespace, operator: Operator) -> int:
    status = operator.status()
    write(status.to_json() if args.json else render_status(status))
    return 0


def run_rollout(args: argparse.Namespace, operator: Operator) -> int:
    """`rollout abort|resume <endpoint>`; exit 2 (with the reason) when it does not apply."""
    who = operator_name(args.by)
    try:
        if args.action == "abort":
            outcome = operator.abort(args.endpoint, who=who, reason=args.reason)
        else:
            outcome = operator.resume(args.endpoint, who=who, reason=args.reason)
    except OperatorRefused as exc:
        return refuse(exc, args.json)
    write(outcome.to_json() if args.json else f"{outcome.action.value}: {outcome.detail}")
    return 0


def run_retrain(args: argparse.Namespace, operator: Operator) -> int:
    """`retrain DATASET[:VERSION]`; prints what the retraining decision did; exit 2 when it does not apply."""
    try:
        dataset, version = parse_target(args.target)
        outcome = operator.retrain(dataset, version, who=operator_name(args.by), reason=args.reason)
    except (OperatorRefused, ValueError) as exc:
        return refuse(exc, args.json)
    doc = {"action": outcome.action.value, "detail": outcome.detail, "job": outcome.job_name, "data": outcome.data}
    write(doc if args.json else f"{outcome.action.value}: {outcome.detail}")
    return 0


def refuse(exc: Exception, as_json: bool) -> int:
    if as_json:
        write({"error": str(exc)})
    sys.stderr.write(f"refused: {exc}\n")
    return 2


def render_status(status: Status) -> str:
    """`status` as text: one table per kind of open work, then the last retention run."""
    parts = [f"Status at {_time(status.at)} (UTC)", "", "Open batches"]
    parts.append(table([("dataset", "folder", "gen", "state", "files", "last file", "seals"),
                        *((b.dataset, b.folder, str(b.generation), b.state, str(b.files), _time(b.last_file_at),
                           b.seals) for b in status.batches)]) if status.batches else "  none")
    parts += ["", "Retraining"]
    parts.append(table([("dataset", "active job", "version", "status", "pending", "lease until", "last submitted"),
                        *((s.dataset, s.active_job or "-", s.active_version or "-",
                           s.active_status.value if s.active_status else "idle", s.pending_version or "-",
                           _time(s.lease_until), _time(s.last_submitted_at)) for s in status.retraining)])
                 if status.retraining else "  none")
    parts += ["", "Comparisons in flight"]
    parts.append(table([("job", "candidate", "champion", "since"),
                        *((c.job, c.candidate, c.champion or "(scored alone)", _time(c.since))
                          for c in status.comparisons)]) if status.comparisons else "  none")
    parts += ["", "Waiting for evaluation data"]
    parts.append(table([("candidate", "evaluation data", "since"),
                        *((w.candidate, w.data, _time(w.since)) for w in status.waiting)])
                 if status.waiting else "  none")
    parts += ["", "Awaiting approval"]
    parts.append(table([("endpoint", "candidate", "state", "since", "expires", "gate"),
                        *((a.endpoint, a.candidate, a.state, _time(a.requested_at), _time(a.expires_at),
                           a.gate_reason) for a in status.approvals)]) if status.approvals else "  none")
    parts += ["", "Active rollouts"]
    parts.append(table([("endpoint", "candidate", "champion", "phase", "in phase since", "age", "reason"),
                        *((r.endpoint, r.candidate, r.champion or "-", r.phase, _time(r.phase_since),
                           age(r.age_seconds), r.reason) for r in status.rollouts)]) if status.rollouts else "  none")
    last = status.last_retention
    parts += ["", "Last retention run: " + (f"{_time(last.at)} {last.event_id}: {last.decision} ({last.reason})"
                                            if last else "none")]
    parts += [f"note: {n}" for n in status.notes]
    return "\n".join(parts)


def age(seconds: float) -> str:
    """`42s`, `5m07s`, `3h04m`, `2d03h`."""
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def _time(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if value else "-"


def write(value: object) -> None:
    sys.stdout.write((value if isinstance(value, str) else json.dumps(value, indent=2)) + "\n")
