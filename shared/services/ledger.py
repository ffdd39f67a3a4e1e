"""The ledger: what Evergreen has seen and decided, as typed records over a `TableStore` port.

Several Function instances may handle the same blob, batch or content at once (Flex Consumption
scales out, Event Grid delivers at least once). Every write that decides ownership is either an
insert (exactly one instance wins, the others get a conflict) or an update conditioned on the
entity's ETag (optimistic concurrency): two instances can never both seal the same batch.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from shared.domain.keys import digest
from shared.domain.records import (
    CLAIM_LEASE,
    BatchRecord,
    ContentRecord,
    RetrainState,
    RolloutRecord,
    Row,
    utcnow,
)
from shared.domain.vocabulary import BatchState, ContentState, Phase, PromotionAction, RunStatus
from shared.errors import ConcurrentUpdateError
from shared.ports import Clock, TableStore

log = logging.getLogger(__name__)

LEDGER_TABLE = "evergreenledger"


def _iso(value: datetime) -> str:
    return value.astimezone(UTC).isoformat()


def _parse(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def _stored(record: ContentRecord | BatchRecord | RetrainState | RolloutRecord) -> Row:
    """The row a record was read from; a record built elsewhere cannot be written back conditionally."""
    if record.row is None:
        raise ValueError(f"{type(record).__name__} was not read from the ledger; read it before updating it")
    return record.row


def _rollout(row: Row) -> RolloutRecord:
    d = row.data
    return RolloutRecord(
        endpoint=d["Endpoint"], rollout_id=d.get("RolloutId", ""), seq=int(d.get("Seq", 0)), state=d.get("State", ""),
        candidate_name=d.get("CandidateName", ""), candidate_version=d.get("CandidateVersion", ""),
        deployment=d.get("Deployment", ""), champion_deployment=d.get("ChampionDeployment", ""),
        champion_model=d.get("ChampionModel", ""), step=int(d.get("Step", -1)), due_at=_parse(d.get("DueAt")),
        started_at=_parse(d.get("StartedAt")), reason=d.get("Reason", ""), queued_name=d.get("QueuedName", ""),
        queued_version=d.get("QueuedVersion", ""), queued_event=d.get("QueuedEvent", ""),
        event_id=d.get("EventId", ""), phase_since=_parse(d.get("PhaseSince")), attempts=int(d.get("Attempts", 0)),
        failure=d.get("Failure", ""), row=row,
    )


def _rollout_entity(record: RolloutRecord) -> dict[str, Any]:
    """The stored columns of a rollout record. Raises ValueError if its state is not a `Phase` value."""
    return {
        "PartitionKey": "rollout", "RowKey": record.endpoint, "Endpoint": record.endpoint,
        "RolloutId": record.rollout_id, "Seq": record.seq, "State": Phase(record.state).value,
        "CandidateName": record.candidate_name, "CandidateVersion": record.candidate_version,
        "Deployment": record.deployment, "ChampionDeployment": record.champion_deployment,
        "ChampionModel": record.champion_model, "Step": record.step, "DueAt": _iso_or_empty(record.due_at),
        "StartedAt": _iso_or_empty(record.started_at), "Reason": record.reason, "QueuedName": record.queued_name,
        "QueuedVersion": record.queued_version, "QueuedEvent": record.queued_event, "EventId": record.event_id,
        "PhaseSince": _iso_or_empty(record.phase_since), "Attempts": record.attempts, "Failure": record.failure,
    }


def _iso_or_empty(value: datetime | None) -> str:
    return _iso(value) if value is not None else ""


def _retrain_state(row: Row) -> RetrainState:
    d = row.data
    return RetrainState(
        dataset=d["Dataset"],
        active_job=d.get("ActiveJob") or None,
        active_version=d.get("ActiveVersion") or None,
        last_submitted_at=_parse(d.get("LastSubmittedAt")),
        pending_version=d.get("PendingVersion") or None,
        pending_asset=d.get("PendingAsset") or None,
        pending_asset_type=d.get("PendingAssetType") or None,
        row=row,
    )


class Ledger:
    """Typed access to the ledger table (any `TableStore`: Table Storage in Azure, a dict in tests)."""

    def __init__(self, table: TableStore, *, clock: Clock = utcnow) -> None:
        self._table = table
        self._clock = clock  # every timestamp the ledger writes or compares (tests and the harness move it)

    # -- generic -------------------------------------------------------------------------------
    def _get(self, pk: str, rk: str) -> Row | None:
        return self._table.get(pk, rk)

    def _insert(self, entity: dict[str, Any]) -> Row | None:
        """Insert; None if the row already exists (another instance got there first)."""
        return self._table.insert(entity)

    def _replace_if(self, row: Row, changes: dict[str, Any]) -> Row | None:
        """Replace the row only if nobody changed it since it was read; None if someone did."""
        return self._table.replace_if(row, {**row.data, **changes})

    def _query(self, pk: str) -> Iterator[dict[str, Any]]:
        for row in self._table.query(pk):
            yield row.data

    # -- blobs seen (delivery idempotency: blob URL + eTag) --------------------------------------
    def seen_blob(self, url: str, etag: str) -> str | None:
        row = self._get(f"seen-{digest(url)}", digest(etag))
        return str(row.data.get("Outcome")) if row else None

    def mark_blob_seen(self, url: str, etag: str, outcome: str) -> None:
        self._table.upsert(
            {
                "PartitionKey": f"seen-{digest(url)}",
                "RowKey": digest(etag),
                "Url": url,
                "ETag": etag,
                "Outcome": outcome,
                "SeenAt": _iso(self._clock()),
            }
        )

    # -- content (dedupe by hash; one registration per distinct content) --------------------------
    def _content(self, row: Row) -> ContentRecord:
        d = row.data
        return ContentRecord(
            dataset=d["Dataset"],
            sha256=d["Sha256"],
            state=d["State"],
            version=d.get("Version") or None,
            claimed_at=_parse(d.get("ClaimedAt")),
            row=row,
        )

    def get_content(self, dataset: str, sha256: str) -> ContentRecord | None:
        row = self._get(f"content-{digest(dataset)}", sha256)
        return self._content(row) if row else None

    def claim_content(self, dataset: str, sha256: str, source: str) -> ContentRecord | None:
        """Claim the right to register this content; None if another instance holds or finished it."""
        row = self._insert(
            {
                "PartitionKey": f"content-{digest(dataset)}",
                "RowKey": sha256,
                "Dataset": dataset,
                "Sha256": sha256,
                "State": ContentState.PENDING.value,
                "Source": source,
                "ClaimedAt": _iso(self._clock()),
            }
        )
        return self._content(row) if row else None

    def content_claim_expired(self, record: ContentRecord) -> bool:
        """Whether a pending claim outlived its lease (its holder crashed): then anyone may take it over."""
        if record.state != ContentState.PENDING:
            return False
        return record.claimed_at is None or self._clock() - record.claimed_at > CLAIM_LEASE

    def take_over_content(self, record: ContentRecord) -> ContentRecord | None:
        """Take a stale pending claim (its holder crashed); None if someone else moved first."""
        row = self._replace_if(_stored(record), {"ClaimedAt": _iso(self._clock())})
        return self._content(row) if row else None

    def content_registered(self, record: ContentRecord, version: str) -> ContentRecord:
        row = self._replace_if(_stored(record), {"State": ContentState.REGISTERED.value, "Version": version})
        if row is None:
            raise ConcurrentUpdateError(f"content {record.sha256} of {record.dataset} changed under us")
        return self._content(row)

    def content_published(self, record: ContentRecord) -> None:
        self._table.upsert(
            {"PartitionKey": _stored(record).data["PartitionKey"], "RowKey": record.sha256,
             "State": ContentState.PUBLISHED.value},
            merge=True,
        )

    # -- batches of folder datasets ------------------------------------------------------------
    def _batch(self, row: Row) -> BatchRecord:
        d = row.data
        return BatchRecord(
            dataset=d["Dataset"],
            folder=d["Folder"],
            generation=int(d["Generation"]),
            state=d["State"],
            opened_at=_parse(d["OpenedAt"]) or self._clock(),
            sealing_since=_parse(d.get("SealingSince")),
            version=d.get("Version") or None,
            row=row,
            sealed_at=_parse(d.get("SealedAt")),
        )

    def _batch_key(self, dataset: str, folder: str) -> tuple[str, str]:
        return f"batch-{digest(dataset)}", digest(folder)

    def get_batch(self, dataset: str, folder: str) -> BatchRecord | None:
        row = self._get(*self._batch_key(dataset, folder))
        return self._batch(row) if row else None

    def open_batch(self, dataset: str, folder: str) -> tuple[BatchRecord, bool]:
        """Return the batch's current record, opening it if new; the flag says we opened it."""
        pk, rk = self._batch_key(dataset, folder)
        row = self._insert(
            {
                "PartitionKey": pk,
                "RowKey": rk,
                "Dataset": dataset,
                "Folder": folder,
                "Generation": 1,
                "State": BatchState.OPEN.value,
                "OpenedAt": _iso(self._clock()),
            }
        )
        if row is not None:
            return self._batch(row), True
        existing = self.get_batch(dataset, folder)
        if existing is None:  # deleted between insert and read: try once more
            return self.open_batch(dataset, folder)
        return existing, False

    def reopen_batch(self, batch: BatchRecord) -> BatchRecord | None:
        """Start the next generation of a sealed batch (late files); None if someone else did."""
        row = self._replace_if(
            _stored(batch),
            {
                "Generation": batch.generation + 1,
                "State": BatchState.OPEN.value,
                "OpenedAt": _iso(self._clock()),
                "SealingSince": "",
                "Version": "",
            },
        )
        return self._batch(row) if row else None

    def add_batch_file(self, batch: BatchRecord, name: str, etag: str, size: int, sha256: str) -> None:
        """Record a file of the batch; idempotent (a redelivery rewrites the same row)."""
        self._table.upsert(
            {
                "PartitionKey": batch.files_partition,
                "RowKey": digest(name),
                "Name": name,
                "ETag": etag,
                "Size": size,
                "Sha256": sha256,
                "RecordedAt": _iso(self._clock()),
            },
        )

    def batch_files(self, batch: BatchRecord) -> dict[str, dict[str, Any]]:
        return {str(e["Name"]): dict(e) for e in self._query(batch.files_partition)}

    def claim_seal(self, batch: BatchRecord) -> BatchRecord | None:
        """Move open → sealing, or take over a sealing claim whose holder crashed; None if we lost."""
        if batch.state == BatchState.SEALED:
            return None
        now = self._clock()
        if batch.state == BatchState.SEALING and batch.sealing_since and now - batch.sealing_since < CLAIM_LEASE:
            return None
        row = self._replace_if(_stored(batch), {"State": BatchState.SEALING.value, "SealingSince": _iso(now)})
        return self._batch(row) if row else None

    def finish_seal(self, batch: BatchRecord, version: str, covered: dict[str, str]) -> BatchRecord:
        """Record what the version covers (name → eTag), then mark the batch sealed."""
        pk = f"covered-{digest(batch.dataset, batch.folder)}"
        self._table.upsert_many(
            {"PartitionKey": pk, "RowKey": digest(name), "Name": name, "ETag": etag, "Version": version}
            for name, etag in covered.items()
        )
        row = self._replace_if(_stored(batch), {"State": BatchState.SEALED.value, "Version": version,
                                                "SealedAt": _iso(self._clock())})
        if row is None:
            raise ConcurrentUpdateError(f"batch {batch.folder} of {batch.dataset} changed while we sealed it")
        return self._batch(row)

    def covered_by(self, dataset: str, folder: str, name: str, etag: str) -> str | None:
        """The data version that already covers this exact file (name and eTag), if any."""
        row = self._get(f"covered-{digest(dataset, folder)}", digest(name))
        if row and row.data.get("ETag") == etag:
            return str(row.data["Version"])
        return None

    # -- retraining: one state row per dataset, one row per (dataset, data version) run ----------

    def get_retrain_state(self, dataset: str) -> RetrainState | None:
        row = self._get("retrain", digest(dataset))
        return _retrain_state(row) if row else None

    def claim_retrain(self, state: RetrainState | None, dataset: str, job: str, version: str, now: datetime) -> bool:
        """Make `job` the dataset's active run; False if another instance changed the state first."""
        changes = {"ActiveJob": job, "ActiveVersion": version, "LastSubmittedAt": _iso(now), "PendingVersion": "",
                   "PendingAsset": "", "PendingAssetType": ""}
        if state is None:
            return self._insert({"PartitionKey": "retrain", "RowKey": digest(dataset), "Dataset": dataset,
                                 **changes}) is not None
        if state.active_job == job:
            return True
        return self._replace_if(_stored(state), changes) is not None

    def set_pending(self, state: RetrainState, version: str, asset: str, asset_type: str) -> bool:
        return self._replace_if(_stored(state), {"PendingVersion": version, "PendingAsset": asset,
                                            "PendingAssetType": asset_type}) is not None

    def clear_active(self, state: RetrainState) -> bool:
        return self._replace_if(_stored(state), {"ActiveJob": "", "ActiveVersion": ""}) is not None

    def retrain_run_status(self, dataset: str, version: str) -> RunStatus | None:
        """What is known of the run of (dataset, version); a status this code does not know reads as FAILED."""
        row = self._get(f"retrainrun-{digest(dataset)}", digest(version))
        if row is None:
            return None
        try:
            return RunStatus(str(row.data["Status"]))
        except ValueError:
            log.warning("retrain run %s:%s has unknown status %r; treating it as failed", dataset, version,
                        row.data["Status"])
            return RunStatus.FAILED

    def set_retrain_run_status(self, dataset: str, version: str, status: RunStatus, job: str | None = None) -> None:
        entity: dict[str, Any] = {"PartitionKey": f"retrainrun-{digest(dataset)}", "RowKey": digest(version),
                                  "Dataset": dataset, "Version": version, "Status": status.value,
                                  "UpdatedAt": _iso(self._clock())}
        if job:
            entity["Job"] = job
        self._table.upsert(entity, merge=True)

    # -- rollouts: one row per endpoint, advanced only by ETag-conditional writes ------------------
    def get_rollout(self, endpoint: str) -> RolloutRecord | None:
        row = self._get("rollout", endpoint)
        return _rollout(row) if row else None

    def rollouts(self) -> list[RolloutRecord]:
        """Every endpoint's rollout row (retention protects what an in-flight rollout references)."""
        return [_rollout(row) for row in self._table.query("rollout")]

    def create_rollout(self, record: RolloutRecord) -> RolloutRecord | None:
        """Insert the endpoint's first rollout row; None if another instance inserted it first.

        Raises ValueError if the record's state is not a `Phase` value.
        """
        row = self._insert(_rollout_entity(record))
        return _rollout(row) if row else None

    def update_rollout(self, record: RolloutRecord) -> RolloutRecord | None:
        """Write `record` whole, if its row is unchanged since it was read; None if another instance moved it.

        `record` is the next state, built with `dataclasses.replace` from a record read here (so it
        carries that read's `row` and ETag; mypy checks the field names). Raises ValueError for a
        record that was not read from the ledger or whose state is not a `Phase` value.
        """
        row = self._replace_if(_stored(record), _rollout_entity(record))
        return _rollout(row) if row else None

    # -- promotions tried: one row per (endpoint, candidate), so a redelivered event never re-rolls ----
    def record_promotion(self, key: str, endpoint: str, candidate: str, outcome: PromotionAction | Phase,
                         reason: str) -> None:
        """Remember how a promotion went: started, then the rollout's final phase (stored by value)."""
        self._table.upsert({"PartitionKey": "promotion", "RowKey": key, "Endpoint": endpoint,
                            "Candidate": candidate, "Outcome": outcome.value, "Reason": reason,
                            "UpdatedAt": _iso(self._clock())}, merge=True)

    def promotion_outcome(self, key: str) -> tuple[str, str] | None:
        """(outcome, reason) of an earlier promotion of this candidate on this endpoint, if any."""
        row = self._get("promotion", key)
        return (str(row.data.get("Outcome", "")), str(row.data.get("Reason", ""))) if row else None
