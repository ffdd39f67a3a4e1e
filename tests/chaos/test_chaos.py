"""A fault at every port call: each flow of issue 11 must converge to its fault-free end state.

For each flow: run it fault-free (its end state, and its number N of port calls); then for every
k in 0..N-1 run it three more times: call k fails (FAIL), call k takes effect and its reply is lost
(LOST_REPLY), the process dies right after call k took effect and restarts with redelivery (CRASH).
Then random schedules of 2-4 faults of any kind (hypothesis, a fixed budget: `CHAOS_EXAMPLES` per
flow, 25 by default; `python -m devstack chaos` runs 200). Every schedule must reach the fault-free
end state with nothing stuck and no side effect twice (`tests/chaos/harness.py` says what that means).

A non-converging schedule fails the test naming the flow, the schedule and the difference; the
summary at the end of the run counts schedules run and converged per flow.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from shared.adapters.memory.faults import Call, Fault, FaultKind
from shared.services.promotion import ROLLOUT_QUEUE
from tests.chaos.flows import FLOWS, QUEUED_FLOWS
from tests.chaos.harness import EndState, Flow, differences, run_flow
from tests.chaos.platform import MAX_DEQUEUE
from tests.chaos.report import record

EXAMPLES = int(os.environ.get("CHAOS_EXAMPLES", "25"))
LISTED = 10  # non-converging schedules spelled out in a failure message


_BASELINES: dict[str, EndState] = {}


def baseline(flow: Flow) -> EndState:
    """The flow's fault-free end state, run once per session."""
    if flow.name not in _BASELINES:
        _BASELINES[flow.name] = run_flow(flow)
    return _BASELINES[flow.name]


def schedule_name(faults: tuple[Fault, ...]) -> str:
    return "+".join(str(f) for f in faults) or "fault-free"


def check(flow: Flow, faults: tuple[Fault, ...]) -> list[str]:
    """Run `flow` under `faults`; the differences from its fault-free end state (recorded in the tally)."""
    problems = differences(baseline(flow), run_flow(flow, faults))
    record(flow.name, schedule_name(faults), problems)
    return problems


def report(flow: Flow, failed: dict[str, list[str]], total: int) -> str:
    lines = [f"{flow.name}: {len(failed)} of {total} schedule(s) did not converge"]
    for schedule, problems in list(failed.items())[:LISTED]:
        lines.append(f"  {schedule}:")
        lines += [f"    - {p}" for p in problems[:6]]
    if len(failed) > LISTED:
        lines.append(f"  … and {len(failed) - LISTED} more: {', '.join(list(failed)[LISTED:LISTED + 40])}")
    return "\n".join(lines)


@pytest.mark.parametrize("flow", FLOWS, ids=str)
def test_the_fault_free_run_reaches_the_flows_end_state(flow: Flow) -> None:
    end = baseline(flow)
    assert end.restarts == 0
    problems = [f"stuck: {item}" for item in end.stuck] + flow.expect(end)
    record(flow.name, "fault-free", problems)
    assert not problems, f"{flow.name} fault-free: " + "; ".join(problems)


@pytest.mark.parametrize("kind", list(FaultKind), ids=str)
@pytest.mark.parametrize("flow", FLOWS, ids=str)
def test_a_fault_at_every_port_call_converges(flow: Flow, kind: FaultKind) -> None:
    calls = baseline(flow).calls
    assert calls > 0, f"{flow.name} made no port call: nothing to inject a fault into"
    failed: dict[str, list[str]] = {}
    for k in range(calls):
        faults = (Fault(k, kind),)
        problems = check(flow, faults)
        if problems:
            failed[schedule_name(faults)] = problems
    assert not failed, report(flow, failed, calls)


