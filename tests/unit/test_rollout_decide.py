"""The blue/green rollout state machine (`shared.domain.rollout.decide`), phase by phase: pure, no I/O.

Each test builds a `RolloutRecord` as the ledger would hold it and an `EndpointView` as Azure ML
would show it, and checks the one `Transition` that `decide` returns. A small in-memory executor
then walks whole rollouts, and hypothesis checks the traffic invariants on random endpoints.
"""

from __future__ import annotations

import dataclasses
import json
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared.config.promotion import PromotionPolicy
from shared.domain.records import RolloutRecord
from shared.domain.rollout import (
    CandidateRetry,
    CreateDeployment,
    CreateEndpoint,
    DeleteDeployment,
    RolloutAction,
    RolloutTick,
    SetTraffic,
    SmokeTest,
    Transition,
    candidate_retry_from_json,
    decide,
    deployment_name,
    tick_from_json,
    traffic_steps,
)
from shared.domain.vocabulary import FINAL_PHASES, ROLLBACK_PHASES, Phase
from shared.domain.workspace import DeploymentView, EndpointView
from shared.errors import InvalidEventError

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
ENDPOINT = "churn-endpoint"
MODEL = "churn-model"
CAND = deployment_name(MODEL, "7")
CHAMP = deployment_name(MODEL, "6")
OTHER = "blue-by-hand"
POLL = 30.0
AZURE_DEPLOYMENT_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9-]{1,30}[A-Za-z0-9]$")


def make_policy(**overrides: Any) -> PromotionPolicy:
    doc: dict[str, Any] = {
        "metric": "auc", "direction": "higher_is_better", "endpoint": ENDPOINT,
        "deployment": {"instance_type": "Standard_DS3_v2"}, "smoke_test": {"request": {"input_data": [[1, 2]]}},
        "canary_steps": [10, 50, 100], "canary_interval_seconds": 60, "grace_period_seconds": 300,
        "poll_interval_seconds": POLL, "provisioning_timeout_seconds": 3600,
    }
    doc.update(overrides)
    return PromotionPolicy.model_validate(doc)


POLICY = make_policy()


def make_record(state: Phase | str, *, step: int = -1, champion: str = CHAMP, deployment: str = CAND,
                due_at: datetime | None = None, phase_since: datetime | None = NOW) -> RolloutRecord:
    return RolloutRecord(
        endpoint=ENDPOINT, rollout_id="r-1", seq=5, state=Phase(state).value, candidate_name=MODEL,
        candidate_version="7", deployment=deployment, champion_deployment=champion,
        champion_model=f"{MODEL}:6" if champion else "", step=step, due_at=due_at, started_at=NOW - timedelta(hours=1),
        reason="", queued_name="", queued_version="", queued_event="", event_id="evt-1", phase_since=phase_since,
        attempts=0, failure="",
    )


def dep(name: str, state: str = "Succeeded") -> DeploymentView:
    return DeploymentView(name=name, state=state, model=(MODEL, name), tags={})


def view(traffic: dict[str, int] | None = None, *deployments: DeploymentView, state: str = "Succeeded") -> EndpointView:
    return EndpointView(name=ENDPOINT, state=state, traffic=dict(traffic or {}), deployments=tuple(deployments))


def both(cand: int, champ: int, *, cand_state: str = "Succeeded", champ_state: str = "Succeeded",
         state: str = "Succeeded") -> EndpointView:
    """The endpoint mid-rollout: candidate and champion deployments with these weights."""
    return view({CAND: cand, CHAMP: champ}, dep(CAND, cand_state), dep(CHAMP, champ_state), state=state)


def expect(t: Transition, phase: Phase, action: RolloutAction | None = None, delay: float = 0.0) -> None:
    assert (t.phase, t.action, t.delay_seconds) == (phase, action, delay), t


def expect_rollback(t: Transition, *fragments: str) -> None:
    assert t.phase is Phase.ROLLBACK, t
    assert t.action is None, t
    assert t.failure, t
    assert t.reason == f"rolling back: {t.failure}"
    for fragment in fragments:
        assert fragment in t.failure, (fragment, t.failure)


# -- endpoint ---------------------------------------------------------------------------------------
def test_missing_endpoint_is_created_and_looked_at_again_after_a_poll() -> None:
    t = decide(make_record(Phase.ENDPOINT), None, POLICY, NOW)
    expect(t, Phase.ENDPOINT, CreateEndpoint(ENDPOINT), POLL)
    assert t.failure is None
    assert "does not exist" in t.reason


