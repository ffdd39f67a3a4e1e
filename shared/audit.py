"""The audit log: one record for every automated decision (what, why, which event, which assets).

Kept in Table Storage (the app's own account), partitioned by UTC day and ordered newest first
inside a day, so "what did Evergreen do today and why" is one partition query.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from azure.data.tables import TableClient

from shared.keys import digest

log = logging.getLogger(__name__)

AUDIT_TABLE = "evergreenaudit"
_MAX_TICKS = 10**16


@dataclass(frozen=True)
class AuditRecord:
    kind: str  # e.g. data.registered, data.duplicate, retrain.submitted, retrain.skipped, rollout.promoted
    decision: str  # what was decided
    reason: str  # why
    event_id: str  # the triggering event / correlation id
    assets: Mapping[str, str] = field(default_factory=dict)  # e.g. {"data": "churn:3", "job": "..."}
    at: datetime = field(default_factory=lambda: datetime.now(UTC))


class AuditLog:
    def __init__(self, table: TableClient) -> None:
        self._table = table

    def record(self, rec: AuditRecord) -> None:
        """Write one record; its key derives from the event and decision, so a retry rewrites, not duplicates."""
        ticks = _MAX_TICKS - int(rec.at.timestamp() * 1_000_000)
        self._table.upsert_entity(
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
            for e in self._table.query_entities("PartitionKey eq @pk", parameters={"pk": day}):
                if str(e["Kind"]).startswith(kind_prefix):
                    yield AuditRecord(
                        kind=e["Kind"], decision=e["Decision"], reason=e["Reason"], event_id=e["EventId"],
                        assets=json.loads(e["Assets"]), at=datetime.fromisoformat(e["At"]),
                    )
