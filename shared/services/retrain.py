"""Data version → retraining pipeline run, executed through ports.

`shared.domain.retrain` decides; `Retrainer` carries the decisions out against the ledger and Azure
ML (`JobRunner`). The job name derives from (dataset, data version), so a redelivered event can
never start a second run; the per-dataset state row is written with ETag conditions, so two
instances cannot both start a run for one dataset.

Errors: `ClaimInProgressError` when another instance changed the dataset's state first, and the
adapters' own errors, propagate: the platform redelivers the event.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from shared.config.policy import Policy
from shared.domain.audit import AuditRecord
from shared.domain.events import DataVersionRegistered
from shared.domain.records import RetrainState, utcnow
from shared.domain.retrain import (
    Coalesce,
    RunFinished,
    Skip,
    SubmitRetrain,
    pipeline_submission,
    plan_follow_up,
    plan_retrain,
)
from shared.domain.vocabulary import RetrainAction, RunStatus, Tag
from shared.errors import ClaimInProgressError
from shared.ports import AuditLog, Clock, JobRunner
from shared.services.ledger import Ledger

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RetrainOutcome:
    """What a data-version or run event did to retraining, for the audit log, logs and tests."""

    action: RetrainAction
    detail: str
    job_name: str | None = None


class Retrainer:
    """Executes retraining decisions; built once per process (composition root) from ports."""

    def __init__(self, *, policy: Policy, app_root: Path, ledger: Ledger, jobs: JobRunner, audit: AuditLog,
                 clock: Clock = utcnow) -> None:
        self._policy = policy
        self._root = app_root
        self._ledger = ledger
        self._jobs = jobs
        self._audit = audit
        self._clock = clock

    def on_data_version_registered(self, event: DataVersionRegistered, event_id: str) -> RetrainOutcome:
        """Start, coalesce or skip (with the reason) the dataset's retraining run.

        Raises ClaimInProgressError if another instance changed the dataset's state meanwhile.
        """
        state = self._ledger.get_retrain_state(event.dataset)
        run_status = self._ledger.retrain_run_status(event.dataset, event.version)
        decision = plan_retrain(event, self._policy, state, run_status, self._clock())
        if isinstance(decision, Skip):
            outcome = RetrainOutcome(RetrainAction.SKIPPED, decision.reason)
        elif isinstance(decision, Coalesce):
            assert state is not None
            if not self._ledger.set_pending(state, event.version, event.asset_name, event.asset_type):
                raise ClaimInProgressError(f"retrain state of {event.dataset} changed; retry")
            outcome = RetrainOutcome(RetrainAction.COALESCED, decision.reason, state.active_job)
        else:
            outcome = self._submit(decision, state, event_id)
        self._record(outcome, event_id, {"data": f"{event.asset_name}:{event.version}"})
        return outcome

    def on_run_finished(self, finished: RunFinished, event_id: str) -> RetrainOutcome:
        """Record how the dataset's active run ended and start the coalesced follow-up, if any.

        Raises ClaimInProgressError if another instance changed the dataset's state meanwhile.
        """
        dataset = finished.dataset
        if not dataset:
            return RetrainOutcome(RetrainAction.SKIPPED, f"run {finished.run_id} is not an Evergreen retraining run")
        state = self._ledger.get_retrain_state(dataset)
        if state is None or state.active_job != finished.run_id:
            return RetrainOutcome(RetrainAction.SKIPPED, f"run {finished.run_id} is not the active run of {dataset}")
        version = finished.tags.get(Tag.DATA_VERSION.value, state.active_version or "")
        self._ledger.set_retrain_run_status(dataset, version, finished.run_status)
        verdict = RetrainAction.FINISHED if finished.succeeded else RetrainAction.FAILED
        ended = f"run {finished.run_id} ended {finished.status}"
        self._audit.record(AuditRecord(
            f"retrain.{verdict.value}", finished.status,
            ended if finished.succeeded else f"{ended}; the next data version can retrain",
            event_id, {"job": finished.run_id, "data": f"{dataset}:{version}"}, at=self._clock()))
        follow = plan_follow_up(finished, state, self._policy)
        if isinstance(follow, Skip):
            if not self._ledger.clear_active(state):
                raise ClaimInProgressError(f"retrain state of {dataset} changed; retry")
            return RetrainOutcome(verdict, f"{finished.run_id} {finished.status}; {follow.reason}", finished.run_id)
        outcome = self._submit(follow, state, event_id)
        self._record(outcome, event_id, {"data": f"{dataset}:{follow.data_version}"})
        return outcome

    def _record(self, outcome: RetrainOutcome, event_id: str, assets: Mapping[str, str]) -> None:
        job = {"job": outcome.job_name} if outcome.job_name else {}
        action = outcome.action.value
        self._audit.record(AuditRecord(f"retrain.{action}", action, outcome.detail, event_id, {**assets, **job},
                                       at=self._clock()))

    def _submit(self, decision: SubmitRetrain, state: RetrainState | None, event_id: str) -> RetrainOutcome:
        """Claim the dataset's active run, then submit the job under its deterministic name."""
        claimed = self._ledger.claim_retrain(state, decision.dataset, decision.job_name, decision.data_version,
                                             self._clock())
        if not claimed:
            raise ClaimInProgressError(f"another instance is starting a run for {decision.dataset}; retry")
        self._ledger.set_retrain_run_status(decision.dataset, decision.data_version, RunStatus.SUBMITTING,
                                            decision.job_name)
        status = self._jobs.submit_pipeline(pipeline_submission(decision, self._root, event_id))
        self._ledger.set_retrain_run_status(decision.dataset, decision.data_version, RunStatus.SUBMITTED,
                                            decision.job_name)
        log.info("retrain submitted job=%s data=%s:%s status=%s event=%s", decision.job_name,
                 decision.asset_name, decision.data_version, status, event_id)
        return RetrainOutcome(RetrainAction.SUBMITTED, f"{decision.reason}: job {decision.job_name} ({status})",
                              decision.job_name)
