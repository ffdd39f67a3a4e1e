"""The audit log on the in-memory table: idempotent writes, newest first."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from shared.adapters.memory.tables import MemoryTable
from shared.domain.audit import AuditRecord
from shared.services.audit import TableAuditLog

AT = datetime(2026, 11, 27, 12, tzinfo=UTC)


def record(at: datetime, *, event: str = "e-1", decision: str = "registered", reason: str = "new file") -> AuditRecord:
    return AuditRecord(kind="data.registered", decision=decision, reason=reason, event_id=event,
                       assets={"data": "churn:3"}, at=at)


def test_defect6b_an_audit_retry_on_the_same_day_rewrites_the_row_instead_of_adding_one() -> None:
    table = MemoryTable()
    audit = TableAuditLog(table)

    audit.record(record(AT))
    audit.record(record(AT + timedelta(seconds=7), reason="new file (retried)"))  # the platform retried the write

    assert len(table) == 1
    [only] = list(audit.query(now=AT))
    assert only.reason == "new file (retried)" and only.at == AT + timedelta(seconds=7)


def test_different_decisions_events_or_assets_are_different_rows() -> None:
    table = MemoryTable()
    audit = TableAuditLog(table)
    audit.record(record(AT))
    audit.record(record(AT, event="e-2"))
    audit.record(record(AT, decision="ignored"))
    audit.record(AuditRecord(kind="data.registered", decision="registered", reason="r", event_id="e-1",
                             assets={"data": "churn:4"}, at=AT))
    assert len(table) == 4


def test_query_is_newest_first_by_time_and_filters_by_kind() -> None:
    audit = TableAuditLog(MemoryTable())
    for minute, event in [(5, "b"), (1, "a"), (9, "c")]:
        audit.record(record(AT + timedelta(minutes=minute), event=event))
    audit.record(AuditRecord(kind="retrain.submitted", decision="submitted", reason="r", event_id="z",
                             at=AT + timedelta(minutes=30)))
    yesterday = AT - timedelta(days=1)
    audit.record(record(yesterday, event="y"))

    assert [r.event_id for r in audit.query(now=AT, kind_prefix="data.")] == ["c", "b", "a"]
    assert [r.event_id for r in audit.query(now=AT, days=2)] == ["z", "c", "b", "a", "y"]


def test_a_retry_across_utc_midnight_is_a_second_row() -> None:
    """Documented limit (README, Reliability): the day is the partition, so the row is per day."""
    table = MemoryTable()
    audit = TableAuditLog(table)
    midnight = datetime(2026, 11, 28, tzinfo=UTC)
    audit.record(record(midnight - timedelta(seconds=1)))
    audit.record(record(midnight + timedelta(seconds=1)))
    assert len(table) == 2