@pytest.mark.parametrize("state", ["Creating", "Updating", "Deleting", "Provisioning", "NotStarted", "scaling"])
def test_busy_endpoint_is_waited_for(state: str) -> None:
    t = decide(make_record(Phase.ENDPOINT), view({}, state=state), POLICY, NOW)
    expect(t, Phase.ENDPOINT, None, POLL)
    assert state in t.reason


@pytest.mark.parametrize("state", ["Failed", "Canceled", "cancelled"])
def test_failed_endpoint_rolls_back_with_the_failure(state: str) -> None:
    t = decide(make_record(Phase.ENDPOINT), view({}, state=state), POLICY, NOW)
    expect_rollback(t, ENDPOINT, state)


@pytest.mark.parametrize("endpoint", [view({}), both(0, 100)])
def test_ready_endpoint_goes_to_deploy_at_once(endpoint: EndpointView) -> None:
    expect(decide(make_record(Phase.ENDPOINT), endpoint, POLICY, NOW), Phase.DEPLOY)


# -- deploy / provisioning ----------------------------------------------------------------------------
def test_deploy_creates_the_candidate_deployment_with_no_traffic() -> None:
    t = decide(make_record(Phase.DEPLOY), view({CHAMP: 100}, dep(CHAMP)), POLICY, NOW)
    expect(t, Phase.PROVISIONING, CreateDeployment(ENDPOINT, CAND), POLL)
    assert "no traffic" in t.reason


@pytest.mark.parametrize("cand_state", ["Creating", "Succeeded", "Failed"])
def test_deploy_does_not_create_a_deployment_that_exists(cand_state: str) -> None:
    t = decide(make_record(Phase.DEPLOY), both(0, 100, cand_state=cand_state), POLICY, NOW)
    expect(t, Phase.PROVISIONING)
    assert "exists" in t.reason


@pytest.mark.parametrize("state", [Phase.DEPLOY, Phase.PROVISIONING, Phase.SMOKE, Phase.SHIFT, Phase.SHIFTING,
                                   Phase.GRACE])
def test_endpoint_gone_mid_rollout_rolls_back(state: Phase) -> None:
    expect_rollback(decide(make_record(state, step=0), None, POLICY, NOW), "disappeared", ENDPOINT)


@pytest.mark.parametrize("state", ["Creating", "Updating", "Provisioning", "NotStarted"])
def test_provisioning_waits_while_the_deployment_is_in_progress(state: str) -> None:
    since = NOW - timedelta(seconds=POLICY.provisioning_timeout_seconds)  # exactly at the limit: not yet over
    t = decide(make_record(Phase.PROVISIONING, phase_since=since), both(0, 100, cand_state=state), POLICY, NOW)
    expect(t, Phase.PROVISIONING, None, POLL)
    assert state in t.reason


def test_provisioning_without_phase_since_waits() -> None:
    t = decide(make_record(Phase.PROVISIONING, phase_since=None), both(0, 100, cand_state="Creating"), POLICY, NOW)
    expect(t, Phase.PROVISIONING, None, POLL)


def test_provisioned_deployment_goes_to_smoke() -> None:
    expect(decide(make_record(Phase.PROVISIONING), both(0, 100), POLICY, NOW), Phase.SMOKE)


@pytest.mark.parametrize("state", ["Failed", "Canceled"])
def test_failed_provisioning_rolls_back(state: str) -> None:
    t = decide(make_record(Phase.PROVISIONING), both(0, 100, cand_state=state), POLICY, NOW)
    expect_rollback(t, CAND, f"provisioning ended {state}")


def test_provisioning_timeout_rolls_back() -> None:
    since = NOW - timedelta(seconds=POLICY.provisioning_timeout_seconds + 1)
    t = decide(make_record(Phase.PROVISIONING, phase_since=since), both(0, 100, cand_state="Creating"), POLICY, NOW)
    expect_rollback(t, CAND, "provisioning timeout", "3600 s")


@pytest.mark.parametrize("state", [Phase.PROVISIONING, Phase.SMOKE, Phase.SHIFT, Phase.SHIFTING])
def test_candidate_deployment_disappearing_mid_rollout_rolls_back(state: Phase) -> None:
    t = decide(make_record(state, step=0), view({CHAMP: 100}, dep(CHAMP)), POLICY, NOW)
    expect_rollback(t, CAND, "disappeared")


@pytest.mark.parametrize("state", [Phase.SMOKE, Phase.SHIFT, Phase.SHIFTING])
@pytest.mark.parametrize("cand_state", ["Failed", "Canceled"])
def test_candidate_no_longer_succeeded_after_provisioning_rolls_back(state: Phase, cand_state: str) -> None:
    t = decide(make_record(state, step=0), both(10, 90, cand_state=cand_state), POLICY, NOW)
    expect_rollback(t, CAND, cand_state, "no longer Succeeded")


