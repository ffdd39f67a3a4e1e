"""The blue/green rollout as a state machine: pure decisions, one step at a time.

Provisioning a managed online deployment takes 5-15 minutes in Azure, longer than a function
should block, and a host may restart at any moment. So a rollout is a row in the ledger (one per
endpoint: `RolloutRecord`) plus a queue message that says "look again at step `seq` in N seconds".
Each look reads the endpoint, calls `decide` (pure: record + what the endpoint looks like now →
`Transition`), executes at most one action, writes the next state with an ETag-conditional update,
and schedules the next look. Every action is idempotent (PUT of a named deployment, PUT of the
whole traffic map, delete), so a step that runs twice — a redelivered message, an instance that
lost the write race — does no harm.

    endpoint → deploy → provisioning → smoke → shift ⇄ shifting → grace → succeeded
        any failure ↘ rollback → cleanup → rolled_back

A rollout is over only when the endpoint shows the outcome: `grace` and `cleanup` wait until the
deployment they delete is gone, so retention and the next rollout never see a half-deleted one.

Failure at any step before `grace` sends the rollout to `rollback`: traffic goes back to the
champion (or to nobody, for a first model), then the candidate's deployment is deleted.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from shared.config.promotion import PromotionPolicy
from shared.domain.keys import digest
from shared.domain.records import RolloutRecord
from shared.domain.vocabulary import FAILED_STATES, IN_PROGRESS_STATES, Phase
from shared.domain.workspace import DeploymentView, EndpointView
from shared.errors import InvalidEventError

# The queues of the rollout's steps (`RolloutTick`) and of re-decided candidates (`CandidateRetry`). Named here,
# beside their messages, so the triggers bind them without importing the promotion service (cold start).
ROLLOUT_QUEUE = "evergreen-rollout"
PROMOTION_RETRY_QUEUE = "evergreen-promotion-retry"


# -- actions (values; the executor performs them) ---------------------------------------------------
@dataclass(frozen=True)
class CreateEndpoint:
    endpoint: str


@dataclass(frozen=True)
class CreateDeployment:
    endpoint: str
    deployment: str


@dataclass(frozen=True)
class SmokeTest:
    endpoint: str
    deployment: str


@dataclass(frozen=True)
class SetTraffic:
    endpoint: str
    traffic: dict[str, int]


@dataclass(frozen=True)
class DeleteDeployment:
    endpoint: str
    deployment: str


RolloutAction = CreateEndpoint | CreateDeployment | SmokeTest | SetTraffic | DeleteDeployment


@dataclass(frozen=True)
class Transition:
    """What to do now, and where the rollout goes if it succeeds (a failed action rolls back)."""

    phase: Phase
    reason: str
    action: RolloutAction | None = None
    delay_seconds: float = 0.0
    step: int | None = None  # the canary step index after this transition (None: unchanged)
    failure: str | None = None  # set when this transition starts a rollback


def deployment_name(model_name: str, version: str) -> str:
    """A deterministic deployment name for a model version, within Azure's rule (3-32 chars, letter first)."""
    clean = re.sub(r"[^A-Za-z0-9-]", "-", version).strip("-") or "x"
    suffix = digest(model_name, version, length=6)
    return f"v{clean[: 32 - len(suffix) - 2]}-{suffix}"


def traffic_steps(policy: PromotionPolicy, has_champion: bool) -> tuple[int, ...]:
    """Canary percentages for the candidate; a first model has nobody to share traffic with."""
    return policy.canary_steps if has_champion else (100,)


@dataclass(frozen=True)
class _Look:
    """One look at a rollout: its record, the endpoint as it is now, the policy and the time."""

    record: RolloutRecord
    endpoint: EndpointView | None
    policy: PromotionPolicy
    now: datetime

    @property
    def poll(self) -> float:
        return self.policy.poll_interval_seconds

    @property
    def timed_out(self) -> bool:
        """Whether the current phase has lasted longer than the provisioning timeout."""
        since = self.record.phase_since or self.now
        return self.now - since > timedelta(seconds=self.policy.provisioning_timeout_seconds)


Handler = Callable[[_Look], Transition]
OnEndpoint = Callable[[_Look, EndpointView], Transition]
OnCandidate = Callable[[_Look, EndpointView, DeploymentView], Transition]


