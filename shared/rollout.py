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
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import Enum
from typing import Any

from shared.aml import IN_PROGRESS_STATES, EndpointView
from shared.errors import InvalidEventError
from shared.gate import PromotionPolicy
from shared.keys import digest
from shared.ledger import RolloutRecord


class Phase(str, Enum):
    ENDPOINT = "endpoint"  # make sure the endpoint exists and is not busy
    DEPLOY = "deploy"  # create the candidate's deployment (it takes no traffic yet)
    PROVISIONING = "provisioning"  # wait for it
    SMOKE = "smoke"  # score the policy's sample request on the candidate alone
    SHIFT = "shift"  # apply the next canary step
    SHIFTING = "shifting"  # wait for the traffic update, check, go to the next step
    GRACE = "grace"  # all traffic on the candidate; after the grace period delete the old deployment, wait
    ROLLBACK = "rollback"  # traffic back to the champion
    CLEANUP = "cleanup"  # delete the failed candidate, wait until it is gone
    SUCCEEDED = "succeeded"
    ROLLED_BACK = "rolled_back"


FINAL_PHASES = frozenset({Phase.SUCCEEDED, Phase.ROLLED_BACK})
ROLLBACK_PHASES = frozenset({Phase.ROLLBACK, Phase.CLEANUP})
_FAILED_STATES = frozenset({"failed", "canceled", "cancelled"})


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


def decide(record: RolloutRecord, endpoint: EndpointView | None, policy: PromotionPolicy,
           now: datetime) -> Transition:
    """The next transition of `record`, given the endpoint as it is now. Pure: no I/O."""
    phase = Phase(record.state)
    poll = policy.poll_interval_seconds
    if phase in ROLLBACK_PHASES:
        return _rollback(record, endpoint, phase, poll, now, policy)
    if phase is Phase.ENDPOINT:
        if endpoint is None:
            return Transition(Phase.ENDPOINT, f"endpoint {record.endpoint} does not exist: creating it",
                              CreateEndpoint(record.endpoint), poll)
        if endpoint.state.lower() in _FAILED_STATES:
            return _fail(f"endpoint {record.endpoint} is in state {endpoint.state}")
        if endpoint.busy:
            return Transition(Phase.ENDPOINT, f"endpoint is {endpoint.state}: waiting", delay_seconds=poll)
        return Transition(Phase.DEPLOY, f"endpoint {record.endpoint} is ready")
    if endpoint is None:
        return _fail(f"endpoint {record.endpoint} disappeared during the rollout")
    candidate = endpoint.deployment(record.deployment)
    if phase is Phase.DEPLOY:
        if candidate is not None:
            return Transition(Phase.PROVISIONING, f"deployment {record.deployment} exists (created by an earlier try)")
        return Transition(Phase.PROVISIONING, f"creating deployment {record.deployment} for {record.candidate} "
                          "with no traffic", CreateDeployment(record.endpoint, record.deployment), poll)
    if candidate is None:
        return _fail(f"deployment {record.deployment} disappeared during the rollout")
    state = candidate.state.lower()
    if phase is Phase.PROVISIONING:
        if state == "succeeded":
            return Transition(Phase.SMOKE, f"deployment {record.deployment} is provisioned")
        if state in _FAILED_STATES:
            return _fail(f"deployment {record.deployment} provisioning ended {candidate.state}")
        since = record.phase_since or now
        if now - since > timedelta(seconds=policy.provisioning_timeout_seconds):
            return _fail(f"deployment {record.deployment} still {candidate.state} after "
                         f"{policy.provisioning_timeout_seconds:.0f} s (provisioning timeout)")
        return Transition(Phase.PROVISIONING, f"deployment is {candidate.state}: waiting", delay_seconds=poll)
    if state in _FAILED_STATES and phase is not Phase.GRACE:
        return _fail(f"deployment {record.deployment} is {candidate.state}, no longer Succeeded")
    if state != "succeeded" and phase is not Phase.GRACE:
        # e.g. an operator scaling it: wait; a deployment that ends Failed is caught above on a later look
        return Transition(phase, f"deployment {record.deployment} is {candidate.state}: waiting", delay_seconds=poll)

    champion = _live_champion(record, endpoint)
    steps = traffic_steps(policy, champion is not None)
    if phase is Phase.SMOKE:
        return Transition(Phase.SHIFT, f"smoke test of {record.deployment} passed",
                          SmokeTest(record.endpoint, record.deployment))
    if phase is Phase.SHIFT:
        step = min(record.step + 1, len(steps) - 1)
        weights = _split(record.deployment, steps[step], champion)
        return Transition(Phase.SHIFTING, f"shifting {steps[step]}% of traffic to {record.deployment}",
                          SetTraffic(record.endpoint, weights), poll, step=step)
    if phase is Phase.SHIFTING:
        step = min(max(record.step, 0), len(steps) - 1)  # the champion may be gone: fewer steps then
        expected = _split(record.deployment, steps[step], champion)
        if endpoint.state.lower() in _FAILED_STATES:
            return _fail(f"the traffic update left endpoint {record.endpoint} {endpoint.state}")
        if endpoint.busy:
            return Transition(Phase.SHIFTING, f"endpoint is {endpoint.state}: waiting for the traffic update",
                              delay_seconds=poll)
        if any(endpoint.traffic.get(name, 0) != weight for name, weight in expected.items()):
            return Transition(Phase.SHIFTING, f"traffic is {endpoint.traffic}, expected {expected}: applying again",
                              SetTraffic(record.endpoint, expected), poll)
        if step == len(steps) - 1:
            return Transition(Phase.GRACE, f"{record.deployment} takes all traffic; old deployment kept for "
                              f"{policy.grace_period_seconds:.0f} s", delay_seconds=policy.grace_period_seconds)
        return Transition(Phase.SHIFT, f"canary at {steps[step]}%: check passed",
                          SmokeTest(record.endpoint, record.deployment), policy.canary_interval_seconds)
    if phase is Phase.GRACE:
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
            return Transition(Phase.GRACE, f"waiting for {old} to be deleted", delay_seconds=poll)
        return Transition(Phase.GRACE, f"grace period over: deleting the old deployment {old}",
                          DeleteDeployment(record.endpoint, old), poll)
    raise AssertionError(phase)  # final phases are never decided on