@pytest.mark.parametrize("state", [Phase.SMOKE, Phase.SHIFT, Phase.SHIFTING])
@pytest.mark.parametrize("cand_state", ["Updating", "Scaling"])
def test_a_candidate_briefly_busy_after_provisioning_is_waited_for_not_rolled_back(state: Phase,
                                                                                   cand_state: str) -> None:
    t = decide(make_record(state, step=0), both(10, 90, cand_state=cand_state), POLICY, NOW)
    expect(t, state, None, POLL)


def test_grace_never_rolls_back_a_candidate_that_already_takes_all_traffic() -> None:
    endpoint = view({CAND: 100}, dep(CAND, "Updating"))  # an operator scales it; the champion is deleted
    t = decide(make_record(Phase.GRACE, step=2, due_at=NOW - timedelta(seconds=1)), endpoint, POLICY, NOW)
    assert t.phase is Phase.SUCCEEDED, t


@pytest.mark.parametrize("step", [1, 2])
def test_shifting_after_the_champion_vanished_does_not_index_past_the_steps(step: int) -> None:
    endpoint = view({CAND: 100}, dep(CAND))  # the 0 % champion was deleted by hand between two looks
    t = decide(make_record(Phase.SHIFTING, step=step), endpoint, POLICY, NOW)
    expect(t, Phase.GRACE, None, POLICY.grace_period_seconds)


# -- smoke / shift --------------------------------------------------------------------------------------
def test_smoke_tests_the_candidate_alone_then_shifts() -> None:
    t = decide(make_record(Phase.SMOKE), both(0, 100), POLICY, NOW)
    expect(t, Phase.SHIFT, SmokeTest(ENDPOINT, CAND))
    assert t.step is None


@pytest.mark.parametrize(
    ("step", "next_step", "weights"),
    [(-1, 0, {CAND: 10, CHAMP: 90}), (0, 1, {CAND: 50, CHAMP: 50}), (1, 2, {CAND: 100, CHAMP: 0}),
     (2, 2, {CAND: 100, CHAMP: 0})],  # a repeated SHIFT at the last step re-applies it, never overruns
)
def test_shift_with_a_champion_applies_the_canary_steps_in_order(step: int, next_step: int,
                                                                 weights: dict[str, int]) -> None:
    t = decide(make_record(Phase.SHIFT, step=step), both(0, 100), POLICY, NOW)
    expect(t, Phase.SHIFTING, SetTraffic(ENDPOINT, weights), POLL)
    assert t.step == next_step
    assert f"{weights[CAND]}%" in t.reason


@pytest.mark.parametrize(
    ("champion", "endpoint"),
    [("", view({}, dep(CAND))),  # a first model
     (CHAMP, view({}, dep(CAND))),  # the champion's deployment is gone: nobody to share traffic with
     (CAND, view({CAND: 0}, dep(CAND)))],  # the "champion" is the candidate itself
)
def test_shift_without_a_live_champion_goes_straight_to_all_traffic(champion: str, endpoint: EndpointView) -> None:
    t = decide(make_record(Phase.SHIFT, champion=champion), endpoint, POLICY, NOW)
    expect(t, Phase.SHIFTING, SetTraffic(ENDPOINT, {CAND: 100}), POLL)
    assert t.step == 0


def test_traffic_steps() -> None:
    assert traffic_steps(POLICY, has_champion=True) == (10, 50, 100)
    assert traffic_steps(POLICY, has_champion=False) == (100,)
    assert traffic_steps(make_policy(canary_steps=[100]), has_champion=True) == (100,)


# -- shifting --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("state", ["Updating", "Creating", "Deleting"])
def test_shifting_waits_while_the_endpoint_is_busy(state: str) -> None:
    t = decide(make_record(Phase.SHIFTING, step=0), both(0, 100, state=state), POLICY, NOW)
    expect(t, Phase.SHIFTING, None, POLL)
    assert "waiting for the traffic update" in t.reason


@pytest.mark.parametrize("state", ["Failed", "Canceled"])
def test_shifting_rolls_back_when_the_traffic_update_failed_the_endpoint(state: str) -> None:
    t = decide(make_record(Phase.SHIFTING, step=0), both(0, 100, state=state), POLICY, NOW)
    expect_rollback(t, "traffic update", state)


