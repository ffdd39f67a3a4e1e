import uuid
from datetime import UTC, datetime, timedelta

import pytest
from azure.data.tables import TableServiceClient

from shared.adapters.azure.tables import AzureTable
from shared.cli import render
from shared.domain.audit import AuditRecord
from shared.services.audit import TableAuditLog

pytestmark = pytest.mark.integration


def test_records_come_back_newest_first_and_a_retry_does_not_duplicate(azurite):
    table = TableServiceClient.from_connection_string(azurite.connection_string).create_table(
        f"audit{uuid.uuid4().hex[:8]}")
    log = TableAuditLog(AzureTable(table))
    t0 = datetime(2026, 11, 27, 10, 0, tzinfo=UTC)
    first = AuditRecord("data.registered", "registered", "churn:1 (3 file(s))", "evt-1", {"data_version": "1"}, t0)
    second = AuditRecord("retrain.skipped", "skip", "run exists", "evt-2", {}, t0 + timedelta(minutes=1))
    log.record(first)
    log.record(second)
    log.record(first)  # a retried invocation writes the same record again
    got = list(log.query(now=t0))
    assert [r.event_id for r in got] == ["evt-2", "evt-1"]
    assert got[1].assets == {"data_version": "1"}
    assert [r.kind for r in log.query(now=t0, kind_prefix="data.")] == ["data.registered"]
    assert [r.event_id for r in log.tail(limit=5, now=t0).records] == ["evt-2", "evt-1"]  # the retry shows once
    assert [r.event_id for r in log.tail(limit=5, kind_prefix="retrain.", now=t0).records] == ["evt-2"]
    table_text = render(got)
    assert "churn:1 (3 file(s))" in table_text and table_text.splitlines()[0].startswith("time (UTC)")
