"""What retention never touches, and why: computed once per plan, before any rule, and it always wins.

One function per protection: what is deployed or taking traffic, each endpoint's champion with its
lineage (the data version it was trained from and that version's blobs), inputs and outputs of
unfinished jobs, models and data of in-flight rollouts, of candidates awaiting approval, of both
sides of comparisons not yet decided and of candidates waiting for their evaluation data, and anything
tagged with the protection tag.
Apart from those, `references` answers which blobs a non-archived data version or model still
points at: such a blob is never deleted or tiered either. `claims` answers what a job's output shares
with anything else (another job's output or input, a registered version): only what a job owns
alone is ever deleted as its output.

Addresses fail closed: an `Unreadable` one with a known container protects the whole container; one
without a container is noted in `PathIndex.unreadable`, and the planner then suspends the blob rules.
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from shared.config.retention import DEFAULT_PROTECT_TAG
from shared.domain.retention.inventory import (
    AssetKey,
    AssetLabel,
    BlobPath,
    DataKey,
    Deployment,
    DeploymentKey,
    Inventory,
    Location,
    ModelKey,
    Unreadable,
)

_NO = frozenset({"false", "0", "no"})


class PathIndex:
    """Blob paths referenced by assets, answering 'who references this blob/folder?' in O(depth + hits).

    Files and folders sit in hash maps, so a blob's references are found by looking up its own name
    and each of its parent folders. `overlapping` also finds references *below* a folder through a
    sorted list and bisect. No scan over all references per blob: 20k blobs × 10k versions stays linear.
    """

    def __init__(self) -> None:
        self._files: dict[tuple[str, str], list[str]] = defaultdict(list)
        self._folders: dict[tuple[str, str], list[str]] = defaultdict(list)
        self._sorted: dict[str, list[tuple[str, str]]] = defaultdict(list)
        self._dirty = False
        self.unreadable: list[str] = []  # addresses whose container is unknown: they protect everything

    def add(self, path: Location, why: str) -> None:
        """Index a referenced path; an unreadable address protects its container, or everything (noted)."""
        if isinstance(path, Unreadable):
            if not path.container:
                self.unreadable.append(f"{why}: cannot read {path}")
                return
            why = f"{why}; cannot read {path}, so all of container {path.container} is kept"
            path = BlobPath(path.container, "")
        if path.path == "" or path.path.endswith("/"):
            self._folders[(path.container, path.path)].append(why)
        else:
            self._files[(path.container, path.path)].append(why)
            self._folders[(path.container, path.path + "/")].append(why)
        self._sorted[path.container].append((path.path, why))
        self._dirty = True

    def covering(self, container: str, name: str) -> list[str]:
        """Who references the blob `name`: itself as a file, or any folder above it."""
        found = list(self._files.get((container, name), ()))
        found += self._folders.get((container, ""), ())
        end = name.find("/")
        while end != -1:
            found += self._folders.get((container, name[: end + 1]), ())
            end = name.find("/", end + 1)
        return found

    def overlapping(self, path: BlobPath) -> list[str]:
        """Who references anything at, above or below `path` (a folder, or a file that may be a folder)."""
        if self._dirty:
            for entries in self._sorted.values():
                entries.sort()
            self._dirty = False
        found = self.covering(path.container, path.path)
        folder = path.path if path.path == "" or path.path.endswith("/") else path.path + "/"
        entries = self._sorted.get(path.container, [])
        for ref, why in entries[bisect.bisect_left(entries, (path.path, "")) :]:
            if not ref.startswith(path.path):
                break
            if ref == path.path or ref.startswith(folder):
                found.append(why)
        return sorted(set(found))


@dataclass
class Guard:
    """The protected keys and blob paths with their reasons, computed once per plan."""

    keys: dict[AssetKey, list[str]] = field(default_factory=lambda: defaultdict(list))
    paths: PathIndex = field(default_factory=PathIndex)
    unreadable_work: list[str] = field(default_factory=list)  # work in flight whose model cannot be read

    def protect(self, key: AssetKey, why: str) -> None:
        if why not in self.keys[key]:
            self.keys[key].append(why)

    def why(self, key: AssetKey) -> list[str]:
        return self.keys.get(key, [])


def tagged(tags: Mapping[str, str], protect_tag: str) -> bool:
    """The tag protects unless it plainly says no: a typo must keep, not expose."""
    value = tags.get(protect_tag)
    return value is not None and value.strip().lower() not in _NO


def champions(deployments: Iterable[Deployment]) -> dict[str, list[Deployment]]:
    """Per endpoint, the deployment(s) taking the most live traffic (all of them on a tie); none at 0%."""
    by_endpoint: dict[str, list[Deployment]] = defaultdict(list)
    for d in deployments:
        by_endpoint[d.endpoint].append(d)
    out: dict[str, list[Deployment]] = {}
    for endpoint, group in by_endpoint.items():
        top = max(d.traffic_percent for d in group)
        if top > 0:
            out[endpoint] = sorted((d for d in group if d.traffic_percent == top), key=lambda d: d.name)
    return out


class _Lineage:
    """Protects a version together with what it stands on: its blobs and, if asked, its training data."""

    def __init__(self, inventory: Inventory, guard: Guard) -> None:
        self.guard = guard
        self._data = {v.key: v for v in inventory.data_versions}
        self._models = {m.key: m for m in inventory.model_versions}
        self._data_by_name: dict[str, list[DataKey]] = defaultdict(list)
        self._models_by_name: dict[str, list[ModelKey]] = defaultdict(list)
        for v in inventory.data_versions:
            self._data_by_name[v.name].append(v.key)
        for m in inventory.model_versions:
            self._models_by_name[m.name].append(m.key)

    def data(self, key: DataKey, why: str) -> None:
        self.guard.protect(key, why)
        version = self._data.get(key)
        for path in version.blob_paths if version else ():
            self.guard.paths.add(path, f"referenced by {key} ({why})")

    def label(self, ref: AssetLabel, why: str) -> None:
        """Every version of a labelled asset (the label moves); a name with no version listed fails closed."""
        found = False
        if ref.kind in ("", "data"):
            for key in self._data_by_name.get(ref.name, ()):
                self.data(key, f"{why} (as {ref})")
                found = True
        if ref.kind in ("", "model"):
            for mkey in self._models_by_name.get(ref.name, ()):
                self.model(mkey, f"{why} (as {ref})", with_data=False)
                found = True
        if not found:
            self.guard.paths.add(Unreadable(str(ref), f"no version of {ref.name} is listed"), why)

    def versions_of(self, name: str) -> list[ModelKey]:
        """Every listed version of the model `name`."""
        return list(self._models_by_name.get(name, ()))

    def model(self, key: ModelKey, why: str, *, with_data: bool) -> None:
        self.guard.protect(key, why)
        model = self._models.get(key)
        if model is None:
            return
        for path in model.blob_paths:
            self.guard.paths.add(path, f"artifact of {key} ({why})")
        if with_data and model.trained_on is not None:
            self.data(model.trained_on, f"trained {key}, {why}")


def _protect_deployed(inventory: Inventory, lineage: _Lineage) -> None:
    """A deployment taking live or mirrored traffic, and every deployed model (not its data)."""
    for d in inventory.deployments:
        if d.takes_traffic:
            lineage.guard.protect(
                d.key, f"taking traffic ({d.traffic_percent}% live, {d.mirror_traffic_percent}% mirror)")
        if d.model is not None:
            lineage.model(d.model, f"deployed as {d.endpoint}/{d.name}", with_data=False)


def _protect_champions(inventory: Inventory, lineage: _Lineage) -> None:
    """Each endpoint's champion, its model with the data it was trained on, and standbys of that model."""
    for endpoint, tops in champions(inventory.deployments).items():
        why = f"champion of endpoint {endpoint}"
        for d in tops:
            lineage.guard.protect(d.key, why)
            if d.model is not None:
                lineage.model(d.model, why, with_data=True)
        champion_models = {d.model for d in tops if d.model is not None}
        for d in inventory.deployments:  # a standby of the champion's model is the champion's too
            if d.endpoint == endpoint and d.model in champion_models and d not in tops:
                lineage.guard.protect(d.key, f"serves the champion model of endpoint {endpoint}")


