"""The ledger: what Evergreen has seen and decided, as typed records over a `TableStore` port.

Several Function instances may handle the same blob, batch or content at once (Flex Consumption
scales out, Event Grid delivers at least once). Every write that decides ownership is either an
insert (exactly one instance wins, the others get a conflict) or an update conditioned on the
entity's ETag (optimistic concurrency): two instances can never both seal the same batch.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, replace
from datetime import UTC, datetime
from typing import Any

from shared.domain.approval import ApprovalRecord
from shared.domain.decay import ChampionScore
from shared.domain.keys import digest
from shared.domain.records import (
    DEFAULT_LEASES,
    BatchRecord,
    ComparisonWork,
    ContentRecord,
    Leases,
    RetrainState,
    RolloutRecord,
    Row,
    WaitingCandidate,
    utcnow,
)
from shared.domain.vocabulary import ApprovalState, BatchState, ContentState, Phase, PromotionAction, RunStatus
from shared.domain.workspace import DataVersionSpec
from shared.errors import ConcurrentUpdateError
from shared.ports import Clock, TableStore
from shared.telemetry import current_traceparent

log = logging.getLogger(__name__)

LEDGER_TABLE = "evergreenledger"
MAX_FILES_JSON = 30_000  # a content row keeps its file list only below this (a property holds 64 KiB)
COMPARISON_WORK = "comparison"  # the open-work index of comparison jobs submitted and not yet decided
EVALUATION_WAIT_WORK = "evaldata"  # the open-work index of candidates waiting for their evaluation data


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
        failure=d.get("Failure", ""), row=row, traceparent=d.get("Traceparent", ""),
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
        "Traceparent": record.traceparent,
    }


def _iso_or_empty(value: datetime | None) -> str:
    return _iso(value) if value is not None else ""


RETRAIN_WRITE_ATTEMPTS = 8  # re-reads of a retraining state row after ETag conflicts before giving up
_NO_PENDING = {"PendingVersion": "", "PendingAsset": "", "PendingAssetType": "", "RecheckAt": ""}
_NO_ACTIVE = {"ActiveJob": "", "ActiveVersion": "", "ActiveAsset": "", "ActiveAssetType": "", "ActiveEvent": "",
              "ActiveRerun": "", "ActiveStatus": "", "LeaseOwner": "", "LeaseUntil": ""}


def _active_status(d: dict[str, Any]) -> RunStatus | None:
    """SUBMITTING or SUBMITTED; a row written before submissions were leased reads as SUBMITTED."""
    if not d.get("ActiveJob"):
        return None
    try:
        return RunStatus(str(d.get("ActiveStatus") or RunStatus.SUBMITTED.value))
    except ValueError:
        return RunStatus.SUBMITTED


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
        active_asset=d.get("ActiveAsset") or None,
        active_asset_type=d.get("ActiveAssetType") or None,
        active_event=d.get("ActiveEvent") or None,
        active_rerun=d.get("ActiveRerun") or None,
        active_status=_active_status(d),
        lease_owner=d.get("LeaseOwner") or None,
        lease_until=_parse(d.get("LeaseUntil")),
        last_version=d.get("LastVersion") or d.get("ActiveVersion") or None,
        recheck_at=_parse(d.get("RecheckAt")),
        traceparent=str(d.get("Traceparent") or ""),
    )


class Ledger:
    """Typed access to the ledger table (any `TableStore`: Table Storage in Azure, a dict in tests)."""

    def __init__(self, table: TableStore, *, clock: Clock = utcnow, leases: Leases = DEFAULT_LEASES) -> None:
        self._table = table
        self._clock = clock  # every timestamp the ledger writes or compares (tests and the harness move it)
        self._leases = leases  # how long the claims it writes last (`LeaseUntil`); EVERGREEN_LEASE_SECONDS

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

    # -- open work (an index of unfinished items per flow, so a reconciler never scans history) ---------
    def track_work(self, flow: str, key: str, data: Mapping[str, Any]) -> None:
        """Index an item of `flow` as open; written BEFORE the item's own row, so a crash leaves it indexed."""
        self._table.upsert({"PartitionKey": f"work-{flow}", "RowKey": key, **data, "Since": _iso(self._clock())})

    def finish_work(self, flow: str, key: str) -> None:
        """Drop an item from the index; done AFTER the item finished, so a crash leaves it indexed."""
        self._table.delete(f"work-{flow}", key)

    def open_work(self, flow: str) -> list[dict[str, Any]]:
        """Every open item of `flow` (one small partition: only what is unfinished now)."""
        return [dict(data) for data in self._query(f"work-{flow}")]

    # -- comparisons in flight (the promoter's open work: one entry per comparison job, keyed by its name) ----
    def track_comparison(self, job: str, tags: Mapping[str, str]) -> None:
        """Index comparison job `job` as open, with the tags it is submitted with (before submitting it)."""
        self.track_work(COMPARISON_WORK, job, {"Tags": json.dumps(dict(tags))})

    def finish_comparison(self, job: str) -> None:
        """Drop comparison job `job` from the index: it is decided (or given up)."""
        self.finish_work(COMPARISON_WORK, job)

    def open_comparisons(self) -> list[ComparisonWork]:
        """Every comparison job indexed and not yet decided, in job-name order; never raises for a garbled
        entry: what cannot be read is said in its `unreadable` (see `ComparisonWork`)."""
        return [_comparison_work(item) for item in self.open_work(COMPARISON_WORK)]

    # -- candidates waiting for their evaluation data (the promoter's open work: one entry per candidate) -----
    def track_waiting(self, model_name: str, version: str, data_asset: str, data: str, event_id: str) -> None:
        """Index a candidate skipped for `evaluation_data_missing` as waiting for `data_asset` (an upsert: a
        redelivered skip rewrites the same entry). Entries of one (model, data asset) sort together, so a
        reader sees the older versions the newest supersedes."""
        self.track_work(EVALUATION_WAIT_WORK, waiting_key(model_name, data_asset, version),
                        {"Model": model_name, "Version": version, "DataAsset": data_asset, "Data": data,
                         "EventId": event_id})

    def finish_waiting(self, waiting: WaitingCandidate) -> None:
        """Drop `waiting` from the index: it was gated again (durably) or given up. Its own key only, so a
        newer version indexed meanwhile stays."""
        self.finish_work(EVALUATION_WAIT_WORK, waiting.key)

    def waiting_candidates(self) -> list[WaitingCandidate]:
        """Every candidate waiting for its evaluation data, grouped by (model, data asset); never raises for a
        garbled entry: what cannot be read is said in its `unreadable` (see `WaitingCandidate`)."""
        return [_waiting(item) for item in self.open_work(EVALUATION_WAIT_WORK)]

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
            owner=str(d.get("Owner") or ""),
            lease_until=_parse(d.get("LeaseUntil")),
            traceparent=str(d.get("Traceparent") or ""),
        )

    def get_content(self, dataset: str, sha256: str) -> ContentRecord | None:
        row = self._get(f"content-{digest(dataset)}", sha256)
        return self._content(row) if row else None

    def claim_content(self, dataset: str, sha256: str, source: str, *, owner: str = "",
                      spec: DataVersionSpec | None = None, files: tuple[str, ...] = ()) -> ContentRecord | None:
        """Claim the right to register this content under a lease; None if another instance holds or finished it.

        The row keeps what registering and announcing need (`spec`, the file list when it fits in a
        row), so whoever takes an expired claim over can finish it without the original event.
        """
        now = self._clock()
        names = json.dumps(list(files))
        row = self._insert(
            {
                "PartitionKey": f"content-{digest(dataset)}",
                "RowKey": sha256,
                "Dataset": dataset,
                "Sha256": sha256,
                "State": ContentState.PENDING.value,
                "Source": source,
                "ClaimedAt": _iso(now),
                "Owner": owner,
                "LeaseUntil": _iso(now + self._leases.content),
                "Spec": json.dumps(asdict(spec)) if spec is not None else "",
                "FileCount": len(files),
                "Files": names if len(names) <= MAX_FILES_JSON else "",
                "Traceparent": current_traceparent(),
            }
        )
        return self._content(row) if row else None

    def content_spec(self, record: ContentRecord) -> tuple[DataVersionSpec, tuple[str, ...], int] | None:
        """The spec, file list (possibly cut) and file count stored with a claim; None for a row that has none."""
        d = _stored(record).data
        if not d.get("Spec"):
            return None
        spec = DataVersionSpec(**json.loads(d["Spec"]))
        files = tuple(json.loads(d["Files"])) if d.get("Files") else ()
        return spec, files, int(d.get("FileCount") or len(files))

    def content_claim_expired(self, record: ContentRecord) -> bool:
        """Whether an unfinished claim (pending, or registered but not yet announced) outlived its lease (its
        holder died or gave it back): then anyone may take it over."""
        return record.state != ContentState.PUBLISHED and record.lease_expired(self._clock(), self._leases.content)

    def take_over_content(self, record: ContentRecord, owner: str = "") -> ContentRecord | None:
        """Take a stale unfinished claim (its holder died) under a new lease, in the state it is in; None if
        someone else moved first."""
        now = self._clock()
        row = self._replace_if(_stored(record), {"ClaimedAt": _iso(now), "Owner": owner,
                                                 "LeaseUntil": _iso(now + self._leases.content)})
        return self._content(row) if row else None

    def reclaim_content(self, record: ContentRecord, source: str, *, owner: str = "",
                        spec: DataVersionSpec | None = None, files: tuple[str, ...] = ()) -> ContentRecord | None:
        """Claim announced content again because its version is gone: pending, under our lease, with our
        spec (its snapshot is the one we just made), no version.

        Conditional on the row read, so of two instances that find the version gone one reclaims it;
        None for the other (it looks again).
        """
        now = self._clock()
        names = json.dumps(list(files))
        row = self._replace_if(_stored(record), {
            "State": ContentState.PENDING.value, "Version": "", "Source": source, "ClaimedAt": _iso(now),
            "Owner": owner, "LeaseUntil": _iso(now + self._leases.content),
            "Spec": json.dumps(asdict(spec)) if spec is not None else "", "FileCount": len(files),
            "Files": names if len(names) <= MAX_FILES_JSON else ""})
        return self._content(row) if row else None

    def release_content(self, record: ContentRecord) -> bool:
        """End our lease on an unfinished claim after a failure, so a retry takes it over at once; False if it
        moved."""
        return self._replace_if(_stored(record), {"Owner": "", "LeaseUntil": _iso(self._clock())}) is not None

    def content_registered(self, record: ContentRecord, version: str) -> ContentRecord:
        """Record the registered version. Raises ConcurrentUpdateError if the row changed since it was read."""
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

    # -- aliases (an upload whose content a version already holds) -------------------------------
    def record_alias(self, dataset: str, version: str, *, url: str, name: str, etag: str, sha256: str) -> None:
        """Record that the upload `url` at `etag` holds the content of `dataset:version`; idempotent (upsert)."""
        self._table.upsert({
            "PartitionKey": f"alias-{digest(dataset)}", "RowKey": digest(url, etag), "Dataset": dataset,
            "Version": version, "Url": url, "Name": name, "ETag": etag, "Sha256": sha256,
            "RecordedAt": _iso(self._clock())})

    def aliases(self, dataset: str) -> list[dict[str, Any]]:
        """Every upload recorded as an alias of a version of `dataset` (Version, Url, Name, ETag, Sha256)."""
        return [dict(data) for data in self._query(f"alias-{digest(dataset)}")]

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
            owner=str(d.get("SealOwner") or ""),
            lease_until=_parse(d.get("LeaseUntil")),
            seal_reason=str(d.get("SealReason") or ""),
            traceparent=str(d.get("Traceparent") or ""),
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
                "Traceparent": current_traceparent(),
            }
        )
        if row is not None:
            return self._batch(row), True
        existing = self.get_batch(dataset, folder)
        if existing is None:  # deleted between insert and read: try once more
            return self.open_batch(dataset, folder)
        return existing, False

    def open_batches(self, flow: str = "ingest") -> list[BatchRecord]:
        """Every batch generation not sealed yet, found through `flow`'s open-work index (never all batches)."""
        found: dict[tuple[str, str], BatchRecord] = {}
        for item in self.open_work(flow):
            if item.get("Kind") != "batch":
                continue
            batch = self.get_batch(str(item["Dataset"]), str(item["Folder"]))
            if batch is not None and batch.state != BatchState.SEALED:
                found[(batch.dataset, batch.folder)] = batch
        return sorted(found.values(), key=lambda b: (b.dataset, b.folder))

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
                "SealOwner": "",
                "LeaseUntil": "",
                "SealReason": "",
                "Traceparent": current_traceparent(),
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

    def batch_files(self, batch: BatchRecord, generation: int | None = None) -> dict[str, dict[str, Any]]:
        """The files recorded for a generation of the batch (its current one unless `generation` is given)."""
        of = batch if generation is None else replace(batch, generation=generation)
        partition = of.files_partition
        return {str(e["Name"]): dict(e) for e in self._query(partition)}

    def claim_seal(self, batch: BatchRecord, *, owner: str = "", reason: str = "") -> BatchRecord | None:
        """Take the seal under a lease: open → sealing, or a sealing batch whose lease expired; None if we lost.

        `reason` (why it is sealed) is kept; a take-over keeps the holder's reason, so the version is tagged alike.
        """
        now = self._clock()
        if batch.state == BatchState.SEALED or batch.seal_held(now, self._leases.seal):
            return None
        row = self._replace_if(_stored(batch), {
            "State": BatchState.SEALING.value, "SealingSince": _iso(now), "SealOwner": owner,
            "LeaseUntil": _iso(now + self._leases.seal), "SealReason": batch.seal_reason or reason})
        return self._batch(row) if row else None

    def release_seal(self, batch: BatchRecord) -> bool:
        """Give a seal back (sealing → open) after a failure, so a retry need not wait for the lease; False if moved."""
        return self._replace_if(_stored(batch), {"State": BatchState.OPEN.value, "SealingSince": "", "SealOwner": "",
                                                 "LeaseUntil": "", "SealReason": ""}) is not None

    def finish_seal(self, batch: BatchRecord, version: str, covered: Mapping[str, tuple[str, int, str]],
                    left_out: Mapping[str, str] | None = None) -> BatchRecord:
        """Record what the version newly covers (name → (eTag, size, sha256)) and what it left out (name → eTag),
        then mark the batch sealed. Raises ConcurrentUpdateError if the batch moved meanwhile."""
        pk = f"covered-{digest(batch.dataset, batch.folder)}"
        rows = [{"PartitionKey": pk, "RowKey": digest(name), "Name": name, "ETag": etag, "Size": size,
                 "Sha256": sha256, "Version": version, "LeftOut": False}
                for name, (etag, size, sha256) in covered.items()]
        rows += [{"PartitionKey": pk, "RowKey": digest(name), "Name": name, "ETag": etag, "Version": version,
                  "LeftOut": True} for name, etag in (left_out or {}).items()]
        self._table.upsert_many(rows)
        row = self._replace_if(_stored(batch), {"State": BatchState.SEALED.value, "Version": version,
                                                "SealedAt": _iso(self._clock()), "SealOwner": "", "LeaseUntil": ""})
        if row is None:
            raise ConcurrentUpdateError(f"batch {batch.folder} of {batch.dataset} changed while we sealed it")
        return self._batch(row)

    def covered_files(self, dataset: str, folder: str) -> dict[str, dict[str, Any]]:
        """Every file an earlier version of the batch covers (or left out), by name: eTag, size, sha256, version."""
        return {str(e["Name"]): dict(e) for e in self._query(f"covered-{digest(dataset, folder)}")}

    def covered_by(self, dataset: str, folder: str, name: str, etag: str) -> str | None:
        """The data version that already covers this exact file (name and eTag), if any."""
        row = self._get(f"covered-{digest(dataset, folder)}", digest(name))
        if row and row.data.get("ETag") == etag and not row.data.get("LeftOut"):
            return str(row.data["Version"])
        return None

    # -- retraining: one state row per dataset, one row per (dataset, data version) run ----------
    # The state rows (partition "retrain", one per dataset) are the index of open retraining work: the
    # reconciler reads that one small partition, never the history of runs.

    def get_retrain_state(self, dataset: str) -> RetrainState | None:
        row = self._get("retrain", digest(dataset))
        return _retrain_state(row) if row else None

    def retrain_states(self) -> list[RetrainState]:
        """Every dataset's retraining state (one row per dataset that ever retrained)."""
        return [_retrain_state(row) for row in self._table.query("retrain")]

    def claim_submission(self, state: RetrainState | None, *, dataset: str, job: str, version: str, asset: str,
                         asset_type: str, event: str, owner: str, until: datetime,
                         clear_pending: bool, rerun: str = "") -> RetrainState | None:
        """Make `job` the dataset's active run, unconfirmed (SUBMITTING) and leased to `owner` until `until`;
        `rerun`: its rerun key, kept so that resuming it submits the same rerun.

        Taking over the expired lease of the same job is the same write. None if another instance changed
        the state since it was read: re-read it and decide again.
        """
        changes: dict[str, Any] = {
            "ActiveJob": job, "ActiveVersion": version, "ActiveAsset": asset, "ActiveAssetType": asset_type,
            "ActiveEvent": event, "ActiveRerun": rerun, "ActiveStatus": RunStatus.SUBMITTING.value, "LeaseOwner": owner,
            "LeaseUntil": _iso(until), "LastVersion": version, "Traceparent": current_traceparent(),
        }
        if clear_pending:
            changes |= _NO_PENDING
        if state is None:
            row = self._insert({"PartitionKey": "retrain", "RowKey": digest(dataset), "Dataset": dataset, **changes})
        else:
            row = self._replace_if(_stored(state), changes)
        return _retrain_state(row) if row else None

    def confirm_submission(self, dataset: str, job: str) -> RetrainState | None:
        """Azure ML has the job: SUBMITTED, lease released, the minimum interval starts now.

        A no-op if `job` is no longer the dataset's unconfirmed submission. Raises ConcurrentUpdateError
        if the row kept changing under us.
        """
        now = _iso(self._clock())
        return self._update_retrain(dataset, lambda s: {
            "ActiveStatus": RunStatus.SUBMITTED.value, "LeaseOwner": "", "LeaseUntil": "", "LastSubmittedAt": now,
        } if s.active_job == job and s.submitting else None)

    def release_submission(self, dataset: str, job: str, owner: str) -> None:
        """Give up our lease on an unconfirmed submission (it failed), so a redelivery resumes it at once."""
        now = _iso(self._clock())
        self._update_retrain(dataset, lambda s: {"LeaseUntil": now}
                             if s.active_job == job and s.submitting and s.lease_owner == owner else None)

    def end_active(self, dataset: str, job: str) -> RetrainState | None:
        """`job` is no run any more (Azure ML refused it): clear it; the pending version stays for the next run.

        Raises ConcurrentUpdateError if the row kept changing under us.
        """
        return self._update_retrain(dataset, lambda s: _NO_ACTIVE if s.active_job == job else None)

    def set_pending(self, state: RetrainState, version: str, asset: str, asset_type: str,
                    recheck_at: datetime | None = None) -> RetrainState | None:
        """Remember `version` as the next to run (and when its re-check is due); None if the state changed."""
        changes = {"PendingVersion": version, "PendingAsset": asset, "PendingAssetType": asset_type,
                   "Traceparent": current_traceparent()}
        if recheck_at is not None:
            changes["RecheckAt"] = _iso(recheck_at)
        row = self._replace_if(_stored(state), changes)
        return _retrain_state(row) if row else None

    def set_recheck(self, state: RetrainState, at: datetime) -> RetrainState | None:
        """Remember that a re-check is scheduled for `at`; None if the state changed since it was read."""
        row = self._replace_if(_stored(state), {"RecheckAt": _iso(at)})
        return _retrain_state(row) if row else None

    def clear_active(self, state: RetrainState) -> bool:
        """The active run ended with nothing to follow; False if the state changed since it was read."""
        return self._replace_if(_stored(state), _NO_ACTIVE) is not None

    def _update_retrain(self, dataset: str,
                        change: Callable[[RetrainState], dict[str, Any] | None]) -> RetrainState | None:
        """Apply `change` to the current state row, re-reading after an ETag conflict (bounded).

        `change` returns None when there is nothing to write. None if the dataset has no row. Raises
        ConcurrentUpdateError if the row changed under us every time.
        """
        for _ in range(RETRAIN_WRITE_ATTEMPTS):
            state = self.get_retrain_state(dataset)
            if state is None:
                return None
            changes = change(state)
            if changes is None:
                return state
            row = self._replace_if(_stored(state), changes)
            if row is not None:
                return _retrain_state(row)
        raise ConcurrentUpdateError(f"the retraining state of {dataset} kept changing; retry")

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

    def set_retrain_run_status(self, dataset: str, version: str, status: RunStatus, job: str | None = None,
                               reason: str = "") -> None:
        entity: dict[str, Any] = {"PartitionKey": f"retrainrun-{digest(dataset)}", "RowKey": digest(version),
                                  "Dataset": dataset, "Version": version, "Status": status.value,
                                  "UpdatedAt": _iso(self._clock())}
        if job:
            entity["Job"] = job
        if reason:
            entity["Reason"] = reason
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

    # -- manual approval: one row per (endpoint, candidate); pending ones indexed as open work ----------
    def get_approval(self, endpoint: str, name: str, version: str) -> ApprovalRecord | None:
        row = self._get("approval", approval_key(endpoint, name, version))
        return _approval(row) if row else None

    def create_approval(self, record: ApprovalRecord) -> ApprovalRecord | None:
        """Insert a pending approval (indexed as open work first); None if another instance inserted it first."""
        key = approval_key(record.endpoint, record.model_name, record.version)
        self.track_work("approval", key, {"Endpoint": record.endpoint, "Model": record.model_name,
                                          "Version": record.version})
        row = self._insert(_approval_entity(record))
        return _approval(row) if row else None

    def decide_approval(self, record: ApprovalRecord) -> ApprovalRecord | None:
        """Write a final state over the row `record` was read from (ETag-conditional); None if it changed.

        Rejected and expired leave the open-work index; approved stays in it until its rollout has started
        (`close_approval`), so a lost hand-over is re-sent. Raises ValueError for a record not read from the ledger.
        """
        if not record.etag:
            raise ValueError("ApprovalRecord was not read from the ledger; read it before deciding it")
        key = approval_key(record.endpoint, record.model_name, record.version)
        row = self._table.replace_if(Row(_approval_entity(record), record.etag), _approval_entity(record))
        if row is None:
            return None
        if record.state in (ApprovalState.REJECTED, ApprovalState.EXPIRED):
            self.finish_work("approval", key)
        return _approval(row)

    def close_approval(self, record: ApprovalRecord) -> None:
        """Drop an approved candidate from the open-work index: its rollout has started (or it is given up)."""
        self.finish_work("approval", approval_key(record.endpoint, record.model_name, record.version))

    def open_approvals(self) -> list[ApprovalRecord]:
        """Every approval still waiting, or approved but not yet handed to a rollout (the open-work index;
        an item whose row is rejected or expired is dropped from it)."""
        found = []
        for item in self.open_work("approval"):
            record = self.get_approval(str(item.get("Endpoint", "")), str(item.get("Model", "")),
                                       str(item.get("Version", "")))
            if record is not None and record.state in (ApprovalState.PENDING, ApprovalState.APPROVED):
                found.append(record)
            elif record is not None:
                self.finish_work("approval", str(item["RowKey"]))
        return found

    # -- champion re-scores: the champion's metric over time, one row per re-score job ----------------------
    def record_champion_score(self, score: ChampionScore) -> None:
        """Remember one re-score (keyed by its job, so a redelivered RunCompleted rewrites the same row)."""
        self._table.upsert({"PartitionKey": f"score-{digest(score.endpoint)}", "RowKey": score.job_name,
                            "Endpoint": score.endpoint, "Model": score.model, "DataAsset": score.data_asset,
                            "DataVersion": score.data_version, "Metric": score.metric, "Value": score.value,
                            "Degraded": score.degraded, "Reason": score.reason, "At": _iso(score.at)})

    def champion_scores(self, endpoint: str) -> list[ChampionScore]:
        """The champions' re-scores on `endpoint`, oldest first (for the status page and `status`)."""
        scores = [ChampionScore(endpoint=str(d.get("Endpoint", endpoint)), model=str(d.get("Model", "")),
                                data_asset=str(d.get("DataAsset", "")), data_version=str(d.get("DataVersion", "")),
                                metric=str(d.get("Metric", "")), value=str(d.get("Value", "")),
                                at=_parse(d.get("At")) or datetime.min.replace(tzinfo=UTC),
                                job_name=str(d.get("RowKey", "")), degraded=bool(d.get("Degraded", False)),
                                reason=str(d.get("Reason", "")))
                  for d in self._query(f"score-{digest(endpoint)}")]
        return sorted(scores, key=lambda s: s.at)


