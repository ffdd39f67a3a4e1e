"""Property tests: on random asset graphs and random rules, no plan ever touches what must be kept.

What is protected is recomputed here by a naive oracle (plain loops over everything, no index), so the
planner's protection and its blob↔version index are checked against an independent implementation.
"""

import dataclasses
import math
import random
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared.domain.retention import (
    Action,
    ActionKind,
    AddressBook,
    Approval,
    AssetLabel,
    Blob,
    BlobKey,
    BlobPath,
    BlobTier,
    DataKey,
    Datastore,
    DataVersion,
    Deployment,
    DeploymentKey,
    Inventory,
    Job,
    JobOutputKey,
    Location,
    ModelKey,
    ModelVersion,
    OpenComparison,
    RetentionPlan,
    RetentionRule,
    Rollout,
    WaitingForData,
    plan_retention,
    read_job_input,
)
from shared.domain.retention.inventory import JobInput
from shared.domain.vocabulary import Phase
from tests.unit.test_retention import apply_in_memory

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
TAG = "evergreen.keep"
DIRECTIONS = ["higher_is_better", "lower_is_better", "max", "min"]  # the legacy spelling still parses
CONTAINERS = ("landing", "runs")
SEGMENTS = ("a", "b", "ab")
DATA_NAMES = ("churn", "churn-ref", "sales")
MODEL_NAMES = ("clf", "clf-big")
ENDPOINTS = ("e1", "e2")
JOB_STATUSES = ("Running", "Queued", "Completed", "Failed", "Canceled", "Finalizing")
ROLLOUT_STATES = ("shifting", "grace", "canary", "succeeded", "rolled_back")  # canary: unknown, so in flight
APPROVAL_STATES = ("pending", "approved", "rejected", "expired", "")  # "": unreadable, so it protects
NEVER_DEPLOYED = ("rejected", "expired")  # the only approval states that protect nothing
READS = ("whole",) * 8 + ("name", "nothing")  # how much of an open comparison entry could be read


def open_comparison(job: str, challenger: ModelKey, champion: ModelKey | None, read: str) -> OpenComparison:
    """A comparison in flight as the service reads it: whole, only the challenger's name, or nothing of it."""
    if read == "whole":
        return OpenComparison(job, challenger, champion)
    if read == "name":
        return OpenComparison(job, None, champion, challenger_name=challenger.name, unreadable="no version")
    return OpenComparison(job, None, champion, unreadable="tags are not JSON")


def waiting_entry(entry: str, candidate: ModelKey, read: str) -> WaitingForData:
    """A candidate waiting for its evaluation data as the service reads it: whole, only its name, or nothing."""
    if read == "whole":
        return WaitingForData(entry, candidate, "churn-eval")
    if read == "name":
        return WaitingForData(entry, None, "churn-eval", candidate_name=candidate.name, unreadable="it has no Version")
    return WaitingForData(entry, None, "churn-eval", unreadable="it has no Model")


def unreadable_work(inv: Inventory) -> bool:
    """A comparison or waiting candidate of which nothing could be read: only the deployments rule may act."""
    return (any(c.challenger is None and not c.challenger_name for c in inv.comparisons)
            or any(w.candidate is None and not w.candidate_name for w in inv.waiting))

ages = st.integers(min_value=0, max_value=400).map(lambda d: NOW - timedelta(days=d))
tags = st.sampled_from([{}, {}, {TAG: "true"}, {TAG: "false"}, {"stage": "raw"}])


@st.composite
def paths(draw, *, folder=None):
    depth = draw(st.integers(0, 3))
    parts = [draw(st.sampled_from(SEGMENTS)) for _ in range(depth)]
    is_folder = draw(st.booleans()) if folder is None else folder
    text = "/".join(parts)
    if is_folder and text:
        text += draw(st.sampled_from(["/", ""]))  # sometimes an adapter forgets the folder's slash
    elif not is_folder and not text:
        text = "a"
    return BlobPath(draw(st.sampled_from(CONTAINERS)), text)