def _protect_unfinished_jobs(inventory: Inventory, lineage: _Lineage) -> None:
    """What a queued or running job reads (data, models, paths) and the folders it writes."""
    for job in inventory.jobs:
        if job.finished:
            continue
        why = f"used by {job.status.lower()} job {job.name}"
        for item in job.inputs:
            if isinstance(item, DataKey):
                lineage.data(item, why)
            elif isinstance(item, ModelKey):
                lineage.model(item, why, with_data=False)
            elif isinstance(item, AssetLabel):
                lineage.label(item, why)
            else:
                lineage.guard.paths.add(item, why)
        for name, path in sorted(job.outputs.items()):
            lineage.guard.paths.add(path, f"output {name} of {job.status.lower()} job {job.name}")


def _protect_in_flight_rollouts(inventory: Inventory, lineage: _Lineage) -> None:
    """An in-flight rollout's candidate with its data, the deployments taking part in it, and its rollback
    target (the champion's deployment and model, with its data) until the rollout has finished."""
    for rollout in inventory.rollouts:
        if not rollout.in_flight:
            continue
        why = f"candidate of the {rollout.state} rollout on {rollout.endpoint}"
        lineage.model(rollout.candidate, why, with_data=True)
        for d in inventory.deployments:
            if d.endpoint == rollout.endpoint and (d.name == rollout.deployment or d.model == rollout.candidate):
                lineage.guard.protect(d.key, f"part of the {rollout.state} rollout on {rollout.endpoint}")
        target = f"rollback target of the {rollout.state} rollout on {rollout.endpoint}"
        if rollout.champion_deployment:
            lineage.guard.protect(DeploymentKey(rollout.endpoint, rollout.champion_deployment), target)
        if rollout.champion_model is not None:
            lineage.model(rollout.champion_model, target, with_data=True)


