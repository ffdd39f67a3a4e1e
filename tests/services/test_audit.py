"""The audit log on the in-memory table: idempotent writes, newest first."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from shared.adapters.memory.tables import MemoryTable
from shared.domain.audit import AuditRecord
from shared.domain.records import Row
from shared.services.audit import RECORD_ROWS, TableAuditLog

AT = datetime(2026, 11, 27, 12, tzinfo=UTC)


def record(at: datetime, *, event: str = "e-1", decision: str = "registered", reason: str = "new file") -> AuditRecord:
    return AuditRecord(kind="data.registered", decision=decision, reason=reason, event_id=event,
                       assets={"data": "churn:3"}, at=at)


def records(table: MemoryTable, day: str) -> list[Row]:
    start, end = RECORD_ROWS
    return list(table.query(day, start=start, end=end))


def test_defect6b_an_audit_retry_on_the_same_day_rewrites_the_row_instead_of_adding_one() -> None:
    table = MemoryTable()
    audit = TableAuditLog(table)

    audit.record(record(AT))
    audit.record(record(AT + timedelta(seconds=7), reason="new file (retried)"))  # the platform retried the write

    assert len(records(table, "20261127")) == 1  # the day's record rows (its index rows are beside them)
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
    assert len(records(table, "20261127")) == 4


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
    assert len(records(table, "20261127")) == len(records(table, "20261128")) == 1


def test_tail_is_newest_first_bounded_filtered_and_shows_a_retried_record_once() -> None:
    audit = TableAuditLog(MemoryTable())
    for minute in range(30):
        audit.record(AuditRecord(kind="promotion.skipped", decision="skip", reason=f"r{minute}", event_id=f"e{minute}",
                                 assets={"model": f"churn:{minute % 3}"}, at=AT + timedelta(minutes=minute)))
    audit.record(record(AT + timedelta(minutes=40)))
    audit.record(record(AT + timedelta(minutes=41), reason="new file (retried)"))  # same record, retried later
    audit.record(record(AT - timedelta(days=1), event="yesterday"))

    newest = audit.tail(limit=3, now=AT)
    assert [r.reason for r in newest.records] == ["new file (retried)", "r29", "r28"]
    assert newest.scanned == 4 and not newest.truncated  # the retry's two index rows, then two more

    churn1 = audit.tail(limit=50, kind_prefix="promotion.", assets={"model": "churn:1"}, now=AT)
    assert [r.event_id for r in churn1.records] == [f"e{m}" for m in range(28, 0, -3)]
    assert [r.event_id for r in audit.tail(limit=5, kind_prefix="data.", now=AT).records] == ["e-1", "yesterday"]
    assert audit.tail(limit=5, kind_prefix="data.", now=AT, days=1).records[-1].event_id == "e-1"

    assert len(audit.tail(limit=50, assets={"": "churn"}, now=AT).records) == 32  # any asset, any version
    assert len(audit.tail(limit=50, assets={"model": "churn"}, now=AT).records) == 30
    capped = audit.tail(limit=50, assets={"model": "churn:9"}, now=AT, scan_limit=10)
    assert capped.records == () and capped.scanned == 10 and capped.truncated


class CountingTable(MemoryTable):
    """A `MemoryTable` that counts its write calls (each one is a round trip to Table Storage)."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[str] = []

    def upsert(self, entity: Mapping[str, Any], *, merge: bool = False) -> Row:
        self.writes.append("upsert")
        return super().upsert(entity, merge=merge)

    def upsert_many(self, entities: Iterable[Mapping[str, Any]]) -> None:
        self.writes.append("upsert_many")
        super().upsert_many(entities)


def test_a_record_and_its_index_rows_are_one_write_in_the_day_partition() -> None:
    table = CountingTable()
    audit = TableAuditLog(table)
    audit.record(AuditRecord(kind="rollout.shift", decision="shift", reason="r", event_id="e", at=AT))
    assert table.writes == ["upsert_many"]  # one table transaction: one round trip per record
    keys = [row.data["RowKey"] for row in table.query("20261127")]
    assert len(keys) == 3 and keys[1].startswith("t-") and keys[2].startswith("t.rollout-")
    assert [r.kind for r in audit.query(now=AT)] == ["rollout.shift"]  # the index rows are not records


def test_tail_does_not_read_the_index_partitions_of_earlier_releases() -> None:
    table = MemoryTable()
    table.upsert({"PartitionKey": "tail-20261127", "RowKey": "0001-k", "Key": "k", "Kind": "data.registered",
                  "Decision": "d", "Reason": "old layout", "EventId": "e", "Assets": "{}", "At": AT.isoformat()})
    audit = TableAuditLog(table)
    audit.record(record(AT))
    assert [r.reason for r in audit.tail(limit=10, now=AT).records] == ["new file"]
