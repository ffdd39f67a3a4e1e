"""`Ledger.open_comparisons`: the one reader of the promoter's comparison index (`COMPARISON_WORK`).

The promoter, the operator's `status` and retention all read the index through it, so what a garbled
entry reads as is decided here once: tags that are not a JSON object read as None with `unreadable`
saying why (retention then suspends its version and blob rules; the reconciler reports a failure).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from shared.adapters.memory.tables import MemoryTable
from shared.domain.records import ComparisonWork
from shared.domain.vocabulary import Tag
from shared.services.ledger import COMPARISON_WORK, Ledger

AT = datetime(2026, 12, 1, 9, 30, tzinfo=UTC)
MODEL, COMPARED = Tag.MODEL.value, Tag.COMPARED_WITH.value


def test_a_tracked_comparison_reads_back_whole_in_job_order_until_it_is_finished() -> None:
    ledger = Ledger(MemoryTable(), clock=lambda: AT)
    ledger.track_comparison("cmp-b", {MODEL: "m:4", COMPARED: "m:3"})
    ledger.track_comparison("cmp-a", {MODEL: "m:2"})
    assert ledger.open_comparisons() == [ComparisonWork("cmp-a", {MODEL: "m:2"}, AT),
                                         ComparisonWork("cmp-b", {MODEL: "m:4", COMPARED: "m:3"}, AT)]
    ledger.finish_comparison("cmp-a")
    ledger.finish_comparison("cmp-a")  # a redelivered decision finishes it again: nothing happens
    assert [work.job for work in ledger.open_comparisons()] == ["cmp-b"]


@pytest.mark.parametrize(("tags", "read", "unreadable"), [
    ("{not json", None, "its tags are not JSON (Expecting property name enclosed in double quotes"),
    ('["m:3"]', None, "its tags are not a JSON object"),
    ("null", None, "its tags are not a JSON object"),
    (None, {}, ""),  # no tags: readable, and naming no model (retention fails closed on that itself)
    (f'{{"{MODEL}": null, "{COMPARED}": false, "n": 3, "z": 0}}', {MODEL: "", COMPARED: "", "n": "3", "z": ""}, ""),
])
def test_an_entry_whose_tags_are_garbled_reads_fail_closed(tags: str | None, read: dict[str, str] | None,
                                                           unreadable: str) -> None:
    ledger = Ledger(MemoryTable(), clock=lambda: AT)
    ledger.track_work(COMPARISON_WORK, "cmp-1", {"Tags": tags})  # the raw entry, as a garbled row may hold it
    [work] = ledger.open_comparisons()
    assert (work.job, work.tags, work.since) == ("cmp-1", read, AT)
    assert work.unreadable.startswith(unreadable) and bool(work.unreadable) is bool(unreadable)


@pytest.mark.parametrize(("row", "since", "unreadable"), [
    ({"Since": "yesterday"}, None, "its time 'yesterday' is not an ISO time"),
    ({}, None, ""),  # an entry without a time is read as stale by whoever judges its age
    ({"Tags": "[]", "Since": "x"}, None, "its tags are not a JSON object; its time 'x' is not an ISO time"),
])
def test_an_entry_whose_time_is_garbled_reads_without_one(row: dict[str, Any], since: datetime | None,
                                                          unreadable: str) -> None:
    table = MemoryTable()
    table.upsert({"PartitionKey": f"work-{COMPARISON_WORK}", "RowKey": "cmp-1", "Tags": "{}", **row})
    [work] = Ledger(table).open_comparisons()
    assert (work.job, work.since, work.unreadable) == ("cmp-1", since, unreadable)
