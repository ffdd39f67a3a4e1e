"""`python -m shared.cli audit` — what Evergreen decided, and why, from the audit log.
`python -m shared.cli retention --dry-run` — the retention plan as a table; nothing is changed.
`python -m shared.cli retention` — plan and apply it (what the timer trigger does).

Reads the same app settings as the Function App (locally: `.devstack/env`, e.g. via
`eval "$(python -m devstack env)"`).
"""

from __future__ import annotations

import argparse
import logging
import sys
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime

from shared.adapters.azure.tables import AzureTable
from shared.domain.audit import AuditRecord
from shared.services.audit import AUDIT_TABLE, TableAuditLog


def render(records: Sequence[AuditRecord]) -> str:
    rows = [("time (UTC)", "kind", "decision", "reason", "assets", "event")]
    for r in records:
        assets = " ".join(f"{k}={v}" for k, v in sorted(r.assets.items()))
        rows.append((r.at.strftime("%Y-%m-%d %H:%M:%S"), r.kind, r.decision, r.reason, assets, r.event_id))
    widths = [min(max(len(row[i]) for row in rows), 60) for i in range(len(rows[0]))]
    lines = ["  ".join(cell[:w].ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


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
                           help="measure ages against this ISO time instead of now (to preview a future run)")
    args = parser.parse_args(argv)
    if args.command == "retention":
        return run_retention(dry_run=args.dry_run, as_json=args.json, as_of=args.as_of)

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


if __name__ == "__main__":
    raise SystemExit(main())