@pytest.mark.parametrize(
    ("step", "traffic", "weights"),
    [(0, {CAND: 0, CHAMP: 100}, {CAND: 10, CHAMP: 90}),
     (1, {CAND: 10, CHAMP: 90}, {CAND: 50, CHAMP: 50}),
     (2, {CAND: 100, CHAMP: 10}, {CAND: 100, CHAMP: 0}),  # a weight changed by hand is corrected
     (1, {CHAMP: 100}, {CAND: 50, CHAMP: 50})],  # a missing entry counts as 0
)
def test_shifting_applies_the_step_again_when_traffic_differs(step: int, traffic: dict[str, int],
                                                              weights: dict[str, int]) -> None:
    endpoint = view(traffic, dep(CAND), dep(CHAMP))
    t = decide(make_record(Phase.SHIFTING, step=step), endpoint, POLICY, NOW)
    expect(t, Phase.SHIFTING, SetTraffic(ENDPOINT, weights), POLL)
    assert t.step is None
    assert "applying again" in t.reason


@pytest.mark.parametrize(("step", "cand", "champ"), [(0, 10, 90), (1, 50, 50)])
def test_shifting_checks_the_candidate_between_steps(step: int, cand: int, champ: int) -> None:
    t = decide(make_record(Phase.SHIFTING, step=step), both(cand, champ), POLICY, NOW)
    expect(t, Phase.SHIFT, SmokeTest(ENDPOINT, CAND), POLICY.canary_interval_seconds)
    assert f"canary at {cand}%" in t.reason


@pytest.mark.parametrize(
    ("record", "endpoint"),
    [(make_record(Phase.SHIFTING, step=2), both(100, 0)),
     (make_record(Phase.SHIFTING, step=2), view({CAND: 100}, dep(CAND), dep(CHAMP))),  # no entry = 0
     (make_record(Phase.SHIFTING, step=0, champion=""), view({CAND: 100}, dep(CAND)))],
)
def test_shifting_at_100_percent_enters_the_grace_period(record: RolloutRecord, endpoint: EndpointView) -> None:
    t = decide(record, endpoint, POLICY, NOW)
    expect(t, Phase.GRACE, None, POLICY.grace_period_seconds)
    assert t.failure is None


def test_shifting_without_a_step_yet_uses_the_first_step() -> None:
    t = decide(make_record(Phase.SHIFTING, step=-1), both(0, 100), POLICY, NOW)
    expect(t, Phase.SHIFTING, SetTraffic(ENDPOINT, {CAND: 10, CHAMP: 90}), POLL)


# -- grace -----------------------------------------------------------------------------------------------
def test_grace_waits_until_it_is_due() -> None:
    record = make_record(Phase.GRACE, step=2, due_at=NOW + timedelta(seconds=42.5))
    t = decide(record, both(100, 0), POLICY, NOW)
    expect(t, Phase.GRACE, None, 42.5)
    assert "not over" in t.reason


@pytest.mark.parametrize("due_at", [None, NOW, NOW - timedelta(seconds=1)])
def test_grace_over_deletes_the_old_deployment_without_traffic(due_at: datetime | None) -> None:
    t = decide(make_record(Phase.GRACE, step=2, due_at=due_at), both(100, 0), POLICY, NOW)
    expect(t, Phase.GRACE, DeleteDeployment(ENDPOINT, CHAMP), POLL)


def test_grace_deletes_an_old_deployment_missing_from_the_traffic_map() -> None:
    t = decide(make_record(Phase.GRACE, step=2), view({CAND: 100}, dep(CAND), dep(CHAMP)), POLICY, NOW)
    expect(t, Phase.GRACE, DeleteDeployment(ENDPOINT, CHAMP), POLL)


def test_grace_waits_while_the_old_deployment_is_deleting() -> None:
    t = decide(make_record(Phase.GRACE, step=2), both(100, 0, champ_state="Deleting"), POLICY, NOW)
    expect(t, Phase.GRACE, None, POLL)
    assert CHAMP in t.reason


def test_grace_succeeds_when_the_old_deployment_is_gone() -> None:
    t = decide(make_record(Phase.GRACE, step=2), view({CAND: 100}, dep(CAND)), POLICY, NOW)
    expect(t, Phase.SUCCEEDED)
    assert f"{CHAMP} is deleted" in t.reason
    assert t.failure is None


def test_grace_of_a_first_model_succeeds_with_nothing_to_delete() -> None:
    t = decide(make_record(Phase.GRACE, step=0, champion=""), view({CAND: 100}, dep(CAND)), POLICY, NOW)
    expect(t, Phase.SUCCEEDED)
    assert "deleted" not in t.reason


def test_grace_never_deletes_an_old_deployment_that_takes_traffic() -> None:
    endpoint = view({CAND: 80, CHAMP: 20}, dep(CAND), dep(CHAMP))
    t = decide(make_record(Phase.GRACE, step=2), endpoint, POLICY, NOW)
    expect(t, Phase.SUCCEEDED)
    assert f"left {CHAMP} in place" in t.reason


