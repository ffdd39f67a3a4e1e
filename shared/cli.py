"""`python -m shared.cli audit` — what Evergreen decided, and why, from the audit log.

Reads the same app settings as the Function App (locally: `.devstack/env`, e.g. via
`eval "$(python -m devstack env)"`).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from shared.audit import AUDIT_TABLE, AuditLog, AuditRecord


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
    args = parser.parse_args(argv)

    from shared.clients import credential_for, table_service
    from shared.settings import load_settings

    settings = load_settings()
    tables = table_service(settings.app_storage, credential_for(settings.client_id))
    log = AuditLog(tables.get_table_client(AUDIT_TABLE))
    records = []
    for rec in log.query(days=args.days, kind_prefix=args.kind):
        records.append(rec)
        if len(records) >= args.limit:
            break
    sys.stdout.write(render(records) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
