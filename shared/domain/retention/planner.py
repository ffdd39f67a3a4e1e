"""The plan: which old data versions, models, blobs, idle deployments and job outputs to retire.

`plan_retention` turns an `Inventory` snapshot and the policy's rules into a `RetentionPlan`: a
sorted list of `Action`s, each with its reason and rule, plus the `Protected` assets a rule would
have touched and why it did not. It is pure (no I/O); `shared.services.retention` executes it.

A plan is computed against one snapshot and never counts on its own actions: blobs freed by a
version archived in this run are retired on the next run, and a model becomes archivable only once
its last deployment is gone. The price is that retention converges over a few runs; the gain is that
any subset of a plan, applied in any order or concurrently, or cut short by a crash, is safe.

It fails closed. An address that protects but cannot be read, with no container to keep instead,
suspends every blob and jobOutputs rule for the run (`RetentionPlan.suspended` says which and why);
a comparison in flight whose challenger cannot be read, or a candidate waiting for its evaluation data whose
model cannot be read, suspends every rule but the deployments rule.
A `keepTopK` metric that is NaN or infinite ranks last and is never in the top. A blob action carries
the ETag listed, so a blob changed since is not touched. A job output is deleted only when the job
owns it alone (no other job's output or input, no registered version overlaps it), and only its
blobs written before the job finished: one written later (a job started after the listing) is kept.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import Enum
from typing import Any

from shared.config.retention import (
    DEFAULT_PROTECT_TAG,
    KeepTopK,
    RetentionRule,
    RuleActions,
    RuleFilters,
    RuleType,
)
from shared.domain.keys import digest
from shared.domain.retention.inventory import (
    TIER_RANK,
    AssetKey,
    Blob,
    BlobPath,
    BlobTier,
    DataVersion,
    Inventory,
    Job,
    JobOutputKey,
    ModelVersion,
)
from shared.domain.retention.protection import claims, models_by_job, own_output, protect, references, tagged
from shared.domain.vocabulary import Direction, version_order


# == the plan ========================================================================================
class ActionKind(str, Enum):
    ARCHIVE_DATA = "archive_data"
    DELETE_DATA = "delete_data"
    ARCHIVE_MODEL = "archive_model"
    DELETE_MODEL = "delete_model"
    DELETE_BLOB = "delete_blob"
    TIER_BLOB = "tier_blob"
    DELETE_DEPLOYMENT = "delete_deployment"
    DELETE_JOB_OUTPUT = "delete_job_output"


_KIND_ORDER = {kind: i for i, kind in enumerate(ActionKind)}


@dataclass(frozen=True)
class Action:
    kind: ActionKind
    target: AssetKey
    reason: str
    rule: str
    tier: BlobTier | None = None  # for tier_blob: the tier to move to
    etag: str = ""  # for blob actions: the ETag listed; the action applies only if the blob still has it
    written_before: datetime | None = None  # for job outputs: the job's end; a blob written after it is kept

    @property
    def key(self) -> str:
        """Idempotency key for the audit log: the same decision on the same asset (and blob ETag), the same key."""
        parts = [self.kind.value, str(self.target), self.tier.value if self.tier else ""]
        return digest(*parts, self.etag) if self.etag else digest(*parts)

    def sort_key(self) -> tuple[Any, ...]:
        return (_KIND_ORDER[self.kind], self.target.sort_key())


@dataclass(frozen=True)
class Protected:
    """An asset a rule would have retired, and why it was spared."""

    target: AssetKey
    reason: str


@dataclass(frozen=True)
class Suspended:
    """A rule not applied this run because an address in use could not be read (fail closed)."""

    rule: str
    reason: str

    def __str__(self) -> str:
        return f"rule {self.rule} suspended: {self.reason}"


@dataclass(frozen=True)
class RetentionPlan:
    now: datetime
    actions: tuple[Action, ...]
    protected: tuple[Protected, ...]
    suspended: tuple[Suspended, ...] = ()  # rules not applied this run (fail closed), each with why

    @property
    def is_empty(self) -> bool:
        return not self.actions

    def targets(self) -> frozenset[AssetKey]:
        return frozenset(a.target for a in self.actions)


def job_output_scope(action: Action) -> tuple[str, str, datetime]:
    """What a job output delete may remove: (container, folder prefix, cutoff). Only a blob under the prefix
    whose last-modified time is before the cutoff is the job's: one written later belongs to another writer
    (a job started after the listing) and is kept. The cutoff is the job's end truncated to the second, as
    Storage lists last-modified times, so a blob written in the job's last second is kept too (fail closed).

    Raises ValueError for an action that is not a job output delete, or one without `written_before`.
    """
    target = action.target
    if action.kind is not ActionKind.DELETE_JOB_OUTPUT or not isinstance(target, JobOutputKey):
        raise ValueError(f"not a job output action: {action.kind.value} {target}")
    if action.written_before is None:
        raise ValueError(f"{target}: a job output delete needs the job's end (written_before), so that blobs "
                         "written after it are kept; plan it with plan_retention")
    path = target.path.path
    prefix = path if path == "" or path.endswith("/") else path + "/"
    return target.path.container, prefix, action.written_before.replace(microsecond=0)


# == planning ========================================================================================
_SEVERITY = {
    ActionKind.DELETE_DATA: 3,
    ActionKind.DELETE_MODEL: 3,
    ActionKind.DELETE_BLOB: 3,
    ActionKind.DELETE_DEPLOYMENT: 3,
    ActionKind.DELETE_JOB_OUTPUT: 3,
    ActionKind.ARCHIVE_DATA: 2,
    ActionKind.ARCHIVE_MODEL: 2,
    ActionKind.TIER_BLOB: 1,
}


class _Planner:
    def __init__(self, inventory: Inventory, protect_tag: str) -> None:
        self.inv = inventory
        self.now = inventory.now
        self.protect_tag = protect_tag
        self.guard = protect(inventory, protect_tag)
        self.references = references(inventory)  # paths of non-archived data versions and models
        self.models_from_job = models_by_job(inventory)
        self.claims = claims(inventory)  # who else reads, writes or registers each path (job outputs)
        self.unreadable = sorted(set(self.guard.paths.unreadable + self.references.unreadable))
        self.actions: dict[AssetKey, Action] = {}
        self.spared: dict[AssetKey, list[str]] = defaultdict(list)
        self.suspended: list[Suspended] = []

    # -- bookkeeping --
    def act(self, action: Action) -> None:
        """Several rules may pick one asset: the strongest action wins (delete > archive > tier), as in Azure."""
        current = self.actions.get(action.target)
        if current is None or _rank(action) > _rank(current):
            self.actions[action.target] = action

    def spare(self, key: AssetKey, reasons: Iterable[str]) -> None:
        for why in reasons:
            if why not in self.spared[key]:
                self.spared[key].append(why)

    def age(self, since: datetime) -> timedelta:
        return self.now - since

    # -- versions (data and models share the shape) --
    def versions(self, rule: RetentionRule, items: Sequence[DataVersion] | Sequence[ModelVersion]) -> None:
        by_name: dict[str, list[DataVersion | ModelVersion]] = defaultdict(list)
        for item in items:
            by_name[item.name].append(item)
        for name in sorted(_select_names(by_name, rule.filters)):
            group = [v for v in by_name[name] if _tags_match(v.tags, rule.filters.tags)]
            group.sort(key=lambda v: (v.created_at, version_order(v.version)), reverse=True)
            kept = _kept(rule, name, group)
            for v in group:
                self.version(rule, name, v, kept)

    def version(self, rule: RetentionRule, name: str, v: DataVersion | ModelVersion, kept: Mapping[str, str]) -> None:
        """Delete or archive one version by age, unless it is protected or kept by the rule."""
        acts = rule.actions
        is_data = rule.type is RuleType.DATA_VERSIONS
        age = self.age(v.created_at)
        if acts.delete is not None and age > timedelta(days=acts.delete.days):
            kind = ActionKind.DELETE_DATA if is_data else ActionKind.DELETE_MODEL
            why = f"created {age.days} days ago (> {acts.delete.days})"
        elif acts.archive is not None and not v.archived and (
            age > timedelta(days=acts.archive.days_after_creation_greater_than)
        ):
            kind = ActionKind.ARCHIVE_DATA if is_data else ActionKind.ARCHIVE_MODEL
            why = f"created {age.days} days ago (> {acts.archive.days_after_creation_greater_than})"
        else:
            return
        if self.guard.why(v.key):
            self.spare(v.key, self.guard.why(v.key))
        elif v.version in kept:
            self.spare(v.key, [kept[v.version]])
        else:
            self.act(Action(kind, v.key, why + _beyond(acts, name), rule.name))

    def suspend(self, rule: RetentionRule, why: Sequence[str]) -> bool:
        """Fail closed: a rule that deletes blobs does nothing while an address in use cannot be read."""
        if not why:
            return False
        shown = "; ".join(why[:3]) + (f"; and {len(why) - 3} more" if len(why) > 3 else "")
        self.suspended.append(Suspended(rule.name, f"an address in use cannot be read: {shown}"))
        return True

    def suspend_for_work(self, rule: RetentionRule) -> bool:
        """Fail closed: while work in flight names a model that cannot be read (a garbled comparison or waiting
        candidate entry), no rule that retires versions or blobs runs (that model and its data are unknown);
        deployments do."""
        why = self.guard.unreadable_work
        if not why or rule.type is RuleType.DEPLOYMENTS:
            return False
        shown = "; ".join(why[:3]) + (f"; and {len(why) - 3} more" if len(why) > 3 else "")
        self.suspended.append(Suspended(rule.name, f"work in flight cannot be read: {shown}"))
        return True

    # -- blobs --
    def blobs(self, rule: RetentionRule) -> None:
        if self.suspend(rule, self.unreadable):
            return
        for blob in self.inv.blobs:
            if not _blob_selected(blob, rule.filters):
                continue
            action = self.blob_action(rule, blob)
            if action is None:
                continue
            reasons = self.guard.paths.covering(blob.container, blob.name)
            reasons += self.references.covering(blob.container, blob.name)
            if tagged(blob.tags, self.protect_tag):
                reasons.append(f"tagged {self.protect_tag}")
            if reasons:
                self.spare(blob.key, sorted(set(reasons)))
            else:
                self.act(action)

    def blob_action(self, rule: RetentionRule, blob: Blob) -> Action | None:
        """Delete by age, else the coldest tier the age calls for; never a move to a hotter tier."""
        acts = rule.actions
        age = self.age(blob.last_modified)
        current = blob.tier or BlobTier.HOT
        days = f"modified {age.days} days ago"
        if acts.delete is not None and age > timedelta(days=acts.delete.days):
            return Action(ActionKind.DELETE_BLOB, blob.key, f"{days} (> {acts.delete.days})", rule.name,
                          etag=blob.etag)
        for cond, tier in ((acts.tier_to_archive, BlobTier.ARCHIVE), (acts.tier_to_cool, BlobTier.COOL)):
            if cond is None or TIER_RANK[current] >= TIER_RANK[tier]:
                continue  # never move a blob to a hotter tier (that would rehydrate it)
            if age > timedelta(days=cond.days_after_modification_greater_than):
                why = f"{days} (> {cond.days_after_modification_greater_than}); now {current.value}"
                return Action(ActionKind.TIER_BLOB, blob.key, why, rule.name, tier=tier, etag=blob.etag)
        return None

    # -- deployments --
    def deployments(self, rule: RetentionRule) -> None:
        assert rule.actions.delete_idle is not None  # guaranteed by the rule's validation
        hours = rule.actions.delete_idle.hours_at_zero_traffic_greater_than
        for d in self.inv.deployments:
            if not _name_selected(d.endpoint, rule.filters):
                continue
            if d.takes_traffic or d.zero_traffic_since is None:
                continue
            idle = self.age(d.zero_traffic_since)
            if idle <= timedelta(hours=hours):
                continue
            if self.guard.why(d.key):
                self.spare(d.key, self.guard.why(d.key))
                continue
            idle_hours = idle.total_seconds() / 3600
            self.act(Action(ActionKind.DELETE_DEPLOYMENT, d.key,
                            f"at 0% traffic for {idle_hours:.1f} hours (> {hours:g})", rule.name))

    # -- job outputs --
    def job_outputs(self, rule: RetentionRule) -> None:
        assert rule.actions.delete is not None  # guaranteed by the rule's validation
        if self.suspend(rule, sorted(set(self.unreadable + self.claims.unreadable))):
            return
        days = rule.actions.delete.days
        for job in self.inv.jobs:
            if not job.finished or job.finished_at is None or not _name_selected(job.name, rule.filters):
                continue
            if not _tags_match(job.tags, rule.filters.tags):
                continue
            age = self.age(job.finished_at)
            if age <= timedelta(days=days):
                continue
            why = f"job {job.name} {job.status.lower()} {age.days} days ago (> {days})"
            for output, path in sorted(job.outputs.items()):
                if isinstance(path, BlobPath):  # an unreadable output is never deleted
                    self.job_output(rule, job, JobOutputKey(job.name, output, path), why)

    def job_output(self, rule: RetentionRule, job: Job, key: JobOutputKey, why: str) -> None:
        """Delete an output only if the job owns it alone and nothing protects or references it."""
        own = {own_output(job.name, o) for o in job.outputs}
        reasons = self.guard.paths.overlapping(key.path) + self.references.overlapping(key.path)
        reasons += [f"shared: {r}" for r in self.claims.overlapping(key.path) if r not in own]
        reasons += [f"model {m} was registered from this job" for m in self.models_from_job.get(job.name, [])]
        if tagged(job.tags, self.protect_tag):
            reasons.append(f"job tagged {self.protect_tag}")
        if reasons:
            self.spare(key, reasons)
        else:
            # the job's end rides along: a blob under the output written after it is another writer's, kept
            self.act(Action(ActionKind.DELETE_JOB_OUTPUT, key, why, rule.name, written_before=job.finished_at))

    def plan(self, rules: Sequence[RetentionRule]) -> RetentionPlan:
        for rule in rules:
            if not rule.enabled or self.suspend_for_work(rule):
                continue
            if rule.type is RuleType.DATA_VERSIONS:
                self.versions(rule, self.inv.data_versions)
            elif rule.type is RuleType.MODEL_VERSIONS:
                self.versions(rule, self.inv.model_versions)
            elif rule.type is RuleType.BLOBS:
                self.blobs(rule)
            elif rule.type is RuleType.DEPLOYMENTS:
                self.deployments(rule)
            else:
                self.job_outputs(rule)
        actions = tuple(sorted(self.actions.values(), key=Action.sort_key))
        protected = tuple(
            Protected(key, "; ".join(sorted(why)))  # sorted: the plan must not depend on listing order
            for key, why in sorted(self.spared.items(), key=lambda kv: kv[0].sort_key())
            if key not in self.actions  # a keep in one rule does not stop another rule (Azure semantics)
        )
        return RetentionPlan(now=self.now, actions=actions, protected=protected, suspended=tuple(self.suspended))


def _kept(rule: RetentionRule, name: str, group: Sequence[DataVersion | ModelVersion]) -> dict[str, str]:
    """Versions of one name the rule spares (keepLatest, keepTopK), newest first, with the reason."""
    acts = rule.actions
    kept: dict[str, str] = {}
    if acts.keep_latest is not None:
        active = [v for v in group if not v.archived][: acts.keep_latest]
        for v in active:
            kept.setdefault(v.version, f"one of the latest {acts.keep_latest} versions of {name} (rule {rule.name})")
    if acts.keep_top_k is not None:
        top = acts.keep_top_k
        # NaN and ±inf rank last: never in the top (NaN would break the sort, +inf would always win)
        scored = [v for v in group
                  if isinstance(v, ModelVersion) and math.isfinite(v.metrics.get(top.metric, math.nan))]
        scored.sort(key=lambda v: (_score(v, top), v.created_at, version_order(v.version)), reverse=True)
        for v in scored[: top.k]:
            kept.setdefault(v.version, f"in the top {top.k} of {name} by {top.metric} "
                                       f"({top.direction.value}) (rule {rule.name})")
    return kept


def _rank(action: Action) -> tuple[int, int]:
    return (_SEVERITY[action.kind], TIER_RANK[action.tier] if action.tier else 0)


def _score(v: ModelVersion, top: KeepTopK) -> float:
    value = v.metrics[top.metric]
    return value if top.direction is Direction.HIGHER_IS_BETTER else -value


def _beyond(acts: RuleActions, name: str) -> str:
    parts = []
    if acts.keep_latest is not None:
        parts.append(f"not among the latest {acts.keep_latest} of {name}")
    if acts.keep_top_k is not None:
        parts.append(f"not in the top {acts.keep_top_k.k} by {acts.keep_top_k.metric}")
    return "; " + "; ".join(parts) if parts else ""


def _name_selected(name: str, filters: RuleFilters) -> bool:
    if filters.names and name not in filters.names:
        return False
    return not filters.prefixes or any(name.startswith(p) for p in filters.prefixes)


def _select_names(names: Iterable[str], filters: RuleFilters) -> list[str]:
    if filters.names and not filters.prefixes:
        present = set(names)
        return [n for n in filters.names if n in present]  # a lookup, not a scan
    return [n for n in names if _name_selected(n, filters)]


def _tags_match(tags: Mapping[str, str], wanted: Mapping[str, str]) -> bool:
    return all(tags.get(k) == v for k, v in wanted.items())


def _blob_selected(blob: Blob, filters: RuleFilters) -> bool:
    full = f"{blob.container}/{blob.name}"
    if filters.prefixes and not any(full.startswith(p) for p in filters.prefixes):
        return False
    return _tags_match(blob.tags, filters.tags)


def plan_retention(
    inventory: Inventory,
    rules: Sequence[RetentionRule],
    *,
    protect_tag: str = DEFAULT_PROTECT_TAG,
) -> RetentionPlan:
    """Decide what to retire, and what was spared and why. Pure: no I/O; same input, same plan."""
    return _Planner(inventory, protect_tag).plan(rules)