# -- rollback / cleanup ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("champion", "endpoint", "weights"),
    [(CHAMP, both(50, 50), {CHAMP: 100, CAND: 0}),
     (CHAMP, both(0, 90), {CHAMP: 100, CAND: 0}),
     (CHAMP, view({CHAMP: 50}, dep(CHAMP)), {CHAMP: 100}),  # candidate already gone: only the champion
     (CHAMP, view({CAND: 100}, dep(CAND)), {CAND: 0}),  # champion gone too: nobody takes traffic
     ("", view({CAND: 100}, dep(CAND)), {CAND: 0})],  # a first model
)
def test_rollback_returns_traffic_to_the_champion(champion: str, endpoint: EndpointView,
                                                  weights: dict[str, int]) -> None:
    t = decide(make_record(Phase.ROLLBACK, step=1, champion=champion), endpoint, POLICY, NOW)
    expect(t, Phase.ROLLBACK, SetTraffic(ENDPOINT, weights), POLL)
    assert "returning traffic" in t.reason


@pytest.mark.parametrize(
    ("champion", "endpoint"),
    [(CHAMP, both(0, 100)), (CHAMP, view({CHAMP: 100}, dep(CHAMP), dep(CAND))), ("", view({CAND: 0}, dep(CAND))),
     ("", view({}, dep(CAND))), ("", view({}))],
)
def test_rollback_goes_to_cleanup_once_the_candidate_takes_no_traffic(champion: str,
                                                                      endpoint: EndpointView) -> None:
    t = decide(make_record(Phase.ROLLBACK, champion=champion), endpoint, POLICY, NOW)
    expect(t, Phase.CLEANUP)


@pytest.mark.parametrize("phase", [Phase.ROLLBACK, Phase.CLEANUP])
def test_rollback_waits_while_the_endpoint_is_busy(phase: Phase) -> None:
    t = decide(make_record(phase), both(50, 50, state="Updating"), POLICY, NOW)
    expect(t, phase, None, POLL)


@pytest.mark.parametrize("phase", [Phase.ROLLBACK, Phase.CLEANUP])
def test_rollback_with_the_endpoint_gone_is_rolled_back(phase: Phase) -> None:
    t = decide(make_record(phase), None, POLICY, NOW)
    expect(t, Phase.ROLLED_BACK)
    assert "gone" in t.reason


@pytest.mark.parametrize("cand_state", ["Succeeded", "Failed", "Canceled"])
def test_cleanup_deletes_the_candidate(cand_state: str) -> None:
    t = decide(make_record(Phase.CLEANUP), both(0, 100, cand_state=cand_state), POLICY, NOW)
    expect(t, Phase.CLEANUP, DeleteDeployment(ENDPOINT, CAND), POLL)


@pytest.mark.parametrize("cand_state", ["Deleting", "Creating", "Updating"])
def test_cleanup_waits_while_the_candidate_is_deleting_or_still_provisioning(cand_state: str) -> None:
    t = decide(make_record(Phase.CLEANUP), both(0, 100, cand_state=cand_state), POLICY, NOW)
    expect(t, Phase.CLEANUP, None, POLL)


def test_cleanup_deletes_a_candidate_stuck_provisioning_past_the_timeout() -> None:
    since = NOW - timedelta(seconds=POLICY.provisioning_timeout_seconds + 1)
    t = decide(make_record(Phase.CLEANUP, phase_since=since), both(0, 100, cand_state="Creating"), POLICY, NOW)
    expect(t, Phase.CLEANUP, DeleteDeployment(ENDPOINT, CAND), POLL)


def test_cleanup_never_stops_waiting_for_a_deleting_candidate() -> None:
    since = NOW - timedelta(days=2)
    t = decide(make_record(Phase.CLEANUP, phase_since=since), both(0, 100, cand_state="Deleting"), POLICY, NOW)
    expect(t, Phase.CLEANUP, None, POLL)


def test_cleanup_ends_rolled_back_when_the_candidate_is_gone() -> None:
    t = decide(make_record(Phase.CLEANUP), view({CHAMP: 100}, dep(CHAMP)), POLICY, NOW)
    expect(t, Phase.ROLLED_BACK)
    assert CAND in t.reason


@pytest.mark.parametrize("phase", sorted(FINAL_PHASES))
def test_final_phases_are_never_decided_on(phase: Phase) -> None:
    with pytest.raises(AssertionError):
        decide(make_record(phase), both(100, 0), POLICY, NOW)


