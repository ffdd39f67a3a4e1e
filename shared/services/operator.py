"""What an operator sees and does through `python -m shared.cli`: status, rollout abort/resume, retrain.

Every command goes through the flows' own machinery, never around it:
- `status` reads the ledger's small indexes (open batches from the ingest flow's open-work index, one
  retraining state row per dataset, one rollout row per endpoint) and the audit log's last retention run.
- `abort` moves an active rollout to `rollback` with an ETag-conditional write of its row and sends the
  step message: the rollout's own steps return traffic to the champion and delete the candidate.
- `resume` re-sends the current step's message (what the reconciler does for a stalled rollout).
- `retrain` builds the typed `DataVersionRegistered` from the registry's data version and hands it to
  `Retrainer.on_data_version_registered`, so coalescing and deduplication hold as for the real event.
Each action is audited with who did it and why.

Errors: `OperatorRefused` when the action does not apply (no rollout, already over, unknown dataset or
version); the ports' own errors propagate.
"""

from __future__ import annotations

import dataclasses
import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, TypeVar

from shared.config.policy import Policy
from shared.domain.audit import AuditRecord
from shared.domain.events import DataVersionRegistered
from shared.domain.records import BatchRecord, ComparisonWork, RetrainState, RolloutRecord, utcnow
from shared.domain.rollout import RolloutTick
from shared.domain.vocabulary import (
    ROLLBACK_PHASES,
    BatchState,
    OperatorAction,
    Phase,
    RetentionAudit,
    Tag,
    retention_audit_kind,
)
from shared.errors import EvergreenError
from shared.ports import AuditLog, Clock, DataRegistry, DelayedQueue
from shared.services.ledger import Ledger
from shared.services.retrain import Retrainer, RetrainOutcome

log = logging.getLogger(__name__)

ABORT_ATTEMPTS = 8  # re-reads of the rollout row when a step moves it while we abort
RETENTION_LOOKBACK_DAYS = 7  # how far back `status` looks for the last retention run
RETENTION_RUN_KIND = retention_audit_kind(RetentionAudit.RUN)
T = TypeVar("T")


class OperatorRefused(EvergreenError):
    """The command does not apply to what is there now (the message says why and what to do)."""


@dataclass(frozen=True)
class BatchStatus:
    dataset: str
    folder: str
    generation: int
    state: str
    files: int
    opened_at: datetime
    last_file_at: datetime | None
    seals: str  # when (or on what) it will be sealed


@dataclass(frozen=True)
class ApprovalStatus:
    """A candidate that passed the gate and waits for a person (or is approved and not yet rolled out)."""

    endpoint: str
    candidate: str
    state: str
    requested_at: datetime
    expires_at: datetime | None  # None when its model has no promotion policy any more
    gate_reason: str


@dataclass(frozen=True)
class ComparisonStatus:
    """A comparison job submitted and not yet judged (its RunCompleted decides the candidate)."""

    job: str
    candidate: str
    champion: str  # "" when the candidate is scored alone (no champion yet)
    since: datetime | None


@dataclass(frozen=True)
class WaitingStatus:
    """A candidate skipped because its evaluation data has no version yet: it is gated when a version lands."""

    candidate: str
    data: str  # the evaluation data as the policy names it (`name@latest`, `name:version`)
    since: datetime | None


@dataclass(frozen=True)
class RolloutStatus:
    endpoint: str
    candidate: str
    champion: str
    phase: str
    phase_since: datetime | None
    age_seconds: float  # since the rollout started
    due_at: datetime | None
    queued: str
    reason: str


@dataclass(frozen=True)
class Status:
    """What is in flight now; `to_json` is what `status --json` prints."""

    at: datetime
    batches: list[BatchStatus]
    retraining: list[RetrainState]
    rollouts: list[RolloutStatus]
    last_retention: AuditRecord | None
    notes: list[str] = field(default_factory=list)
    approvals: list[ApprovalStatus] = field(default_factory=list)
    comparisons: list[ComparisonStatus] = field(default_factory=list)
    waiting: list[WaitingStatus] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "at": self.at.isoformat(),
            "batches": [_jsonable(dataclasses.asdict(b)) for b in self.batches],
            "retraining": [_retrain_json(s) for s in self.retraining],
            "rollouts": [_jsonable(dataclasses.asdict(r)) for r in self.rollouts],
            "awaiting_approval": [_jsonable(dataclasses.asdict(a)) for a in self.approvals],
            "comparisons": [_jsonable(dataclasses.asdict(c)) for c in self.comparisons],
            "waiting_for_evaluation_data": [_jsonable(dataclasses.asdict(w)) for w in self.waiting],
            "last_retention": audit_json(self.last_retention) if self.last_retention else None,
            "notes": list(self.notes),
        }


