"""The audit log on a table: one row per automated decision (what, why, which event, which assets).

Partitioned by UTC day. A record is written with its two time-ordered index rows in ONE table
transaction (`upsert_many`: one round trip, all or nothing), all in the day's partition, told apart
by RowKey:

- the record itself: RowKey = `record_key` (a hex digest, so it sorts before the index rows);
- `t-<newest-first time>-<key>`: every kind, newest first;
- `t.<flow>-<newest-first time>-<key>`: its flow's kinds (the kind up to its first dot), newest first.

(A range read of an index runs from its prefix to the prefix with its last character, `-`, raised
by one: `.`; a printable bound, and no flow name holds `-`, so one flow's range is not another's.)

So "what did Evergreen do today and why" (`query`) is one range read of a day's record rows, and
`tail` (the status page) reads the newest N records with filters by a range read of an index,
without reading whole days. A row is keyed by what the record is, so a retried write rewrites it; a
retry that crosses UTC midnight lands in the next day's partition, a second row (and a retry at a
later time adds index rows beside the old ones; `tail` shows the record once).

Earlier releases kept the index rows in partitions of their own (`tail-<yyyymmdd>`,
`tail.<flow>-<yyyymmdd>`): `tail` does not read those any more (no migration: on the day of the
upgrade it shows only what was recorded since), while their record rows are the same rows as today's
and `query` still reads them.
Implements the `shared.ports.AuditLog` port over any `TableStore`.
"""

from __future__ import annotations

import itertools
import json
import logging
import re
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime, timedelta

from shared.domain.audit import AuditRecord, AuditTail
from shared.domain.keys import digest
from shared.ports import TableStore

log = logging.getLogger(__name__)

AUDIT_TABLE = "evergreenaudit"
RECORD_ROWS = ("0", "g")  # the RowKey range of record rows: hex digests (index rows start with `t`)
INDEX_PREFIX = "t"  # index rows: `t-…` (every kind) and `t.<flow>-…` (one flow's kinds)
TAIL_SCAN_LIMIT = 5000  # index rows a filtered `tail` reads at most (it says so in its result)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_NEWEST_FIRST = 10**17  # microseconds until ~5138 AD: RowKey = this minus the record's time