# -- whole rollouts through an in-memory endpoint ------------------------------------------------------------
@dataclasses.dataclass
class FakeEndpoint:
    """Applies actions at once (every long-running operation finishes before the next look)."""

    exists: bool
    traffic: dict[str, int]
    deployments: dict[str, str]  # name -> provisioning state
    fault: str = ""  # "provisioning": the candidate fails to provision; "canary": it fails once it takes traffic
    applied: list[dict[str, int]] = dataclasses.field(default_factory=list)
    smoke_tests: int = 0

    def view(self) -> EndpointView | None:
        if not self.exists:
            return None
        return view(self.traffic, *(dep(n, s) for n, s in self.deployments.items()))

    def execute(self, action: RolloutAction | None) -> None:
        if isinstance(action, CreateEndpoint):
            self.exists = True
        elif isinstance(action, CreateDeployment):
            self.deployments[action.deployment] = "Failed" if self.fault == "provisioning" else "Succeeded"
        elif isinstance(action, SetTraffic):
            self.applied.append(dict(action.traffic))
            self.traffic = {name: weight for name, weight in action.traffic.items() if weight}
            if self.fault == "canary" and self.traffic.get(CAND):
                self.deployments[CAND] = "Failed"
        elif isinstance(action, DeleteDeployment):
            assert not self.traffic.get(action.deployment), "deleted a deployment that takes traffic"
            del self.deployments[action.deployment]
        elif isinstance(action, SmokeTest):
            self.smoke_tests += 1


def run(record: RolloutRecord, endpoint: FakeEndpoint, policy: PromotionPolicy = POLICY) -> list[Phase]:
    """Drive `decide` as the Promoter does: execute, write the next state, wait the delay."""
    now = NOW
    phases = [Phase(record.state)]
    for _ in range(100):
        t = decide(record, endpoint.view(), policy, now)
        endpoint.execute(t.action)
        moved = t.phase.value != record.state
        record = dataclasses.replace(
            record, seq=record.seq + 1, state=t.phase.value, due_at=now + timedelta(seconds=t.delay_seconds),
            phase_since=now if moved else record.phase_since, step=record.step if t.step is None else t.step,
            failure=t.failure or record.failure)
        phases.append(t.phase)
        now += timedelta(seconds=t.delay_seconds)
        if t.phase in FINAL_PHASES:
            return phases
    raise AssertionError(f"the rollout never ended: {phases}")


def test_a_whole_canary_rollout_ends_with_the_candidate_alone() -> None:
    endpoint = FakeEndpoint(exists=True, traffic={CHAMP: 100}, deployments={CHAMP: "Succeeded"})
    phases = run(make_record(Phase.ENDPOINT), endpoint)
    assert phases[-1] is Phase.SUCCEEDED
    assert endpoint.applied == [{CAND: 10, CHAMP: 90}, {CAND: 50, CHAMP: 50}, {CAND: 100, CHAMP: 0}]
    assert endpoint.smoke_tests == 3  # once alone, then after 10% and after 50%
    assert endpoint.deployments == {CAND: "Succeeded"}
    assert endpoint.traffic == {CAND: 100}
    assert not ROLLBACK_PHASES & set(phases)


def test_a_whole_first_rollout_creates_the_endpoint_and_takes_all_traffic() -> None:
    endpoint = FakeEndpoint(exists=False, traffic={}, deployments={})
    phases = run(make_record(Phase.ENDPOINT, champion=""), endpoint)
    assert phases[-1] is Phase.SUCCEEDED
    assert endpoint.applied == [{CAND: 100}]
    assert (endpoint.deployments, endpoint.traffic) == ({CAND: "Succeeded"}, {CAND: 100})


@pytest.mark.parametrize(
    ("champion", "fault", "expected"),
    [(CHAMP, "provisioning", [Phase.ROLLBACK, Phase.CLEANUP, Phase.CLEANUP, Phase.ROLLED_BACK]),
     ("", "provisioning", [Phase.ROLLBACK, Phase.CLEANUP, Phase.CLEANUP, Phase.ROLLED_BACK]),
     (CHAMP, "canary", [Phase.SMOKE, Phase.SHIFT, Phase.SHIFTING, Phase.ROLLBACK, Phase.ROLLBACK, Phase.CLEANUP,
                        Phase.CLEANUP, Phase.ROLLED_BACK]),
     ("", "canary", [Phase.SMOKE, Phase.SHIFT, Phase.SHIFTING, Phase.ROLLBACK, Phase.ROLLBACK, Phase.CLEANUP,
                     Phase.CLEANUP, Phase.ROLLED_BACK])],
)
def test_a_whole_failed_rollout_leaves_the_endpoint_as_before(champion: str, fault: str,
                                                              expected: list[Phase]) -> None:
    before = {CHAMP: 100} if champion else {}
    endpoint = FakeEndpoint(exists=True, traffic=dict(before), deployments={CHAMP: "Succeeded"} if champion else {},
                            fault=fault)
    phases = run(make_record(Phase.ENDPOINT, champion=champion), endpoint)
    assert phases == [Phase.ENDPOINT, Phase.DEPLOY, Phase.PROVISIONING, *expected]
    if fault == "canary":  # the traffic went to the candidate, then back
        first = {CAND: 10, CHAMP: 90} if champion else {CAND: 100}
        back = {CHAMP: 100, CAND: 0} if champion else {CAND: 0}
        assert endpoint.applied == [first, back]
    else:
        assert endpoint.applied == []  # the candidate never took traffic: nothing to return
    assert CAND not in endpoint.deployments
    assert endpoint.traffic == before