@st.composite
def inventories(draw):
    data = {}
    for name in draw(st.lists(st.sampled_from(DATA_NAMES), unique=True, max_size=3)):
        for v in range(1, draw(st.integers(1, 6)) + 1):
            data[(name, str(v))] = DataVersion(name, str(v), draw(ages), archived=draw(st.booleans()), tags=draw(tags),
                                               blob_paths=tuple(draw(st.lists(paths(), max_size=2))))
    data_keys = [DataKey(*k) for k in data]
    models = {}
    for name in draw(st.lists(st.sampled_from(MODEL_NAMES), unique=True, max_size=2)):
        for v in range(1, draw(st.integers(1, 6)) + 1):
            trained = draw(st.sampled_from(data_keys)) if data_keys and draw(st.booleans()) else None
            models[(name, str(v))] = ModelVersion(
                name, str(v), draw(ages), archived=draw(st.booleans()), tags=draw(tags),
                metrics=draw(st.sampled_from([{}, {"auc": 0.5}, {"auc": 0.9}, {"auc": 0.7, "rmse": 0.1}])),
                data_asset=trained.name if trained else None, data_version=trained.version if trained else None,
                blob_paths=tuple(draw(st.lists(paths(), max_size=1))),
                job=draw(st.sampled_from([None, "j0", "j1"])),
            )
    model_keys = [ModelKey(*k) for k in models] + [ModelKey("elsewhere", "1")]
    blobs = {}
    for _ in range(draw(st.integers(0, 25))):
        p = draw(paths(folder=False))
        blobs[(p.container, p.path)] = Blob(p.container, p.path, draw(ages), tier=draw(st.sampled_from(list(BlobTier))),
                                            tags=draw(tags))
    deployments = {}
    for _ in range(draw(st.integers(0, 5))):
        endpoint, name = draw(st.sampled_from(ENDPOINTS)), draw(st.sampled_from(["blue", "green", "red"]))
        m = draw(st.sampled_from(model_keys))
        deployments[(endpoint, name)] = Deployment(
            endpoint, name, draw(st.sampled_from([0, 0, 10, 50, 100])),
            draw(st.none() | st.integers(0, 100).map(lambda h: NOW - timedelta(hours=h))),
            m.name, m.version, mirror_traffic_percent=draw(st.sampled_from([0, 0, 20])), tags=draw(tags))
    inputs = st.sampled_from(data_keys or [DataKey("x", "1")]) | st.sampled_from(model_keys) | paths()
    jobs = tuple(
        Job(f"j{i}", draw(st.sampled_from(JOB_STATUSES)), inputs=tuple(draw(st.lists(inputs, max_size=3))),
            outputs={f"o{k}": p for k, p in enumerate(draw(st.lists(paths(), max_size=2)))},
            finished_at=draw(st.none() | ages), tags=draw(tags))
        for i in range(draw(st.integers(0, 3)))
    )
    rollouts = tuple(
        Rollout(draw(st.sampled_from(ENDPOINTS)), draw(st.sampled_from(model_keys)),
                draw(st.sampled_from(ROLLOUT_STATES)), draw(st.none() | st.sampled_from(["blue", "green", "red"])))
        for _ in range(draw(st.integers(0, 2)))
    )
    approvals = tuple(Approval(draw(st.sampled_from(ENDPOINTS)), draw(st.sampled_from(model_keys)),
                               draw(st.sampled_from(APPROVAL_STATES))) for _ in range(draw(st.integers(0, 2))))
    comparisons = tuple(open_comparison(f"cmp{i}", draw(st.sampled_from(model_keys)),
                                        draw(st.none() | st.sampled_from(model_keys)), draw(st.sampled_from(READS)))
                        for i in range(draw(st.integers(0, 2))))
    waiting = tuple(waiting_entry(f"w{i}", draw(st.sampled_from(model_keys)), draw(st.sampled_from(READS)))
                    for i in range(draw(st.integers(0, 2))))
    return Inventory(NOW, tuple(data.values()), tuple(models.values()), tuple(blobs.values()),
                     tuple(deployments.values()), jobs, rollouts, approvals, comparisons, waiting)


days = st.integers(0, 200)
T = TypeVar("T")


@st.composite
def rules(draw):
    out = []
    for i in range(draw(st.integers(1, 6))):
        kind = draw(st.sampled_from(["data_versions", "model_versions", "blobs", "deployments", "job_outputs"]))
        filters: dict[str, Any] = {}
        if kind == "data_versions":
            archive, delete = sorted(draw(st.lists(days, min_size=2, max_size=2)))
            actions = {"archive": {"days_after_creation_greater_than": archive},
                       "delete": {"days_after_creation_greater_than": delete}}
            actions = draw(st.sampled_from([actions, {"archive": actions["archive"]}, {"delete": actions["delete"]}]))
            if draw(st.booleans()):
                actions["keep_latest"] = draw(st.integers(1, 3))
            if draw(st.booleans()):
                filters = draw(st.sampled_from(
                    [{"names": ["churn"]}, {"prefixes": ["churn"]}, {"tags": {"stage": "raw"}}]))
        elif kind == "model_versions":
            actions = {draw(st.sampled_from(["archive", "delete"])): {"days_after_creation_greater_than": draw(days)}}
            if draw(st.booleans()):
                actions["keep_latest"] = draw(st.integers(1, 3))
            if draw(st.booleans()):
                actions["keep_top_k"] = {"k": draw(st.integers(1, 2)), "metric": "auc",
                                       "direction": draw(st.sampled_from(DIRECTIONS))}
        elif kind == "blobs":
            cool, cold, delete = sorted(draw(st.lists(days, min_size=3, max_size=3, unique=True)))
            actions = draw(st.sampled_from([
                {"delete": {"days_after_modification_greater_than": delete}},
                {"tier_to_cool": {"days_after_modification_greater_than": cool}},
                {"tier_to_cool": {"days_after_modification_greater_than": cool},
                 "tier_to_archive": {"days_after_modification_greater_than": cold},
                 "delete": {"days_after_modification_greater_than": delete}},
                {"tier_to_archive": {"days_after_modification_greater_than": cold}},
            ]))
            if draw(st.booleans()):
                filters = {"prefixes": [draw(st.sampled_from(["landing/", "runs/a", "landing/a/"]))]}
        elif kind == "deployments":
            actions = {"delete_idle": {"hours_at_zero_traffic_greater_than": draw(st.integers(1, 72))}}
        else:
            actions = {"delete": {"days_after_completion_greater_than": draw(days)}}
        out.append(RetentionRule.model_validate(
            {"name": f"r{i}", "type": kind, "actions": actions, "filters": filters, "enabled": draw(st.booleans())
             or i == 0}))
    return out


