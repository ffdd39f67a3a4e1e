"""`python -m shared.cli lineage NAME:VERSION [--json] [--days N]`: the chain around a model or data version.

blobs → data version → retraining job (with its steps) → model version(s) → gate decisions →
deployments and their traffic history → retention actions (`shared.services.lineage`). A table by
default, JSON with `--json`. Exit codes: 0 shown, 1 not found, 2 a malformed reference or invalid settings.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Any

from shared.cli.tables import table
from shared.domain.lineage import Lineage, Step, parse_subject
from shared.services.lineage import DEFAULT_DAYS, LineageReader

log = logging.getLogger(__name__)

NEEDS = frozenset({"AzureWebJobsStorage", "EVERGREEN_POLICY_PATH", "EVERGREEN_LANDING_CONTAINER",
                   "AZURE_SUBSCRIPTION_ID", "AZURE_RESOURCE_GROUP", "AZUREML_WORKSPACE_NAME"})
"""The settings `lineage` requires: the app's storage (ledger, audit log), the policy, the workspace."""


def add_lineage_parser(sub: Any) -> None:
    """`lineage` on the CLI's subparsers."""
    lineage = sub.add_parser("lineage", help="the chain around a model or data version: blobs, data version, job, "
                                             "models, gate decisions, deployments, retention")
    lineage.add_argument("ref", metavar="NAME:VERSION", help="a model version (churn-model:3) or a data version "
                                                              "(churn-training:2)")
    lineage.add_argument("--days", type=int, default=DEFAULT_DAYS,
                         help=f"how many UTC days of the audit log to read (default {DEFAULT_DAYS})")
    lineage.add_argument("--json", action="store_true", help="print JSON")


def run_lineage(args: argparse.Namespace, reader: LineageReader | None = None) -> int:
    """Print the lineage of `args.ref`; 2 for a malformed reference, 1 if there is no such model or data version.

    Raises ConfigurationError (from building the reader) if a setting it needs is missing or invalid.
    """
    try:
        name, version = parse_subject(args.ref)
    except ValueError as exc:
        sys.stderr.write(f"{exc}\n")
        return 2
    if args.days < 1:
        sys.stderr.write(f"--days must be at least 1 (got {args.days})\n")
        return 2
    reader = reader or _build(args.days)
    found = reader.of(name, version)
    if found is None:
        sys.stderr.write(f"not found: no model version and no data version {name}:{version}\n")
        return 1
    sys.stdout.write((json.dumps(found.to_json(), indent=2) if args.json else render_lineage(found)) + "\n")
    return 0


def _build(days: int) -> LineageReader:
    from shared.composition import build_lineage
    from shared.config.policy import load_policy
    from shared.config.settings import load_settings

    settings = load_settings(only=NEEDS)
    policy = load_policy(settings.policy_path, landing_container=settings.landing_container)
    return build_lineage(settings, policy, days=days)


def render_lineage(lineage: Lineage) -> str:
    """The chain as text: one titled table per link, in the order the data flowed."""
    s = lineage.subject
    parts = [f"Lineage of {s.kind} {s}", ""]
    parts += _section("Blobs", ("data version", "role", "path"),
                      [(f"{d.name}:{d.version}", b.role, b.path) for d in lineage.data for b in d.blobs])
    parts += _section("Data versions", ("data version", "files", "sha256"),
                      [(f"{d.name}:{d.version}", d.files or "-", d.sha256[:12] or "-") for d in lineage.data])
    parts += _section("Retraining jobs", ("job", "status", "steps"),
                      [(j.name, j.status, ", ".join(f"{st.name}={st.status or '?'}" for st in j.steps) or "-")
                       for j in lineage.jobs])
    parts += _section("Model versions", ("model", "trained on", "job"),
                      [(f"{m.name}:{m.version}", m.data or "-", m.job or "-") for m in lineage.models])
    parts += _section("Gate decisions", ("time (UTC)", "model", "kind", "decision", "reason"),
                      [(_t(d), d.assets.get("model", ""), d.kind, d.decision, d.reason) for d in lineage.decisions])
    parts += _section("Deployments", ("endpoint", "deployment", "model", "traffic", "state", "rollout"),
                      [(d.endpoint, d.deployment, d.model, "-" if d.traffic is None else f"{d.traffic}%", d.state,
                        d.rollout_phase or "-") for d in lineage.deployments])
    history = {(d.endpoint, d.model): d.phases for d in lineage.deployments}
    parts += _section("Rollout history", ("time (UTC)", "endpoint", "model", "phase", "reason"),
                      [(_t(p), endpoint, model, p.decision, p.reason)
                       for (endpoint, model), phases in history.items() for p in phases])
    parts += _section("Retention actions", ("time (UTC)", "kind", "decision", "reason"),
                      [(_t(r), r.kind, r.decision, r.reason) for r in lineage.retention])
    parts += [f"note: {n}" for n in lineage.notes]
    return "\n".join(parts)


def _section(title: str, header: tuple[str, ...], rows: list[tuple[str, ...]]) -> list[str]:
    return [title, table([header, *rows]) if rows else "  none", ""]


def _t(step: Step) -> str:
    return step.at.strftime("%Y-%m-%d %H:%M:%S")