# -- properties ----------------------------------------------------------------------------------------------
DEPLOYMENT_STATES = ["Succeeded", "Creating", "Updating", "Deleting", "Failed", "Canceled"]
ENDPOINT_STATES = ["Succeeded", "Creating", "Updating", "Deleting", "Failed"]
FORWARD_PHASES = [p for p in Phase if p not in FINAL_PHASES | ROLLBACK_PHASES]


@st.composite
def canary_steps(draw: st.DrawFn) -> list[int]:
    inner = draw(st.lists(st.integers(min_value=1, max_value=99), max_size=4, unique=True))
    return [*sorted(inner), 100]


@st.composite
def scenarios(draw: st.DrawFn, phases: list[Phase]) -> tuple[RolloutRecord, EndpointView | None, PromotionPolicy]:
    policy = make_policy(canary_steps=draw(canary_steps()))
    names = draw(st.lists(st.sampled_from([CAND, CHAMP, OTHER]), unique=True))
    deployments = tuple(dep(n, draw(st.sampled_from(DEPLOYMENT_STATES))) for n in names)
    traffic = {n: draw(st.integers(min_value=0, max_value=100)) for n in names if draw(st.booleans())}
    endpoint = draw(st.none() | st.just(view(traffic, *deployments, state=draw(st.sampled_from(ENDPOINT_STATES)))))
    champion = draw(st.sampled_from([CHAMP, "", OTHER]))
    phase = draw(st.sampled_from(phases))
    # The step index is one of the steps the rollout can have reached with the champion as it is now.
    live = endpoint is not None and bool(champion) and endpoint.deployment(champion) is not None
    step = draw(st.integers(min_value=-1, max_value=len(traffic_steps(policy, live)) - 1))
    offset = timedelta(seconds=draw(st.floats(min_value=-7200, max_value=7200)))
    due = draw(st.none() | st.just(NOW + offset))
    since = draw(st.none() | st.just(NOW - abs(offset)))
    return make_record(phase, step=step, champion=champion, due_at=due, phase_since=since), endpoint, policy


def _existing(endpoint: EndpointView | None) -> set[str]:
    return {d.name for d in endpoint.deployments} if endpoint else set()


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios(FORWARD_PHASES))
def test_forward_traffic_always_sums_to_100_on_real_deployments(
        scenario: tuple[RolloutRecord, EndpointView | None, PromotionPolicy]) -> None:
    record, endpoint, policy = scenario
    t = decide(record, endpoint, policy, NOW)
    assert t.delay_seconds >= 0
    assert (t.failure is not None) == (t.phase is Phase.ROLLBACK)
    if isinstance(t.action, SetTraffic):
        assert t.action.endpoint == record.endpoint
        assert sum(t.action.traffic.values()) == 100, t
        assert all(0 <= w <= 100 for w in t.action.traffic.values())
        assert t.action.traffic[record.deployment] in policy.canary_steps
        assert set(t.action.traffic) <= _existing(endpoint) | {record.deployment}
        assert set(t.action.traffic) <= {record.deployment, record.champion_deployment}
    if isinstance(t.action, DeleteDeployment):
        assert endpoint is not None
        assert t.action.deployment == record.champion_deployment != record.deployment
        assert endpoint.traffic.get(t.action.deployment, 0) == 0


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios(sorted(ROLLBACK_PHASES)))
def test_rollback_traffic_goes_to_the_champion_or_to_nobody(
        scenario: tuple[RolloutRecord, EndpointView | None, PromotionPolicy]) -> None:
    record, endpoint, policy = scenario
    t = decide(record, endpoint, policy, NOW)
    assert t.phase in ROLLBACK_PHASES | {Phase.ROLLED_BACK}
    assert t.delay_seconds >= 0
    if isinstance(t.action, SetTraffic):
        assert endpoint is not None
        weights = t.action.traffic
        assert weights.get(record.deployment, 0) == 0
        assert set(weights) <= _existing(endpoint)
        champion = record.champion_deployment
        if champion and champion != record.deployment and endpoint.deployment(champion) is not None:
            assert weights[champion] == 100
            assert sum(weights.values()) == 100
        else:
            assert all(w == 0 for w in weights.values())
    if isinstance(t.action, DeleteDeployment):
        assert t.action.deployment == record.deployment  # a rollback only ever deletes the candidate