# -- the oracle: what must never be touched, computed the slow, obvious way --------------------------------
def covers(ref: BlobPath, container: str, name: str) -> bool:
    if ref.container != container:
        return False
    p = ref.path
    return p == "" or name == p or name.startswith(p if p.endswith("/") else p + "/")


def overlaps(a: BlobPath, b: BlobPath) -> bool:
    if a.container != b.container:
        return False
    fa = a.path if a.path in ("",) or a.path.endswith("/") else a.path + "/"
    fb = b.path if b.path in ("",) or b.path.endswith("/") else b.path + "/"
    return fa.startswith(fb) or fb.startswith(fa)


def tagged(tags: Mapping[str, str]) -> bool:
    return TAG in tags and tags[TAG].lower() not in ("false", "0", "no")


class _Oracle:
    """Plain loops over everything, no index: an independent statement of what protection means."""

    def __init__(self, inv: Inventory) -> None:
        self.inv = inv
        self.keys: set[Any] = set()
        self.paths: list[BlobPath] = []
        self.data = {v.key: v for v in inv.data_versions}
        self.models = {m.key: m for m in inv.model_versions}

    def protect_data(self, k: DataKey) -> None:
        self.keys.add(k)
        if k in self.data:
            self.paths.extend(self.data[k].blob_paths)

    def protect_model(self, k: ModelKey, with_data: bool) -> None:
        self.keys.add(k)
        trained = self.models[k].trained_on if k in self.models else None
        if k in self.models:
            self.paths.extend(self.models[k].blob_paths)
        if with_data and trained is not None:
            self.protect_data(trained)

    def deployments(self) -> None:
        inv = self.inv
        for d in inv.deployments:
            if d.model:
                self.protect_model(d.model, False)
            if d.traffic_percent > 0 or d.mirror_traffic_percent > 0 or tagged(d.tags):
                self.keys.add(d.key)
            same = [o.traffic_percent for o in inv.deployments if o.endpoint == d.endpoint]
            if d.traffic_percent > 0 and d.traffic_percent == max(same):
                self.keys.add(d.key)
                if d.model:
                    self.protect_model(d.model, True)
                    self.keys.update(o.key for o in inv.deployments if o.endpoint == d.endpoint and o.model == d.model)

    def jobs(self) -> None:
        for j in self.inv.jobs:
            if j.status.lower() in ("completed", "failed", "canceled"):
                continue
            for i in j.inputs:
                if isinstance(i, DataKey):
                    self.protect_data(i)
                elif isinstance(i, ModelKey):
                    self.protect_model(i, False)
                else:
                    self.paths.append(i)
            self.paths.extend(j.outputs.values())

    def rollouts(self) -> None:
        for r in self.inv.rollouts:
            if r.state in ("succeeded", "rolled_back"):  # the only final phases; anything else is in flight
                continue
            self.protect_model(r.candidate, True)
            for d in self.inv.deployments:
                if d.endpoint == r.endpoint and (d.name == r.deployment or d.model == r.candidate):
                    self.keys.add(d.key)

    def approvals(self) -> None:
        for a in self.inv.approvals:
            if a.state not in NEVER_DEPLOYED:  # waiting, or approved and not yet rolled out: the next champion
                self.protect_model(a.candidate, True)

    def comparisons(self) -> None:
        for c in self.inv.comparisons:  # both sides of an undecided comparison, each with its training data
            self.protect_candidate(c.challenger, c.challenger_name)
            if c.champion is not None:
                self.protect_model(c.champion, True)

    def waiting(self) -> None:
        for w in self.inv.waiting:  # a candidate gated when its evaluation data lands, with its training data
            self.protect_candidate(w.candidate, w.candidate_name)

    def protect_candidate(self, candidate: ModelKey | None, name: str) -> None:
        """A model that may be promoted, with its training data; only its name read: any version of it."""
        if candidate is not None:
            self.protect_model(candidate, True)
        else:
            for m in self.inv.model_versions:
                if name and m.name == name:
                    self.protect_model(m.key, True)

    def tagged(self) -> None:
        for v in self.inv.data_versions:
            if tagged(v.tags):
                self.protect_data(v.key)
        for m in self.inv.model_versions:
            if tagged(m.tags):
                self.protect_model(m.key, False)


