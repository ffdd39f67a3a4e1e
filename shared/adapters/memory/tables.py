"""`TableStore` in memory, with Table Storage's semantics: ETags, insert conflicts, partitions in key order.

Thread-safe, so the services' concurrency tests can race instances against it.
"""

from __future__ import annotations

import bisect
import itertools
import threading
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from shared.domain.records import Row

TRANSACTION_LIMIT = 100


class MemoryTable:
    def __init__(self) -> None:
        self._rows: dict[tuple[str, str], Row] = {}
        self._partitions: dict[str, dict[str, Row]] = {}  # the same rows by partition: a query reads one
        self._order: dict[str, list[str]] = {}  # a partition's RowKeys in order, kept until a key is added or removed
        self._lock = threading.Lock()
        self._etags = itertools.count(1)

    def _stamp(self, entity: Mapping[str, Any]) -> Row:
        return Row(dict(entity), f'W/"datetime\'{next(self._etags):020d}\'"')

    @staticmethod
    def _key(entity: Mapping[str, Any]) -> tuple[str, str]:
        try:
            return str(entity["PartitionKey"]), str(entity["RowKey"])
        except KeyError as exc:
            raise ValueError(f"an entity needs PartitionKey and RowKey: {sorted(entity)}") from exc

    def _put(self, key: tuple[str, str], row: Row) -> Row:
        """Store `row` under `key` in both indexes (the caller holds the lock)."""
        self._rows[key] = row
        partition = self._partitions.setdefault(key[0], {})
        if key[1] not in partition:
            self._order.pop(key[0], None)
        partition[key[1]] = row
        return row

    def get(self, partition: str, row: str) -> Row | None:
        with self._lock:
            return self._rows.get((partition, row))

    def insert(self, entity: Mapping[str, Any]) -> Row | None:
        key = self._key(entity)
        with self._lock:
            if key in self._rows:
                return None
            return self._put(key, self._stamp(entity))

    def replace_if(self, row: Row, entity: Mapping[str, Any]) -> Row | None:
        key = self._key(entity)
        with self._lock:
            current = self._rows.get(key)
            if current is None or current.etag != row.etag:
                return None
            return self._put(key, self._stamp(entity))

    def upsert(self, entity: Mapping[str, Any], *, merge: bool = False) -> Row:
        key = self._key(entity)
        with self._lock:
            current = self._rows.get(key)
            data = {**current.data, **entity} if merge and current is not None else dict(entity)
            return self._put(key, self._stamp(data))

    def upsert_many(self, entities: Iterable[Mapping[str, Any]]) -> None:
        batch = [dict(e) for e in entities]
        partitions = {self._key(e)[0] for e in batch}
        if len(partitions) > 1:
            raise ValueError("a table transaction holds entities of one partition only")
        for start in range(0, len(batch), TRANSACTION_LIMIT):
            with self._lock:
                for entity in batch[start:start + TRANSACTION_LIMIT]:
                    self._put(self._key(entity), self._stamp(entity))

    def query(self, partition: str, *, start: str = "", end: str = "") -> Iterator[Row]:
        with self._lock:
            keys = self._order.get(partition)
            if keys is None:
                keys = self._order[partition] = sorted(self._partitions.get(partition, {}))
            rows = self._partitions.get(partition, {})
            first = bisect.bisect_left(keys, start)
            last = bisect.bisect_left(keys, end) if end else len(keys)
            # the range as it is now (no sort unless keys changed)
            snapshot = [rows[k] for k in keys[first:last]]
        yield from snapshot

    def delete(self, partition: str, row: str) -> None:
        with self._lock:
            self._rows.pop((partition, row), None)
            if self._partitions.get(partition, {}).pop(row, None) is not None:
                self._order.pop(partition, None)

    def __len__(self) -> int:
        with self._lock:
            return len(self._rows)