@pytest.mark.parametrize("flow", [f for f in FLOWS if f.name in QUEUED_FLOWS], ids=str)
def test_work_whose_message_is_poisoned_by_a_burst_of_failures_is_still_finished(flow: Flow) -> None:
    """MAX_DEQUEUE calls in a row fail from call k; where that poisons a queue message, its work still finishes.

    The poison message stays for the redrive command. The work it carried is in the ledger (a seal, a
    rollout step: issue 11's poisoned step, a retraining re-check), so the reconciler must finish it; a
    blob trigger message leaves no trace, so the operator's replay of the blob poison queue is part of
    the schedule. Nothing may be left stuck or done twice. A burst that poisons nothing (it only delays
    events) is a multi-fault schedule, not this test's: it is not counted here.
    """
    base = baseline(flow)
    failed: dict[str, list[str]] = {}
    poisoning = 0
    for k in range(base.calls):
        faults = tuple(Fault(k + i, FaultKind.FAIL) for i in range(MAX_DEQUEUE))
        end = run_flow(flow, faults, redrive=True)
        if not end.poisoned:
            continue
        poisoning += 1
        name = f"burst@{k}..{k + MAX_DEQUEUE - 1}"
        problems = differences(base, end, poison_allowed=True)
        record(flow.name, name, problems)
        if problems:
            failed[name] = problems
    assert poisoning, f"{flow.name}: no burst poisoned a message; it does not belong in QUEUED_FLOWS"
    assert not failed, report(flow, failed, poisoning)


@dataclass(frozen=True)
class Stall:
    """One of issue 11's stall scenarios, found by its port call rather than by a call number that drifts."""

    name: str
    flow: str
    port: str
    method: str
    burst: bool = False  # MAX_DEQUEUE failures in a row from that call: the message is poisoned
    after: tuple[str, str] | None = None  # the first such call after this (port, method) one

    def find(self, log: tuple[Call, ...]) -> int | None:
        """The index of the scenario's call in a fault-free run's log."""
        start = 0
        if self.after is not None:
            start = next((c.index + 1 for c in log if (c.port, c.method) == self.after), len(log))
        return next((c.index for c in log[start:] if (c.port, c.method) == (self.port, self.method)), None)

    def __str__(self) -> str:
        return self.name


STALLS = (
    Stall("defect 1, seal: Azure ML fails", "batch-sealed-by-marker", "registry", "register_data_version"),
    Stall("defect 1, seal: announcement fails", "batch-sealed-by-marker", "publisher", "data_version_registered"),
    Stall("defect 2, retrain: submit fails", "retrain-submit", "jobs", "submit_pipeline"),
    Stall("defect 3, rollout start: step not queued", "model-registered-to-100-percent", ROLLOUT_QUEUE, "send"),
    Stall("defect 4, rollout step poisoned", "model-registered-to-100-percent", "endpoints", "endpoint",
          burst=True, after=(ROLLOUT_QUEUE, "send")),
)


@pytest.mark.parametrize("stall", STALLS, ids=str)
def test_the_stall_scenarios_of_issue_11_converge(stall: Stall) -> None:
    """Each stall that once stopped a flow for good, hit at its own port call in every fault kind."""
    flow = next(f for f in FLOWS if f.name == stall.flow)
    base = baseline(flow)
    at = stall.find(base.log)
    assert at is not None, f"{flow.name} never calls {stall.port}.{stall.method}: the scenario is not reached"
    kinds = [FaultKind.FAIL] if stall.burst else list(FaultKind)
    failed: dict[str, list[str]] = {}
    for kind in kinds:
        faults = tuple(Fault(at + i, kind) for i in range(MAX_DEQUEUE if stall.burst else 1))
        end = run_flow(flow, faults)
        if stall.burst:
            assert end.poisoned, f"{stall}: the burst {schedule_name(faults)} poisoned nothing"
        problems = differences(base, end, poison_allowed=stall.burst)
        record(f"stall: {stall}", schedule_name(faults), problems)
        if problems:
            failed[schedule_name(faults)] = problems
    assert not failed, report(flow, failed, len(kinds))


def schedules(calls: int) -> st.SearchStrategy[tuple[Fault, ...]]:
    """2-4 faults of any kind at distinct calls (a little past N: retries make more calls than the fault-free run)."""
    fault = st.builds(Fault, st.integers(0, calls + calls // 4), st.sampled_from(list(FaultKind)))
    return st.lists(fault, min_size=2, max_size=4, unique_by=lambda f: f.at).map(
        lambda faults: tuple(sorted(faults, key=lambda f: f.at)))


@pytest.mark.parametrize("flow", FLOWS, ids=str)
def test_random_multi_fault_schedules_converge(flow: Flow) -> None:
    calls = baseline(flow).calls

    @settings(max_examples=EXAMPLES, derandomize=True, deadline=None, database=None,
              phases=(Phase.explicit, Phase.generate, Phase.shrink), suppress_health_check=list(HealthCheck))
    @given(faults=schedules(calls))
    def converges(faults: tuple[Fault, ...]) -> None:
        problems = check(flow, faults)
        assert not problems, report(flow, {schedule_name(faults): problems}, 1)

    converges()
