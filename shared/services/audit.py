"""The audit log on a table: one row per automated decision (what, why, which event, which assets).

Partitioned by UTC day and ordered newest first inside a day, so "what did Evergreen do today and
why" is one partition query. Implements the `shared.ports.AuditLog` port over any `TableStore`.
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
_MAX_TICKS = 10**16


class TableAuditLog:
    """The audit log kept in a `TableStore` (Table Storage in Azure, a dict in tests)."""

    def __init__(self, table: TableStore) -> None:
        self._table = table

    def record(self, rec: AuditRecord) -> None:
        """Write one record; its key derives from the event and decision, so a retry rewrites, not duplicates."""
        ticks = _MAX_TICKS - int(rec.at.timestamp() * 1_000_000)
        self._table.upsert(
            {
                "PartitionKey": rec.at.strftime("%Y%m%d"),
                "RowKey": f"{ticks:017d}-{digest(rec.kind, rec.event_id, rec.decision, length=16)}",
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
        """Newest first, over the last `days` UTC days."""
        now = now or datetime.now(UTC)
        for back in range(days):
            day = (now - timedelta(days=back)).strftime("%Y%m%d")
            for row in self._table.query(day):
                e = row.data
                if str(e["Kind"]).startswith(kind_prefix):
                    yield AuditRecord(
                        kind=e["Kind"], decision=e["Decision"], reason=e["Reason"], event_id=e["EventId"],
                        assets=json.loads(e["Assets"]), at=datetime.fromisoformat(e["At"]),
                    )
