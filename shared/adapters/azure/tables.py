"""`TableStore` on Azure Table Storage (azure-data-tables): the ledger's and the audit log's store."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from azure.core import MatchConditions
from azure.core.exceptions import ResourceExistsError, ResourceModifiedError, ResourceNotFoundError
from azure.data.tables import TableClient, UpdateMode

from shared.domain.records import Row

TRANSACTION_LIMIT = 100  # operations in one table transaction


class AzureTable:
    """One table; the client is created once (in the composition root) and passed in."""

    def __init__(self, table: TableClient) -> None:
        self._table = table

    def get(self, partition: str, row: str) -> Row | None:
        try:
            entity = self._table.get_entity(partition, row)
        except ResourceNotFoundError:
            return None
        return Row(dict(entity), str(entity.metadata["etag"]))

    def insert(self, entity: Mapping[str, Any]) -> Row | None:
        try:
            meta = self._table.create_entity(dict(entity))
        except ResourceExistsError:
            return None
        return Row(dict(entity), str(meta["etag"]))

    def replace_if(self, row: Row, entity: Mapping[str, Any]) -> Row | None:
        try:
            meta = self._table.update_entity(dict(entity), mode=UpdateMode.REPLACE, etag=row.etag,
                                             match_condition=MatchConditions.IfNotModified)
        except (ResourceModifiedError, ResourceNotFoundError):
            return None
        return Row(dict(entity), str(meta["etag"]))

    def upsert(self, entity: Mapping[str, Any], *, merge: bool = False) -> Row:
        meta = self._table.upsert_entity(dict(entity), mode=UpdateMode.MERGE if merge else UpdateMode.REPLACE)
        return Row(dict(entity), str(meta["etag"]))

    def upsert_many(self, entities: Iterable[Mapping[str, Any]]) -> None:
        operations: list[tuple[str, dict[str, Any]]] = []
        for entity in entities:
            operations.append(("upsert", dict(entity)))
            if len(operations) == TRANSACTION_LIMIT:
                self._table.submit_transaction(operations)
                operations = []
        if operations:
            self._table.submit_transaction(operations)

    def query(self, partition: str, *, start: str = "", end: str = "") -> Iterator[Row]:
        # The bounds go to the service as an OData filter, so only the range crosses the wire (paged by the SDK).
        conditions = ["PartitionKey eq @pk"]
        parameters = {"pk": partition}
        if start:
            conditions.append("RowKey ge @start")
            parameters["start"] = start
        if end:
            conditions.append("RowKey lt @end")
            parameters["end"] = end
        for entity in self._table.query_entities(" and ".join(conditions), parameters=parameters):
            yield Row(dict(entity), str(entity.metadata["etag"]))

    def delete(self, partition: str, row: str) -> None:
        self._table.delete_entity(partition, row)  # the SDK treats a missing entity as deleted
