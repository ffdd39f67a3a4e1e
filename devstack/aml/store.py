"""SQLite state of the emulator: one generic resource table, shared safely by threads and processes.

Every resource (workspace, datastore, data/model container and version, operation, ...) is a row
keyed by (kind, parent, name) in lower case, so ARM's case-insensitive names need no special care.
The row keeps the resource body as returned to clients plus a private `meta` document. Writers
take the database lock up front (`BEGIN IMMEDIATE`), so read-modify-write sequences such as
"next version = highest + 1" are atomic across threads and across processes sharing the file.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
BUSY_TIMEOUT_MS = 30_000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS resources (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,   -- creation order: newest first = id DESC
    kind    TEXT NOT NULL,
    parent  TEXT NOT NULL DEFAULT '',
    name    TEXT NOT NULL,
    body    TEXT NOT NULL,
    meta    TEXT NOT NULL DEFAULT '{}',
    created REAL NOT NULL,
    UNIQUE (kind, parent, name)
);
CREATE INDEX IF NOT EXISTS resources_by_parent ON resources (kind, parent, id);
CREATE TABLE IF NOT EXISTS outbox (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    topic   TEXT NOT NULL,
    event   TEXT NOT NULL,
    created REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    sent    REAL
);
"""


@dataclass(frozen=True)
class Row:
    """One stored resource."""

    id: int
    kind: str
    parent: str
    name: str
    body: dict[str, Any]
    meta: dict[str, Any]
    created: float


def _row(r: sqlite3.Row) -> Row:
    return Row(
        id=int(r["id"]),
        kind=str(r["kind"]),
        parent=str(r["parent"]),
        name=str(r["name"]),
        body=json.loads(r["body"]),
        meta=json.loads(r["meta"]),
        created=float(r["created"]),
    )


class Tx:
    """Operations inside one transaction; obtained from `Store.read()` or `Store.write()`."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def get(self, kind: str, name: str, parent: str = "") -> Row | None:
        cur = self.conn.execute(
            "SELECT * FROM resources WHERE kind=? AND parent=? AND name=?", (kind, parent.lower(), name.lower())
        )
        r = cur.fetchone()
        return _row(r) if r else None

    def rows(self, kind: str, parent: str = "", *, newest_first: bool = True) -> list[Row]:
        order = "DESC" if newest_first else "ASC"
        cur = self.conn.execute(
            f"SELECT * FROM resources WHERE kind=? AND parent=? ORDER BY id {order}",  # noqa: S608 (fixed words)
            (kind, parent.lower()),
        )
        return [_row(r) for r in cur.fetchall()]

    def select(self, where: str, args: tuple[Any, ...], *, newest_first: bool, limit: int) -> list[Row]:
        """Rows matching a WHERE fragment (fixed SQL, bound values), in id order, at most `limit` (keyset paging)."""
        order = "DESC" if newest_first else "ASC"
        cur = self.conn.execute(
            f"SELECT * FROM resources WHERE {where} ORDER BY id {order} LIMIT ?",  # noqa: S608 (fixed fragments)
            (*args, limit),
        )
        return [_row(r) for r in cur.fetchall()]

    def rows_of_kind(self, kind: str) -> list[Row]:
        """Every row of `kind` under any parent, oldest first (workspace-wide lookups such as code hashes)."""
        cur = self.conn.execute("SELECT * FROM resources WHERE kind=? ORDER BY id", (kind,))
        return [_row(r) for r in cur.fetchall()]

    def put(
        self, kind: str, name: str, body: dict[str, Any], *, parent: str = "", meta: dict[str, Any] | None = None
    ) -> None:
        """Insert, or replace body/meta of an existing row keeping its id and creation time."""
        meta_json = json.dumps(meta or {})
        self.conn.execute(
            "INSERT INTO resources (kind, parent, name, body, meta, created) VALUES (?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (kind, parent, name) DO UPDATE SET body=excluded.body, meta=excluded.meta",
            (kind, parent.lower(), name.lower(), json.dumps(body), meta_json, time.time()),
        )

    def delete(self, kind: str, name: str, parent: str = "") -> bool:
        cur = self.conn.execute(
            "DELETE FROM resources WHERE kind=? AND parent=? AND name=?", (kind, parent.lower(), name.lower())
        )
        return cur.rowcount > 0

    def delete_children(self, kind: str, parent: str) -> int:
        cur = self.conn.execute("DELETE FROM resources WHERE kind=? AND parent=?", (kind, parent.lower()))
        return cur.rowcount

    # --- event outbox ---
    def add_event(self, topic: str, event: dict[str, Any]) -> None:
        self.conn.execute(
            "INSERT INTO outbox (topic, event, created) VALUES (?, ?, ?)", (topic, json.dumps(event), time.time())
        )

    def claim_events(self, limit: int, now: float) -> list[tuple[int, str, dict[str, Any]]]:
        """Mark up to `limit` unsent events as sent and return them; `release_event` undoes a failure."""
        rows = self.conn.execute(
            "SELECT id, topic, event FROM outbox WHERE sent IS NULL ORDER BY id LIMIT ?", (limit,)
        ).fetchall()
        for r in rows:
            self.conn.execute("UPDATE outbox SET sent=?, attempts=attempts+1 WHERE id=?", (now, r["id"]))
        return [(int(r["id"]), str(r["topic"]), json.loads(r["event"])) for r in rows]

    def release_event(self, event_id: int) -> None:
        self.conn.execute("UPDATE outbox SET sent=NULL WHERE id=?", (event_id,))

    def events(self) -> list[dict[str, Any]]:
        """Every recorded event, oldest first (for inspection and tests)."""
        rows = self.conn.execute("SELECT event FROM outbox ORDER BY id").fetchall()
        return [json.loads(r["event"]) for r in rows]


class Store:
    """Per-thread connections to `aml.sqlite` in WAL mode; `write()` serialises writers."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._local = threading.local()
        path.parent.mkdir(parents=True, exist_ok=True)
        conn = self._conn()
        with self._lock(conn):
            # executescript() would commit on its own; run the statements inside the lock instead.
            for statement in filter(None, (s.strip() for s in _SCHEMA.split(";"))):
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
            conn.row_factory = sqlite3.Row
            conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            self._local.conn = conn
        return conn

    @staticmethod
    @contextmanager
    def _lock(conn: sqlite3.Connection) -> Iterator[None]:
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    @contextmanager
    def write(self) -> Iterator[Tx]:
        """A transaction holding the write lock from the start (no lost updates)."""
        conn = self._conn()
        with self._lock(conn):
            yield Tx(conn)

    @contextmanager
    def read(self) -> Iterator[Tx]:
        """A consistent snapshot for reads that span several rows."""
        conn = self._conn()
        conn.execute("BEGIN")
        try:
            yield Tx(conn)
        finally:
            conn.execute("COMMIT")

    def close(self) -> None:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None
