"""The local Event Grid's durable state: published events, the delivery outbox, dead letters and the
storage watcher's view of the blobs, in one SQLite file (WAL).

Publishing an event and queueing its deliveries happen in one transaction (and, for the storage
watcher, together with the blob state that produced it), so nothing is lost or emitted twice across a
crash or restart. All access happens on the server's event-loop thread.
"""

from __future__ import annotations

import json
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL, topic TEXT NOT NULL, schema TEXT NOT NULL, type TEXT NOT NULL,
    subject TEXT NOT NULL, body TEXT NOT NULL, received_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS events_topic ON events (topic, seq);
CREATE TABLE IF NOT EXISTS deliveries (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    event_seq INTEGER NOT NULL REFERENCES events (seq),
    subscription TEXT NOT NULL, function TEXT NOT NULL, kind TEXT NOT NULL,
    dead_letter_container TEXT,
    status TEXT NOT NULL,                      -- pending | delivered | deadlettered
    attempts INTEGER NOT NULL DEFAULT 0, max_attempts INTEGER NOT NULL,
    created_at REAL NOT NULL, expires_at REAL NOT NULL, next_attempt_at REAL NOT NULL,
    last_attempt_at REAL, last_status INTEGER, last_outcome TEXT, last_body TEXT, finished_at REAL
);
CREATE INDEX IF NOT EXISTS deliveries_due ON deliveries (status, next_attempt_at);
CREATE TABLE IF NOT EXISTS deadletters (
    id TEXT PRIMARY KEY,
    delivery_id INTEGER NOT NULL REFERENCES deliveries (id),
    reason TEXT NOT NULL, detail TEXT NOT NULL,
    attempts INTEGER NOT NULL, last_status INTEGER, last_outcome TEXT, last_body TEXT,
    published_at REAL NOT NULL, last_attempt_at REAL, dead_lettered_at REAL NOT NULL,
    container TEXT, blob_status TEXT NOT NULL,  -- pending | written | none
    blob_name TEXT, blob_attempts INTEGER NOT NULL DEFAULT 0, blob_next_at REAL NOT NULL DEFAULT 0,
    blob_error TEXT, redelivery_id INTEGER
);
CREATE TABLE IF NOT EXISTS blobs (
    container TEXT NOT NULL, name TEXT NOT NULL, etag TEXT NOT NULL, copy_id TEXT,
    content_type TEXT, blob_type TEXT,
    PRIMARY KEY (container, name)
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


@dataclass(frozen=True)
class Route:
    """One subscription an event is to be delivered to, copied onto the delivery row at publish time."""

    subscription: str
    function: str
    kind: str
    dead_letter_container: str | None
    max_attempts: int
    ttl_seconds: float
    delay: float = 0.0  # seconds before the first attempt (delivery faults: late, shuffled)


@dataclass(frozen=True)
class Delivery:
    id: int
    event_seq: int
    topic: str
    schema: str
    event: dict[str, Any]
    subscription: str
    function: str
    kind: str
    dead_letter_container: str | None
    attempts: int
    max_attempts: int
    created_at: float
    expires_at: float


@dataclass(frozen=True)
class PendingDeadLetterBlob:
    id: str
    container: str
    topic: str
    subscription: str
    document: dict[str, Any]
    dead_lettered_at: float
    blob_attempts: int


@dataclass(frozen=True)
class BlobState:
    etag: str
    copy_id: str | None
    content_type: str | None
    blob_type: str | None


def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    from datetime import UTC, datetime

    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class Store:
    """SQLite-backed state; methods are small transactions, safe to call from the event loop."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA busy_timeout=5000")
        self._db.executescript(_SCHEMA)
        row = self._db.execute("SELECT value FROM meta WHERE key = 'sequencer'").fetchone()
        self._sequencer = int(row["value"]) if row else 0

    def close(self) -> None:
        self._db.close()

    def _tx(self, body: Callable[[sqlite3.Connection], Any]) -> Any:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            result = body(self._db)
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")
        return result

    # -- meta --------------------------------------------------------------------------------------
    def get_meta(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row["value"])

    def set_meta(self, key: str, value: str) -> None:
        self._db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))

    def next_sequencer(self) -> str:
        """A storage `sequencer`: monotonic across the account, fixed-width hex so strings compare."""
        self._sequencer += 1
        return f"{self._sequencer:048x}"

    # -- publishing --------------------------------------------------------------------------------
    def ingest(
        self,
        topic: str,
        schema: str,
        events: Iterable[tuple[dict[str, Any], list[Route]]],
        *,
        also: Callable[[sqlite3.Connection], None] | None = None,
    ) -> int:
        """Record events and queue their deliveries atomically; returns the number of deliveries queued."""
        now = time.time()

        def body(db: sqlite3.Connection) -> int:
            queued = 0
            for event, routes in events:
                event_type = str(event.get("eventType", event.get("type", "")))
                cur = db.execute(
                    "INSERT INTO events (id, topic, schema, type, subject, body, received_at) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (
                        str(event["id"]),
                        topic,
                        schema,
                        event_type,
                        str(event.get("subject") or ""),
                        json.dumps(event, ensure_ascii=False),
                        now,
                    ),
                )
                for route in routes:
                    db.execute(
                        "INSERT INTO deliveries (event_seq, subscription, function, kind,"
                        " dead_letter_container,"
                        " status, max_attempts, created_at, expires_at, next_attempt_at)"
                        " VALUES (?, ?, ?, ?, ?, 'pending', ?, ?, ?, ?)",
                        (
                            cur.lastrowid,
                            route.subscription,
                            route.function,
                            route.kind,
                            route.dead_letter_container,
                            route.max_attempts,
                            now,
                            now + route.ttl_seconds,
                            now + route.delay,
                        ),
                    )
                    queued += 1
            if also is not None:
                also(db)
            db.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES ('sequencer', ?)", (str(self._sequencer),)
            )
            return queued

        return int(self._tx(body))

    # -- delivery ----------------------------------------------------------------------------------
    def due_deliveries(self, now: float, limit: int, exclude: set[int]) -> list[Delivery]:
        rows = self._db.execute(
            "SELECT d.*, e.topic, e.schema, e.body FROM deliveries d JOIN events e ON e.seq = d.event_seq"
            " WHERE d.status = 'pending' AND d.next_attempt_at <= ? ORDER BY d.next_attempt_at, d.id LIMIT ?",
            (now, limit + len(exclude)),
        ).fetchall()
        result = [
            Delivery(
                id=r["id"],
                event_seq=r["event_seq"],
                topic=r["topic"],
                schema=r["schema"],
                event=json.loads(r["body"]),
                subscription=r["subscription"],
                function=r["function"],
                kind=r["kind"],
                dead_letter_container=r["dead_letter_container"],
                attempts=r["attempts"],
                max_attempts=r["max_attempts"],
                created_at=r["created_at"],
                expires_at=r["expires_at"],
            )
            for r in rows
            if r["id"] not in exclude
        ]
        return result[:limit]

    def next_due_at(self) -> float | None:
        row = self._db.execute(
            "SELECT MIN(next_attempt_at) AS t FROM deliveries WHERE status = 'pending'"
        ).fetchone()
        return None if row["t"] is None else float(row["t"])

    def record_success(self, delivery_id: int, status: int, body: str) -> None:
        now = time.time()
        self._db.execute(
            "UPDATE deliveries SET status = 'delivered', attempts = attempts + 1, last_attempt_at = ?,"
            " last_status = ?, last_outcome = 'Succeeded', last_body = ?, finished_at = ? WHERE id = ?",
            (now, status, body, now, delivery_id),
        )

    def record_retry(
        self, delivery_id: int, status: int | None, outcome: str, body: str, next_attempt_at: float
    ) -> None:
        self._db.execute(
            "UPDATE deliveries SET attempts = attempts + 1, last_attempt_at = ?, last_status = ?,"
            " last_outcome = ?, last_body = ?, next_attempt_at = ? WHERE id = ?",
            (time.time(), status, outcome, body, next_attempt_at, delivery_id),
        )

    def record_dead_letter(
        self,
        delivery: Delivery,
        *,
        reason: str,
        detail: str,
        attempted: bool,
        status: int | None,
        outcome: str | None,
        body: str | None,
    ) -> str:
        """Finish a delivery as dead-lettered; queue its blob copy if the subscription has a container."""
        now = time.time()
        dl_id = str(uuid.uuid4())

        def tx(db: sqlite3.Connection) -> None:
            increment = 1 if attempted else 0
            if attempted:
                db.execute(
                    "UPDATE deliveries SET last_attempt_at = ?, last_status = ?, last_outcome = ?,"
                    " last_body = ?"
                    " WHERE id = ?",
                    (now, status, outcome, body, delivery.id),
                )
            db.execute(
                "UPDATE deliveries SET status = 'deadlettered', attempts = attempts + ?, finished_at = ?"
                " WHERE id = ?",
                (increment, now, delivery.id),
            )
            row = db.execute("SELECT * FROM deliveries WHERE id = ?", (delivery.id,)).fetchone()
            db.execute(
                "INSERT INTO deadletters (id, delivery_id, reason, detail, attempts, last_status,"
                " last_outcome,"
                " last_body, published_at, last_attempt_at, dead_lettered_at, container, blob_status)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    dl_id,
                    delivery.id,
                    reason,
                    detail,
                    row["attempts"],
                    row["last_status"],
                    row["last_outcome"],
                    row["last_body"],
                    delivery.created_at,
                    row["last_attempt_at"],
                    now,
                    delivery.dead_letter_container,
                    "pending" if delivery.dead_letter_container else "none",
                ),
            )

        self._tx(tx)
        return dl_id

    # -- dead letters ------------------------------------------------------------------------------
    def _dead_letter_rows(self, where: str, params: tuple[Any, ...], limit: int) -> list[sqlite3.Row]:
        return self._db.execute(
            # `where` is one of this module's constant clauses; values are bound parameters.
            "SELECT x.*, d.subscription, d.function, d.kind, e.topic, e.schema, e.body, e.id AS event_id"  # noqa: S608
            " FROM deadletters x JOIN deliveries d ON d.id = x.delivery_id"
            " JOIN events e ON e.seq = d.event_seq"
            f" WHERE {where} ORDER BY x.dead_lettered_at DESC LIMIT ?",
            (*params, limit),
        ).fetchall()

    @staticmethod
    def dead_letter_document(row: sqlite3.Row) -> dict[str, Any]:
        """The event as Azure writes it to the dead-letter blob: the event plus delivery metadata."""
        event = json.loads(row["body"])
        if row["schema"] == "CloudEventSchemaV1_0":
            extra = {
                "deadletterreason": row["reason"],
                "deliveryattempts": row["attempts"],
                "lastdeliveryoutcome": row["last_outcome"],
                "publishtime": _iso(row["published_at"]),
                "lastdeliveryattempttime": _iso(row["last_attempt_at"]),
            }
        else:
            extra = {
                "deadLetterReason": row["reason"],
                "deliveryAttempts": row["attempts"],
                "lastDeliveryOutcome": row["last_outcome"],
                "lastHttpStatusCode": row["last_status"],
                "publishTime": _iso(row["published_at"]),
                "lastDeliveryAttemptTime": _iso(row["last_attempt_at"]),
            }
        return {**event, **extra}

    def pending_dead_letter_blobs(self, now: float, limit: int = 50) -> list[PendingDeadLetterBlob]:
        rows = self._dead_letter_rows("x.blob_status = 'pending' AND x.blob_next_at <= ?", (now,), limit)
        return [
            PendingDeadLetterBlob(
                id=r["id"],
                container=r["container"],
                topic=r["topic"],
                subscription=r["subscription"],
                document=self.dead_letter_document(r),
                dead_lettered_at=r["dead_lettered_at"],
                blob_attempts=r["blob_attempts"],
            )
            for r in rows
        ]

    def mark_dead_letter_blob(
        self, dl_id: str, *, blob_name: str | None, error: str | None, next_at: float
    ) -> None:
        if blob_name is not None:
            self._db.execute(
                "UPDATE deadletters SET blob_status = 'written', blob_name = ?,"
                " blob_attempts = blob_attempts + 1,"
                " blob_error = NULL WHERE id = ?",
                (blob_name, dl_id),
            )
        else:
            self._db.execute(
                "UPDATE deadletters SET blob_attempts = blob_attempts + 1, blob_error = ?, blob_next_at = ?"
                " WHERE id = ?",
                (error, next_at, dl_id),
            )

    def redeliver(self, dl_id: str) -> int | None:
        """Queue a fresh delivery (attempts reset) of a dead-lettered event; None if there is no such id."""
        now = time.time()

        def tx(db: sqlite3.Connection) -> int | None:
            row = db.execute(
                "SELECT x.id, d.* FROM deadletters x JOIN deliveries d ON d.id = x.delivery_id"
                " WHERE x.id = ?",
                (dl_id,),
            ).fetchone()
            if row is None:
                return None
            ttl = row["expires_at"] - row["created_at"]
            cur = db.execute(
                "INSERT INTO deliveries (event_seq, subscription, function, kind, dead_letter_container,"
                " status, max_attempts, created_at, expires_at, next_attempt_at)"
                " VALUES (?, ?, ?, ?, ?, 'pending', ?, ?, ?, ?)",
                (
                    row["event_seq"],
                    row["subscription"],
                    row["function"],
                    row["kind"],
                    row["dead_letter_container"],
                    row["max_attempts"],
                    now,
                    now + ttl,
                    now,
                ),
            )
            db.execute("UPDATE deadletters SET redelivery_id = ? WHERE id = ?", (cur.lastrowid, dl_id))
            return cur.lastrowid

        result = self._tx(tx)
        return None if result is None else int(result)

    # -- inspection --------------------------------------------------------------------------------
    def list_events(
        self, *, topic: str | None, event_type: str | None, subject_prefix: str | None, limit: int
    ) -> list[dict[str, Any]]:
        clauses, params = ["1 = 1"], []
        if topic:
            clauses.append("topic = ?")
            params.append(topic)
        if event_type:
            clauses.append("type = ? COLLATE NOCASE")
            params.append(event_type)
        if subject_prefix:
            clauses.append("substr(subject, 1, ?) = ?")
            params.extend([len(subject_prefix), subject_prefix])  # type: ignore[list-item]
        rows = self._db.execute(
            f"SELECT * FROM events WHERE {' AND '.join(clauses)} ORDER BY seq DESC LIMIT ?",  # noqa: S608
            (*params, limit),
        ).fetchall()
        return [
            {
                "seq": r["seq"],
                "topic": r["topic"],
                "schema": r["schema"],
                "receivedAt": _iso(r["received_at"]),
                "event": json.loads(r["body"]),
            }
            for r in rows
        ]

    def list_deliveries(
        self, *, status: str | None, subscription: str | None, limit: int
    ) -> list[dict[str, Any]]:
        clauses, params = ["1 = 1"], []
        if status:
            clauses.append("d.status = ?")
            params.append(status)
        if subscription:
            clauses.append("d.subscription = ? COLLATE NOCASE")
            params.append(subscription)
        rows = self._db.execute(
            "SELECT d.*, e.id AS event_id, e.type, e.subject, e.topic FROM deliveries d"  # noqa: S608
            f" JOIN events e ON e.seq = d.event_seq WHERE {' AND '.join(clauses)}"
            " ORDER BY d.id DESC LIMIT ?",
            (*params, limit),
        ).fetchall()
        return [
            {
                "id": r["id"],
                "eventId": r["event_id"],
                "topic": r["topic"],
                "eventType": r["type"],
                "subject": r["subject"],
                "subscription": r["subscription"],
                "function": r["function"],
                "kind": r["kind"],
                "status": r["status"],
                "attempts": r["attempts"],
                "maxAttempts": r["max_attempts"],
                "createdAt": _iso(r["created_at"]),
                "expiresAt": _iso(r["expires_at"]),
                "nextAttemptAt": _iso(r["next_attempt_at"]) if r["status"] == "pending" else None,
                "lastAttemptAt": _iso(r["last_attempt_at"]),
                "lastStatus": r["last_status"],
                "lastOutcome": r["last_outcome"],
                "lastBody": r["last_body"],
                "finishedAt": _iso(r["finished_at"]),
            }
            for r in rows
        ]

    def list_dead_letters(self, *, subscription: str | None, limit: int) -> list[dict[str, Any]]:
        where, params = (
            ("d.subscription = ? COLLATE NOCASE", (subscription,)) if subscription else ("1 = 1", ())
        )
        return [
            {
                "id": r["id"],
                "deliveryId": r["delivery_id"],
                "eventId": r["event_id"],
                "topic": r["topic"],
                "subscription": r["subscription"],
                "function": r["function"],
                "deadLetterReason": r["reason"],
                "detail": r["detail"],
                "deliveryAttempts": r["attempts"],
                "lastHttpStatusCode": r["last_status"],
                "lastDeliveryOutcome": r["last_outcome"],
                "lastResponseBody": r["last_body"],
                "publishTime": _iso(r["published_at"]),
                "lastDeliveryAttemptTime": _iso(r["last_attempt_at"]),
                "deadLetteredAt": _iso(r["dead_lettered_at"]),
                "container": r["container"],
                "blobStatus": r["blob_status"],
                "blobName": r["blob_name"],
                "blobError": r["blob_error"],
                "redeliveryId": r["redelivery_id"],
                "event": json.loads(r["body"]),
            }
            for r in self._dead_letter_rows(where, params, limit)
        ]

    def counts(self) -> dict[str, int]:
        rows = self._db.execute("SELECT status, COUNT(*) AS n FROM deliveries GROUP BY status").fetchall()
        result = {r["status"]: int(r["n"]) for r in rows}
        result["events"] = int(self._db.execute("SELECT COUNT(*) FROM events").fetchone()[0])
        result["deadletterBlobsPending"] = int(
            self._db.execute("SELECT COUNT(*) FROM deadletters WHERE blob_status = 'pending'").fetchone()[0]
        )
        return result

    # -- storage watcher state ---------------------------------------------------------------------
    def load_blob_state(self) -> dict[tuple[str, str], BlobState]:
        rows = self._db.execute("SELECT * FROM blobs").fetchall()
        return {
            (r["container"], r["name"]): BlobState(r["etag"], r["copy_id"], r["content_type"], r["blob_type"])
            for r in rows
        }