def _comparison_work(item: Mapping[str, Any]) -> ComparisonWork:
    """One entry of the comparison index, read fail closed. Tags missing read as none; a tag value that is
    not text reads as its text, and null, false, 0 or an empty value as ""."""
    problems, tags = [], None
    try:
        read = json.loads(str(item.get("Tags") or "{}"))
    except ValueError as exc:
        problems.append(f"its tags are not JSON ({exc})")
    else:
        if isinstance(read, dict):
            tags = {str(key): str(value) if value else "" for key, value in read.items()}
        else:
            problems.append("its tags are not a JSON object")
    return ComparisonWork(str(item.get("RowKey") or ""), tags, _since(item, problems), "; ".join(problems))


def _since(item: Mapping[str, Any], problems: list[str]) -> datetime | None:
    """When an open-work entry was indexed; None when it has no time, or when its time cannot be read (said in
    `problems`)."""
    if not item.get("Since"):
        return None
    try:
        return datetime.fromisoformat(str(item["Since"]))
    except ValueError:
        problems.append(f"its time {item['Since']!r} is not an ISO time")
        return None


def waiting_key(model_name: str, data_asset: str, version: str) -> str:
    """The index key of a candidate waiting for its evaluation data: (model, data asset) first, so they group."""
    return f"{digest('evaldata', model_name, data_asset, length=16)}-{digest(version, length=16)}"


