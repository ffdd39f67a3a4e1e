"""Manual approval (`promotion.approval: manual`): hold a candidate the gate passed, and act on a verdict.

Three ways in, one record per (endpoint, candidate) in the ledger (`shared.domain.approval`):

- `check` — the Promoter's seam (`Promoter._on_promote`): the gate said promote. Automatic approval,
  or a recorded approval, lets the rollout start; otherwise the candidate is recorded `pending`
  (audit `promotion.awaiting_approval`, tag `evergreen.approval=pending`) and nothing is deployed.
  A rejected or expired candidate is refused, whenever it comes back (a redelivery, a queued hand-over).
  An approved candidate's record stays open until the Promoter has written its rollout row and calls
  `handed_over` (retention protects it through one or the other, never neither).
- `decide` — `python -m shared.cli approve|reject` and the studio tag: the verdict is written with an
  ETag condition (a final state never changes again), tagged on the model (who, when, why) and
  audited; an approval then re-enters the rollout path as a `CandidateRetry` on the promotion retry
  queue, so it goes through the endpoint's row like any candidate (a running rollout queues it, a
  second approval finds the rollout already started: one rollout).
- `reconcile` — the reconciler's timer: a pending candidate past `approval_expires_after` is expired
  (audited, tagged `evergreen.approval=expired`), and a verdict someone set as the tag
  `evergreen.approval` in the Azure ML studio is applied as if it came from the CLI.

Ports only: the ledger, `Endpoints` (model tags), the retry queue, the audit log, a clock.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from shared.config.policy import Policy
from shared.config.promotion import PromotionPolicy
from shared.domain.approval import (
    AlreadyDecided,
    Apply,
    ApprovalRecord,
    Await,
    Expire,
    Proceed,
    Refuse,
    Refused,
    approval_tags,
    expiry_reason,
    plan_hold,
    plan_verdict,
    studio_verdict,
)
from shared.domain.audit import AuditRecord
from shared.domain.records import utcnow
from shared.domain.rollout import CandidateRetry
from shared.domain.vocabulary import ApprovalState, PromotionAction, Tag, TickAction
from shared.errors import ConcurrentUpdateError, EvergreenError, OperationFailedError
from shared.ports import AuditLog, Clock, DelayedQueue, Endpoints
from shared.services.ledger import Ledger

log = logging.getLogger(__name__)

_WRITE_ATTEMPTS = 5  # re-reads of an approval row after lost conditional writes
HANDOVER_GRACE = timedelta(minutes=5)  # an approval's retry message not taken after this is taken for lost


@dataclass(frozen=True)
class ApprovalOutcome:
    """What a check, a verdict or an expiry did: the promotion outcome kind and why."""

    action: PromotionAction
    detail: str
    model: str = ""


class ApprovalRefused(EvergreenError):
    """A verdict that cannot apply (no such candidate waiting, another verdict is final); the message says why."""


class Approvals:
    """Holds candidates for manual approval and carries out verdicts, through ports only."""

    def __init__(self, *, policy: Policy, ledger: Ledger, endpoints: Endpoints, retries: DelayedQueue[CandidateRetry],
                 audit: AuditLog, clock: Clock = utcnow) -> None:
        self._policy = policy
        self._ledger = ledger
        self._endpoints = endpoints
        self._retries = retries
        self._audit = audit
        self._clock = clock

    # -- the gate said promote ---------------------------------------------------------------------------
    def check(self, name: str, version: str, endpoint: str, event_id: str, gate_reason: str) -> ApprovalOutcome | None:
        """None: start the rollout. Otherwise the candidate waits (or is refused) and the outcome says why.

        Raises OperationFailedError if the model's tags cannot be written (transient: the event is retried;
        the pending record is already there, so the retry only re-tags it).
        """
        promotion = self._promotion(name)
        manual = promotion is not None and promotion.manual_approval
        if not manual:
            return None
        assert promotion is not None
        for _ in range(_WRITE_ATTEMPTS):
            now = self._clock()
            record = self._ledger.get_approval(endpoint, name, version)
            decision = plan_hold(record, manual=manual, now=now, expires_after=promotion.approval_expiry)
            if isinstance(decision, Proceed):
                # approved: the rollout starts now (or races and is decided again). Its approval stays open
                # (and keeps it from retention) until the rollout row exists: `handed_over` closes it.
                log.info("approval event=%s model=%s:%s on %s: %s", event_id, name, version, endpoint, decision.reason)
                return None
            if isinstance(decision, Refuse):
                return self._refuse(decision.action, decision.reason, event_id, f"{name}:{version}", endpoint)
            if isinstance(decision, Expire):
                assert record is not None
                expired = self._expire(record, decision.reason)
                if expired is not None:
                    return expired
                continue
            outcome = self._await(decision, name, version, endpoint, event_id, gate_reason, promotion)
            if outcome is not None:
                return outcome
        raise ConcurrentUpdateError(f"the approval of {name}:{version} on {endpoint} kept changing; retry")

    def handed_over(self, name: str, version: str, endpoint: str) -> None:
        """The Promoter wrote the candidate's rollout row: close its approval (if it had one). Closed only now,
        so retention protects it without a gap (the rollout row protects it from here on); a crash before
        this leaves it open, and `reconcile` closes it on finding the rollout row."""
        promotion = self._promotion(name)
        if promotion is None or not promotion.manual_approval:
            return
        record = self._ledger.get_approval(endpoint, name, version)
        if record is not None:
            self._ledger.close_approval(record)

    def _await(self, decision: Await, name: str, version: str, endpoint: str, event_id: str, gate_reason: str,
               promotion: PromotionPolicy) -> ApprovalOutcome | None:
        """Record the candidate as pending (once), tag and audit it; None if another instance wrote it first."""
        record = self._ledger.get_approval(endpoint, name, version)
        if decision.new:
            record = self._ledger.create_approval(ApprovalRecord(
                endpoint=endpoint, model_name=name, version=version, state=ApprovalState.PENDING,
                requested_at=self._clock(), event_id=event_id, gate_reason=gate_reason))
        if record is None:
            return None
        # Re-done on every look while pending, from the row alone (the audit record is rewritten, not doubled):
        # a crash between the row and the tag or the audit record heals itself on the redelivery. A verdict
        # someone already set in the studio is left for the reconciler to apply, never overwritten by `pending`.
        info = self._endpoints.get_model(name, version)
        if info is None or studio_verdict(info.tags) is None:
            self._tag(record)
        until = record.expires_at(promotion.approval_expiry).isoformat()
        reason = (f"{record.gate_reason}; approval: manual, waiting for approve or reject (python -m shared.cli "
                  f"approve|reject {record.model}, or the tag {Tag.APPROVAL.value}) until {until}")
        self._audit.record(AuditRecord(f"promotion.{PromotionAction.AWAITING_APPROVAL.value}", "await approval",
                                       reason, record.event_id, {"model": record.model, "endpoint": endpoint},
                                       at=record.requested_at))
        log.info("approval event=%s model=%s on %s: %s", event_id, record.model, endpoint, decision.reason)
        return ApprovalOutcome(PromotionAction.AWAITING_APPROVAL, reason if decision.new else decision.reason,
                               record.model)

    # -- a person's verdict ------------------------------------------------------------------------------
    def decide(self, name: str, version: str, verdict: ApprovalState, *, by: str, reason: str,
               event_id: str) -> ApprovalOutcome:
        """Approve or reject `name:version` on its model's endpoint; idempotent (the same verdict again is a no-op,
        and an approval is re-sent into the rollout path, which starts it at most once).

        Raises ApprovalRefused when the verdict cannot apply (not waiting, another verdict is final, expired),
        ConcurrentUpdateError if the row kept changing, OperationFailedError if the tags cannot be written.
        """
        promotion = self._promotion(name)
        if promotion is None:
            raise ApprovalRefused(f"no promotion policy for model {name!r} (models: in evergreen.yaml)")
        endpoint = promotion.endpoint
        for _ in range(_WRITE_ATTEMPTS):
            record = self._ledger.get_approval(endpoint, name, version)
            decision = plan_verdict(record, verdict, now=self._clock(), expires_after=promotion.approval_expiry,
                                    model=f"{name}:{version}")
            if isinstance(decision, Refused):
                raise ApprovalRefused(decision.reason)
            assert record is not None
            if isinstance(decision, Expire):
                self._expire(record, decision.reason)
                raise ApprovalRefused(f"too late: {decision.reason}; it expired and will not be deployed")
            if isinstance(decision, AlreadyDecided):
                self._tag(record)
                if decision.state is ApprovalState.APPROVED:
                    self._continue(record)
                return ApprovalOutcome(PromotionAction.DUPLICATE, decision.reason, record.model)
            outcome = self._apply(record, decision, by=by, reason=reason, event_id=event_id)
            if outcome is not None:
                return outcome
        raise ConcurrentUpdateError(f"the approval of {name}:{version} kept changing; retry")

    def _apply(self, record: ApprovalRecord, decision: Apply, *, by: str, reason: str,
               event_id: str) -> ApprovalOutcome | None:
        """Write the verdict (ETag-conditional), tag, audit, and send an approval on; None on a lost race."""
        now = self._clock()
        decided = self._ledger.decide_approval(dataclasses.replace(
            record, state=decision.state, decided_at=now, decided_by=by or "unknown", reason=reason))
        if decided is None:
            return None
        self._tag(decided)
        action = PromotionAction.APPROVED if decided.state is ApprovalState.APPROVED else PromotionAction.REJECTED
        why = f"{decided.model} {decided.state.value} by {decided.decided_by}" + (f": {reason}" if reason else "")
        self._audit.record(AuditRecord(f"promotion.{action.value}", decided.state.value, why, record.event_id,
                                       {"model": decided.model, "endpoint": decided.endpoint,
                                        "operator": decided.decided_by, "request": event_id}, at=now))
        log.info("approval event=%s request=%s: %s", record.event_id, event_id, why)
        if decided.state is ApprovalState.APPROVED:
            self._continue(decided)
        return ApprovalOutcome(action, why, decided.model)

    def _continue(self, record: ApprovalRecord) -> None:
        """Into the rollout path, as a candidate that raced: the Promoter decides it again through the endpoint's
        row (start, or queue behind a running rollout); its seam then finds the approval and proceeds."""
        self._retries.send(CandidateRetry(record.model_name, record.version, record.event_id), 0)

    # -- expiry and studio verdicts (the reconciler's timer) ---------------------------------------------------
    def reconcile(self, now: datetime) -> list[ApprovalOutcome]:
        """Expire overdue candidates and apply verdicts set as the `evergreen.approval` tag in the studio.

        Every pending candidate is looked at; then the first error (if any) is raised, so the timer fails visibly.
        """
        outcomes: list[ApprovalOutcome] = []
        errors: list[Exception] = []
        for record in self._ledger.open_approvals():
            try:
                outcome = self._reconcile_one(record, now)
            except (ApprovalRefused, ConcurrentUpdateError) as exc:
                log.info("approval event=%s model=%s: studio verdict not applied: %s", record.event_id, record.model,
                         exc)
                continue
            except Exception as exc:  # one candidate must not stop the others; raised below
                log.exception("approval event=%s model=%s: reconcile failed", record.event_id, record.model)
                errors.append(exc)
                continue
            if outcome is not None:
                outcomes.append(outcome)
        if errors:
            raise errors[0]
        return outcomes

    def _reconcile_one(self, record: ApprovalRecord, now: datetime) -> ApprovalOutcome | None:
        promotion = self._promotion(record.model_name)
        if record.state is ApprovalState.APPROVED:
            return self._hand_over_again(record, promotion, now)
        if promotion is not None and now >= record.expires_at(promotion.approval_expiry):
            return self._expire(record, expiry_reason(record, promotion.approval_expiry))
        info = self._endpoints.get_model(record.model_name, record.version)
        verdict = studio_verdict(info.tags) if info is not None else None
        if verdict is None:
            return None
        by = (info.tags.get(Tag.APPROVED_BY.value) if info is not None else "") or "the Azure ML studio"
        return self.decide(record.model_name, record.version, verdict, by=by,
                           reason="tag evergreen.approval set in the Azure ML studio",
                           event_id=f"studio-{record.event_id}")

    def _hand_over_again(self, record: ApprovalRecord, promotion: PromotionPolicy | None,
                         now: datetime) -> ApprovalOutcome | None:
        """An approved candidate whose rollout has not started: its hand-over (the retry message) may be lost.

        Nothing to do if the endpoint's row carries it (its rollout, or queued behind another); re-sent
        otherwise, for `approval_expires_after` after the approval (then the gate has had its chance: dropped).
        """
        rollout = self._ledger.get_rollout(record.endpoint)
        if rollout is not None and rollout.candidate == record.model:
            self._ledger.close_approval(record)
            return None
        if rollout is not None and (rollout.queued_name, rollout.queued_version) == (record.model_name,
                                                                                     record.version):
            return None
        decided = record.decided_at or record.requested_at
        if now < decided + HANDOVER_GRACE:
            return None  # its message is (most likely) still on the queue
        if promotion is None or now >= decided + promotion.approval_expiry:
            reason = f"{record.model} was approved, but its rollout never started; given up"
            log.warning("approval event=%s model=%s: %s", record.event_id, record.model, reason)
            self._redriven(record, "drop approved candidate", reason, now)
            self._ledger.close_approval(record)
            return None
        reason = f"{record.model} was approved but its rollout had not started; handed over again"
        self._redriven(record, "hand over again", reason, now)
        self._continue(record)
        return ApprovalOutcome(PromotionAction.APPROVED, reason, record.model)

    def _redriven(self, record: ApprovalRecord, decision: str, reason: str, now: datetime) -> None:
        """Audit a re-drive before doing it (`promotion.redriven`, as the Promoter's): a retry rewrites the row."""
        self._audit.record(AuditRecord(f"promotion.{TickAction.REDRIVEN.value}", decision, reason, record.event_id,
                                       {"model": record.model, "endpoint": record.endpoint}, at=now))

    def _expire(self, record: ApprovalRecord, reason: str) -> ApprovalOutcome | None:
        """Mark a pending candidate expired (never deployed later), tag and audit it; None on a lost race."""
        now = self._clock()
        expired = self._ledger.decide_approval(dataclasses.replace(
            record, state=ApprovalState.EXPIRED, decided_at=now, decided_by="evergreen", reason=reason))
        if expired is None:
            return None
        self._tag(expired)
        self._audit.record(AuditRecord(f"promotion.{PromotionAction.EXPIRED.value}", "expire", reason,
                                       record.event_id, {"model": record.model, "endpoint": record.endpoint}, at=now))
        log.warning("approval event=%s model=%s on %s expired: %s", record.event_id, record.model, record.endpoint,
                    reason)
        return ApprovalOutcome(PromotionAction.EXPIRED, reason, record.model)

    # -- helpers ------------------------------------------------------------------------------------------
    def _refuse(self, action: PromotionAction, reason: str, event_id: str, model: str,
                endpoint: str) -> ApprovalOutcome:
        self._audit.record(AuditRecord(f"promotion.{PromotionAction.SKIPPED.value}", f"skip:{action.value}", reason,
                                       event_id, {"model": model, "endpoint": endpoint}, at=self._clock()))
        return ApprovalOutcome(action, reason, model)

    def _tag(self, record: ApprovalRecord) -> None:
        """Show the approval on the model in the studio. Raises OperationFailedError (transient) if it cannot."""
        try:
            self._endpoints.set_model_tags(record.model_name, record.version, approval_tags(record))
        except OperationFailedError:
            log.warning("approval event=%s model=%s: tags not written (retried by the next look)", record.event_id,
                        record.model)
            raise

    def _promotion(self, name: str) -> PromotionPolicy | None:
        model = self._policy.model(name)
        return model.promotion if model is not None else None
