"""Run a flow under a fault schedule and compare where it ends with where the fault-free run ends.

`EndState` is what a run left behind, in three parts:

- `state`: what must equal the fault-free run's (data versions with their sha256 tag, published
  event ids, jobs, models, endpoints with deployments and traffic, rollout outcomes, approval verdicts,
  champion re-scores and ChampionDegraded ids, the retention inventory, rejected inputs);
- `stuck`: what must be empty in every run (a live lease, a batch still sealing, content not
  announced, a submission never confirmed, an active rollout, an open-work row, a message left in a
  queue, an event not delivered, a poison message, a dead letter, a run that never went quiet);
- `effects`: side effects that took effect, counted per key (data versions registered, distinct
  event ids published, jobs, endpoints and deployments created, traffic set to a new value,
  retention actions done): none may exceed the fault-free count. Repeats of a call that is
  idempotent by key (a re-publish of the same event id, a submit of an existing job name, setting the
  same traffic again, a retention action answered 'already') are not side effects.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from shared.adapters.memory.faults import Call, Fault, FaultInjector
from shared.config.policy import Policy
from shared.domain.vocabulary import BatchState, ContentState, RunStatus, Tag, rollout_finished
from tests.chaos.platform import Platform

POISON = "poison message on"


@dataclass(frozen=True)
class Flow:
    """One flow of issue 11: a policy, a script of inputs, and what its fault-free end must show."""

    name: str
    policy: Policy
    script: Callable[[Platform], None]
    expect: Callable[[EndState], list[str]]
    retention: bool = False  # the retention timer runs (hourly, simulated)
    observe: Callable[[Platform], dict[str, Any]] | None = None  # flow-specific end state (e.g. retention's assets)

    def __str__(self) -> str:
        return self.name


@dataclass(frozen=True)
class EndState:
    state: dict[str, Any]
    stuck: tuple[str, ...]
    effects: Counter[str]
    calls: int
    restarts: int = 0
    poisoned: int = 0
    log: tuple[Call, ...] = field(default=(), repr=False, compare=False)


def run_flow(flow: Flow, faults: Iterable[Fault] = (), *, redrive: bool = False) -> EndState:
    """Run `flow` from scratch with `faults` injected, until it is quiet; return where it ended.

    `redrive`: once quiet, replay the blob trigger's poison messages (the operator's redrive) and run on.
    """
    injector = FaultInjector(faults)
    platform = Platform(flow.policy, injector, retention_timer=flow.retention)
    flow.script(platform)
    platform.run()
    if redrive and platform.redrive_blob_poison():
        platform.run()
    return end_state(platform, flow.observe)


def end_state(platform: Platform, observe: Callable[[Platform], dict[str, Any]] | None = None) -> EndState:
    state = {**_state(platform), **(observe(platform) if observe else {})}
    return EndState(state=state, stuck=tuple(_stuck(platform)), effects=effects(platform.injector.calls),
                    calls=platform.injector.count, restarts=platform.restarts, poisoned=platform.poison_count,
                    log=tuple(platform.injector.calls))


def _state(platform: Platform) -> dict[str, Any]:
    s, policy = platform.stores, platform.policy
    data = sorted((v.name, v.version, v.spec.uri, v.spec.tags.get(Tag.SHA256.value, ""))
                  for d in policy.datasets for v in s.workspace.data_versions(d.name))
    endpoints = {}
    for model in policy.models:
        view = s.endpoints.endpoint(model.promotion.endpoint)
        endpoints[model.promotion.endpoint] = None if view is None else (
            tuple(sorted(view.traffic.items())),
            tuple(sorted((d.name, d.state, ":".join(d.model) if d.model else "") for d in view.deployments)))
    rows = s.ledger.entities()
    rollouts = sorted((r["RowKey"], r.get("State"), f"{r.get('CandidateName')}:{r.get('CandidateVersion')}")
                      for r in rows if r["PartitionKey"] == "rollout")
    state: dict[str, Any] = {
        "data versions": data,
        "events published": sorted(e.event_id for e in s.publisher.events),
        "jobs": sorted((j.name, j.status) for j in s.workspace.jobs()),
        "models": sorted(platform.models),
        "endpoints": endpoints,
        "rollouts": rollouts,
        "approvals": sorted((str(r["RowKey"]), r.get("State")) for r in rows if r["PartitionKey"] == "approval"),
        "champion scores": sorted((str(r["RowKey"]), r.get("Model"), r.get("Value"), r.get("Degraded"))
                                  for r in rows if str(r["PartitionKey"]).startswith("score-")),
        "champion degraded": sorted(e.event_id for e in s.publisher.degraded),
        "rejected": sorted(what for what, _ in platform.rejected),
    }
    return state


def _stuck(platform: Platform) -> list[str]:
    found = [f"the run did not go quiet: {platform.timed_out}"] if platform.timed_out else []
    found += [f"{POISON} {queue}: {item}" for queue, item in platform.poisoned]
    found += [f"dead-lettered event for {function}: {event}" for function, event in platform.dead_lettered]
    found += [f"{len(q)} message(s) left on {name}" for name, q in platform.stores.queues.items() if len(q)]
    found += [f"event {d.document['id']} not delivered to {d.function}" for d in platform.events]
    for row in platform.stores.ledger.entities():
        problem = _stuck_row(row)
        if problem:
            found.append(f"{problem}: {_short(row)}")
    return found


def _stuck_row(row: dict[str, Any]) -> str:
    """Why a ledger row is unfinished work at the end of a run ("" if it is not)."""
    pk = str(row["PartitionKey"])
    checks = [
        (pk.startswith("batch-") and row.get("State") == BatchState.SEALING.value, "a batch left sealing"),
        (pk.startswith("content-") and row.get("State") != ContentState.PUBLISHED.value,
         "content registered but never announced" if row.get("State") == ContentState.REGISTERED.value
         else "a content claim left pending"),
        (pk.startswith("retrainrun-") and row.get("Status") == RunStatus.SUBMITTING.value,
         "a retraining submission never confirmed"),
        (pk == "retrain" and bool(row.get("ActiveJob")), "a retraining run still active"),
        (pk == "rollout" and not rollout_finished(str(row.get("State", ""))), "a rollout left active"),
        (pk == "work" or pk.startswith("work-"), "open work left in the ledger's work index"),
    ]
    return next((why for bad, why in checks if bad), "")


def _short(row: dict[str, Any]) -> str:
    keep = ("PartitionKey", "RowKey", "State", "Status", "Dataset", "Folder", "ActiveJob", "ActiveVersion",
            "PendingVersion", "Endpoint", "CandidateName", "CandidateVersion", "Seq", "Kind", "Version")
    return ", ".join(f"{k}={row[k]}" for k in keep if row.get(k) not in (None, ""))


def effects(calls: Iterable[Call]) -> Counter[str]:
    """Side effects that took effect, per key (see the module docstring for what counts)."""
    counted: Counter[str] = Counter()
    seen: set[str] = set()
    traffic: dict[str, Any] = {}
    for call in calls:
        if not call.took_effect:
            continue
        key = _effect(call, traffic)
        if key is None:
            continue
        once = key.startswith(("event ", "job "))
        if once and key in seen:
            continue
        seen.add(key)
        counted[key] += 1
    return counted


def _effect(call: Call, traffic: dict[str, Any]) -> str | None:
    method, args = call.method, call.args
    if method == "register_data_version":
        return f"data version registered: {args[0].name}"
    if method in ("data_version_registered", "champion_degraded"):
        return f"event published: {args[0].event_id}"
    if method == "submit_pipeline":
        return f"job submitted: {args[0].job_name}"
    if method == "begin_create_endpoint":
        return f"endpoint created: {args[0]}"
    if method == "begin_create_deployment":
        return f"deployment created: {args[0].endpoint}/{args[0].name}"
    if method == "begin_set_traffic":
        endpoint, split = args[0], dict(args[1])
        if traffic.get(endpoint) == split:
            return None
        traffic[endpoint] = split
        return f"traffic set: {endpoint} {sorted(split.items())}"
    if method in ("execute", "delete_job_output") and call.result == "done":
        action = args[0]
        return f"retention {action.kind.value}: {action.target}"
    return None


def _diff(key: str, want: Any, got: Any) -> list[str]:
    """What differs under `key`: per entry of a mapping, missing and extra items of a list, else both values."""
    if want == got:
        return []
    if isinstance(want, dict) and isinstance(got, dict):
        return [p for k in sorted(set(want) | set(got), key=str) for p in _diff(f"{key}.{k}", want.get(k), got.get(k))]
    if isinstance(want, list) and isinstance(got, list):
        missing = [item for item in want if item not in got]
        extra = [item for item in got if item not in want]
        if missing or extra:
            return [f"{key}: missing {missing!r}, extra {extra!r}"]
    return [f"{key}: expected {want!r}, got {got!r}"]


def differences(baseline: EndState, run: EndState, *, poison_allowed: bool = False) -> list[str]:
    """How `run` failed to converge to `baseline`: state that differs, work left stuck, side effects twice.

    `poison_allowed`: the schedule failed one message more often than the platform retries it, so it
    sits in `<queue>-poison` (for the redrive command); the work it carried must still be finished.
    """
    problems = [f"stuck: {item}" for item in run.stuck if not (poison_allowed and item.startswith(POISON))]
    for key in sorted(set(baseline.state) | set(run.state)):
        problems += _diff(key, baseline.state.get(key), run.state.get(key))
    for key, count in sorted(run.effects.items()):
        allowed = baseline.effects.get(key, 0)
        if count > allowed:
            problems.append(f"side effect {count}x (fault-free: {allowed}x): {key}")
    return problems
