"""One retention run: list the inventory, plan (pure, shared.domain.retention), then apply or only show the plan.

The runner takes only ports (`shared.ports`): the workspace and the data account as retention sees
them (`RetentionWorkspace`, `RetentionBlobs`), the ledger's rollouts, candidates awaiting approval,
comparisons in flight and candidates waiting for their evaluation data (the promoter's open work), the
audit log and a clock. The composition root gives it the Azure adapters; tests give it the in-memory ones
(`shared.adapters.memory.retention`).

Apply runs the actions on a small thread pool (bounded concurrency: Azure ML and Storage throttle
bursts). Throttling (429 with Retry-After) is retried by the SDKs' own azure-core retry policies,
which honour Retry-After; an action that still fails is reported and recorded, and the others go on.

Idempotence, so a run cut short by a crash can simply run again:
- the plan is made from a fresh listing, so what was done no longer shows up (an archived version
  is not archived again, a deleted blob is not listed);
- executing an action whose asset is already gone, or already in the wanted state, counts as done
  ('already');
- each decision is written to the audit log *before* it is executed, and a re-run on the same UTC
  day does not write a decision whose action key (`Action.key`) is already in the log. So a crash
  between the record and the action re-executes the action without a second record, and a crash
  after the action leaves its record behind.

Fail closed: the addresses of assets are read through one `AddressBook` per run (the workspace's
datastores and the data account). Rules the planner suspended because an address in use could not
be read are audited (`retention.suspended`, with why). A blob changed since it was listed is
skipped (status 'skipped', 'changed since listed') and audited (`retention.skipped`); so is a job
output whose folder holds blobs written after the job finished (those are kept, the rest deleted).
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime

from shared.config.retention import RetentionPolicy, RuleType
from shared.domain.approval import ApprovalRecord
from shared.domain.audit import AuditRecord
from shared.domain.records import ComparisonWork, RolloutRecord, WaitingCandidate, utcnow
from shared.domain.retention.addresses import AddressBook
from shared.domain.retention.inventory import (
    Approval,
    Inventory,
    ModelKey,
    OpenComparison,
    Rollout,
    WaitingForData,
)
from shared.domain.retention.planner import Action, ActionKind, RetentionPlan, plan_retention
from shared.domain.retention.render import render_plan_table
from shared.domain.telemetry import Attr
from shared.domain.vocabulary import (
    RETENTION_AUDIT_PREFIX,
    ApplyStatus,
    ApprovalState,
    RetentionAudit,
    Tag,
    retention_audit_kind,
)
from shared.domain.workspace import model_ref
from shared.errors import EvergreenError
from shared.ports import AuditLog, Clock, RetentionBlobs, RetentionWorkspace
from shared.telemetry import annotate

log = logging.getLogger(__name__)

MAX_WORKERS = 8
_WORKSPACE_KINDS = frozenset({ActionKind.ARCHIVE_DATA, ActionKind.ARCHIVE_MODEL, ActionKind.DELETE_DATA,
                              ActionKind.DELETE_MODEL, ActionKind.DELETE_DEPLOYMENT})
_BLOB_KINDS = frozenset({ActionKind.DELETE_BLOB, ActionKind.TIER_BLOB})
SKIPPED_CHANGED = "changed since listed"
SKIPPED_NEWER = "blobs written after the job finished were kept"
QUEUED = "queued"  # the state retention gives a candidate queued behind a rollout: not a final phase, so in flight
_NEVER_DEPLOYED = frozenset({ApprovalState.REJECTED, ApprovalState.EXPIRED})  # approvals that protect nothing
_SKIPPED = {ApplyStatus.CHANGED: SKIPPED_CHANGED, ApplyStatus.NEWER: SKIPPED_NEWER}  # port answer -> why skipped

RolloutSource = Callable[[], Sequence[RolloutRecord]]
"""The ledger's rollout rows (`Ledger.rollouts`): retention protects what an active one references."""
ApprovalSource = Callable[[], Sequence[ApprovalRecord]]
"""The ledger's open approvals (`Ledger.open_approvals`): retention protects each candidate with its data."""
ComparisonSource = Callable[[], Sequence[ComparisonWork]]
"""The promoter's comparisons in flight (`Ledger.open_comparisons`): retention protects both sides of each."""
WaitingSource = Callable[[], Sequence[WaitingCandidate]]
"""The promoter's candidates waiting for their evaluation data (`Ledger.waiting_candidates`): retention protects
each with its training data."""


