"""The audit log on a table: one row per automated decision (what, why, which event, which assets).

Partitioned by UTC day, so "what did Evergreen do today and why" is one partition query (sorted
newest first on the record's time). A row is keyed by what the record is, so a retried write rewrites
it; a retry that crosses UTC midnight lands in the next day's partition, a second row.
Implements the `shared.ports.AuditLog` port over any `TableStore`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

from shared.domain.audit import AuditRecord
from shared.domain.keys import digest
from shared.ports import TableStore

log = logging.getLogger(__name__)

AUDIT_TABLE = "evergreenaudit"


class TableAuditLog:
    """The audit log kept in a `TableStore` (Table Storage in Azure, a dict in tests)."""

    def __init__(self, table: TableStore) -> None:
        self._table = table

    def record(self, rec: AuditRecord) -> None:
        """Write one record, keyed by what it is (kind, event, decision, assets), never by when it was written.

        So a retried write on the same UTC day rewrites the same row instead of adding a second one.
        Table errors propagate (the caller's platform retries, and the retry lands on the same row).
        """
        self._table.upsert(
            {
                "PartitionKey": rec.at.astimezone(UTC).strftime("%Y%m%d"),
                "RowKey": record_key(rec),
                "Kind": rec.kind,
                "Decision": rec.decision,
                "Reason": rec.reason,
                "EventId": rec.event_id,
                "Assets": json.dumps(dict(rec.assets), sort_keys=True),
                "At": rec.at.isoformat(),
            }
        )
        log.info("audit kind=%s event=%s decision=%s reason=%s", rec.kind, rec.event_id, rec.decision, rec.reason)

    def query(self, *, days: int = 1, kind_prefix: str = "", now: datetime | None = None) -> Iterator[AuditRecord]:
        """Newest first (by the record's time), over the last `days` UTC days; one partition read per day."""
        now = now or datetime.now(UTC)
        for back in range(days):
            day = (now - timedelta(days=back)).strftime("%Y%m%d")
            records = [_record(row.data) for row in self._table.query(day)
                       if str(row.data["Kind"]).startswith(kind_prefix)]
            yield from sorted(records, key=lambda r: r.at, reverse=True)


def record_key(rec: AuditRecord) -> str:
    """The row key of a record: a digest of what it is; its time is left out on purpose (see `record`)."""
    assets = json.dumps(dict(rec.assets), sort_keys=True)
    return digest(rec.kind, rec.event_id, rec.decision, assets, length=32)


def _record(e: dict[str, object]) -> AuditRecord:
    return AuditRecord(
        kind=str(e["Kind"]), decision=str(e["Decision"]), reason=str(e["Reason"]), event_id=str(e["EventId"]),
        assets=json.loads(str(e["Assets"])), at=datetime.fromisoformat(str(e["At"])),
    )