def oracle(inv: Inventory) -> tuple[set[Any], list[BlobPath], list[BlobPath]]:
    """Protected keys, protected blob paths, and paths referenced by versions in use."""
    o = _Oracle(inv)
    o.deployments()
    o.jobs()
    o.rollouts()
    o.approvals()
    o.comparisons()
    o.waiting()
    o.tagged()
    in_use = [p for v in inv.data_versions if not v.archived for p in v.blob_paths]
    in_use += [p for m in inv.model_versions if not m.archived for p in m.blob_paths]
    return o.keys, o.paths, in_use


def check_safe(inv: Inventory, plan: RetentionPlan) -> None:
    keys, protected_paths, in_use = oracle(inv)
    blobs = {b.key: b for b in inv.blobs}
    deployments = {d.key: d for d in inv.deployments}
    jobs = {j.name: j for j in inv.jobs}
    if unreadable_work(inv):
        assert all(a.kind is ActionKind.DELETE_DEPLOYMENT for a in plan.actions), "unreadable work must suspend"
    for a in plan.actions:
        assert a.target not in keys, f"{a} touches a protected asset"
        if isinstance(a.target, BlobKey):
            b = blobs[a.target]
            assert not tagged(b.tags), a
            for ref in protected_paths + in_use:
                assert not covers(ref, b.container, b.name), f"{a} deletes/tiers a blob used via {ref}"
            if a.kind is ActionKind.TIER_BLOB:
                assert a.tier is not None and (b.tier or BlobTier.HOT) != a.tier
        if isinstance(a.target, DeploymentKey):
            d = deployments[a.target]
            assert d.traffic_percent == 0 and d.mirror_traffic_percent == 0, a
        if isinstance(a.target, JobOutputKey):
            job = jobs[a.target.job]
            assert job.finished and not tagged(job.tags), a
            assert a.written_before == job.finished_at, f"{a}: must keep what was written after the job's end"
            assert not any(m.job == job.name for m in inv.model_versions), a
            for ref in protected_paths + in_use:
                assert not overlaps(ref, a.target.path), f"{a} deletes an output used via {ref}"
        if a.kind in (ActionKind.ARCHIVE_DATA, ActionKind.ARCHIVE_MODEL):
            versions: dict[Any, DataVersion | ModelVersion] = {v.key: v for v in inv.data_versions}
            versions.update({m.key: m for m in inv.model_versions})
            assert not versions[a.target].archived, a
    targets = [a.target for a in plan.actions]
    assert len(targets) == len(set(targets)), "one action per asset"
    assert list(plan.actions) == sorted(plan.actions, key=lambda a: a.sort_key())


SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(inventories(), rules())
def test_no_plan_touches_a_protected_or_referenced_asset(inv: Inventory, rule_set: list[RetentionRule]) -> None:
    check_safe(inv, plan_retention(inv, rule_set))


@settings(SETTINGS, max_examples=100)
@given(inventories(), rules(), st.randoms(use_true_random=False))
def test_any_part_of_a_plan_is_safe_and_replanning_converges(
    inv: Inventory, rule_set: list[RetentionRule], rng: random.Random
) -> None:
    world = inv
    applied: set[tuple[ActionKind, Any, BlobTier | None]] = set()

    def ids(actions: Iterable[Action]) -> set[tuple[ActionKind, Any, BlobTier | None]]:
        return {(a.kind, a.target, a.tier) for a in actions}

    for _ in range(4):  # deployment → its model → the model's blobs: cascades take a few runs
        plan = plan_retention(world, rule_set)
        check_safe(world, plan)
        if plan.is_empty:
            break
        assert not ids(plan.actions) & applied, "an applied action came back"
        done = [a for a in plan.actions if rng.random() < 0.5]  # a crash half-way: any subset was applied
        world = apply_in_memory(world, done)
        applied |= ids(done)
        replan = plan_retention(world, rule_set)
        check_safe(world, replan)
        assert not ids(replan.actions) & applied, "an applied action came back"
        # what was not done is planned again, or now spared: when another rule archived one of the latest
        # versions, keep_latest (which counts versions in use) reaches one version further back
        still_there = replan.targets() | {p.target for p in replan.protected}
        assert {a.target for a in plan.actions if a not in done} <= still_there
        world = apply_in_memory(world, replan.actions)
        applied |= ids(replan.actions)
    assert plan_retention(world, rule_set).is_empty