def _fail(reason: str) -> Transition:
    return Transition(Phase.ROLLBACK, f"rolling back: {reason}", failure=reason)


def _live_champion(record: RolloutRecord, endpoint: EndpointView) -> str | None:
    """The champion deployment if it still exists (it is what traffic returns to)."""
    old = record.champion_deployment
    return old if old and old != record.deployment and endpoint.deployment(old) is not None else None


def _split(candidate: str, percent: int, champion: str | None) -> dict[str, int]:
    return {candidate: percent, champion: 100 - percent} if champion else {candidate: percent}


def _rollback(record: RolloutRecord, endpoint: EndpointView | None, phase: Phase, poll: float, now: datetime,
              policy: PromotionPolicy) -> Transition:
    if endpoint is None:
        return Transition(Phase.ROLLED_BACK, f"endpoint {record.endpoint} is gone: nothing to roll back")
    if endpoint.busy:
        return Transition(phase, f"endpoint is {endpoint.state}: waiting before rolling back", delay_seconds=poll)
    candidate = endpoint.deployment(record.deployment)
    if phase is Phase.ROLLBACK:
        champion = _live_champion(record, endpoint)
        wanted = {champion: 100} if champion else {}
        if candidate is not None:
            wanted[record.deployment] = 0
        if all(endpoint.traffic.get(name, 0) == weight for name, weight in wanted.items()) and \
                endpoint.traffic.get(record.deployment, 0) == 0:
            where = f"all traffic is on the champion {champion}" if champion else "the candidate takes no traffic"
            return Transition(Phase.CLEANUP, where)
        return Transition(Phase.ROLLBACK, f"returning traffic to {champion or 'nobody'}",
                          SetTraffic(record.endpoint, wanted), poll)
    if candidate is None:
        return Transition(Phase.ROLLED_BACK, f"{record.deployment} is gone; {record.endpoint} is as before")
    since = record.phase_since or now
    timed_out = now - since > timedelta(seconds=policy.provisioning_timeout_seconds)
    if candidate.state.lower() == "deleting" or (candidate.state.lower() in IN_PROGRESS_STATES and not timed_out):
        return Transition(Phase.CLEANUP, f"{record.deployment} is {candidate.state}: waiting",
                          delay_seconds=poll)
    return Transition(Phase.CLEANUP, f"deleting the failed deployment {record.deployment}",
                      DeleteDeployment(record.endpoint, record.deployment), poll)


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
    except ValueError as exc:
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