def _protect_awaiting_approval(inventory: Inventory, lineage: _Lineage) -> None:
    """A candidate awaiting approval (or approved, its rollout not yet started), with the data it was trained on."""
    for approval in inventory.approvals:
        why = f"candidate awaiting approval on {approval.endpoint} ({approval.state or 'state unknown'})"
        lineage.model(approval.candidate, why, with_data=True)


def _protect_compared(inventory: Inventory, lineage: _Lineage) -> None:
    """A comparison in flight: its challenger (with its training data) and the champion it is compared with.

    A challenger whose version cannot be read protects every listed version of its name; one whose name
    cannot be read either is noted in `Guard.unreadable_work` (the planner suspends the rules it could break).
    """
    for comparison in inventory.comparisons:
        why = f"compared in job {comparison.job}, not yet decided"
        _protect_candidate(lineage, comparison.challenger, comparison.challenger_name, f"challenger {why}",
                           comparison.unreadable, f"comparison job {comparison.job}")
        if comparison.champion is not None:
            lineage.model(comparison.champion, f"champion {why}", with_data=True)


def _protect_waiting_for_data(inventory: Inventory, lineage: _Lineage) -> None:
    """A candidate waiting for its evaluation data, with the data it was trained on: it is gated when that data
    lands and may be promoted. Read fail closed as `_protect_compared` reads a challenger: a version that cannot
    be read protects every listed version of the name; a name that cannot be read is noted in
    `Guard.unreadable_work` (the planner suspends the rules it could break).
    """
    for waiting in inventory.waiting:
        why = f"candidate waiting for its evaluation data {waiting.data_asset or '(asset unknown)'}"
        _protect_candidate(lineage, waiting.candidate, waiting.candidate_name, why, waiting.unreadable,
                           f"waiting candidate entry {waiting.entry}")


