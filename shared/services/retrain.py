"""Data version → retraining pipeline run, executed through ports.

`shared.domain.retrain` decides; `Retrainer` carries the decisions out against the ledger and Azure
ML (`JobRunner`). The job name derives from (dataset, data version), so a redelivered event can
never start a second run; the per-dataset state row is written with ETag conditions, so two
instances cannot both start a run for one dataset.

Recovery: a submission is a lease, not a lock. The state row names the job as SUBMITTING (owner and
lease expiry) until Azure ML confirmed it; whoever finds the lease expired (a redelivery, a re-check
message, the reconciler) resumes it under the same job name, which never submits twice. A job Azure
ML refuses for good (`InvalidEventError`, e.g. `JobRejectedError`) is marked failed and the next
version runs. A version inside the minimum interval waits as the pending one and a re-check message
(`RetrainCheck`) starts one run on the newest when the window ends. An ETag conflict is re-read and
decided again in-process; `reconcile` re-drives what is stuck when a message or event was lost.

Errors: the adapters' own errors propagate (the platform redelivers); `ConcurrentUpdateError` if the
state row changed under us on every one of a few attempts.
"""

from __future__ import annotations

import dataclasses
import logging
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from shared.config.policy import Policy
from shared.domain.audit import AuditRecord
from shared.domain.events import DataVersionRegistered
from shared.domain.records import DEFAULT_LEASES, HOLDER_WAIT, Leases, RetrainState, utcnow
from shared.domain.retrain import (
    Coalesce,
    Defer,
    RetrainCheck,
    RetrainDecision,
    RunFinished,
    Skip,
    SubmitRetrain,
    Wait,
    pipeline_submission,
    plan_follow_up,
    plan_recheck,
    plan_reconcile,
    plan_retrain,
    run_key,
)
from shared.domain.telemetry import Attr
from shared.domain.vocabulary import RetrainAction, RunStatus, Tag
from shared.errors import ConcurrentUpdateError, InvalidEventError
from shared.ports import AuditLog, Clock, DelayedQueue, JobRunner, Sleeper
from shared.services.ledger import Ledger
from shared.telemetry import annotate, continued, traced_tags

log = logging.getLogger(__name__)

DECIDE_ATTEMPTS = 8  # decisions lost to ETag conflicts (or refused jobs) before the platform retries the event
HOLDER_POLL_SECONDS = 0.5  # how often a duplicate looks again at a live holder, for up to HOLDER_WAIT

Decide = Callable[[], tuple[RetrainDecision, RetrainState | None]]


@dataclass(frozen=True)
class RetrainOutcome:
    """What a data-version or run event did to retraining, for the audit log, logs and tests."""

    action: RetrainAction
    detail: str
    job_name: str | None = None
    data: str | None = None  # "<asset>:<version>" the outcome is about, when it is not the event's own