@dataclass(frozen=True)
class Outcome:
    action: Action
    status: ApplyStatus  # done | already | skipped | failed
    error: str = ""  # why it failed or was skipped

    def __post_init__(self) -> None:
        """Stored as the enum even when given its value ('done'); raises ValueError for any other word."""
        object.__setattr__(self, "status", ApplyStatus(self.status))


@dataclass(frozen=True)
class RetentionSummary:
    """What one run saw, decided and did; `timings` are seconds per phase."""

    run_id: str
    dry_run: bool
    plan: RetentionPlan
    outcomes: tuple[Outcome, ...] = ()
    listed: Mapping[str, int] = field(default_factory=dict)
    timings: Mapping[str, float] = field(default_factory=dict)

    @property
    def counts(self) -> dict[str, int]:
        return dict(Counter(o.status for o in self.outcomes))

    @property
    def failed(self) -> tuple[Outcome, ...]:
        return tuple(o for o in self.outcomes if o.status is ApplyStatus.FAILED)

    def render(self) -> str:
        """The plan table, then (after an apply) what happened to each action."""
        lines = [render_plan_table(self.plan).rstrip("\n")]
        if not self.dry_run:
            counts = ", ".join(f"{n} {s}" for s, n in sorted(self.counts.items())) or "nothing to do"
            lines += ["", f"Applied (run {self.run_id}): {counts}"]
            lines += [f"  {o.status:<7} {o.action.kind.value:<18} {o.action.target}"
                      + (f"  ({o.error})" if o.error else "") for o in self.outcomes]
        else:
            lines += ["", "Dry run: nothing was changed."]
        return "\n".join(lines) + "\n"

    def to_json(self) -> str:
        return json.dumps({
            "run_id": self.run_id, "dry_run": self.dry_run, "now": self.plan.now.isoformat(),
            "listed": dict(self.listed), "timings": {k: round(v, 3) for k, v in self.timings.items()},
            "actions": [{"kind": a.kind.value, "target": str(a.target), "reason": a.reason, "rule": a.rule,
                         "tier": a.tier.value if a.tier else None, "key": a.key} for a in self.plan.actions],
            "protected": [{"target": str(p.target), "reason": p.reason} for p in self.plan.protected],
            "suspended": [{"rule": s.rule, "reason": s.reason} for s in self.plan.suspended],
            "outcomes": [{"target": str(o.action.target), "status": o.status.value, "error": o.error}
                         for o in self.outcomes],
        }, indent=2)


class RetentionIncomplete(EvergreenError):
    """Some actions failed (each is in the audit log); the rest were applied. The next run retries them."""

    def __init__(self, summary: RetentionSummary) -> None:
        failed = summary.failed
        super().__init__(f"retention run {summary.run_id}: {len(failed)} of {len(summary.outcomes)} action(s) "
                         f"failed; first: {failed[0].action.target}: {failed[0].error}")
        self.summary = summary


def rollouts_from(records: Sequence[RolloutRecord]) -> tuple[Rollout, ...]:
    """The ledger's active rollouts (the ledger and retention share `rollout_finished`), as the planner sees them,
    each with its rollback target (the champion's deployment and model when it started); and a candidate queued
    behind one (`queued_*`, its approval already closed) as a rollout in state `queued`, which is in flight."""
    out = []
    for r in records:
        if r.queued_name and r.queued_version:
            out.append(Rollout(r.endpoint, ModelKey(r.queued_name, r.queued_version), QUEUED))
        if not (r.active and r.candidate_name):
            continue
        champion = model_ref(r.champion_model) if r.champion_model else None
        out.append(Rollout(r.endpoint, ModelKey(r.candidate_name, r.candidate_version), r.state, r.deployment or None,
                           champion_deployment=r.champion_deployment or None,
                           champion_model=ModelKey(*champion) if champion else None))
    return tuple(out)