@settings(max_examples=50, deadline=None)
@given(inventories(), rules(), st.randoms(use_true_random=False))
def test_plans_do_not_depend_on_listing_order(inv: Inventory, rule_set: list[RetentionRule],
                                              rng: random.Random) -> None:
    def shuffled(items: Iterable[T]) -> tuple[T, ...]:
        items = list(items)
        rng.shuffle(items)
        return tuple(items)

    other = dataclasses.replace(inv, data_versions=shuffled(inv.data_versions),
                                model_versions=shuffled(inv.model_versions), blobs=shuffled(inv.blobs),
                                deployments=shuffled(inv.deployments), jobs=shuffled(inv.jobs))
    assert plan_retention(inv, rule_set) == plan_retention(other, rule_set)


def test_planning_at_scale_is_correct() -> None:
    """10,000 data versions, 2,000 models, 20,000 blobs: correctness only (timing is the benchmarks' job)."""
    from bench.bench_planning import RULES, inventory

    inv, rule_set = inventory(1), RULES
    data = inv.data_versions
    plan = plan_retention(inv, rule_set)
    by_kind: dict[ActionKind, int] = {}
    for a in plan.actions:
        by_kind[a.kind] = by_kind.get(a.kind, 0) + 1
    # versions 51..90 of each dataset are in use and beyond the latest 10 (91..100) and older than 30 days
    # (v <= 169): archived, except ds0..19 v1, which champions were trained from, but those are already archived
    assert by_kind[ActionKind.ARCHIVE_DATA] == 100 * 40
    # blobs of archived versions 1..50 go, except those of v1 for the 20 champions' training data
    assert by_kind[ActionKind.DELETE_BLOB] == (100 * 50 - 20) * 2
    # models: 100 each, minus latest 5, minus top 3 by auc, minus the deployed champion (v1)
    assert 20 * 90 <= by_kind[ActionKind.ARCHIVE_MODEL] < 20 * 95
    assert ModelKey("m0", "1") not in plan.targets() and DataKey("ds0", "1") not in plan.targets()
    assert BlobKey("landing", "ds0/1/part-0.parquet") not in plan.targets()
    # the oracle is quadratic, so check the blob rule directly: each deleted blob's only version is archived
    versions = {(v.name, v.version): v for v in data}
    for a in plan.actions:
        if isinstance(a.target, BlobKey):
            name, version, _ = a.target.name.split("/")
            assert versions[(name, version)].archived and (int(name[2:]) >= 20 or version != "1")


# == issue 12: generated workspaces with every datastore kind and address form =============================
# Each generated graph is built from one seed that hypothesis draws (fixed budget, derandomized): a graph is a
# few hundred random choices, and drawing each through hypothesis would cost ~20 ms a graph; from a seed it
# costs well under one. Every address is generated together with its truth (what it really points at), so
# the oracle below needs no parser: it knows what each asset uses and checks the plan against that.
ACCOUNT, OTHER_ACCOUNT = "dataacct", "otheracct"
PROPERTY_GRAPHS = 10_000
BOOK12 = AddressBook.of([
    Datastore("blobds", "AzureBlob", ACCOUNT, "landing"),
    Datastore("lakeds", "AzureDataLakeGen2", ACCOUNT, "runs"),
    Datastore("otherds", "AzureBlob", OTHER_ACCOUNT, "landing"),  # same container name, another account
    Datastore("oddds", "Hdfs", ACCOUNT, ""),  # a kind retention does not read
    Datastore("shareds", "AzureFile", ACCOUNT, ""),  # a file share: never blobs
], [ACCOUNT])
ALL = "all"  # the truth of an address that may point at any blob of ours
SEGS = ("a", "b", "a b")
FOLDERS = ("exp/", "exp/a/", "exp/a/b/", "exp/b/", "out/")  # job outputs nest and are shared
PHASES = [p.value for p in Phase] + ["", "paused-by-a-newer-version"]
METRICS = [{}, {"auc": 0.5}, {"auc": 0.9}, {"auc": math.nan}, {"auc": math.inf}, {"auc": -math.inf}, {"rmse": 0.1}]

Truth = BlobPath | str | None  # a path of ours, ALL, a container name (its whole container), or None (not ours)


def _path(rng: random.Random, folder: bool) -> str:
    parts = [rng.choice(SEGS) for _ in range(rng.randint(1, 3))]
    return "/".join(parts) + ("/" if folder else "")