@given(st.text(max_size=300), st.text(max_size=300))
def test_deployment_name_obeys_azures_rule_and_is_deterministic(model: str, version: str) -> None:
    name = deployment_name(model, version)
    assert AZURE_DEPLOYMENT_NAME.match(name), name
    assert 3 <= len(name) <= 32
    assert deployment_name(model, version) == name


@given(st.text(max_size=60), st.text(max_size=60), st.text(max_size=60))
def test_deployment_name_differs_for_different_versions(model: str, v1: str, v2: str) -> None:
    if v1 != v2:
        assert deployment_name(model, v1) != deployment_name(model, v2)


@pytest.mark.parametrize(
    ("version", "v1", "v2"),
    [("7", "7", "8"), ("", "", "x"), ("1.0", "1.0", "1-0"), ("long", "a" * 40 + "1", "a" * 40 + "2")],
)
def test_deployment_name_examples(version: str, v1: str, v2: str) -> None:
    assert AZURE_DEPLOYMENT_NAME.match(deployment_name(MODEL, version))
    assert deployment_name(MODEL, v1) != deployment_name(MODEL, v2)
    assert deployment_name("model-a", v1) != deployment_name("model-b", v1)


# -- the queue message ---------------------------------------------------------------------------------------
@given(st.text(min_size=1), st.text(min_size=1), st.integers(min_value=0, max_value=2**53), st.text(min_size=1))
def test_tick_round_trips(endpoint: str, rollout_id: str, seq: int, event_id: str) -> None:
    tick = RolloutTick(endpoint, rollout_id, seq, event_id)
    assert tick_from_json(tick.to_json()) == tick


def test_tick_wire_format() -> None:
    tick = RolloutTick(ENDPOINT, "r-1", 3, "evt-1")
    assert json.loads(tick.to_json()) == {"endpoint": ENDPOINT, "rolloutId": "r-1", "seq": 3, "eventId": "evt-1"}


@pytest.mark.parametrize(
    ("text", "fragments"),
    [("not json", ["not JSON"]),
     ("", ["not JSON"]),
     ("[1, 2]", ["must be a JSON object"]),
     ('"tick"', ["must be a JSON object"]),
     ("null", ["must be a JSON object"]),
     ("{}", ["endpoint must be", "rolloutId must be", "eventId must be", "seq must be"]),
     ('{"endpoint": "", "rolloutId": 7, "seq": 1, "eventId": "e"}', ["endpoint must be", "rolloutId must be"]),
     ('{"endpoint": "e", "rolloutId": "r", "seq": -1, "eventId": "e"}', ["seq must be a non-negative integer"]),
     ('{"endpoint": "e", "rolloutId": "r", "seq": true, "eventId": "e"}', ["seq must be"]),
     ('{"endpoint": "e", "rolloutId": "r", "seq": 1.5, "eventId": "e"}', ["seq must be"]),
     ('{"endpoint": "e", "rolloutId": "r", "seq": "1", "eventId": null}', ["seq must be", "eventId must be"])],
)
def test_bad_ticks_name_every_problem(text: str, fragments: list[str]) -> None:
    with pytest.raises(InvalidEventError) as info:
        tick_from_json(text)
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, (fragment, message)
    named = {f.split()[0] for f in fragments}
    for key in {"endpoint", "rolloutId", "eventId", "seq"} - named:
        assert f"{key} must" not in message, (key, message)  # only the real problems are named


@given(st.text(min_size=1), st.text(min_size=1), st.text(min_size=1))
def test_candidate_retry_round_trips(model: str, version: str, event_id: str) -> None:
    retry = CandidateRetry(model, version, event_id)
    assert candidate_retry_from_json(retry.to_json()) == retry


@pytest.mark.parametrize(
    ("text", "fragment"),
    [("not json", "not JSON"), ("[1]", "must be a JSON object"), ("[" * 5000, "not JSON"),
     ('{"modelName": "m", "version": ""}', "version must be a non-empty string; eventId must be")],
)
def test_bad_candidate_retries_are_rejected_with_what_is_wrong(text: str, fragment: str) -> None:
    with pytest.raises(InvalidEventError, match="promotion retry message") as info:
        candidate_retry_from_json(text)
    assert fragment in str(info.value)