def _waiting(item: Mapping[str, Any]) -> WaitingCandidate:
    """One entry of the waiting index, read fail closed: a missing name, version or asset is said, not guessed."""
    fields = {name: str(item.get(name) or "") for name in ("Model", "Version", "DataAsset", "Data", "EventId")}
    problems = [f"it has no {name}" for name in ("Model", "Version", "DataAsset") if not fields[name]]
    since = _since(item, problems)
    return WaitingCandidate(str(item.get("RowKey") or ""), fields["Model"], fields["Version"], fields["DataAsset"],
                            fields["Data"], fields["EventId"], since, "; ".join(problems))


def approval_key(endpoint: str, name: str, version: str) -> str:
    """The row key of a candidate's approval on an endpoint."""
    return digest("approval", endpoint, name, version, length=16)


def _approval_entity(record: ApprovalRecord) -> dict[str, Any]:
    return {"PartitionKey": "approval", "RowKey": approval_key(record.endpoint, record.model_name, record.version),
            "Endpoint": record.endpoint, "Model": record.model_name, "Version": record.version,
            "State": record.state.value, "RequestedAt": _iso(record.requested_at), "EventId": record.event_id,
            "GateReason": record.gate_reason, "DecidedAt": _iso_or_empty(record.decided_at),
            "DecidedBy": record.decided_by, "Reason": record.reason}


def _approval(row: Row) -> ApprovalRecord:
    d = row.data
    try:
        state = ApprovalState(str(d.get("State", "")))
    except ValueError:
        state = ApprovalState.PENDING  # unreadable: treat as still waiting (never as approved)
    return ApprovalRecord(endpoint=str(d["Endpoint"]), model_name=str(d["Model"]), version=str(d["Version"]),
                          state=state, requested_at=_parse(d.get("RequestedAt")) or datetime.min.replace(tzinfo=UTC),
                          event_id=str(d.get("EventId", "")), gate_reason=str(d.get("GateReason", "")),
                          decided_at=_parse(d.get("DecidedAt")), decided_by=str(d.get("DecidedBy", "")),
                          reason=str(d.get("Reason", "")), etag=row.etag)