def _address(rng: random.Random, container: str, path: str) -> tuple[str, Truth]:
    """One address of (container, path) in a random form, with what it truly points at."""
    enc = quote(path)
    form = rng.randrange(12)
    ds = "blobds" if container == "landing" else "lakeds"
    forms: list[tuple[str, Truth]] = [
        (f"azureml://datastores/{ds}/paths/{enc}", BlobPath(container, path)),
        (f"azureml://subscriptions/s/resourcegroups/r/workspaces/w/datastores/{ds}/paths/{enc}",
         BlobPath(container, path)),
        (f"abfss://{container}@{ACCOUNT}.dfs.core.windows.net/{enc}", BlobPath(container, path)),
        (f"wasbs://{container}@{ACCOUNT}.blob.core.windows.net/{enc}", BlobPath(container, path)),
        (f"https://{ACCOUNT}.dfs.core.windows.net/{container}/{enc}", BlobPath(container, path)),
        (f"https://{ACCOUNT}.blob.core.windows.net/{container}/{enc}?sv=1&sig=s", BlobPath(container, path)),
        (f"https://{OTHER_ACCOUNT}.blob.core.windows.net/{container}/{enc}", None),
        (f"abfss://{container}@{OTHER_ACCOUNT}.dfs.core.windows.net/{enc}", None),
        (f"azureml://datastores/{rng.choice(['otherds', 'shareds'])}/paths/{enc}", None),
        (f"azureml://datastores/{rng.choice(['ghost', 'oddds'])}/paths/{enc}", ALL),
        (f"{rng.choice(['s3://bucket/', 'gs://b/', 'file:///tmp/'])}{enc}", ALL),
        (f"azureml://datastores/{ds}/ExperimentRun/dcid.{enc}", container),
    ]
    return forms[form]


@dataclass
class Graph:
    inventory: Inventory
    truths: dict[Any, list[Truth]]  # asset key / ("job-in", job) / ("job-out", job) -> what its addresses point at


def _addressed(rng: random.Random, truths: list[Truth], folder: bool | None = None) -> tuple[Location, ...]:
    out = []
    for _ in range(rng.choice((0, 1, 1, 1, 2))):
        uri, truth = _address(rng, rng.choice(CONTAINERS), _path(rng, rng.random() < 0.6 if folder is None else folder))
        truths.append(truth)
        where = BOOK12.locate(uri)
        if where is not None:
            out.append(where)
    return tuple(out)


def _versions(rng: random.Random, g: dict[Any, list[Truth]]) -> tuple[list[DataVersion], list[ModelVersion]]:
    data: list[DataVersion] = []
    for name in rng.sample(DATA_NAMES, rng.randint(0, 3)):
        for v in range(1, rng.randint(1, 5) + 1):
            key = DataKey(name, str(v))
            data.append(DataVersion(name, str(v), NOW - timedelta(days=rng.randint(0, 400)), rng.random() < 0.5,
                                    rng.choice(TAG_CHOICES), _addressed(rng, g.setdefault(key, []))))
    models: list[ModelVersion] = []
    for name in rng.sample(MODEL_NAMES, rng.randint(0, 2)):
        for v in range(1, rng.randint(1, 5) + 1):
            trained = rng.choice(data).key if data and rng.random() < 0.7 else None
            key = ModelKey(name, str(v))
            models.append(ModelVersion(
                name, str(v), NOW - timedelta(days=rng.randint(0, 400)), rng.random() < 0.4, rng.choice(TAG_CHOICES),
                rng.choice(METRICS), trained.name if trained else None, trained.version if trained else None,
                _addressed(rng, g.setdefault(key, [])), rng.choice([None, "j0", "j1"])))
    return data, models


def _jobs(rng: random.Random, g: dict[Any, list[Truth]], data: list[DataVersion],
          models: list[ModelVersion]) -> list[Job]:
    jobs = []
    for i in range(rng.randint(0, 4)):
        name = f"j{i}"
        inputs: list[JobInput] = []
        for _ in range(rng.randint(0, 3)):
            pick = rng.randrange(4)
            if pick == 0 and data:
                inputs.append(rng.choice(data).key)
            elif pick == 1 and models:
                inputs.append(rng.choice(models).key)
            elif pick == 2:
                label = f"azureml:{rng.choice([*DATA_NAMES, *MODEL_NAMES, 'nobody'])}@latest"
                ref = read_job_input(label, rng.choice(["uri_folder", "mlflow_model", ""]), BOOK12)
                assert ref is not None
                inputs.append(ref)
            else:
                inputs.extend(_addressed(rng, g.setdefault(("job-in", name), [])))
        outputs: dict[str, Location] = {}
        for k in range(rng.randint(0, 2)):
            uri, truth = _address(rng, "runs", rng.choice(FOLDERS))
            g.setdefault(("job-out", name), []).append(truth)
            where = BOOK12.locate(uri)
            if where is not None:
                outputs[f"o{k}"] = where
        status = rng.choice(JOB_STATUSES)
        jobs.append(Job(name, status, tuple(inputs), outputs,
                        NOW - timedelta(days=rng.randint(0, 200)) if rng.random() < 0.8 else None,
                        rng.choice(TAG_CHOICES)))
    return jobs