def _protect_candidate(lineage: _Lineage, candidate: ModelKey | None, name: str, why: str, unreadable: str,
                       entry: str) -> None:
    """A model version that may be promoted, with its training data, read fail closed: a version that cannot be
    read protects every listed version of `name`; no name either notes `entry` in `Guard.unreadable_work`."""
    if candidate is not None:
        lineage.model(candidate, why, with_data=True)
    elif name:
        for key in lineage.versions_of(name):
            lineage.model(key, f"may be the {why} ({unreadable})", with_data=True)
    else:
        lineage.guard.unreadable_work.append(f"{entry}: {unreadable}")


def _protect_tagged(inventory: Inventory, lineage: _Lineage, protect_tag: str) -> None:
    """Deployments, data versions and models carrying the protection tag (blobs and jobs: in the planner)."""
    why = f"tagged {protect_tag}"
    for d in inventory.deployments:
        if tagged(d.tags, protect_tag):
            lineage.guard.protect(d.key, why)
    for v in inventory.data_versions:
        if tagged(v.tags, protect_tag):
            lineage.data(v.key, why)
    for m in inventory.model_versions:
        if tagged(m.tags, protect_tag):
            lineage.model(m.key, why, with_data=False)


def protect(inventory: Inventory, protect_tag: str) -> Guard:
    """Every protection applied to one inventory: the keys and paths no rule may touch, with reasons."""
    guard = Guard()
    lineage = _Lineage(inventory, guard)
    _protect_deployed(inventory, lineage)
    _protect_champions(inventory, lineage)
    _protect_unfinished_jobs(inventory, lineage)
    _protect_in_flight_rollouts(inventory, lineage)
    _protect_awaiting_approval(inventory, lineage)
    _protect_compared(inventory, lineage)
    _protect_waiting_for_data(inventory, lineage)
    _protect_tagged(inventory, lineage, protect_tag)
    return guard


def references(inventory: Inventory) -> PathIndex:
    """Blob paths of non-archived data versions and models: a blob under one is never deleted or tiered."""
    index = PathIndex()
    for v in inventory.data_versions:
        if not v.archived:
            for path in v.blob_paths:
                index.add(path, f"referenced by non-archived {v.key}")
    for m in inventory.model_versions:
        if not m.archived:
            for path in m.blob_paths:
                index.add(path, f"artifact of non-archived {m.key}")
    return index


def claims(inventory: Inventory) -> PathIndex:
    """Every path a job reads or writes and every path a version (archived or not) is registered at.

    A job output is deleted only if nothing here but that job's own outputs overlaps it. Reasons name
    the job as `output <name> of job <job>` so the planner can leave the job's own out.
    """
    index = PathIndex()
    for job in inventory.jobs:
        for item in job.inputs:
            if isinstance(item, BlobPath | Unreadable):
                index.add(item, f"input of job {job.name}")
        for name, path in sorted(job.outputs.items()):
            index.add(path, own_output(job.name, name))
    for v in inventory.data_versions:
        for path in v.blob_paths:
            index.add(path, f"registered as {v.key}")
    for m in inventory.model_versions:
        for path in m.blob_paths:
            index.add(path, f"registered as {m.key}")
    return index


def own_output(job: str, output: str) -> str:
    """How `claims` names a job's own output (so it can be told apart from everything else)."""
    return f"output {output} of job {job}"


def models_by_job(inventory: Inventory) -> dict[str, list[ModelKey]]:
    """The models registered from each job's outputs: those outputs are the models' artifacts."""
    out: dict[str, list[ModelKey]] = defaultdict(list)
    for m in inventory.model_versions:
        if m.job:
            out[m.job].append(m.key)
    return out


def protected_assets(inventory: Inventory, *, protect_tag: str = DEFAULT_PROTECT_TAG) -> dict[AssetKey, str]:
    """Every protected version and deployment with its reasons (blobs are protected through their paths)."""
    guard = protect(inventory, protect_tag)
    return {key: "; ".join(sorted(why)) for key, why in sorted(guard.keys.items(), key=lambda kv: kv[0].sort_key())}