class TableAuditLog:
    """The audit log kept in a `TableStore` (Table Storage in Azure, a dict in tests)."""

    def __init__(self, table: TableStore) -> None:
        self._table = table

    def record(self, rec: AuditRecord) -> None:
        """Write one record, keyed by what it is (kind, event, decision, assets), never by when it was written.

        So a retried write on the same UTC day rewrites the same row instead of adding a second one. The
        record and its index rows are one table transaction: one round trip, written all or none.
        Table errors propagate (the caller's platform retries, and the retry lands on the same row).
        """
        key = record_key(rec)
        fields = {"Kind": rec.kind, "Decision": rec.decision, "Reason": rec.reason, "EventId": rec.event_id,
                  "Assets": json.dumps(dict(rec.assets), sort_keys=True), "At": rec.at.isoformat()}
        day = rec.at.astimezone(UTC).strftime("%Y%m%d")
        # The record and its rows in the day's time-ordered indexes (every kind; its flow's kinds), so the
        # newest N are read without the whole day, and a flow's records without the other flows'.
        order = tail_order(rec.at)
        indexes = dict.fromkeys(index_prefix(kind) for kind in ("", rec.kind))  # (one, for a kind with no flow)
        self._table.upsert_many([
            {"PartitionKey": day, "RowKey": key, **fields},
            *({"PartitionKey": day, "RowKey": f"{prefix}{order}-{key}", "Key": key, **fields} for prefix in indexes),
        ])
        log.info("audit kind=%s event=%s decision=%s reason=%s", rec.kind, rec.event_id, rec.decision, rec.reason)

    def query(self, *, days: int = 1, kind_prefix: str = "", now: datetime | None = None) -> Iterator[AuditRecord]:
        """Newest first (by the record's time), over the last `days` UTC days; one range read of record rows per day."""
        now = now or datetime.now(UTC)
        for back in range(days):
            day = (now - timedelta(days=back)).strftime("%Y%m%d")
            start, end = RECORD_ROWS
            records = [_record(row.data) for row in self._table.query(day, start=start, end=end)
                       if str(row.data["Kind"]).startswith(kind_prefix)]
            yield from sorted(records, key=lambda r: r.at, reverse=True)


    def tail(self, *, limit: int, kind_prefix: str = "", assets: Mapping[str, str] | None = None,
             days: int = 7, now: datetime | None = None, scan_limit: int = TAIL_SCAN_LIMIT) -> AuditTail:
        """The newest `limit` records of the last `days` UTC days whose kind starts with `kind_prefix` and
        whose assets match every `assets` item (see `asset_matches`), newest first.

        Reads the time-ordered index page by page (the flow's own index when `kind_prefix` names a flow,
        e.g. `rollout.`) and stops at `limit` matches or `scan_limit` rows, so its cost is bounded whatever
        the log's size. Table errors propagate.
        """
        now = now or datetime.now(UTC)
        wanted = dict(assets or {})
        needles = [json.dumps(value)[:-1] for value in wanted.values()]  # how each value starts in the JSON text
        found: list[AuditRecord] = []
        seen: set[str] = set()
        scanned = 0
        for back in range(days):
            day = (now - timedelta(days=back)).strftime("%Y%m%d")
            start, end = prefix_range(index_prefix(kind_prefix) if "." in kind_prefix else index_prefix())
            for row in itertools.islice(self._table.query(day, start=start, end=end), scan_limit - scanned):
                scanned += 1
                data = row.data
                if (data["Key"] in seen or not str(data["Kind"]).startswith(kind_prefix)
                        or not all(needle in str(data["Assets"]) for needle in needles)):
                    continue  # (the text test is a cheap first cut: only likely matches are parsed)
                seen.add(str(data["Key"]))  # a retried write on the same day indexed the record twice
                rec = _record(data)
                if all(asset_matches(rec.assets, key, value) for key, value in wanted.items()):
                    found.append(rec)
                    if len(found) >= limit:
                        return AuditTail(tuple(found), scanned, truncated=False)
            if scanned >= scan_limit:
                return AuditTail(tuple(found), scanned, truncated=True)
        return AuditTail(tuple(found), scanned, truncated=False)


def asset_matches(assets: Mapping[str, str], key: str, value: str) -> bool:
    """Whether asset `key` (any asset when `key` is "") is `value` or a version of it (`value:<version>`)."""
    values = assets.values() if key == "" else [assets.get(key, "")]
    return any(v == value or v.startswith(value + ":") for v in values)


def index_prefix(kind: str = "") -> str:
    """The RowKey prefix of a day's index rows: every kind's (`t-`), or (given a kind) its flow's, e.g. `t.rollout-`."""
    if not kind:
        return f"{INDEX_PREFIX}-"
    flow = re.sub(r"[^A-Za-z0-9_]", "_", kind.split(".", 1)[0])  # never `-`: one flow's prefix is not another's
    return f"{INDEX_PREFIX}.{flow}-"


def prefix_range(prefix: str) -> tuple[str, str]:
    """The RowKey range [start, end) of the keys that start with `prefix` (`t-` → [`t-`, `t.`))."""
    return prefix, prefix[:-1] + chr(ord(prefix[-1]) + 1)


def tail_order(at: datetime) -> str:
    """A RowKey prefix that sorts newer times first (fixed width, so text order is time order)."""
    micros = (at.astimezone(UTC) - _EPOCH) // timedelta(microseconds=1)
    return f"{_NEWEST_FIRST - micros:017d}"


def record_key(rec: AuditRecord) -> str:
    """The row key of a record: a digest of what it is; its time is left out on purpose (see `record`)."""
    assets = json.dumps(dict(rec.assets), sort_keys=True)
    return digest(rec.kind, rec.event_id, rec.decision, assets, length=32)


def _record(e: dict[str, object]) -> AuditRecord:
    return AuditRecord(
        kind=str(e["Kind"]), decision=str(e["Decision"]), reason=str(e["Reason"]), event_id=str(e["EventId"]),
        assets=json.loads(str(e["Assets"])), at=datetime.fromisoformat(str(e["At"])),
    )
