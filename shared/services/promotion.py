"""Model registered → champion/challenger gate → blue/green rollout: the service behind three functions.

`on_model_version` (Event Grid ModelRegistered and the registry webhook) gathers the candidate and
the champion from the registry and the endpoint, asks the pure gate (`shared.domain.gate.plan_promotion`),
and starts a rollout or records why not. `on_tick` (the `evergreen-rollout` queue) advances a
rollout by one step of the state machine in `shared.domain.rollout`.

Concurrency. The endpoint's rollout row in the ledger is its lock: a rollout starts only through a
conditional write that finds no active rollout, and a step is taken only by the instance whose
conditional write moves `seq` forward. Duplicate or late events and queue messages therefore find
either a finished decision or a stale `seq`, and do nothing.

Supersede rule. A candidate that arrives while a rollout is running is *queued* on the row (only
the newest version is kept; an older one is dropped, with a reason). The running rollout is never
interrupted: it finishes (or rolls back), and then the queued candidate goes through the gate
against whatever serves at that moment, so it must beat the model that just won, not the old one.

Ports only: `Endpoints`, the `Ledger` (over a `TableStore`), a `DelayedQueue[RolloutTick]`, an
`AuditLog` and a `Clock`. A failed Azure ML call arrives as `OperationFailedError`: a rollout step
retries it with backoff and rolls back after `MAX_STEP_ATTEMPTS`; anywhere else it propagates
(transient: the platform retries the event or message).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from shared.config.policy import ModelPolicy, Policy
from shared.config.promotion import PromotionPolicy
from shared.domain.audit import AuditRecord
from shared.domain.events import ModelVersionEvent
from shared.domain.gate import ModelSnapshot, Skip, plan_promotion
from shared.domain.keys import digest
from shared.domain.records import RolloutRecord, utcnow
from shared.domain.rollout import (
    CreateDeployment,
    CreateEndpoint,
    DeleteDeployment,
    RolloutAction,
    RolloutTick,
    SetTraffic,
    SmokeTest,
    Transition,
    decide,
    deployment_name,
)
from shared.domain.vocabulary import (
    LINEAGE_TAGS,
    ROLLBACK_PHASES,
    Phase,
    PromotionAction,
    Tag,
    TickAction,
    version_order,
)
from shared.domain.workspace import DeploymentSpec
from shared.errors import ClaimInProgressError, InvalidEventError, OperationFailedError, SmokeTestFailedError
from shared.ports import AuditLog, Clock, DelayedQueue, Endpoints
from shared.services.ledger import Ledger

log = logging.getLogger(__name__)

ROLLOUT_QUEUE = "evergreen-rollout"
MAX_STEP_ATTEMPTS = 3  # transient errors of one step before the rollout gives up and rolls back
MAX_BACKOFF_SECONDS = 300.0
_START_ATTEMPTS = 5


@dataclass(frozen=True)
class PromotionOutcome:
    action: PromotionAction
    detail: str


@dataclass(frozen=True)
class TickOutcome:
    action: TickAction
    detail: str


def promotion_key(endpoint: str, model_name: str, version: str) -> str:
    """Names one promotion (candidate on endpoint): rollout id and the ledger's memory of its outcome."""
    return digest("promote", endpoint, model_name, version, length=16)