TAG_CHOICES = [{}, {}, {TAG: "true"}, {TAG: "false"}, {"stage": "raw"}]


def generated(seed: int) -> Graph:
    rng = random.Random(seed)
    g: dict[Any, list[Truth]] = {}
    data, models = _versions(rng, g)
    model_keys = [m.key for m in models] + [ModelKey("elsewhere", "1")]
    blobs = {}
    for _ in range(rng.randint(0, 25)):
        container = rng.choice(CONTAINERS)
        name = _path(rng, False) if rng.random() < 0.7 else rng.choice(FOLDERS) + _path(rng, False)
        blobs[(container, name)] = Blob(container, name, NOW - timedelta(days=rng.randint(0, 400)),
                                        rng.choice(list(BlobTier)), rng.choice(TAG_CHOICES), etag=f"e{seed}")
    deployments = {}
    for _ in range(rng.randint(0, 5)):
        m = rng.choice(model_keys)
        endpoint, name = rng.choice(ENDPOINTS), rng.choice(["blue", "green", "red"])
        deployments[(endpoint, name)] = Deployment(
            endpoint, name, rng.choice([0, 0, 10, 50, 100]),
            rng.choice([None, NOW - timedelta(hours=rng.randint(0, 100))]), m.name, m.version,
            mirror_traffic_percent=rng.choice([0, 0, 20]), tags=rng.choice(TAG_CHOICES))
    rollouts = tuple(
        Rollout(rng.choice(ENDPOINTS), rng.choice(model_keys), rng.choice(PHASES),
                rng.choice([None, "blue", "green", "red"]), champion_deployment=rng.choice([None, "blue", "green"]),
                champion_model=rng.choice([None, *model_keys]))
        for _ in range(rng.randint(0, 2)))
    jobs = tuple(_jobs(rng, g, data, models))
    approvals = tuple(Approval(rng.choice(ENDPOINTS), rng.choice(model_keys), rng.choice(APPROVAL_STATES))
                      for _ in range(rng.randint(0, 2)))
    comparisons = tuple(open_comparison(f"cmp{i}", rng.choice(model_keys), rng.choice([None, *model_keys]),
                                        rng.choice(READS)) for i in range(rng.randint(0, 2)))
    waiting = tuple(waiting_entry(f"w{i}", rng.choice(model_keys), rng.choice(READS)) for i in range(rng.randint(0, 2)))
    inventory = Inventory(NOW, tuple(data), tuple(models), tuple(blobs.values()), tuple(deployments.values()),
                          jobs, rollouts, approvals, comparisons, waiting)
    return Graph(inventory, g)


class _TruthOracle(_Oracle):
    """What must never be touched, with each asset's addresses taken at their generated truth."""

    def __init__(self, graph: Graph) -> None:
        super().__init__(graph.inventory)
        self.truths = graph.truths
        self.protected: list[Truth] = []

    def protect_data(self, k: DataKey) -> None:
        self.keys.add(k)
        self.protected += self.truths.get(k, [])

    def protect_model(self, k: ModelKey, with_data: bool) -> None:
        self.keys.add(k)
        self.protected += self.truths.get(k, [])
        trained = self.models[k].trained_on if k in self.models else None
        if with_data and trained is not None:
            self.protect_data(trained)

    def jobs(self) -> None:
        for j in self.inv.jobs:
            if j.status.lower() in ("completed", "failed", "canceled"):
                continue
            for i in j.inputs:
                if isinstance(i, DataKey):
                    self.protect_data(i)
                elif isinstance(i, ModelKey):
                    self.protect_model(i, False)
                elif isinstance(i, AssetLabel):
                    self.label(i)
            self.protected += self.truths.get(("job-in", j.name), []) + self.truths.get(("job-out", j.name), [])

    def label(self, ref: AssetLabel) -> None:
        found = [v.key for v in self.inv.data_versions if v.name == ref.name and ref.kind in ("", "data")]
        found += [m.key for m in self.inv.model_versions if m.name == ref.name and ref.kind in ("", "model")]
        for key in found:
            if isinstance(key, DataKey):
                self.protect_data(key)
            else:
                self.protect_model(key, False)
        if not found:
            self.protected.append(ALL)

    def rollouts(self) -> None:
        super().rollouts()
        for r in self.inv.rollouts:
            if r.state in ("succeeded", "rolled_back", ""):
                continue
            if r.champion_deployment:
                self.keys.add(DeploymentKey(r.endpoint, r.champion_deployment))
            if r.champion_model:
                self.protect_model(r.champion_model, True)