def approvals_from(records: Sequence[ApprovalRecord]) -> tuple[Approval, ...]:
    """The candidates held for approval, as the planner sees them. A record in a final state (rejected,
    expired) is never deployed and protects nothing; any other state, including an unknown one, protects."""
    return tuple(Approval(r.endpoint, ModelKey(r.model_name, r.version), str(r.state)) for r in records
                 if r.state not in _NEVER_DEPLOYED)


def _model_key(text: str) -> ModelKey | None:
    """`name:version` (or `azureml:name:version`, an ARM model id) as a key; None unless both parts are there."""
    ref = model_ref(text)
    return ModelKey(*ref) if ref is not None and all(ref) else None


def _comparison(work: ComparisonWork) -> OpenComparison:
    """One comparison in flight as the planner sees it; what cannot be read is said in `unreadable` (fail closed:
    an entry whose tags cannot be read names no model, which suspends the version and blob rules)."""
    job = work.job or "(no job name)"
    if work.tags is None:
        return OpenComparison(job, None, unreadable=work.unreadable)
    model, compared = work.tags.get(Tag.MODEL.value, ""), work.tags.get(Tag.COMPARED_WITH.value, "")
    challenger, champion = _model_key(model), _model_key(compared)
    problems = [] if challenger is not None else [f"challenger {model or '(none)'} is not name:version"]
    if compared and champion is None:
        problems.append(f"champion {compared} is not name:version")
    name = model.removeprefix("azureml:").split(":", 1)[0] if challenger is None and "/" not in model else ""
    return OpenComparison(job, challenger, champion, challenger_name=name, unreadable="; ".join(problems))


def comparisons_from(works: Sequence[ComparisonWork]) -> tuple[OpenComparison, ...]:
    """The comparisons submitted and not yet decided, as the planner sees them. Every entry protects what can
    be read of it (challenger with its data, champion); a garbled one is logged and never stops the run."""
    out = tuple(_comparison(work) for work in works)
    for comparison in out:
        if comparison.unreadable:
            log.warning("retention job=%s: open comparison entry partly unreadable, failing closed: %s",
                        comparison.job, comparison.unreadable)
    return out


def _waiting(entry: WaitingCandidate) -> WaitingForData:
    """One waiting candidate as the planner sees it, read as `_comparison` reads a challenger (fail closed): a
    name without a version protects every version of the name; no name suspends the version and blob rules.
    What retention does not need (the data asset, the time) being unreadable does not weaken the protection."""
    if entry.model_name and entry.version:
        return WaitingForData(entry.key, ModelKey(entry.model_name, entry.version), entry.data_asset)
    why = entry.unreadable or "no model name:version"
    return WaitingForData(entry.key or "(no key)", None, entry.data_asset, candidate_name=entry.model_name,
                          unreadable=why)


def waiting_from(entries: Sequence[WaitingCandidate]) -> tuple[WaitingForData, ...]:
    """The candidates waiting for their evaluation data, as the planner sees them. Every entry protects what
    can be read of it (the candidate with its data); a garbled one is logged and never stops the run."""
    out = tuple(_waiting(entry) for entry in entries)
    for waiting in out:
        if waiting.unreadable:
            log.warning("retention entry=%s: waiting candidate entry partly unreadable, failing closed: %s",
                        waiting.entry, waiting.unreadable)
    return out