def decide(record: RolloutRecord, endpoint: EndpointView | None, policy: PromotionPolicy,
           now: datetime) -> Transition:
    """The next transition of `record`, given the endpoint as it is now. Pure: no I/O.

    Looks up the handler of the record's phase (`_HANDLERS`). Raises AssertionError for a final
    phase (a finished rollout is never decided on) and ValueError for a state that is not a phase.
    """
    phase = record.phase
    handler = _HANDLERS.get(phase)
    if handler is None:
        raise AssertionError(f"a {phase.value} rollout is over: there is nothing to decide")
    return handler(_Look(record, endpoint, policy, now))


# -- guards: what every phase after the first needs before it can decide ----------------------------------
def _needs_endpoint(handler: OnEndpoint) -> Handler:
    """The endpoint must still exist; if it vanished mid-rollout, roll back."""
    def look_at(look: _Look) -> Transition:
        if look.endpoint is None:
            return _fail(f"endpoint {look.record.endpoint} disappeared during the rollout")
        return handler(look, look.endpoint)
    return look_at


def _needs_candidate(handler: OnCandidate) -> Handler:
    """The candidate's deployment must still exist; if it vanished mid-rollout, roll back."""
    def look_at(look: _Look, endpoint: EndpointView) -> Transition:
        candidate = endpoint.deployment(look.record.deployment)
        if candidate is None:
            return _fail(f"deployment {look.record.deployment} disappeared during the rollout")
        return handler(look, endpoint, candidate)
    return _needs_endpoint(look_at)


def _needs_healthy_candidate(handler: OnCandidate) -> Handler:
    """After provisioning, the candidate must stay Succeeded: Failed rolls back, busy (e.g. scaling) waits."""
    def look_at(look: _Look, endpoint: EndpointView, candidate: DeploymentView) -> Transition:
        state = candidate.state.lower()
        deployment = look.record.deployment
        if state in FAILED_STATES:
            return _fail(f"deployment {deployment} is {candidate.state}, no longer Succeeded")
        if state != "succeeded":
            # e.g. an operator scaling it: wait; a deployment that ends Failed is caught above on a later look
            return Transition(look.record.phase, f"deployment {deployment} is {candidate.state}: waiting",
                              delay_seconds=look.poll)
        return handler(look, endpoint, candidate)
    return _needs_candidate(look_at)


def _needs_settled_endpoint(handler: OnEndpoint) -> Handler:
    """Rolling back: a vanished endpoint has nothing left to roll back; a busy one is waited for."""
    def look_at(look: _Look) -> Transition:
        endpoint = look.endpoint
        if endpoint is None:
            return Transition(Phase.ROLLED_BACK, f"endpoint {look.record.endpoint} is gone: nothing to roll back")
        if endpoint.busy:
            return Transition(look.record.phase, f"endpoint is {endpoint.state}: waiting before rolling back",
                              delay_seconds=look.poll)
        return handler(look, endpoint)
    return look_at


# -- one handler per phase -------------------------------------------------------------------------------
def _endpoint(look: _Look) -> Transition:
    """Make sure the endpoint exists and is not busy."""
    record, endpoint = look.record, look.endpoint
    if endpoint is None:
        return Transition(Phase.ENDPOINT, f"endpoint {record.endpoint} does not exist: creating it",
                          CreateEndpoint(record.endpoint), look.poll)
    if endpoint.state.lower() in FAILED_STATES:
        return _fail(f"endpoint {record.endpoint} is in state {endpoint.state}")
    if endpoint.busy:
        return Transition(Phase.ENDPOINT, f"endpoint is {endpoint.state}: waiting", delay_seconds=look.poll)
    return Transition(Phase.DEPLOY, f"endpoint {record.endpoint} is ready")


def _deploy(look: _Look, endpoint: EndpointView) -> Transition:
    """Create the candidate's deployment with no traffic, unless an earlier try did."""
    record = look.record
    if endpoint.deployment(record.deployment) is not None:
        return Transition(Phase.PROVISIONING, f"deployment {record.deployment} exists (created by an earlier try)")
    return Transition(Phase.PROVISIONING, f"creating deployment {record.deployment} for {record.candidate} "
                      "with no traffic", CreateDeployment(record.endpoint, record.deployment), look.poll)


def _provisioning(look: _Look, _view: EndpointView, candidate: DeploymentView) -> Transition:
    """Wait for the deployment; it fails on Failed or after the provisioning timeout."""
    deployment, state = look.record.deployment, candidate.state.lower()
    if state == "succeeded":
        return Transition(Phase.SMOKE, f"deployment {deployment} is provisioned")
    if state in FAILED_STATES:
        return _fail(f"deployment {deployment} provisioning ended {candidate.state}")
    if look.timed_out:
        return _fail(f"deployment {deployment} still {candidate.state} after "
                     f"{look.policy.provisioning_timeout_seconds:.0f} s (provisioning timeout)")
    return Transition(Phase.PROVISIONING, f"deployment is {candidate.state}: waiting", delay_seconds=look.poll)