def _reaches(truth: Truth, container: str, name: str, *, folder: bool = False) -> bool:
    """Whether an address with this truth may point at the blob (or anything in the folder) (container, name)."""
    if truth is None:
        return False
    if isinstance(truth, str):
        return truth in (ALL, container)
    return overlaps(truth, BlobPath(container, name)) if folder else covers(truth, container, name)


def violations(graph: Graph, plan: RetentionPlan) -> list[str]:
    """Every planned action that touches something protected, in use or shared (the count that must stay 0)."""
    inv = graph.inventory
    o = _TruthOracle(graph)
    o.deployments()
    o.jobs()
    o.rollouts()
    o.approvals()
    o.comparisons()
    o.waiting()
    o.tagged()
    in_use = [t for v in inv.data_versions if not v.archived for t in graph.truths.get(v.key, [])]
    in_use += [t for m in inv.model_versions if not m.archived for t in graph.truths.get(m.key, [])]
    blobs = {b.key: b for b in inv.blobs}
    jobs = {j.name: j for j in inv.jobs}
    bad = [f"{a} touches protected {a.target}" for a in plan.actions if a.target in o.keys]
    if unreadable_work(inv):
        bad += [f"{a}: planned while work in flight cannot be read" for a in plan.actions
                if a.kind is not ActionKind.DELETE_DEPLOYMENT]
    for a in plan.actions:
        if isinstance(a.target, BlobKey):
            b = blobs[a.target]
            bad += [f"{a}: reached by {t}" for t in o.protected + in_use if _reaches(t, b.container, b.name)]
            bad += [f"{a}: tagged"] if tagged(b.tags) else []
            bad += [f"{a}: not on the listed etag"] if a.etag != b.etag else []
        elif isinstance(a.target, JobOutputKey):
            bad += _job_output_violations(graph, o.protected + in_use, jobs[a.target.job], a)
        elif isinstance(a.target, DeploymentKey):
            d = next(d for d in inv.deployments if d.key == a.target)
            bad += [f"{a}: takes traffic"] if d.traffic_percent or d.mirror_traffic_percent else []
    return bad


def _job_output_violations(graph: Graph, used: list[Truth], job: Job, a: Action) -> list[str]:
    inv, path = graph.inventory, a.target.path  # type: ignore[union-attr]
    bad = [f"{a}: job not finished or tagged"] if not job.finished or tagged(job.tags) else []
    bad += [f"{a}: would delete what was written after the job's end"] if a.written_before != job.finished_at else []
    bad += [f"{a}: a model was registered from it"] if any(m.job == job.name for m in inv.model_versions) else []
    others = list(used)
    for key, truths in graph.truths.items():
        if key == ("job-out", job.name):
            continue
        others += truths  # other jobs' inputs and outputs, this job's inputs, every registered version
    return bad + [f"{a}: shared with {t}" for t in others if _reaches(t, path.container, path.path, folder=True)]


@pytest.fixture(scope="module")
def property_report(request: pytest.FixtureRequest) -> Counter[str]:
    """Counts the graphs checked and prints them in pytest's terminal summary."""
    counts: Counter[str] = Counter()

    class Reporter:
        def pytest_terminal_summary(self, terminalreporter: Any) -> None:
            if counts["graphs"]:
                terminalreporter.write_line(f"retention properties: {counts['graphs']:,} graphs, "
                                            f"{counts['planned']:,} protected assets planned")

    request.config.pluginmanager.register(Reporter(), "retention-property-report")
    return counts


def test_no_generated_workspace_ever_plans_a_protected_asset(property_report: Counter[str]) -> None:
    """≥ 10,000 graphs: every datastore kind and address form, nested and shared outputs, NaN/inf metrics,
    rollouts in every phase, tags and labels. No protected, in-use or shared asset is ever in a plan."""
    seen: Counter[str] = Counter()

    @settings(max_examples=PROPERTY_GRAPHS, derandomize=True, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(st.integers(min_value=0, max_value=2**64 - 1), rules())
    def check(seed: int, rule_set: list[RetentionRule]) -> None:
        graph = generated(seed)
        plan = plan_retention(graph.inventory, rule_set)
        bad = violations(graph, plan)
        seen["graphs"] += 1
        seen["planned"] += len(bad)
        seen["suspended"] += bool(plan.suspended)
        seen["actions"] += len(plan.actions)
        assert not bad, f"seed {seed}: {bad}"

    check()
    property_report.update(seen)
    assert seen["graphs"] >= PROPERTY_GRAPHS and seen["planned"] == 0
    # the generator reaches both sides: plans that act, and runs where an unreadable address suspends the rules
    assert seen["actions"] > PROPERTY_GRAPHS and 0 < seen["suspended"] < seen["graphs"]