class RetentionRunner:
    """Builds the inventory, plans with the policy's rules, and applies (or dry-runs) the plan."""

    def __init__(self, *, policy: RetentionPolicy, workspace: RetentionWorkspace, blobs: RetentionBlobs,
                 rollouts: RolloutSource, approvals: ApprovalSource, comparisons: ComparisonSource,
                 waiting: WaitingSource, audit: AuditLog, clock: Clock = utcnow,
                 max_workers: int = MAX_WORKERS) -> None:
        """Every source of work in flight is required, so a new caller cannot forget one and lose its protection."""
        self.policy = policy
        self._workspace, self._blobs, self._rollouts, self._audit = workspace, blobs, rollouts, audit
        self._approvals = approvals
        self._comparisons = comparisons
        self._waiting = waiting
        self._clock = clock
        self._max_workers = max_workers

    def watched_containers(self) -> list[str]:
        """Containers named by enabled blob rules: the only ones listed (rules without prefixes watch none)."""
        return sorted({p.split("/", 1)[0] for r in self.policy.rules
                       if r.enabled and r.type is RuleType.BLOBS for p in r.filters.prefixes})

    def inventory(self, now: datetime, run_id: str, timings: dict[str, float]) -> Inventory:
        """List everything, blobs first and what is in use last.

        Order matters because the listings are not one atomic snapshot: a data version registered
        while blobs are listed is still seen (and protects its blobs), and a job or rollout started
        meanwhile is seen by the last listings. Anything created after its own listing is simply not
        in the plan, so it is not touched. The ledger's work is read in the order a candidate moves
        through it (waiting for evaluation data, comparison, approval, rollout): each hand-over writes the
        next record before closing the last, so a candidate moving on during the listing is seen in one or
        the other. A listing that fails raises (nothing is planned from half an inventory).
        """
        mark = time.perf_counter()
        blobs = self._blobs.list(self.watched_containers())
        timings["list_blobs"] = time.perf_counter() - mark
        mark = time.perf_counter()
        book = AddressBook.of(self._workspace.datastores(), self._blobs.account_names())
        data = self._workspace.data_versions(book)
        timings["list_data"] = time.perf_counter() - mark
        mark = time.perf_counter()
        models = self._workspace.model_versions(book)
        timings["list_models"] = time.perf_counter() - mark
        mark = time.perf_counter()
        deployments = self._workspace.deployments()
        jobs = self._workspace.jobs(book)
        waiting = waiting_from(self._waiting())
        comparisons = comparisons_from(self._comparisons())
        approvals = approvals_from(self._approvals())
        rollouts = rollouts_from(self._rollouts())
        timings["list_deployments_jobs_rollouts"] = time.perf_counter() - mark
        log.info("retention run=%s listed %d data version(s), %d model version(s), %d deployment(s), %d job(s), "
                 "%d rollout(s), %d approval(s), %d comparison(s), %d waiting candidate(s), %d blob(s)", run_id,
                 len(data), len(models), len(deployments), len(jobs), len(rollouts), len(approvals), len(comparisons),
                 len(waiting), len(blobs))
        return Inventory(now=now, data_versions=tuple(data), model_versions=tuple(models), blobs=tuple(blobs),
                         deployments=tuple(deployments), jobs=tuple(jobs), rollouts=rollouts, approvals=approvals,
                         comparisons=comparisons, waiting=waiting)

    def run(self, *, run_id: str, dry_run: bool, now: datetime | None = None) -> RetentionSummary:
        """One run; `now` is the clock the rules' ages are measured against (default: the runner's clock).

        Raises RetentionIncomplete after applying everything if any action failed.
        """
        timings: dict[str, float] = {}
        inventory = self.inventory(now or self._clock(), run_id, timings)
        mark = time.perf_counter()
        plan = plan_retention(inventory, self.policy.rules, protect_tag=self.policy.protect_tag)
        timings["plan"] = time.perf_counter() - mark
        listed = {"data_versions": len(inventory.data_versions), "model_versions": len(inventory.model_versions),
                  "deployments": len(inventory.deployments), "jobs": len(inventory.jobs),
                  "rollouts": len(inventory.rollouts), "approvals": len(inventory.approvals),
                  "comparisons": len(inventory.comparisons), "waiting": len(inventory.waiting),
                  "blobs": len(inventory.blobs)}
        log.info("retention run=%s planned %d action(s), %d protected, dry_run=%s", run_id, len(plan.actions),
                 len(plan.protected), dry_run)
        for suspended in plan.suspended:
            log.warning("retention run=%s %s", run_id, suspended)
        if dry_run:
            return RetentionSummary(run_id, True, plan, (), listed, timings)
        for suspended in plan.suspended:
            self._audit.record(AuditRecord(kind=retention_audit_kind(RetentionAudit.SUSPENDED),
                                           decision=f"suspended rule {suspended.rule}",
                                           reason=suspended.reason, event_id=run_id, assets={"rule": suspended.rule}))
        mark = time.perf_counter()
        outcomes = self.apply(plan, run_id)
        timings["apply"] = time.perf_counter() - mark
        summary = RetentionSummary(run_id, False, plan, outcomes, listed, timings)
        annotate({Attr.RETENTION_ACTIONS: len(outcomes), Attr.RETENTION_ERRORS: len(summary.failed)})  # alerts
        self._audit.record(AuditRecord(
            kind=retention_audit_kind(RetentionAudit.RUN), decision=f"applied {len(outcomes)} action(s)",
            reason=", ".join(f"{n} {s}" for s, n in sorted(summary.counts.items())) or "nothing to retire",
            event_id=run_id, assets={"protected": str(len(plan.protected)), **{k: str(v) for k, v in listed.items()}},
        ))
        if summary.failed:
            raise RetentionIncomplete(summary)
        return summary

    def apply(self, plan: RetentionPlan, run_id: str) -> tuple[Outcome, ...]:
        """Execute every action (bounded concurrency), recording each decision once in the audit log."""
        recorded = self._recorded_keys()
        with ThreadPoolExecutor(max_workers=self._max_workers, thread_name_prefix="retention-apply") as pool:
            outcomes = tuple(pool.map(lambda a: self._apply_one(a, run_id, recorded), plan.actions))
        for o in outcomes:
            if o.status is ApplyStatus.FAILED:
                log.error("retention run=%s %s %s failed: %s", run_id, o.action.kind.value, o.action.target, o.error)
        return outcomes

    def _recorded_keys(self) -> frozenset[str]:
        """Action keys already recorded today (UTC), read in one partition query before applying."""
        records = self._audit.query(days=1, kind_prefix=RETENTION_AUDIT_PREFIX)
        return frozenset(r.assets.get("action", "") for r in records)

    def _execute(self, action: Action) -> ApplyStatus:
        """Route one action to the port that owns its asset."""
        if action.kind in _WORKSPACE_KINDS:
            return self._workspace.execute(action)
        if action.kind in _BLOB_KINDS:
            return self._blobs.execute(action)
        return self._blobs.delete_job_output(action)

    def _apply_one(self, action: Action, run_id: str, recorded: frozenset[str]) -> Outcome:
        assets = {"target": str(action.target), "action": action.key, "rule": action.rule}
        if action.key not in recorded:
            decision = action.kind.value + (f" to {action.tier.value}" if action.tier else "")
            self._audit.record(AuditRecord(kind=retention_audit_kind(action.kind.value),
                                           decision=f"{decision} {action.target}", reason=action.reason,
                                           event_id=run_id, assets=assets))
        try:
            status = ApplyStatus(self._execute(action))  # a word the vocabulary does not know fails the action
        except Exception as exc:  # reported, recorded, raised at the end: one failure must not stop the others
            error = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            self._audit.record(AuditRecord(kind=retention_audit_kind(RetentionAudit.FAILED),
                                           decision=f"failed {action.kind.value} {action.target}", reason=error,
                                           event_id=run_id, assets=assets))
            return Outcome(action, ApplyStatus.FAILED, error)
        skipped = _SKIPPED.get(status)
        if skipped is not None:
            log.warning("retention run=%s %s %s skipped: %s", run_id, action.kind.value, action.target, skipped)
            self._audit.record(AuditRecord(kind=retention_audit_kind(RetentionAudit.SKIPPED),
                                           decision=f"skipped {action.kind.value} {action.target}", reason=skipped,
                                           event_id=run_id, assets=assets))
            return Outcome(action, ApplyStatus.SKIPPED, skipped)
        log.info("retention run=%s %s %s: %s", run_id, action.kind.value, action.target, status)
        return Outcome(action, status)