def _smoke(look: _Look, _view: EndpointView, _candidate: DeploymentView) -> Transition:
    """Score the sample request on the candidate alone (a failed smoke test rolls back)."""
    record = look.record
    return Transition(Phase.SHIFT, f"smoke test of {record.deployment} passed",
                      SmokeTest(record.endpoint, record.deployment))


def _shift(look: _Look, endpoint: EndpointView, _candidate: DeploymentView) -> Transition:
    """Apply the next canary step."""
    record = look.record
    champion = _live_champion(record, endpoint)
    steps = traffic_steps(look.policy, champion is not None)
    step = min(record.step + 1, len(steps) - 1)
    weights = _split(record.deployment, steps[step], champion)
    return Transition(Phase.SHIFTING, f"shifting {steps[step]}% of traffic to {record.deployment}",
                      SetTraffic(record.endpoint, weights), look.poll, step=step)


def _shifting(look: _Look, endpoint: EndpointView, _candidate: DeploymentView) -> Transition:
    """Wait for the traffic update, check it, then check the candidate again or enter the grace period."""
    record, policy = look.record, look.policy
    champion = _live_champion(record, endpoint)
    steps = traffic_steps(policy, champion is not None)
    step = min(max(record.step, 0), len(steps) - 1)  # the champion may be gone: fewer steps then
    expected = _split(record.deployment, steps[step], champion)
    if endpoint.state.lower() in FAILED_STATES:
        return _fail(f"the traffic update left endpoint {record.endpoint} {endpoint.state}")
    if endpoint.busy:
        return Transition(Phase.SHIFTING, f"endpoint is {endpoint.state}: waiting for the traffic update",
                          delay_seconds=look.poll)
    if any(endpoint.traffic.get(name, 0) != weight for name, weight in expected.items()):
        return Transition(Phase.SHIFTING, f"traffic is {endpoint.traffic}, expected {expected}: applying again",
                          SetTraffic(record.endpoint, expected), look.poll)
    if step == len(steps) - 1:
        return Transition(Phase.GRACE, f"{record.deployment} takes all traffic; old deployment kept for "
                          f"{policy.grace_period_seconds:.0f} s", delay_seconds=policy.grace_period_seconds)
    return Transition(Phase.SHIFT, f"canary at {steps[step]}%: check passed",
                      SmokeTest(record.endpoint, record.deployment), policy.canary_interval_seconds)


def _grace(look: _Look, endpoint: EndpointView, _candidate: DeploymentView) -> Transition:
    """After the grace period, delete the old deployment and wait until it is gone.

    Never rolls back: the candidate already takes all traffic.
    """
    record, now = look.record, look.now
    old = record.champion_deployment
    if record.due_at is not None and now < record.due_at:
        return Transition(Phase.GRACE, "grace period not over", delay_seconds=(record.due_at - now).total_seconds())
    previous = endpoint.deployment(old) if old else None
    if previous is None:
        return Transition(Phase.SUCCEEDED, f"{record.candidate} serves {record.endpoint}"
                          + (f"; {old} is deleted" if old else ""))
    if endpoint.traffic.get(old, 0) > 0:
        return Transition(Phase.SUCCEEDED, f"left {old} in place: it takes traffic again (changed by hand?)")
    if previous.state.lower() == "deleting":
        return Transition(Phase.GRACE, f"waiting for {old} to be deleted", delay_seconds=look.poll)
    return Transition(Phase.GRACE, f"grace period over: deleting the old deployment {old}",
                      DeleteDeployment(record.endpoint, old), look.poll)


def _rollback(look: _Look, endpoint: EndpointView) -> Transition:
    """Return all traffic to the champion (or to nobody, for a first model)."""
    record = look.record
    candidate = endpoint.deployment(record.deployment)
    champion = _live_champion(record, endpoint)
    wanted = {champion: 100} if champion else {}
    if candidate is not None:
        wanted[record.deployment] = 0
    if all(endpoint.traffic.get(name, 0) == weight for name, weight in wanted.items()) and \
            endpoint.traffic.get(record.deployment, 0) == 0:
        where = f"all traffic is on the champion {champion}" if champion else "the candidate takes no traffic"
        return Transition(Phase.CLEANUP, where)
    return Transition(Phase.ROLLBACK, f"returning traffic to {champion or 'nobody'}",
                      SetTraffic(record.endpoint, wanted), look.poll)


