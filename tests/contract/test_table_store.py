"""The `TableStore` contract: the in-memory table and Azure Table Storage (on Azurite) behave alike.

The ledger's correctness under concurrency rests on exactly these semantics: insert-or-conflict,
replace conditional on the ETag read, partition queries in RowKey order. An in-memory table that
drifted from Table Storage would let the service tests pass while production races; so every
assertion runs against both.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from shared.adapters.memory.tables import MemoryTable
from shared.ports import TableStore


@pytest.fixture(params=["memory", pytest.param("azure", marks=pytest.mark.integration)])
def table(request: pytest.FixtureRequest) -> Iterator[TableStore]:
    if request.param == "memory":
        yield MemoryTable()
        return
    from azure.data.tables import TableServiceClient

    from shared.adapters.azure.tables import AzureTable

    azurite = request.getfixturevalue("azurite")
    service = TableServiceClient.from_connection_string(azurite.connection_string)
    name = f"contract{uuid.uuid4().hex[:12]}"
    client = service.create_table(name)
    try:
        yield AzureTable(client)
    finally:
        service.delete_table(name)


def test_get_of_a_missing_entity_is_none(table: TableStore) -> None:
    assert table.get("p", "nothing") is None


def test_insert_then_get_returns_the_properties_and_an_etag(table: TableStore) -> None:
    written = table.insert({"PartitionKey": "p", "RowKey": "r", "State": "open", "Count": 3})
    assert written is not None and written.etag
    read = table.get("p", "r")
    assert read is not None
    assert read.data["State"] == "open" and read.data["Count"] == 3
    assert read.etag == written.etag


def test_a_second_insert_of_the_same_keys_conflicts_and_changes_nothing(table: TableStore) -> None:
    assert table.insert({"PartitionKey": "p", "RowKey": "r", "Owner": "a"}) is not None
    assert table.insert({"PartitionKey": "p", "RowKey": "r", "Owner": "b"}) is None
    read = table.get("p", "r")
    assert read is not None and read.data["Owner"] == "a"


def test_replace_if_succeeds_with_the_etag_read_and_changes_the_etag(table: TableStore) -> None:
    first = table.insert({"PartitionKey": "p", "RowKey": "r", "State": "open"})
    assert first is not None
    second = table.replace_if(first, {"PartitionKey": "p", "RowKey": "r", "State": "sealing"})
    assert second is not None and second.etag != first.etag
    read = table.get("p", "r")
    assert read is not None and read.data["State"] == "sealing"


def test_replace_if_with_a_stale_etag_fails_and_keeps_the_winner(table: TableStore) -> None:
    first = table.insert({"PartitionKey": "p", "RowKey": "r", "State": "open"})
    assert first is not None
    assert table.replace_if(first, {"PartitionKey": "p", "RowKey": "r", "State": "winner"}) is not None
    assert table.replace_if(first, {"PartitionKey": "p", "RowKey": "r", "State": "loser"}) is None
    read = table.get("p", "r")
    assert read is not None and read.data["State"] == "winner"


def test_replace_if_drops_properties_not_given(table: TableStore) -> None:
    first = table.insert({"PartitionKey": "p", "RowKey": "r", "A": "1", "B": "2"})
    assert first is not None
    assert table.replace_if(first, {"PartitionKey": "p", "RowKey": "r", "A": "3"}) is not None
    read = table.get("p", "r")
    assert read is not None and read.data["A"] == "3" and "B" not in read.data


def test_replace_if_of_a_deleted_entity_fails(table: TableStore) -> None:
    first = table.insert({"PartitionKey": "p", "RowKey": "r", "State": "open"})
    assert first is not None
    table.delete("p", "r")
    assert table.replace_if(first, {"PartitionKey": "p", "RowKey": "r", "State": "x"}) is None
    assert table.get("p", "r") is None


def test_upsert_replaces_and_merge_keeps_other_properties(table: TableStore) -> None:
    table.upsert({"PartitionKey": "p", "RowKey": "r", "A": "1", "B": "2"})
    table.upsert({"PartitionKey": "p", "RowKey": "r", "B": "3"}, merge=True)
    read = table.get("p", "r")
    assert read is not None and (read.data["A"], read.data["B"]) == ("1", "3")
    table.upsert({"PartitionKey": "p", "RowKey": "r", "B": "4"})
    read = table.get("p", "r")
    assert read is not None and read.data["B"] == "4" and "A" not in read.data


def test_upsert_invalidates_an_etag_read_before_it(table: TableStore) -> None:
    first = table.insert({"PartitionKey": "p", "RowKey": "r", "State": "open"})
    assert first is not None
    table.upsert({"PartitionKey": "p", "RowKey": "r", "State": "other"}, merge=True)
    assert table.replace_if(first, {"PartitionKey": "p", "RowKey": "r", "State": "late"}) is None


def test_query_returns_one_partition_in_row_key_order(table: TableStore) -> None:
    for key in ["b", "c", "a"]:
        table.insert({"PartitionKey": "p1", "RowKey": key, "V": key})
    table.insert({"PartitionKey": "p2", "RowKey": "a", "V": "other"})
    rows = list(table.query("p1"))
    assert [r.data["RowKey"] for r in rows] == ["a", "b", "c"]
    assert all(r.etag for r in rows)
    assert list(table.query("empty")) == []


def test_query_reads_a_row_key_range_of_one_partition(table: TableStore) -> None:
    keys = ["0a", "f9", "t-2", "t-3", "t.data-1", "t.data_x-1", "t.rollout-1"]
    table.upsert_many({"PartitionKey": "p", "RowKey": key} for key in reversed(keys))
    table.insert({"PartitionKey": "q", "RowKey": "t-1"})

    def between(start: str = "", end: str = "") -> list[str]:
        return [r.data["RowKey"] for r in table.query("p", start=start, end=end)]

    assert between() == keys
    assert between("0", "g") == ["0a", "f9"]  # start inclusive, end exclusive
    assert between("t-", "t.") == ["t-2", "t-3"]  # a prefix: only this partition's
    assert between("t.data-", "t.data.") == ["t.data-1"]
    assert between("t-3") == ["t-3", *keys[4:]] and between(end="0a") == [] and between("u", "v") == []
    rows = list(table.query("p", start="t-", end="t."))
    assert all(r.etag for r in rows)


def test_upsert_many_writes_more_than_one_transaction(table: TableStore) -> None:
    table.upsert_many({"PartitionKey": "p", "RowKey": f"{i:04d}", "N": i} for i in range(250))
    rows = list(table.query("p"))
    assert len(rows) == 250 and rows[0].data["N"] == 0 and rows[-1].data["N"] == 249


def test_delete_of_a_missing_entity_is_not_an_error(table: TableStore) -> None:
    table.delete("p", "never-there")
    table.insert({"PartitionKey": "p", "RowKey": "r"})
    table.delete("p", "r")
    assert table.get("p", "r") is None