@dataclass(frozen=True)
class OperatorOutcome:
    """What an abort or resume did."""

    action: OperatorAction
    endpoint: str
    detail: str

    def to_json(self) -> dict[str, str]:
        return {"action": self.action.value, "endpoint": self.endpoint, "detail": self.detail}


class Operator:
    """The operator's commands over the flows' ports and services (built by the composition root)."""

    def __init__(self, *, policy: Policy, ledger: Ledger, audit: AuditLog,
                 ticks: DelayedQueue[RolloutTick] | None = None, retrainer: Retrainer | None = None,
                 registry: DataRegistry | None = None,
                 clock: Clock = utcnow) -> None:
        self._policy = policy
        self._ledger = ledger
        self._audit = audit
        self._ticks = ticks
        self._retrainer = retrainer
        self._registry = registry
        self._clock = clock

    # -- status -------------------------------------------------------------------------------------
    def status(self) -> Status:
        """Open batches, retraining per dataset, comparisons in flight, candidates waiting for their evaluation
        data or awaiting approval, active rollouts with phase and age, the last retention run."""
        now = self._clock()
        rollouts = [self._rollout_status(r, now) for r in self._ledger.rollouts() if r.active]
        last = next(iter(self._audit.query(days=RETENTION_LOOKBACK_DAYS, kind_prefix=RETENTION_RUN_KIND, now=now)),
                    None)
        notes = [] if last else [f"no retention run in the last {RETENTION_LOOKBACK_DAYS} days"]
        works = self._ledger.open_comparisons()
        notes += [f"comparison job {w.job}: its open-work entry cannot be read ({w.unreadable})"
                  for w in works if w.unreadable]
        waiting = self._ledger.waiting_candidates()
        notes += [f"waiting candidate entry {w.key}: it cannot be read ({w.unreadable})"
                  for w in waiting if w.unreadable]
        return Status(at=now, batches=self.batches(),
                      retraining=sorted(self._ledger.retrain_states(), key=lambda s: s.dataset),
                      rollouts=sorted(rollouts, key=lambda r: r.endpoint), last_retention=last, notes=notes,
                      approvals=self.approvals(), comparisons=self.comparisons(works),
                      waiting=sorted((WaitingStatus(w.model, w.data, w.since) for w in waiting if not w.unreadable),
                                     key=lambda w: (w.since is None, w.since or datetime.min, w.candidate)))

    def approvals(self) -> list[ApprovalStatus]:
        """Candidates waiting for a verdict, or approved and not yet handed to a rollout, oldest first."""
        found = []
        for record in self._ledger.open_approvals():
            model = self._policy.model(record.model_name)
            expiry = model.promotion.approval_expiry if model is not None else None
            found.append(ApprovalStatus(endpoint=record.endpoint, candidate=record.model, state=record.state.value,
                                        requested_at=record.requested_at, gate_reason=record.gate_reason,
                                        expires_at=record.expires_at(expiry) if expiry is not None else None))
        return sorted(found, key=lambda a: a.requested_at)

    def comparisons(self, works: Sequence[ComparisonWork] | None = None) -> list[ComparisonStatus]:
        """Comparison jobs submitted and not yet judged (`works`, by default the ledger's open comparisons),
        oldest first; an entry whose tags cannot be read shows with no candidate (`status` notes why)."""
        found = []
        for work in self._ledger.open_comparisons() if works is None else works:
            tags = work.tags or {}
            found.append(ComparisonStatus(job=work.job, candidate=tags.get(Tag.MODEL.value, ""),
                                          champion=tags.get(Tag.COMPARED_WITH.value, ""), since=work.since))
        return sorted(found, key=lambda c: (c.since is None, c.since or datetime.min, c.job))

    def batches(self) -> list[BatchStatus]:
        """Every open batch with its files so far and when it will seal (from the open-work index, bounded)."""
        return [self._batch_status(b) for b in self._ledger.open_batches()]

    def _batch_status(self, batch: BatchRecord) -> BatchStatus:
        files = self._ledger.batch_files(batch)
        last = max((datetime.fromisoformat(str(f["RecordedAt"])) for f in files.values() if f.get("RecordedAt")),
                   default=None)
        return BatchStatus(dataset=batch.dataset, folder=batch.folder, generation=batch.generation,
                           state=batch.state, files=len(files), opened_at=batch.opened_at, last_file_at=last,
                           seals=self._seals(batch, last))

    def _seals(self, batch: BatchRecord, last_file_at: datetime | None) -> str:
        """When the batch will be sealed, as the seal plan sees it (quiet period, marker, or a sealer at work)."""
        if batch.state == BatchState.SEALING:
            until = batch.lease_until.isoformat() if batch.lease_until else "?"
            return f"being sealed by {batch.owner or 'an instance'} (lease until {until})"
        try:
            policy = self._policy.dataset(batch.dataset).batch
        except KeyError:
            return "never: the dataset is no longer in the policy"
        if policy is None:
            return "never: the dataset is not a folder dataset any more"
        marker = f"on the marker {policy.marker}"
        if policy.quiet_period_seconds is None:
            return marker
        since = last_file_at or batch.opened_at
        at = since + timedelta(seconds=policy.quiet_period_seconds)
        return f"at {at.isoformat()} (quiet period {policy.quiet_period_seconds:g}s), or {marker}"

    @staticmethod
    def _rollout_status(record: RolloutRecord, now: datetime) -> RolloutStatus:
        age = (now - record.started_at).total_seconds() if record.started_at else 0.0
        queued = f"{record.queued_name}:{record.queued_version}" if record.queued_name else ""
        return RolloutStatus(endpoint=record.endpoint, candidate=record.candidate, champion=record.champion_model,
                             phase=record.state, phase_since=record.phase_since, age_seconds=round(age, 1),
                             due_at=record.due_at, queued=queued, reason=record.failure or record.reason)

    # -- rollouts -----------------------------------------------------------------------------------
    def abort(self, endpoint: str, *, who: str, reason: str) -> OperatorOutcome:
        """Move the endpoint's active rollout to `rollback` (ETag-conditional), then send its step.

        Raises OperatorRefused if there is no active rollout, it is already rolling back or over, or
        its row kept changing under us (try again).
        """
        ticks = self._need(self._ticks, "the rollout queue")
        why = f"aborted by {who}: {reason}" if reason else f"aborted by {who}"
        for _ in range(ABORT_ATTEMPTS):
            record = self._active_rollout(endpoint)
            if record.phase in ROLLBACK_PHASES:
                raise OperatorRefused(f"the rollout of {record.candidate} on {endpoint} is already rolling back "
                                      f"({record.state}); `status` shows its progress")
            now = self._clock()
            updated = self._ledger.update_rollout(dataclasses.replace(
                record, seq=record.seq + 1, state=Phase.ROLLBACK.value, reason=why, failure=why, due_at=now,
                phase_since=now, attempts=0))
            if updated is None:
                log.info("abort on %s: the rollout row moved meanwhile; reading it again", endpoint)
                continue
            ticks.send(RolloutTick(updated.endpoint, updated.rollout_id, updated.seq, updated.event_id), 0)
            detail = (f"rollout of {record.candidate} on {endpoint} moved from {record.state} to rollback; its "
                      f"steps return traffic to {record.champion_model or 'nobody (first model)'} and delete "
                      f"{record.deployment}")
            self._audit.record(AuditRecord(f"rollout.{OperatorAction.ABORTED.value}",
                                           f"abort at {record.state} (step {record.seq})", why, updated.event_id,
                                           {**_assets(record), "operator": who}, at=now))
            log.warning("rollout event=%s rollout=%s %s", updated.event_id, updated.rollout_id, why)
            return OperatorOutcome(OperatorAction.ABORTED, endpoint, detail)
        raise OperatorRefused(f"the rollout row of {endpoint} kept changing while aborting; run the command again")

    def resume(self, endpoint: str, *, who: str, reason: str = "") -> OperatorOutcome:
        """Re-send the message of the current step (as the reconciler does); a duplicate is stale and harmless.

        Raises OperatorRefused if the endpoint has no active rollout.
        """
        ticks = self._need(self._ticks, "the rollout queue")
        record = self._active_rollout(endpoint)
        ticks.send(RolloutTick(record.endpoint, record.rollout_id, record.seq, record.event_id), 0)
        detail = f"step {record.seq} ({record.state}) of {record.candidate} on {endpoint} re-sent"
        why = f"resumed by {who}" + (f": {reason}" if reason else "")
        self._audit.record(AuditRecord(f"rollout.{OperatorAction.RESUMED.value}",
                                       f"resume {record.state} (step {record.seq})", why, record.event_id,
                                       {**_assets(record), "operator": who}, at=self._clock()))
        return OperatorOutcome(OperatorAction.RESUMED, endpoint, detail)

    def _active_rollout(self, endpoint: str) -> RolloutRecord:
        """The endpoint's rollout row if it is in flight; raises OperatorRefused otherwise."""
        record = self._ledger.get_rollout(endpoint)
        if record is None:
            raise OperatorRefused(f"no rollout on endpoint {endpoint!r}; `status` lists the active ones")
        if record.state not in set(Phase):
            raise OperatorRefused(f"the rollout on {endpoint} is in a state this code does not know "
                                  f"({record.state!r}); upgrade the CLI")
        if not record.active:
            raise OperatorRefused(f"the rollout of {record.candidate} on {endpoint} is over ({record.state}); "
                                  "nothing to do")
        return record

    # -- retraining ---------------------------------------------------------------------------------
    def retrain(self, dataset: str, version: str | None, *, who: str, reason: str = "") -> RetrainOutcome:
        """Retrain `dataset` on `version` (its latest when None) through the retraining decision.

        The version is read from the registry and handed to the Retrainer as its registration event, so
        an active run coalesces it and a version already run (or running) is not run again (the job name
        is derived from dataset and version). The request has its own id (`operator-…`): the audit
        records of this request, and the job's trigger tag, carry it.
        Raises OperatorRefused for a dataset not in the policy or a version the registry does not have.
        """
        retrainer = self._need(self._retrainer, "the retrainer")
        registry = self._need(self._registry, "the data registry")
        if dataset not in {d.name for d in self._policy.datasets}:
            known = ", ".join(sorted(d.name for d in self._policy.datasets)) or "none"
            raise OperatorRefused(f"no dataset {dataset!r} in the policy (datasets: {known})")
        info = registry.get_data_version(dataset, version)
        if info is None:
            what = f"version {version}" if version else "version"
            raise OperatorRefused(f"the registry has no {what} of data asset {dataset!r}")
        event = DataVersionRegistered(dataset=dataset, asset_name=info.name, version=info.version, uri=info.uri,
                                      asset_type=info.asset_type, sha256=info.tags.get(Tag.SHA256.value, ""),
                                      file_count=_file_count(info.tags))
        request = f"operator-{uuid.uuid4().hex[:12]}"
        why = f"requested by {who}" + (f": {reason}" if reason else "")
        self._audit.record(AuditRecord(f"retrain.{OperatorAction.REQUESTED.value}", "retrain", why, request,
                                       {"data": f"{info.name}:{info.version}", "operator": who}, at=self._clock()))
        return retrainer.on_data_version_registered(event, request)

    @staticmethod
    def _need(port: T | None, what: str) -> T:
        """The port, if this Operator was built with it; raises RuntimeError (a wiring bug) otherwise."""
        if port is None:
            raise RuntimeError(f"this Operator was built without {what}")
        return port


def _file_count(tags: dict[str, str]) -> int:
    try:
        return int(tags.get(Tag.FILES.value, "1"))
    except ValueError:
        return 1


def _assets(record: RolloutRecord) -> dict[str, str]:
    return {"model": record.candidate, "endpoint": record.endpoint, "deployment": record.deployment,
            "champion": record.champion_model}


def audit_json(record: AuditRecord) -> dict[str, Any]:
    """An audit record as `audit --json` and `status --json` print it."""
    return {"at": record.at.isoformat(), "kind": record.kind, "decision": record.decision, "reason": record.reason,
            "event": record.event_id, "assets": dict(record.assets)}


def _retrain_json(state: RetrainState) -> dict[str, Any]:
    return _jsonable({
        "dataset": state.dataset, "active_job": state.active_job, "active_version": state.active_version,
        "active_status": state.active_status.value if state.active_status else None,
        "pending_version": state.pending_version, "lease_owner": state.lease_owner, "lease_until": state.lease_until,
        "recheck_at": state.recheck_at, "last_submitted_at": state.last_submitted_at,
    })


def _jsonable(values: dict[str, Any]) -> dict[str, Any]:
    return {k: v.isoformat() if isinstance(v, datetime) else v for k, v in values.items()}