class Promoter:
    """Gates registered model versions and drives their rollouts, through ports only."""

    def __init__(self, *, policy: Policy, endpoints: Endpoints, ledger: Ledger, ticks: DelayedQueue[RolloutTick],
                 audit: AuditLog, app_root: Path, clock: Clock = utcnow) -> None:
        self._policy = policy
        self._endpoints = endpoints
        self._ledger = ledger
        self._ticks = ticks
        self._audit = audit
        self._app_root = app_root
        self._clock = clock

    # -- a model version was registered ------------------------------------------------------------
    def on_model_version(self, event: ModelVersionEvent) -> PromotionOutcome:
        """Gate the version against the champion; start a rollout, queue it, or record why not.

        Raises ClaimInProgressError if the endpoint's rollout row keeps changing under us, and
        OperationFailedError if Azure ML cannot be read (both transient: the platform retries).
        """
        model_policy = self._policy.model(event.model_name)
        if model_policy is None:
            return self._skip(event.event_id, event.model, "", f"no promotion policy for model {event.model_name!r} "
                              "(models: in evergreen.yaml)")
        return self._consider(event.model_name, event.version, event.event_id, model_policy)

    def _consider(self, name: str, version: str, event_id: str, model_policy: ModelPolicy) -> PromotionOutcome:
        promotion = model_policy.promotion
        endpoint = promotion.endpoint
        model = f"{name}:{version}"
        current = self._ledger.get_rollout(endpoint)
        if current is not None and current.active:
            return self._queue(current, name, version, event_id)
        earlier = self._ledger.promotion_outcome(promotion_key(endpoint, name, version))
        if earlier is not None and earlier[0] == Phase.ROLLED_BACK.value:
            return self._skip(event_id, model, endpoint, f"{model} was rolled out on {endpoint} before and rolled "
                              f"back ({earlier[1]}); register a new version to try again",
                              action=PromotionAction.DUPLICATE)
        info = self._endpoints.get_model(name, version)
        if info is None:
            return self._skip(event_id, model, endpoint, f"{model} is not in the workspace's model registry")
        candidate = ModelSnapshot.from_registry(info.name, info.version, info.tags, info.properties)
        view = self._endpoints.endpoint(endpoint)
        serving = view.serving() if view is not None else None
        champion = self._champion(serving.model) if serving is not None and serving.model is not None else None
        decision = plan_promotion(candidate, champion, promotion.rule())
        if isinstance(decision, Skip):
            return self._skip(event_id, model, endpoint, decision.reason, code=decision.code.value)
        return self._start(name, version, event_id, decision.reason, promotion, serving.name if serving else "",
                           champion.model if champion else "")

    def _champion(self, model: tuple[str, str]) -> ModelSnapshot:
        """The serving model as the gate sees it (just its name and version if the registry lost it)."""
        info = self._endpoints.get_model(*model)
        if info is None:
            return ModelSnapshot(name=model[0], version=model[1])
        return ModelSnapshot.from_registry(info.name, info.version, info.tags, info.properties)

    def _skip(self, event_id: str, model: str, endpoint: str, reason: str, *, code: str = "",
              action: PromotionAction = PromotionAction.SKIPPED) -> PromotionOutcome:
        self._audit.record(AuditRecord(f"promotion.{PromotionAction.SKIPPED.value}",
                                       f"skip{':' + code if code else ''}", reason, event_id,
                                       {"model": model, "endpoint": endpoint}))
        return PromotionOutcome(action, reason)

    def _queue(self, current: RolloutRecord, name: str, version: str, event_id: str) -> PromotionOutcome:
        """Queue the candidate behind the running rollout (only the newest version is kept)."""
        model = f"{name}:{version}"
        for _ in range(_START_ATTEMPTS):
            if (current.candidate_name, current.candidate_version) == (name, version):
                return PromotionOutcome(PromotionAction.DUPLICATE, f"{model} is already rolling out on "
                                        f"{current.endpoint} ({current.state})")
            if (current.queued_name, current.queued_version) == (name, version):
                return PromotionOutcome(PromotionAction.DUPLICATE, f"{model} is already queued behind "
                                        f"{current.candidate}")
            if current.queued_name == name and version_order(current.queued_version) > version_order(version):
                reason = (f"{model} is older than the queued {name}:{current.queued_version}; the newest queued "
                          "candidate wins")
                return self._skip(event_id, model, current.endpoint, reason, code="superseded")
            replaced = f"{current.queued_name}:{current.queued_version}" if current.queued_name else ""
            updated = self._ledger.update_rollout(dataclasses.replace(
                current, queued_name=name, queued_version=version, queued_event=event_id))
            if updated is not None:
                reason = (f"rollout of {current.candidate} on {current.endpoint} is in progress ({current.state}); "
                          f"{model} goes through the gate when it ends"
                          + (f" (supersedes the queued {replaced})" if replaced else ""))
                self._audit.record(AuditRecord(f"promotion.{PromotionAction.QUEUED.value}", "queue", reason,
                                               event_id, {"model": model, "endpoint": current.endpoint}))
                return PromotionOutcome(PromotionAction.QUEUED, reason)
            fresh = self._ledger.get_rollout(current.endpoint)
            if fresh is None or not fresh.active:
                policy = self._policy.model(name)
                assert policy is not None
                return self._consider(name, version, event_id, policy)
            current = fresh
        raise ClaimInProgressError(f"rollout row of {current.endpoint} kept changing; retry the event")

    def _start(self, name: str, version: str, event_id: str, reason: str, promotion: PromotionPolicy,
               champion_deployment: str, champion_model: str) -> PromotionOutcome:
        """Take the endpoint's rollout row (insert, or a conditional write over a finished rollout) and go."""
        endpoint = promotion.endpoint
        key = promotion_key(endpoint, name, version)
        now = self._clock()
        for _ in range(_START_ATTEMPTS):
            current = self._ledger.get_rollout(endpoint)
            if current is not None and current.active:
                return self._queue(current, name, version, event_id)
            fresh = RolloutRecord(
                endpoint=endpoint, rollout_id=key, seq=(current.seq + 1) if current else 1,
                state=Phase.ENDPOINT.value, candidate_name=name, candidate_version=version,
                deployment=deployment_name(name, version), champion_deployment=champion_deployment,
                champion_model=champion_model, step=-1, due_at=None, started_at=now, reason=reason,
                queued_name="", queued_version="", queued_event="", event_id=event_id, phase_since=now, attempts=0,
                failure="",
            )
            if current is None:
                started = self._ledger.create_rollout(fresh)
            else:
                # A candidate queued behind the finished rollout stays queued, unless it is this one.
                keep = (current.queued_name, current.queued_version) != (name, version)
                started = self._ledger.update_rollout(dataclasses.replace(
                    fresh, row=current.row, queued_name=current.queued_name if keep else "",
                    queued_version=current.queued_version if keep else "",
                    queued_event=current.queued_event if keep else ""))
            if started is None:
                continue  # another instance wrote the row first; look again
            self._ledger.record_promotion(key, endpoint, f"{name}:{version}", PromotionAction.STARTED, reason)
            self._audit.record(AuditRecord(f"promotion.{PromotionAction.STARTED.value}", "promote", reason, event_id, {
                "model": f"{name}:{version}", "endpoint": endpoint, "deployment": started.deployment,
                "champion": champion_model}))
            self._schedule(started, 0)
            log.info("rollout event=%s rollout=%s started: %s on %s (%s)", event_id, key, started.candidate,
                     endpoint, reason)
            return PromotionOutcome(PromotionAction.STARTED, reason)
        raise ClaimInProgressError(f"rollout row of {endpoint} kept changing; retry the event")

    # -- a rollout step is due -------------------------------------------------------------------------
    def on_tick(self, tick: RolloutTick, dequeue_count: int) -> TickOutcome:
        """Take the step `tick` names, if it is still the current one; at most one instance takes it.

        Raises InvalidEventError if no model in the policy promotes onto the endpoint any more, and
        OperationFailedError if Azure ML cannot be read (the platform retries the message).
        """
        record = self._ledger.get_rollout(tick.endpoint)
        if record is None or record.rollout_id != tick.rollout_id:
            return TickOutcome(TickAction.STALE, f"rollout {tick.rollout_id} is not {tick.endpoint}'s current rollout")
        if tick.seq != record.seq:
            return self._behind(record, tick, dequeue_count)
        if not record.active:
            return TickOutcome(TickAction.STALE, f"rollout is over ({record.state})")
        remaining = self._remaining(record)
        if remaining > 1:
            self._schedule(record, remaining)
            return TickOutcome(TickAction.WAITING, f"step {record.seq} is due in {remaining:.0f} s")
        return self._step(record, self._promotion_for(record))

    def _behind(self, record: RolloutRecord, tick: RolloutTick, dequeue_count: int) -> TickOutcome:
        """A tick for an older step: stale, unless it is the redelivery of the step just taken."""
        if dequeue_count > 1 and tick.seq == record.seq - 1:
            # This message's earlier run wrote the next state but may have died before what follows it:
            # sending the next tick, or (for the last step) handing over to the queued candidate.
            if record.active:
                self._schedule(record, self._remaining(record))
                return TickOutcome(TickAction.RESENT, f"step {record.seq} re-scheduled after a failed delivery")
            if record.queued_name:
                self._finished(record)
                return TickOutcome(TickAction.RESUMED, "handed over to the queued candidate after a failed delivery")
        return TickOutcome(TickAction.STALE, f"tick {tick.seq} is behind step {record.seq}")

    def _step(self, record: RolloutRecord, policy: PromotionPolicy) -> TickOutcome:
        now = self._clock()
        view = self._endpoints.endpoint(record.endpoint)
        transition = decide(record, view, policy, now)
        attempts = 0
        try:
            if transition.action is not None:
                self._execute(transition.action, record, policy)
        except SmokeTestFailedError as exc:
            transition = Transition(Phase.ROLLBACK, f"rolling back: {exc}", failure=str(exc))
        except OperationFailedError as exc:
            transition, attempts = self._after_error(record, transition, exc, policy)
        if transition.failure and record.phase is Phase.PROVISIONING:
            transition = dataclasses.replace(transition, failure=f"{transition.failure}{self._logs_tail(record)}")
        return self._commit(record, transition, attempts, now)

    def _after_error(self, record: RolloutRecord, transition: Transition, exc: OperationFailedError,
                     policy: PromotionPolicy) -> tuple[Transition, int]:
        """A failed action: try the step again with backoff; give up (roll back) after MAX_STEP_ATTEMPTS.

        A rollback itself never gives up: leaving traffic on a failed candidate is worse than retrying.
        """
        attempts = record.attempts + 1
        what = type(transition.action).__name__
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        phase = record.phase
        if phase in ROLLBACK_PHASES or attempts < MAX_STEP_ATTEMPTS:
            delay = min(MAX_BACKOFF_SECONDS, policy.poll_interval_seconds * 2 ** attempts)
            log.warning("rollout event=%s rollout=%s: %s failed (attempt %d): %s; retrying in %.0f s",
                        record.event_id, record.rollout_id, what, attempts, message, delay)
            return Transition(phase, f"{what} failed (attempt {attempts}): {message}; retrying",
                              delay_seconds=delay), attempts
        reason = f"{what} failed {attempts} times: {message}"
        return Transition(Phase.ROLLBACK, f"rolling back: {reason}", failure=reason), 0

    def _commit(self, record: RolloutRecord, transition: Transition, attempts: int, now: datetime) -> TickOutcome:
        """Write the next state with the ETag condition of `record`; the loser of a race does nothing more."""
        moved = transition.phase is not record.phase
        updated = self._ledger.update_rollout(dataclasses.replace(
            record, seq=record.seq + 1, state=transition.phase.value, reason=transition.reason,
            due_at=now + timedelta(seconds=transition.delay_seconds), attempts=attempts,
            phase_since=now if moved else record.phase_since,
            step=record.step if transition.step is None else transition.step,
            failure=transition.failure or record.failure))
        if updated is None:
            return TickOutcome(TickAction.LOST_RACE, f"step {record.seq} was taken by another instance")
        log.info("rollout event=%s rollout=%s step=%d %s -> %s: %s", record.event_id, record.rollout_id, record.seq,
                 record.state, updated.state, transition.reason)
        if moved:
            self._audit.record(AuditRecord(f"rollout.{updated.state}", updated.state, transition.reason,
                                           record.event_id, self._assets(updated)))
        if updated.active:
            self._schedule(updated, transition.delay_seconds)
            return TickOutcome(TickAction.ADVANCED, transition.reason)
        self._finished(updated)
        return TickOutcome(TickAction.FINISHED, f"{updated.state}: {updated.failure or transition.reason}")

    def _finished(self, record: RolloutRecord) -> None:
        """Remember the outcome, then put the queued candidate (if any) through the gate."""
        outcome = record.phase
        reason = record.failure if outcome is Phase.ROLLED_BACK else record.reason
        self._ledger.record_promotion(record.rollout_id, record.endpoint, record.candidate, outcome, reason)
        if not (record.queued_name and record.queued_version):
            return
        policy = self._policy.model(record.queued_name)
        if policy is not None:
            result = self._consider(record.queued_name, record.queued_version, record.queued_event or record.event_id,
                                    policy)
            log.info("rollout event=%s: queued candidate %s:%s -> %s: %s", record.queued_event, record.queued_name,
                     record.queued_version, result.action.value, result.detail)
        latest = self._ledger.get_rollout(record.endpoint)
        if latest is not None and not latest.active and latest.queued_name:
            self._ledger.update_rollout(dataclasses.replace(latest, queued_name="", queued_version="",
                                                            queued_event=""))

    # -- actions ----------------------------------------------------------------------------------
    def _execute(self, action: RolloutAction, record: RolloutRecord, policy: PromotionPolicy) -> None:
        """Perform one action; raises OperationFailedError (retried) or SmokeTestFailedError (rolls back)."""
        if isinstance(action, CreateEndpoint):
            self._endpoints.begin_create_endpoint(action.endpoint, {Tag.MANAGED.value: "true"})
        elif isinstance(action, CreateDeployment):
            self._endpoints.begin_create_deployment(self._deployment_spec(record, policy))
        elif isinstance(action, SmokeTest):
            self._smoke_test(action, policy)
        elif isinstance(action, SetTraffic):
            self._endpoints.begin_set_traffic(action.endpoint, action.traffic)
        elif isinstance(action, DeleteDeployment):
            self._endpoints.begin_delete_deployment(action.endpoint, action.deployment)

    def _deployment_spec(self, record: RolloutRecord, policy: PromotionPolicy) -> DeploymentSpec:
        info = self._endpoints.get_model(record.candidate_name, record.candidate_version)
        lineage = {k: v for k, v in (info.tags if info else {}).items() if k in LINEAGE_TAGS}
        spec = policy.deployment
        return DeploymentSpec(
            endpoint=record.endpoint, name=record.deployment, model_name=record.candidate_name,
            model_version=record.candidate_version, instance_type=spec.instance_type,
            instance_count=spec.instance_count, environment=spec.environment,
            code_path=str(self._app_root / spec.code) if spec.code else None, scoring_script=spec.scoring_script,
            tags={**lineage, Tag.MODEL.value: record.candidate, Tag.ROLLOUT.value: record.rollout_id,
                  Tag.EVENT.value: record.event_id},
        )

    def _smoke_test(self, action: SmokeTest, policy: PromotionPolicy) -> None:
        """Score the sample request on the candidate alone; raises SmokeTestFailedError on any failure."""
        smoke = policy.smoke_test
        pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
        try:
            reply = pool.submit(self._endpoints.score, action.endpoint, action.deployment, smoke.request).result(
                timeout=smoke.timeout_seconds)
        except concurrent.futures.TimeoutError as exc:
            raise SmokeTestFailedError(f"smoke test: {action.deployment} did not answer within "
                                       f"{smoke.timeout_seconds:.0f} s") from exc
        except (OperationFailedError, ValueError) as exc:
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise SmokeTestFailedError(f"smoke test: {action.deployment} failed the sample request: {first}") from exc
        finally:
            pool.shutdown(wait=False)
        missing = [k for k in smoke.expect_keys if not isinstance(reply, dict) or k not in reply]
        if missing:
            raise SmokeTestFailedError(f"smoke test: {action.deployment}'s reply lacks {', '.join(missing)}: "
                                       f"{str(reply)[:200]}")

    def _logs_tail(self, record: RolloutRecord) -> str:
        try:
            logs = self._endpoints.deployment_logs(record.endpoint, record.deployment, lines=5).strip()
        except OperationFailedError as exc:
            return f" (deployment logs unavailable: {type(exc.__cause__ or exc).__name__})"
        return f"; last log lines: {logs[-600:]}" if logs else ""

    # -- helpers ------------------------------------------------------------------------------------
    def _promotion_for(self, record: RolloutRecord) -> PromotionPolicy:
        for model in self._policy.models:
            if model.promotion.endpoint == record.endpoint:
                return model.promotion
        raise InvalidEventError(f"no model in the policy promotes onto endpoint {record.endpoint!r} any more; "
                                f"rollout {record.rollout_id} of {record.candidate} cannot continue")

    def _remaining(self, record: RolloutRecord) -> float:
        if record.due_at is None:
            return 0.0
        return max(0.0, (record.due_at - self._clock()).total_seconds())

    def _schedule(self, record: RolloutRecord, delay: float) -> None:
        self._ticks.send(RolloutTick(record.endpoint, record.rollout_id, record.seq, record.event_id), delay)

    @staticmethod
    def _assets(record: RolloutRecord) -> dict[str, str]:
        return {"model": record.candidate, "endpoint": record.endpoint, "deployment": record.deployment,
                "champion": record.champion_model}
