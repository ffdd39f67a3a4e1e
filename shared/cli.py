"""`python -m shared.cli audit` — what Evergreen decided, and why, from the audit log.
`python -m shared.cli retention --dry-run` — the retention plan as a table; nothing is changed.
`python -m shared.cli retention` — plan and apply it (what the timer trigger does).
`python -m shared.cli reconcile` — one reconciler pass: every flow re-drives its stuck work (what the timer does).
`python -m shared.cli redrive list|show <id>|replay <id>|replay --all [--source deadletter|poison] [--json]` —
Event Grid dead letters and poison-queue messages: list, show, replay (each replay audited).

Reads the same app settings as the Function App (locally: `.devstack/env`, e.g. via
`eval "$(python -m devstack env)"`).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from shared.adapters.azure.tables import AzureTable
from shared.domain.audit import AuditRecord
from shared.services.audit import AUDIT_TABLE, TableAuditLog
from shared.services.redrive import SOURCES, RedriveItem, Redriver, ReplayOutcome


def render(records: Sequence[AuditRecord]) -> str:
    rows = [("time (UTC)", "kind", "decision", "reason", "assets", "event")]
    for r in records:
        assets = " ".join(f"{k}={v}" for k, v in sorted(r.assets.items()))
        rows.append((r.at.strftime("%Y-%m-%d %H:%M:%S"), r.kind, r.decision, r.reason, assets, r.event_id))
    return _table(rows, limit=60)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m shared.cli")
    sub = parser.add_subparsers(dest="command", required=True)
    audit = sub.add_parser("audit", help="list automated decisions, newest first")
    audit.add_argument("--days", type=int, default=1, help="how many UTC days back (default 1: today)")
    audit.add_argument("--kind", default="", help="only kinds starting with this, e.g. data. or retrain.")
    audit.add_argument("--limit", type=int, default=50)
    retention = sub.add_parser("retention", help="run retention: plan, then apply (or only show, with --dry-run)")
    retention.add_argument("--dry-run", action="store_true", help="print the plan as a table and change nothing")
    retention.add_argument("--json", action="store_true", help="print the plan and outcomes as JSON")
    retention.add_argument("--as-of", type=_aware_time, default=None,
                           help="with --dry-run: measure ages against this ISO time instead of now "
                                "(to preview a future run)")
    sub.add_parser("reconcile", help="one reconciler pass: every flow re-drives its stuck work")
    add_redrive_parser(sub)
    args = parser.parse_args(argv)
    if args.command == "retention":
        if args.as_of is not None and not args.dry_run:  # a preview of the future must never apply it now
            retention.error("--as-of previews a future run and requires --dry-run; "
                            "to apply, run without --as-of (ages are then measured against now)")
        return run_retention(dry_run=args.dry_run, as_json=args.json, as_of=args.as_of)
    if args.command == "reconcile":
        return run_reconcile()
    if args.command == "redrive":
        return run_redrive(args)

    from shared.composition import credential_for, table_service
    from shared.config.settings import load_settings

    settings = load_settings()
    tables = table_service(settings.app_storage, credential_for(settings.client_id))
    log = TableAuditLog(AzureTable(tables.get_table_client(AUDIT_TABLE)))
    records = []
    for rec in log.query(days=args.days, kind_prefix=args.kind):
        records.append(rec)
        if len(records) >= args.limit:
            break
    sys.stdout.write(render(records) + "\n")
    return 0


def _aware_time(text: str) -> datetime:
    value = datetime.fromisoformat(text)
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def run_retention(*, dry_run: bool, as_json: bool, as_of: datetime | None) -> int:
    """Run retention with the Function App's own settings, policy and clients; exit 1 if an action failed."""
    from shared.composition import get_services
    from shared.services.retention import RetentionIncomplete

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    run_id = f"retention-cli-{uuid.uuid4().hex[:12]}"
    try:
        summary = get_services().retention.run(run_id=run_id, dry_run=dry_run, now=as_of)
        code = 0
    except RetentionIncomplete as exc:
        summary, code = exc.summary, 1
    sys.stdout.write(summary.to_json() + "\n" if as_json else summary.render())
    return code