def _cleanup(look: _Look, endpoint: EndpointView) -> Transition:
    """Delete the failed candidate and wait until it is gone (a stuck provisioning is deleted after the timeout)."""
    record = look.record
    candidate = endpoint.deployment(record.deployment)
    if candidate is None:
        return Transition(Phase.ROLLED_BACK, f"{record.deployment} is gone; {record.endpoint} is as before")
    state = candidate.state.lower()
    if state == "deleting" or (state in IN_PROGRESS_STATES and not look.timed_out):
        return Transition(Phase.CLEANUP, f"{record.deployment} is {candidate.state}: waiting",
                          delay_seconds=look.poll)
    return Transition(Phase.CLEANUP, f"deleting the failed deployment {record.deployment}",
                      DeleteDeployment(record.endpoint, record.deployment), look.poll)


_HANDLERS: dict[Phase, Handler] = {
    Phase.ENDPOINT: _endpoint,
    Phase.DEPLOY: _needs_endpoint(_deploy),
    Phase.PROVISIONING: _needs_candidate(_provisioning),
    Phase.SMOKE: _needs_healthy_candidate(_smoke),
    Phase.SHIFT: _needs_healthy_candidate(_shift),
    Phase.SHIFTING: _needs_healthy_candidate(_shifting),
    Phase.GRACE: _needs_candidate(_grace),
    Phase.ROLLBACK: _needs_settled_endpoint(_rollback),
    Phase.CLEANUP: _needs_settled_endpoint(_cleanup),
}
"""Phase → handler: every phase that is not final has exactly one (final phases are never decided on)."""


def _fail(reason: str) -> Transition:
    return Transition(Phase.ROLLBACK, f"rolling back: {reason}", failure=reason)


def _live_champion(record: RolloutRecord, endpoint: EndpointView) -> str | None:
    """The champion deployment if it still exists (it is what traffic returns to)."""
    old = record.champion_deployment
    return old if old and old != record.deployment and endpoint.deployment(old) is not None else None


def _split(candidate: str, percent: int, champion: str | None) -> dict[str, int]:
    return {candidate: percent, champion: 100 - percent} if champion else {candidate: percent}


# -- the queue message that drives a rollout ---------------------------------------------------------
@dataclass(frozen=True)
class RolloutTick:
    """'Look at `endpoint`'s rollout `rollout_id` at step `seq`'; older or foreign ticks are stale."""

    endpoint: str
    rollout_id: str
    seq: int
    event_id: str

    def to_json(self) -> str:
        return json.dumps({"endpoint": self.endpoint, "rolloutId": self.rollout_id, "seq": self.seq,
                           "eventId": self.event_id})


def tick_from_json(text: str) -> RolloutTick:
    try:
        data: Any = json.loads(text)
    except (ValueError, RecursionError) as exc:  # RecursionError: nested too deeply (issue 11, defect 5)
        raise InvalidEventError(f"rollout message is not JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise InvalidEventError("rollout message must be a JSON object with endpoint, rolloutId, seq, eventId")
    problems = [f"{key} must be a non-empty string" for key in ("endpoint", "rolloutId", "eventId")
                if not isinstance(data.get(key), str) or not data[key]]
    seq = data.get("seq")
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < 0:
        problems.append("seq must be a non-negative integer")
    if problems:
        raise InvalidEventError("rollout message: " + "; ".join(problems))
    return RolloutTick(endpoint=data["endpoint"], rollout_id=data["rolloutId"], seq=int(data["seq"]),
                       event_id=data["eventId"])


@dataclass(frozen=True)
class CandidateRetry:
    """'Put `model_name:version` through the gate again': a candidate whose decision kept racing other writes.

    Sent with a delay on the promotion retry queue instead of failing the event (so a burst of racing
    deliveries never turns into failed executions); `event_id` is the original event, for correlation.
    """

    model_name: str
    version: str
    event_id: str

    def to_json(self) -> str:
        return json.dumps({"modelName": self.model_name, "version": self.version, "eventId": self.event_id})


def candidate_retry_from_json(text: str) -> CandidateRetry:
    """Parse a promotion retry message; raises InvalidEventError naming what is wrong."""
    try:
        data: Any = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise InvalidEventError(f"promotion retry message is not JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise InvalidEventError("promotion retry message must be a JSON object with modelName, version, eventId")
    problems = [f"{key} must be a non-empty string" for key in ("modelName", "version", "eventId")
                if not isinstance(data.get(key), str) or not data[key]]
    if problems:
        raise InvalidEventError("promotion retry message: " + "; ".join(problems))
    return CandidateRetry(model_name=data["modelName"], version=data["version"], event_id=data["eventId"])