class Retrainer:
    """Executes retraining decisions; built once per process (composition root) from ports."""

    def __init__(self, *, policy: Policy, app_root: Path, ledger: Ledger, jobs: JobRunner, audit: AuditLog,
                 rechecks: DelayedQueue[RetrainCheck], clock: Clock = utcnow, sleep: Sleeper = time.sleep,
                 leases: Leases = DEFAULT_LEASES) -> None:
        self._policy = policy
        self._root = app_root
        self._ledger = ledger
        self._jobs = jobs
        self._audit = audit
        self._rechecks = rechecks
        self._clock = clock
        self._sleep = sleep
        self._instance = uuid.uuid4().hex[:8]  # names this process in lease owners
        self._leases = leases  # a submission's lease (EVERGREEN_LEASE_SECONDS): what a dead submitter costs

    # -- entry points ---------------------------------------------------------------------------------
    def on_data_version_registered(self, event: DataVersionRegistered, event_id: str,
                                   rerun: str = "") -> RetrainOutcome:
        """Start, coalesce, defer or skip (with the reason) the dataset's retraining run.

        `rerun` (a deterministic key, e.g. a champion's degradation or a code change: `shared.services.monitor`)
        runs the version once more under its own job name, through the same decision. Waits up to HOLDER_WAIT
        for another instance's live submission, then schedules a re-check for its lease's end. Raises
        ConcurrentUpdateError if the state kept changing under us.
        """
        def decide() -> tuple[RetrainDecision, RetrainState | None]:
            state = self._ledger.get_retrain_state(event.dataset)
            run_status = self._ledger.retrain_run_status(event.dataset, run_key(event.version, rerun))
            return plan_retrain(event, self._policy, state, run_status, self._clock(), rerun), state

        annotate({Attr.DATASET: event.dataset, Attr.DATA_VERSION: event.version})
        return self._settle(decide, event_id, f"{event.asset_name}:{event.version}", wait=True)

    def on_recheck(self, check: RetrainCheck, event_id: str) -> RetrainOutcome:
        """A scheduled re-check: run the version waiting for the minimum interval, or resume a submission
        whose lease ran out. Raises ConcurrentUpdateError if the state kept changing under us."""
        def decide() -> tuple[RetrainDecision, RetrainState | None]:
            state = self._ledger.get_retrain_state(check.dataset)
            return plan_recheck(state, self._policy, self._clock()), state

        return self._settle(decide, event_id, check.dataset, wait=False)

    def on_run_finished(self, finished: RunFinished, event_id: str) -> RetrainOutcome:
        """Record how the dataset's active run ended and start the coalesced follow-up, if any.

        Raises ConcurrentUpdateError if the state kept changing under us.
        """
        dataset = finished.dataset
        annotate({Attr.JOB: finished.run_id, Attr.JOB_STATUS: finished.status, Attr.DATASET: dataset or None})
        if not dataset:
            return RetrainOutcome(RetrainAction.SKIPPED, f"run {finished.run_id} is not an Evergreen retraining run")
        if not finished.ended:
            return RetrainOutcome(RetrainAction.SKIPPED, f"run {finished.run_id} is {finished.status}, not finished")
        state = self._ledger.get_retrain_state(dataset)
        if state is None or state.active_job != finished.run_id:
            if state is not None and state.submitting:  # its follow-up may be stuck: look at it like a re-check
                return self.on_recheck(RetrainCheck(dataset, f"{finished.run_id} ended"), event_id)
            return RetrainOutcome(RetrainAction.SKIPPED, f"run {finished.run_id} is not the active run of {dataset}")
        version = finished.tags.get(Tag.DATA_VERSION.value) or state.active_version or ""
        self._ledger.set_retrain_run_status(dataset, run_key(version, finished.tags.get(Tag.RERUN.value, "")),
                                            finished.run_status)
        verdict = RetrainAction.FINISHED if finished.succeeded else RetrainAction.FAILED
        ended = f"run {finished.run_id} ended {finished.status}"
        self._audit.record(AuditRecord(
            f"retrain.{verdict.value}", finished.status,
            ended if finished.succeeded else f"{ended}; the next data version can retrain",
            event_id, {"job": finished.run_id, "data": f"{dataset}:{version}"}, at=self._clock()))
        for _ in range(DECIDE_ATTEMPTS):
            follow = plan_follow_up(finished, state, self._policy)
            if isinstance(follow, Skip):
                if state is None or state.active_job != finished.run_id or self._ledger.clear_active(state):
                    return RetrainOutcome(verdict, f"{finished.run_id} {finished.status}; {follow.reason}",
                                          finished.run_id)
            else:
                outcome = self._submit(follow, state, event_id)
                if outcome is not None:
                    self._record(outcome, event_id, outcome.data or "")
                    return outcome
            log.info("retrain state of %s changed meanwhile; deciding again event=%s", dataset, event_id)
            state = self._ledger.get_retrain_state(dataset)
        raise ConcurrentUpdateError(f"the retraining state of {dataset} kept changing; retry")

    def reconcile(self, now: datetime) -> list[RetrainOutcome]:
        """Re-drive every dataset whose retraining is stuck; each re-drive is audited as `retrain.redriven`.

        Stuck are: a submission whose lease expired unconfirmed, an active job that does not exist or
        has finished (its run event was lost), a waiting version with no re-check in flight. Every
        dataset is tried; then the first error (if any) is raised, so the timer's execution fails visibly.
        """
        event_id = f"reconcile-{now.strftime('%Y%m%dT%H%M%S')}"
        outcomes: list[RetrainOutcome] = []
        errors: list[Exception] = []
        for state in self._ledger.retrain_states():
            try:
                with continued(state.traceparent):  # the re-driven work goes on in the row's own trace
                    outcome = self._reconcile_one(state, now, event_id)
            except Exception as exc:  # one dataset must not keep the others stuck; raised below
                log.exception("retrain reconcile of %s failed event=%s", state.dataset, event_id)
                errors.append(exc)
                continue
            if outcome is not None:
                outcomes.append(outcome)
        if errors:
            raise errors[0]
        return outcomes

    # -- deciding and executing -----------------------------------------------------------------------
    def _settle(self, decide: Decide, event_id: str, about: str, *, wait: bool) -> RetrainOutcome:
        """Decide and execute until an outcome sticks: an ETag conflict means "decide again", not "retry later".

        A refused job is recorded and decided again (the pending version may run now); a live holder
        is waited for briefly when `wait`, then re-checked at its lease's end.
        """
        waited = 0.0
        refused: RetrainOutcome | None = None
        for _ in range(DECIDE_ATTEMPTS):
            decision, state = decide()
            while isinstance(decision, Wait) and wait and waited < HOLDER_WAIT.total_seconds():
                self._sleep(HOLDER_POLL_SECONDS)
                waited += HOLDER_POLL_SECONDS
                decision, state = decide()
            outcome = self._execute(decision, state, event_id)
            if outcome is None:
                log.info("retrain state changed meanwhile; deciding again subject=%s event=%s", about, event_id)
                continue
            if refused is not None and outcome.action is RetrainAction.SKIPPED:
                return refused  # nothing else to run after the refused job
            self._record(outcome, event_id, outcome.data or about)
            if not (outcome.action is RetrainAction.FAILED and isinstance(decision, SubmitRetrain)):
                return outcome
            refused = outcome
        raise ConcurrentUpdateError(f"retraining of {about} kept changing under us; retry")

    def _execute(self, decision: RetrainDecision, state: RetrainState | None,
                 event_id: str) -> RetrainOutcome | None:
        """Carry out one decision; None if the state changed since it was read (decide again)."""
        if isinstance(decision, Skip):
            return RetrainOutcome(RetrainAction.SKIPPED, decision.reason)
        if isinstance(decision, Coalesce):
            assert state is not None
            if self._ledger.set_pending(state, decision.data_version, decision.asset_name,
                                        decision.asset_type) is None:
                return None
            return RetrainOutcome(RetrainAction.COALESCED, decision.reason, state.active_job)
        if isinstance(decision, Defer):
            return self._defer(decision, state, event_id)
        if isinstance(decision, Wait):
            self._schedule(RetrainCheck(decision.dataset, "a submission's lease ends"), decision.until, event_id)
            return RetrainOutcome(RetrainAction.DEFERRED,
                                  f"{decision.reason}; re-check at {decision.until.isoformat()}")
        return self._submit(decision, state, event_id)

    def _defer(self, decision: Defer, state: RetrainState | None, event_id: str) -> RetrainOutcome | None:
        """Remember the version as the pending one and make sure a re-check is due when the window ends.

        The message is sent before the row says so: a re-check that finds nothing to do is harmless,
        a row that promises a re-check never sent would strand the version.
        """
        assert state is not None
        now = self._clock()
        in_flight = state.recheck_at is not None and now < state.recheck_at <= decision.due
        if not in_flight:
            self._schedule(RetrainCheck(decision.dataset, "the minimum interval ends"), decision.due, event_id)
        if not (in_flight and state.pending_version == decision.data_version):
            updated = self._ledger.set_pending(state, decision.data_version, decision.asset_name,
                                               decision.asset_type, None if in_flight else decision.due)
            if updated is None:
                return None
        return RetrainOutcome(RetrainAction.COALESCED, f"{decision.reason}; re-check at {decision.due.isoformat()}",
                              data=f"{decision.asset_name}:{decision.data_version}")

    def _schedule(self, check: RetrainCheck, at: datetime, event_id: str) -> None:
        delay = max(0.0, (at - self._clock()).total_seconds()) + 1  # +1 s: never a moment before `at`
        self._rechecks.send(check, delay)
        log.info("retrain re-check of %s scheduled in %.0f s (%s) event=%s", check.dataset, delay, check.reason,
                 event_id)

    def _submit(self, decision: SubmitRetrain, state: RetrainState | None, event_id: str) -> RetrainOutcome | None:
        """Lease the dataset's active run, submit the job under its deterministic name, then confirm it.

        None if the state changed before the lease was ours. A refused job is marked failed (the
        outcome says why); any other failure gives the lease back and propagates.
        """
        owner = f"{self._instance}/{uuid.uuid4().hex[:6]}"
        trigger = decision.trigger_event or event_id
        claimed = self._ledger.claim_submission(
            state, dataset=decision.dataset, job=decision.job_name, version=decision.data_version,
            asset=decision.asset_name, asset_type=decision.asset_type, event=trigger, owner=owner,
            until=self._clock() + self._leases.submit, clear_pending=not decision.resume, rerun=decision.rerun)
        if claimed is None:
            return None
        try:
            self._ledger.set_retrain_run_status(decision.dataset, decision.run_key, RunStatus.SUBMITTING,
                                                decision.job_name)
            submission = pipeline_submission(decision, self._root, trigger)  # the job continues this trace:
            submission = dataclasses.replace(submission, tags=traced_tags(submission.tags))
            status = self._jobs.submit_pipeline(submission)
        except InvalidEventError as exc:
            return self._refused(decision, exc, event_id)
        except Exception:
            self._release(decision, owner, event_id)
            raise
        self._ledger.set_retrain_run_status(decision.dataset, decision.run_key, RunStatus.SUBMITTED,
                                            decision.job_name)
        self._ledger.confirm_submission(decision.dataset, decision.job_name)
        log.info("retrain submitted job=%s data=%s:%s status=%s event=%s", decision.job_name,
                 decision.asset_name, decision.data_version, status, event_id)
        return RetrainOutcome(RetrainAction.SUBMITTED, f"{decision.reason}: job {decision.job_name} ({status})",
                              decision.job_name, f"{decision.asset_name}:{decision.data_version}")

    def _refused(self, decision: SubmitRetrain, exc: InvalidEventError, event_id: str) -> RetrainOutcome:
        """Azure ML refused the job for good: the run failed, the dataset is free for the next version."""
        reason = f"Azure ML refused job {decision.job_name}: {exc}"
        self._ledger.set_retrain_run_status(decision.dataset, decision.run_key, RunStatus.FAILED,
                                            decision.job_name, reason)
        self._ledger.end_active(decision.dataset, decision.job_name)
        log.warning("retrain refused job=%s data=%s:%s reason=%s event=%s", decision.job_name,
                    decision.asset_name, decision.data_version, exc, event_id)
        return RetrainOutcome(RetrainAction.FAILED, f"{reason}; the next data version can retrain",
                              decision.job_name, f"{decision.asset_name}:{decision.data_version}")

    def _release(self, decision: SubmitRetrain, owner: str, event_id: str) -> None:
        """Give the lease back after a failed submit, so a redelivery resumes at once (best effort: it expires)."""
        try:
            self._ledger.release_submission(decision.dataset, decision.job_name, owner)
        except Exception:
            log.warning("retrain lease of %s not released; it expires by itself event=%s", decision.job_name,
                        event_id, exc_info=True)

    def _reconcile_one(self, state: RetrainState, now: datetime, event_id: str) -> RetrainOutcome | None:
        status = None
        if state.active_job and not state.submitting:
            status = self._jobs.job_status(state.active_job)
        decision = plan_reconcile(state, status, self._policy, now)
        if decision is None:
            return None
        if isinstance(decision, RunFinished):
            why = f"job {decision.run_id} ended {decision.status} but its run event never arrived"
            outcome = self.on_run_finished(decision, event_id)
        else:
            why = decision.reason
            executed = self._execute(decision, state, event_id)
            if executed is None:
                return None  # another instance moved it meanwhile
            self._record(executed, event_id, executed.data or state.dataset)
            outcome = executed
        redriven = RetrainOutcome(RetrainAction.REDRIVEN, f"{why}: {outcome.action.value}, {outcome.detail}",
                                  outcome.job_name, outcome.data)
        self._record(redriven, event_id, state.dataset)
        log.warning("retrain redriven dataset=%s why=%s outcome=%s event=%s", state.dataset, why,
                    outcome.action.value, event_id)
        return redriven

    def _record(self, outcome: RetrainOutcome, event_id: str, data: str) -> None:
        assets: Mapping[str, str] = {"data": data, **({"job": outcome.job_name} if outcome.job_name else {})}
        action = outcome.action.value
        annotate({Attr.DECISION: action, Attr.JOB: outcome.job_name})
        self._audit.record(AuditRecord(f"retrain.{action}", action, outcome.detail, event_id, assets,
                                       at=self._clock()))