def run_reconcile() -> int:
    """One reconciler pass through the composition root; prints the summary line; exit 1 if a flow failed."""
    from shared.composition import get_reconciler
    from shared.services.reconcile import ReconcileIncomplete

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    run_id = f"reconcile-cli-{uuid.uuid4().hex[:12]}"
    try:
        summary = get_reconciler().run(run_id=run_id)
        code = 0
    except ReconcileIncomplete as exc:
        summary, code = exc.summary, 1
    sys.stdout.write(f"{run_id}: {summary.detail}\n")
    return code


def add_redrive_parser(sub: Any) -> None:
    redrive = sub.add_parser("redrive", help="list, show and replay Event Grid dead letters and poison messages")
    actions = redrive.add_subparsers(dest="action", required=True)
    listing = actions.add_parser("list", help="every dead letter and poison message (up to 32 per poison queue)")
    show = actions.add_parser("show", help="one item, with its content")
    show.add_argument("id", help="an id as `redrive list` prints it")
    replay = actions.add_parser("replay", help="replay one item, or --all; each replay is audited (redrive.replayed)")
    replay.add_argument("id", nargs="?", help="an id as `redrive list` prints it")
    replay.add_argument("--all", action="store_true", help="replay every item (of --source)")
    for p in (listing, replay):
        p.add_argument("--source", choices=SOURCES, default=None, help="only dead letters, or only poison messages")
    for p in (listing, show, replay):
        p.add_argument("--json", action="store_true", help="print JSON")


def run_redrive(args: argparse.Namespace, redriver: Redriver | None = None) -> int:
    """`redrive list|show|replay`; exit 1 if an item was not found or a replay did not succeed, 2 for a bad id."""
    if redriver is None:
        from shared.composition import build_redriver, get_services

        logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
        redriver = build_redriver(get_services())
    try:
        if args.action == "list":
            items = redriver.list_items(args.source)
            _write([i.to_json() for i in items] if args.json else render_items(items))
            return 0
        if args.action == "show":
            item = redriver.show(args.id)
            if item is None:
                sys.stderr.write(f"no item {args.id}\n")
                return 1
            _write(item.to_json() if args.json else render_item(item))
            return 0
        if args.all == bool(args.id):
            sys.stderr.write("replay takes one id, or --all\n")
            return 2
        outcomes = redriver.replay_all(args.source) if args.all else [redriver.replay(args.id)]
    except ValueError as exc:
        sys.stderr.write(f"{exc}\n")
        return 2
    _write([o.to_json() for o in outcomes] if args.json else render_outcomes(outcomes))
    return 0 if all(o.action == "replayed" for o in outcomes) else 1


def _write(value: object) -> None:
    sys.stdout.write((value if isinstance(value, str) else json.dumps(value, indent=2)) + "\n")


def _table(rows: Sequence[tuple[str, ...]], limit: int = 70) -> str:
    widths = [min(max(len(row[i]) for row in rows), limit) for i in range(len(rows[0]))]
    lines = ["  ".join(cell[:w].ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def render_items(items: Sequence[RedriveItem]) -> str:
    if not items:
        return "nothing to redrive: no dead letter, no poison message"
    rows = [("id", "what", "reason", "since (UTC)")]
    rows += [(i.id, i.what, i.reason, i.at.strftime("%Y-%m-%d %H:%M:%S") if i.at else "-") for i in items]
    return _table(rows, limit=90)


def render_item(item: RedriveItem) -> str:
    when = item.at.isoformat() if item.at else "-"
    return f"id:     {item.id}\nwhat:   {item.what}\nreason: {item.reason}\nsince:  {when}\n\n{item.content}"


def render_outcomes(outcomes: Sequence[ReplayOutcome]) -> str:
    if not outcomes:
        return "nothing to replay"
    return _table([("id", "outcome", "detail"), *((o.id, o.action, o.detail) for o in outcomes)], limit=90)


if __name__ == "__main__":
    raise SystemExit(main())
