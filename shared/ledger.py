"""The ledger: what Evergreen has seen and decided, in Azure Table Storage.

Several Function instances may handle the same blob, batch or content at once (Flex Consumption
scales out, Event Grid delivers at least once). Every write that decides ownership is either an
insert (exactly one instance wins, the others get a conflict) or an update conditioned on the
entity's ETag (optimistic concurrency): two instances can never both seal the same batch.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from azure.core import MatchConditions
from azure.core.exceptions import ResourceExistsError, ResourceModifiedError, ResourceNotFoundError
from azure.data.tables import TableClient, UpdateMode

from shared.keys import digest

log = logging.getLogger(__name__)

CLAIM_LEASE = timedelta(minutes=10)


def utcnow() -> datetime:
    return datetime.now(UTC)


def _iso(value: datetime) -> str:
    return value.astimezone(UTC).isoformat()


def _parse(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


@dataclass(frozen=True)
class Row:
    """An entity with the ETag it was read at, for conditional updates."""

    data: dict[str, Any]
    etag: str


@dataclass(frozen=True)
class ContentRecord:
    dataset: str
    sha256: str
    state: str  # pending | registered | published
    version: str | None
    claimed_at: datetime | None
    row: Row

    @property
    def stale(self) -> bool:
        return self.state == "pending" and (self.claimed_at is None or utcnow() - self.claimed_at > CLAIM_LEASE)


@dataclass(frozen=True)
class BatchRecord:
    dataset: str
    folder: str
    generation: int
    state: str  # open | sealing | sealed
    opened_at: datetime
    sealing_since: datetime | None
    version: str | None
    row: Row
    sealed_at: datetime | None = None  # when the previous generation was sealed (kept on reopen)

    @property
    def files_partition(self) -> str:
        return f"batchfiles-{digest(self.dataset, self.folder)}-{self.generation}"


@dataclass(frozen=True)
class RetrainState:
    """Per-dataset retraining state: the active run and the newest version waiting for it."""

    dataset: str
    active_job: str | None
    active_version: str | None
    last_submitted_at: datetime | None
    pending_version: str | None
    pending_asset: str | None
    pending_asset_type: str | None
    row: Row


@dataclass(frozen=True)
class RolloutRecord:
    """One endpoint's rollout: the row is the endpoint's lock, and `seq` orders its steps.

    Only the instance whose conditional write moves `seq` forward executes a step; a message for an
    older `seq` is stale. `queued_*` holds the newest candidate that arrived mid-rollout.
    """

    endpoint: str
    rollout_id: str
    seq: int
    state: str
    candidate_name: str
    candidate_version: str
    deployment: str  # the candidate's deployment
    champion_deployment: str  # the deployment taking traffic when the rollout started ("" = none)
    champion_model: str  # "name:version" of the champion ("" = none)
    step: int  # index into the canary steps already applied (-1 = none yet)
    due_at: datetime | None  # when the next step may run (polls, grace period)
    started_at: datetime | None
    reason: str
    queued_name: str
    queued_version: str
    queued_event: str
    event_id: str  # the event that started this rollout (correlation id for every log line)
    phase_since: datetime | None  # when the current state was entered (provisioning timeout)
    attempts: int  # failed tries of the current step (transient errors are retried, then rolled back)
    failure: str  # why the rollout is rolling back ("" = it is not)
    row: Row

    @property
    def candidate(self) -> str:
        return f"{self.candidate_name}:{self.candidate_version}"

    @property
    def active(self) -> bool:
        return self.state not in ROLLOUT_FINAL_STATES


ROLLOUT_FINAL_STATES = frozenset({"", "succeeded", "rolled_back"})  # shared.rollout.FINAL_PHASES, as text


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


_ROLLOUT_FIELDS = {
    "rollout_id": "RolloutId", "seq": "Seq", "state": "State", "candidate_name": "CandidateName",
    "candidate_version": "CandidateVersion", "deployment": "Deployment", "champion_deployment": "ChampionDeployment",
    "champion_model": "ChampionModel", "step": "Step", "due_at": "DueAt", "started_at": "StartedAt",
    "reason": "Reason", "queued_name": "QueuedName", "queued_version": "QueuedVersion",
    "queued_event": "QueuedEvent", "event_id": "EventId", "phase_since": "PhaseSince", "attempts": "Attempts",
    "failure": "Failure",
}


def _rollout_changes(changes: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in changes.items():
        out[_ROLLOUT_FIELDS[key]] = _iso(value) if isinstance(value, datetime) else ("" if value is None else value)
    return out


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
    """Typed access to the ledger table. The table client is created once and passed in."""

    def __init__(self, table: TableClient) -> None:
        self._table = table

    # -- generic -------------------------------------------------------------------------------
    def _get(self, pk: str, rk: str) -> Row | None:
        try:
            entity = self._table.get_entity(pk, rk)
        except ResourceNotFoundError:
            return None
        return Row(dict(entity), str(entity.metadata["etag"]))

    def _insert(self, entity: dict[str, Any]) -> Row | None:
        """Insert; None if the row already exists (another instance got there first)."""
        try:
            meta = self._table.create_entity(entity)
        except ResourceExistsError:
            return None
        return Row(dict(entity), str(meta["etag"]))

    def _replace_if(self, row: Row, changes: dict[str, Any]) -> Row | None:
        """Replace the row only if nobody changed it since it was read; None if someone did."""
        entity = {**row.data, **changes}
        try:
            meta = self._table.update_entity(
                entity, mode=UpdateMode.REPLACE, etag=row.etag, match_condition=MatchConditions.IfNotModified
            )
        except (ResourceModifiedError, ResourceNotFoundError):
            return None
        return Row(entity, str(meta["etag"]))

    def _query(self, pk: str) -> Iterator[dict[str, Any]]:
        yield from self._table.query_entities("PartitionKey eq @pk", parameters={"pk": pk})

    # -- blobs seen (delivery idempotency: blob URL + eTag) --------------------------------------
    def seen_blob(self, url: str, etag: str) -> str | None:
        row = self._get(f"seen-{digest(url)}", digest(etag))
        return str(row.data.get("Outcome")) if row else None

    def mark_blob_seen(self, url: str, etag: str, outcome: str) -> None:
        self._table.upsert_entity(
            {
                "PartitionKey": f"seen-{digest(url)}",
                "RowKey": digest(etag),
                "Url": url,
                "ETag": etag,
                "Outcome": outcome,
                "SeenAt": _iso(utcnow()),
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
                "State": "pending",
                "Source": source,
                "ClaimedAt": _iso(utcnow()),
            }
        )
        return self._content(row) if row else None

    def take_over_content(self, record: ContentRecord) -> ContentRecord | None:
        """Take a stale pending claim (its holder crashed); None if someone else moved first."""
        row = self._replace_if(record.row, {"ClaimedAt": _iso(utcnow())})
        return self._content(row) if row else None

    def content_registered(self, record: ContentRecord, version: str) -> ContentRecord:
        row = self._replace_if(record.row, {"State": "registered", "Version": version})
        if row is None:
            raise ResourceModifiedError(f"content {record.sha256} of {record.dataset} changed under us")
        return self._content(row)

    def content_published(self, record: ContentRecord) -> None:
        self._table.update_entity(
            {"PartitionKey": record.row.data["PartitionKey"], "RowKey": record.sha256, "State": "published"},
            mode=UpdateMode.MERGE,
        )

    # -- batches of folder datasets ------------------------------------------------------------
    def _batch(self, row: Row) -> BatchRecord:
        d = row.data
        return BatchRecord(
            dataset=d["Dataset"],
            folder=d["Folder"],
            generation=int(d["Generation"]),
            state=d["State"],
            opened_at=_parse(d["OpenedAt"]) or utcnow(),
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
                "State": "open",
                "OpenedAt": _iso(utcnow()),
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
            batch.row,
            {
                "Generation": batch.generation + 1,
                "State": "open",
                "OpenedAt": _iso(utcnow()),
                "SealingSince": "",
                "Version": "",
            },
        )
        return self._batch(row) if row else None

    def add_batch_file(self, batch: BatchRecord, name: str, etag: str, size: int, sha256: str) -> None:
        """Record a file of the batch; idempotent (a redelivery rewrites the same row)."""
        self._table.upsert_entity(
            {
                "PartitionKey": batch.files_partition,
                "RowKey": digest(name),
                "Name": name,
                "ETag": etag,
                "Size": size,
                "Sha256": sha256,
                "RecordedAt": _iso(utcnow()),
            },
            mode=UpdateMode.REPLACE,
        )

    def batch_files(self, batch: BatchRecord) -> dict[str, dict[str, Any]]:
        return {str(e["Name"]): dict(e) for e in self._query(batch.files_partition)}

    def claim_seal(self, batch: BatchRecord) -> BatchRecord | None:
        """Move open → sealing, or take over a sealing claim whose holder crashed; None if we lost."""
        if batch.state == "sealed":
            return None
        if batch.state == "sealing" and batch.sealing_since and utcnow() - batch.sealing_since < CLAIM_LEASE:
            return None
        row = self._replace_if(batch.row, {"State": "sealing", "SealingSince": _iso(utcnow())})
        return self._batch(row) if row else None

    def finish_seal(self, batch: BatchRecord, version: str, covered: dict[str, str]) -> BatchRecord:
        """Record what the version covers (name → eTag), then mark the batch sealed."""
        pk = f"covered-{digest(batch.dataset, batch.folder)}"
        operations: list[tuple[str, dict[str, Any]]] = []
        for name, etag in covered.items():
            operations.append(
                ("upsert", {"PartitionKey": pk, "RowKey": digest(name), "Name": name, "ETag": etag, "Version": version})
            )
            if len(operations) == 100:  # a table transaction holds at most 100 operations
                self._table.submit_transaction(operations)
                operations = []
        if operations:
            self._table.submit_transaction(operations)
        row = self._replace_if(batch.row, {"State": "sealed", "Version": version, "SealedAt": _iso(utcnow())})
        if row is None:
            raise ResourceModifiedError(f"batch {batch.folder} of {batch.dataset} changed while we sealed it")
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
        return self._replace_if(state.row, changes) is not None

    def set_pending(self, state: RetrainState, version: str, asset: str, asset_type: str) -> bool:
        return self._replace_if(state.row, {"PendingVersion": version, "PendingAsset": asset,
                                            "PendingAssetType": asset_type}) is not None

    def clear_active(self, state: RetrainState) -> bool:
        return self._replace_if(state.row, {"ActiveJob": "", "ActiveVersion": ""}) is not None

    def retrain_run_status(self, dataset: str, version: str) -> str | None:
        row = self._get(f"retrainrun-{digest(dataset)}", digest(version))
        return str(row.data["Status"]) if row else None

    def set_retrain_run_status(self, dataset: str, version: str, status: str, job: str | None = None) -> None:
        entity: dict[str, Any] = {"PartitionKey": f"retrainrun-{digest(dataset)}", "RowKey": digest(version),
                                  "Dataset": dataset, "Version": version, "Status": status,
                                  "UpdatedAt": _iso(utcnow())}
        if job:
            entity["Job"] = job
        self._table.upsert_entity(entity, mode=UpdateMode.MERGE)

    # -- rollouts: one row per endpoint, advanced only by ETag-conditional writes ------------------
    def get_rollout(self, endpoint: str) -> RolloutRecord | None:
        row = self._get("rollout", endpoint)
        return _rollout(row) if row else None

    def rollouts(self) -> list[RolloutRecord]:
        """Every endpoint's rollout row (retention protects what an in-flight rollout references)."""
        entities = self._table.query_entities("PartitionKey eq @pk", parameters={"pk": "rollout"})
        return [_rollout(Row(dict(e), str(e.metadata["etag"]))) for e in entities]

    def create_rollout(self, endpoint: str, **fields: Any) -> RolloutRecord | None:
        """Insert the endpoint's first rollout row; None if another instance inserted it first."""
        row = self._insert({"PartitionKey": "rollout", "RowKey": endpoint, "Endpoint": endpoint,
                            **_rollout_changes(fields)})
        return _rollout(row) if row else None

    def update_rollout(self, record: RolloutRecord, **changes: Any) -> RolloutRecord | None:
        """Write `changes` if the row is unchanged since `record` was read; None if another instance moved it."""
        row = self._replace_if(record.row, _rollout_changes(changes))
        return _rollout(row) if row else None

    # -- promotions tried: one row per (endpoint, candidate), so a redelivered event never re-rolls ----
    def record_promotion(self, key: str, endpoint: str, candidate: str, outcome: str, reason: str) -> None:
        self._table.upsert_entity({"PartitionKey": "promotion", "RowKey": key, "Endpoint": endpoint,
                                   "Candidate": candidate, "Outcome": outcome, "Reason": reason,
                                   "UpdatedAt": _iso(utcnow())}, mode=UpdateMode.MERGE)

    def promotion_outcome(self, key: str) -> tuple[str, str] | None:
        """(outcome, reason) of an earlier promotion of this candidate on this endpoint, if any."""
        row = self._get("promotion", key)
        return (str(row.data.get("Outcome", "")), str(row.data.get("Reason", ""))) if row else None
