import dataclasses
import math
import random
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import pytest
import yaml

from shared.domain.retention import (
    EXAMPLE_YAML,
    Action,
    ActionKind,
    AddressBook,
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
    ModelKey,
    ModelVersion,
    RetentionPlan,
    RetentionRule,
    Rollout,
    RuleType,
    Unreadable,
    parse_retention,
    plan_retention,
    protected_assets,
    read_job_input,
    render_plan_table,
)
from shared.domain.vocabulary import Direction
from shared.errors import ConfigurationError

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
KEEP = {"evergreen.keep": "true"}
T = TypeVar("T")


def ago(days: float = 0.0, hours: float = 0.0) -> datetime:
    return NOW - timedelta(days=days, hours=hours)


def rule(type_: str, actions: dict[str, Any], *, name: str = "r", filters: dict[str, Any] | None = None,
         enabled: bool = True) -> RetentionRule:
    return RetentionRule.model_validate(
        {"name": name, "type": type_, "actions": actions, "filters": filters or {}, "enabled": enabled}
    )


def data(name: str, version: int, days: float, *, archived: bool = False, paths: Sequence[str] = (),
         tags: dict[str, str] | None = None) -> DataVersion:
    return DataVersion(name, str(version), ago(days), archived=archived, tags=tags or {},
                       blob_paths=tuple(BlobPath("landing", p) for p in paths))


def model(name: str, version: int, days: float, *, archived: bool = False, tags: dict[str, str] | None = None,
          metrics: dict[str, float] | None = None, trained_on: tuple[str, str] | None = None,
          job: str | None = None) -> ModelVersion:
    asset, ver = trained_on or (None, None)
    return ModelVersion(name, str(version), ago(days), archived=archived, tags=tags or {}, metrics=metrics or {},
                        data_asset=asset, data_version=ver, job=job)


def blob(name: str, days: float, *, tier: BlobTier = BlobTier.HOT, tags: dict[str, str] | None = None) -> Blob:
    return Blob("landing", name, ago(days), tier=tier, tags=tags or {})


def deployment(endpoint: str, name: str, traffic: int, *, idle_hours: float | None = None,
               model_: tuple[str, str] = ("m", "1"), mirror: int = 0, tags: dict[str, str] | None = None) -> Deployment:
    since = ago(hours=idle_hours) if idle_hours is not None else None
    return Deployment(endpoint, name, traffic, since, model_[0], model_[1], mirror_traffic_percent=mirror,
                      tags=tags or {})


def plan(rules: Sequence[RetentionRule], **inventory: Any) -> RetentionPlan:
    return plan_retention(Inventory(now=NOW, **inventory), rules)


def name(key: Any) -> str:
    """The asset name of a version or blob key (the union of key types has no common field)."""
    return str(key.name)


def kinds(p: RetentionPlan) -> set[tuple[ActionKind, Any]]:
    return {(a.kind, a.target) for a in p.actions}


def spared(p: RetentionPlan) -> dict[Any, str]:
    return {x.target: x.reason for x in p.protected}


def apply_in_memory(inventory: Inventory, actions: Iterable[Action]) -> Inventory:
    """What a successful apply does to the world, as the next listing would show it."""
    actions = list(actions)
    by_target = {a.target: a for a in actions}

    def keep(key: Any) -> bool:
        a = by_target.get(key)
        return a is None or a.kind not in {ActionKind.DELETE_DATA, ActionKind.DELETE_MODEL, ActionKind.DELETE_BLOB,
                                           ActionKind.DELETE_DEPLOYMENT}

    def archived(item: T) -> T:
        a = by_target.get(item.key)  # type: ignore[attr-defined]
        if a is not None and a.kind in {ActionKind.ARCHIVE_DATA, ActionKind.ARCHIVE_MODEL}:
            return dataclasses.replace(item, archived=True)  # type: ignore[type-var]
        return item

    def tiered(b: Blob) -> Blob:
        a = by_target.get(b.key)
        return dataclasses.replace(b, tier=a.tier) if a is not None and a.kind is ActionKind.TIER_BLOB else b

    def pruned(job: Job) -> Job:
        gone = {a.target.output for a in actions if isinstance(a.target, JobOutputKey) and a.target.job == job.name}
        return dataclasses.replace(job, outputs={k: v for k, v in job.outputs.items() if k not in gone})

    return dataclasses.replace(
        inventory,
        data_versions=tuple(archived(v) for v in inventory.data_versions if keep(v.key)),
        model_versions=tuple(archived(m) for m in inventory.model_versions if keep(m.key)),
        blobs=tuple(tiered(b) for b in inventory.blobs if keep(b.key)),
        deployments=tuple(d for d in inventory.deployments if keep(d.key)),
        jobs=tuple(pruned(j) for j in inventory.jobs),
    )


# -- the policy section ----------------------------------------------------------------------------------
def test_the_example_parses():
    policy = parse_retention(yaml.safe_load(EXAMPLE_YAML)["retention"])
    assert policy.protect_tag == "evergreen.keep"
    assert [r.type for r in policy.rules] == list(RuleType)
    assert policy.rules[1].actions.keep_top_k is not None and policy.rules[1].actions.keep_top_k.metric == "auc"
    assert not policy.rules[4].enabled
    assert parse_retention(None).rules == ()


def test_every_problem_is_reported_with_its_path():
    doc = {"rules": [
        {"name": "a", "type": "data_versions",
         "actions": {"tier_to_cool": {"days_after_modification_greater_than": 3}}},
        {"name": "b", "type": "blobs", "filters": {"prefixes": ["churn"]},
         "actions": {"delete": {"days_after_modification_greater_than": 1}}},
        {"name": "c", "type": "tables", "actions": {}},
        {"name": "d", "type": "model_versions", "actions": {"archive": {"days_after_creation_greater_than": "30"},
                                                           "tier_to_hot": {}}},
    ]}
    with pytest.raises(ConfigurationError) as info:
        parse_retention(doc, source="evergreen.yaml")
    problems = info.value.problems
    assert ("retention.rules[0].actions: tier_to_cool cannot be used in a data_versions rule; "
            "it takes keep_latest, archive, delete") in problems
    assert any(p.startswith("retention.rules[1].filters: prefix 'churn' must start with the container")
               for p in problems)
    assert any(p.startswith("retention.rules[2].type: Input should be 'data_versions'") for p in problems)
    assert ("retention.rules[3].actions.archive.days_after_creation_greater_than: Input should be a valid integer"
            in problems)
    assert "retention.rules[3].actions.tier_to_hot: Extra inputs are not permitted" in problems
    assert str(info.value).startswith("evergreen.yaml is invalid (5 problem(s))")


@pytest.mark.parametrize(
    ("type_", "actions", "filters", "expected"),
    [
        ("data_versions", {"keep_latest": 3}, {}, "no action: a data_versions rule needs archive or delete"),
        ("model_versions", {"keep_top_k": {"k": 0, "metric": "auc"}}, {}, "greater than or equal to 1"),
        ("model_versions", {"keep_top_k": {"k": 2, "metric": "auc", "direction": "up"}, "archive":
                           {"days_after_creation_greater_than": 1}}, {},
         "direction must be 'higher_is_better' or 'lower_is_better'"),
        ("data_versions", {"delete": {"days_after_modification_greater_than": 3}}, {},
         "delete in a data_versions rule takes days_after_creation_greater_than, "
         "not days_after_modification_greater_than"),
        ("blobs", {"delete": {"days_after_modification_greater_than": 3, "days_after_creation_greater_than": 3}}, {},
         "give exactly one condition"),
        ("data_versions", {"archive": {"days_after_creation_greater_than": -1}}, {}, "greater than or equal to 0"),
        ("data_versions", {"archive": {"days_after_creation_greater_than": 30}, "delete":
                          {"days_after_creation_greater_than": 10}}, {}, "deleted before being archived"),
        ("blobs", {"tier_to_cool": {"days_after_modification_greater_than": 30}, "tier_to_archive":
                   {"days_after_modification_greater_than": 30}}, {},
         "tier_to_archive must come later than tier_to_cool"),
        ("blobs", {"delete": {"days_after_modification_greater_than": 1}}, {"names": ["x"]}, "not names"),
        ("deployments", {"delete_idle": {"hours_at_zero_traffic_greater_than": 0}}, {}, "greater than 0"),
        ("deployments", {"delete_idle": {"hours_at_zero_traffic_greater_than": 2}}, {"tags": {"a": "b"}},
         "cannot filter by tags"),
        ("job_outputs", {"delete": {"days_after_completion_greater_than": 2}, "keep_latest": 2}, {},
         "keep_latest cannot be used in a job_outputs rule"),
        ("blobs", {"delete": {"days_after_modification_greater_than": 1}}, {"prefixes": [""]}, "at least 1 character"),
    ],
)
def test_rule_validation(type_, actions, filters, expected):
    with pytest.raises(ConfigurationError) as info:
        parse_retention({"rules": [{"name": "r", "type": type_, "actions": actions, "filters": filters}]})
    assert expected in str(info.value)


def test_names_are_unique_and_scalars_strict():
    ok = {"type": "deployments", "actions": {"delete_idle": {"hours_at_zero_traffic_greater_than": 24}}}
    with pytest.raises(ConfigurationError, match="repeated: idle"):
        parse_retention({"rules": [{"name": "idle", **ok}, {"name": "idle", **ok}]})
    with pytest.raises(ConfigurationError, match=r"retention.rules\[0\].enabled: Input should be a valid boolean"):
        parse_retention({"rules": [{"name": "idle", "enabled": "yes", **ok}]})
    with pytest.raises(ConfigurationError, match=r"retention.rules\[0\].name: must be 1-63"):
        parse_retention({"rules": [{"name": "bad name", **ok}]})


def test_rules_are_frozen_and_usable_from_python():
    r = RetentionRule(name="r", type=RuleType.DEPLOYMENTS,
                      actions={"delete_idle": {"hours_at_zero_traffic_greater_than": 1}})
    with pytest.raises(Exception, match="frozen"):
        r.name = "other"  # type: ignore[misc]


def test_naive_timestamps_are_refused():
    with pytest.raises(ValueError, match=r"DataVersion\.created_at must be timezone-aware"):
        DataVersion("d", "1", datetime(2026, 1, 1))


# -- data versions ----------------------------------------------------------------------------------------
def test_data_versions_keep_latest_and_archive_the_old_ones():
    versions = [data("d", v, days=100 - v * 10) for v in range(1, 9)]  # v1 90 days old ... v8 20 days old
    r = rule("data_versions", {"keep_latest": 3, "archive": {"days_after_creation_greater_than": 30}})
    p = plan([r], data_versions=tuple(versions))
    assert kinds(p) == {(ActionKind.ARCHIVE_DATA, DataKey("d", str(v))) for v in range(1, 6)}
    first = p.actions[0]
    assert first.target == DataKey("d", "1") and first.rule == "r"
    assert first.reason == "created 90 days ago (> 30); not among the latest 3 of d"
    # v6 is 40 days old but one of the latest 3: spared, and the plan says why
    assert spared(p) == {DataKey("d", "6"): "one of the latest 3 versions of d (rule r)"}


def test_data_delete_wins_over_archive_and_archived_versions_are_not_archived_again():
    versions = (data("d", 1, 400, archived=True), data("d", 2, 200, archived=True), data("d", 3, 200), data("d", 4, 1))
    r = rule("data_versions", {"archive": {"days_after_creation_greater_than": 30},
                              "delete": {"days_after_creation_greater_than": 365}})
    p = plan([r], data_versions=versions)
    assert kinds(p) == {(ActionKind.DELETE_DATA, DataKey("d", "1")), (ActionKind.ARCHIVE_DATA, DataKey("d", "3"))}


def test_keep_latest_counts_versions_in_use_and_orders_versions_as_numbers():
    versions = (*(data("d", v, days=50) for v in (9, 10, 11)), data("d", 12, 50, archived=True))
    r = rule("data_versions", {"keep_latest": 2, "delete": {"days_after_creation_greater_than": 30}})
    p = plan([r], data_versions=versions)
    # same age: version order decides, numerically (11 and 10 are the latest), and archived 12 does not count
    assert kinds(p) == {(ActionKind.DELETE_DATA, DataKey("d", "9")), (ActionKind.DELETE_DATA, DataKey("d", "12"))}


def test_filters_select_by_name_prefix_and_tags():
    versions = (data("churn", 1, 90, tags={"stage": "raw"}), data("churn", 2, 90), data("churn-ref", 1, 90),
                data("other", 1, 90, tags={"stage": "raw"}))
    archive = {"archive": {"days_after_creation_greater_than": 30}}
    by_name = plan([rule("data_versions", archive, filters={"names": ["churn", "missing"]})], data_versions=versions)
    assert {a.target for a in by_name.actions} == {DataKey("churn", "1"), DataKey("churn", "2")}
    by_prefix = plan([rule("data_versions", archive, filters={"prefixes": ["churn"]})], data_versions=versions)
    assert {name(a.target) for a in by_prefix.actions} == {"churn", "churn-ref"}
    by_tag = plan([rule("data_versions", archive, filters={"tags": {"stage": "raw"}})], data_versions=versions)
    assert {a.target for a in by_tag.actions} == {DataKey("churn", "1"), DataKey("other", "1")}
    disabled = plan([rule("data_versions", archive, enabled=False)], data_versions=versions)
    assert disabled.is_empty


# -- model versions ---------------------------------------------------------------------------------------
def test_models_keep_latest_and_top_k_by_metric():
    aucs = [(1, 0.91), (2, 0.70), (3, 0.95), (4, 0.60), (5, 0.80), (6, 0.50)]
    models = (*(model("m", v, days=100 - v, metrics={"auc": auc}) for v, auc in aucs), model("m", 7, 10))
    r = rule("model_versions", {"keep_latest": 2, "keep_top_k": {"k": 2, "metric": "auc"},
                               "archive": {"days_after_creation_greater_than": 5}})
    p = plan([r], model_versions=models)
    # kept: latest 2 (7, 6) and top 2 by auc (3, 1); archived: the rest
    assert kinds(p) == {(ActionKind.ARCHIVE_MODEL, ModelKey("m", v)) for v in ("2", "4", "5")}
    assert spared(p)[ModelKey("m", "3")] == "in the top 2 of m by auc (higher_is_better) (rule r)"
    assert "not in the top 2 by auc" in p.actions[0].reason


@pytest.mark.parametrize("direction", ["lower_is_better", "min"])
def test_top_k_can_minimise_and_ignores_versions_without_the_metric(direction: str):
    models = (model("m", 1, 50, metrics={"rmse": 0.2}), model("m", 2, 50, metrics={"rmse": 0.9}), model("m", 3, 50))
    r = rule("model_versions", {"keep_top_k": {"k": 1, "metric": "rmse", "direction": direction},
                               "delete": {"days_after_creation_greater_than": 30}})
    p = plan([r], model_versions=models)
    assert kinds(p) == {(ActionKind.DELETE_MODEL, ModelKey("m", "2")), (ActionKind.DELETE_MODEL, ModelKey("m", "3"))}


def test_the_legacy_max_min_spelling_parses_with_a_warning_and_the_policy_spelling_without(
        caplog: pytest.LogCaptureFixture):
    top = {"k": 1, "metric": "auc"}
    with caplog.at_level("WARNING"):
        legacy = rule("model_versions", {"keep_top_k": {**top, "direction": "max"},
                                        "archive": {"days_after_creation_greater_than": 1}})
    assert legacy.actions.keep_top_k is not None
    assert legacy.actions.keep_top_k.direction is Direction.HIGHER_IS_BETTER
    assert "'max' is deprecated; write 'higher_is_better'" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING"):
        canonical = rule("model_versions", {"keep_top_k": {**top, "direction": "lower_is_better"},
                                           "archive": {"days_after_creation_greater_than": 1}})
    assert canonical.actions.keep_top_k is not None
    assert canonical.actions.keep_top_k.direction is Direction.LOWER_IS_BETTER
    assert "deprecated" not in caplog.text


# -- blobs ------------------------------------------------------------------------------------------------
BLOB_RULE = {"tier_to_cool": {"days_after_modification_greater_than": 30},
             "tier_to_archive": {"days_after_modification_greater_than": 90},
             "delete": {"days_after_modification_greater_than": 365}}


def test_blobs_are_tiered_then_deleted_by_age_and_never_moved_to_a_hotter_tier():
    blobs = (blob("a/new.csv", 10), blob("a/cool.csv", 40), blob("a/cold.csv", 100), blob("a/old.csv", 400),
             blob("a/already.csv", 100, tier=BlobTier.ARCHIVE), blob("a/cool-already.csv", 40, tier=BlobTier.COOL),
             blob("b/elsewhere.csv", 400))
    p = plan([rule("blobs", BLOB_RULE, filters={"prefixes": ["landing/a/"]})], blobs=blobs)
    assert {(a.kind, name(a.target), a.tier) for a in p.actions} == {
        (ActionKind.TIER_BLOB, "a/cool.csv", BlobTier.COOL),
        (ActionKind.TIER_BLOB, "a/cold.csv", BlobTier.ARCHIVE),
        (ActionKind.DELETE_BLOB, "a/old.csv", None),
    }


def test_blobs_referenced_by_a_version_in_use_are_kept_until_it_is_archived():
    blobs = (blob("churn/2026-10/part.csv", 400), blob("churn/2026-1/part.csv", 400), blob("ref/r.csv", 400),
             blob("ref/r.csv.bak", 400), blob("churn/2026-10x", 400))
    in_use = (data("churn", 1, 400, paths=["churn/2026-10/"]), data("ref", 1, 400, paths=["ref/r.csv"]))
    delete = rule("blobs", {"delete": {"days_after_modification_greater_than": 30}})
    p = plan([delete], blobs=blobs, data_versions=in_use)
    assert {name(a.target) for a in p.actions} == {"churn/2026-1/part.csv", "ref/r.csv.bak", "churn/2026-10x"}
    assert spared(p)[BlobKey("landing", "ref/r.csv")] == "referenced by non-archived data:ref:1"
    archived = tuple(dataclasses.replace(v, archived=True) for v in in_use)
    assert len(plan([delete], blobs=blobs, data_versions=archived).actions) == len(blobs)


def test_a_folder_path_without_its_slash_still_protects_the_folder():
    version = DataVersion("d", "1", ago(1), blob_paths=(BlobPath("landing", "drop"),))
    blobs = (blob("drop", 90), blob("drop/part.csv", 90), blob("dropped/part.csv", 90))
    delete = rule("blobs", {"delete": {"days_after_modification_greater_than": 30}})
    p = plan([delete], blobs=blobs, data_versions=(version,))
    assert [name(a.target) for a in p.actions] == ["dropped/part.csv"]


# -- deployments ------------------------------------------------------------------------------------------
def test_idle_deployments_are_deleted_after_h_hours_at_zero_traffic():
    deployments = (deployment("e", "blue", 100, model_=("champion", "1")), deployment("e", "old", 0, idle_hours=30),
                   deployment("e", "recent", 0, idle_hours=2), deployment("e", "unknown", 0),
                   deployment("e", "shadow", 0, idle_hours=30, mirror=10), deployment("f", "idle", 0, idle_hours=99))
    p = plan([rule("deployments", {"delete_idle": {"hours_at_zero_traffic_greater_than": 24}},
                   filters={"names": ["e"]})],
             deployments=deployments)
    assert kinds(p) == {(ActionKind.DELETE_DEPLOYMENT, DeploymentKey("e", "old"))}
    assert p.actions[0].reason == "at 0% traffic for 30.0 hours (> 24)"


# -- job outputs ------------------------------------------------------------------------------------------
def test_outputs_of_old_finished_jobs_are_deleted_unless_something_uses_them():
    def out(path: str) -> dict[str, BlobPath]:
        return {"model": BlobPath("runs", path)}

    jobs = (Job("done", "Completed", outputs=out("done/"), finished_at=ago(90)),
            Job("recent", "Completed", outputs=out("recent/"), finished_at=ago(3)),
            Job("running", "Running", outputs=out("running/")),
            Job("registered", "Completed", outputs=out("registered/"), finished_at=ago(90)),
            Job("as-data", "Failed", outputs=out("as-data/"), finished_at=ago(90)))
    models = (model("m", 1, 90, job="registered"),)
    versions = (DataVersion("d", "1", ago(1), blob_paths=(BlobPath("runs", "as-data/model/x.parquet"),)),)
    p = plan([rule("job_outputs", {"delete": {"days_after_completion_greater_than": 30}})], jobs=jobs,
             model_versions=models, data_versions=versions)
    assert kinds(p) == {(ActionKind.DELETE_JOB_OUTPUT, JobOutputKey("done", "model", BlobPath("runs", "done/")))}
    why = {k.job: v for k, v in spared(p).items()}
    assert why == {"registered": "model model:m:1 was registered from this job",
                   "as-data": "referenced by non-archived data:d:1; shared: registered as data:d:1"}


# -- several rules ----------------------------------------------------------------------------------------
def test_the_strongest_action_wins_when_rules_overlap():
    versions = tuple(data("d", v, 400) for v in range(1, 4))
    keep = rule("data_versions", {"keep_latest": 5, "archive": {"days_after_creation_greater_than": 30}}, name="keep")
    purge = rule("data_versions", {"delete": {"days_after_creation_greater_than": 365}}, name="purge")
    p = plan([keep, purge], data_versions=versions)
    assert {(a.kind, a.rule) for a in p.actions} == {(ActionKind.DELETE_DATA, "purge")}
    assert p.protected == ()  # 'keep' spared them, but 'purge' deletes them: the plan does not claim both


# -- protection: one test each ----------------------------------------------------------------------------
ARCHIVE_ALL = [
    rule("data_versions", {"delete": {"days_after_creation_greater_than": 0}}, name="data"),
    rule("model_versions", {"delete": {"days_after_creation_greater_than": 0}}, name="models"),
    rule("blobs", {"delete": {"days_after_modification_greater_than": 0}}, name="blobs"),
    rule("deployments", {"delete_idle": {"hours_at_zero_traffic_greater_than": 1}}, name="idle"),
]


def test_a_deployed_model_is_protected_at_any_traffic():
    p = plan(ARCHIVE_ALL, model_versions=(model("m", 1, 90), model("m", 2, 90)),
             deployments=(deployment("e", "blue", 100, model_=("m", "1")),
                          deployment("e", "green", 0, model_=("m", "2"))))
    assert kinds(p) == set()  # green is at 0% but with no known idle time; m:2 is deployed by it
    assert spared(p)[ModelKey("m", "2")] == "deployed as e/green"


def test_the_champion_its_training_data_and_those_blobs_are_protected_even_when_archived():
    versions = (data("d", 1, 90, archived=True, paths=["d/1/"]), data("d", 2, 90, archived=True, paths=["d/2/"]))
    models = (model("m", 1, 90, trained_on=("d", "1")), model("m", 2, 90, trained_on=("d", "2")))
    deployments = (deployment("e", "blue", 60, model_=("m", "1")), deployment("e", "green", 40, model_=("m", "2")))
    p = plan(ARCHIVE_ALL, data_versions=versions, model_versions=models, deployments=deployments,
             blobs=(blob("d/1/part.csv", 90), blob("d/2/part.csv", 90)))
    assert kinds(p) == {(ActionKind.DELETE_DATA, DataKey("d", "2")),
                        (ActionKind.DELETE_BLOB, BlobKey("landing", "d/2/part.csv"))}
    why = spared(p)
    assert why[DataKey("d", "1")] == "trained model:m:1, champion of endpoint e"
    assert why[BlobKey("landing", "d/1/part.csv")] == (
        "referenced by data:d:1 (trained model:m:1, champion of endpoint e)")
    everything = protected_assets(Inventory(NOW, deployments=deployments))
    assert "champion of endpoint e" in everything[DeploymentKey("e", "blue")]


def test_an_idle_deployment_of_the_champion_model_is_kept():
    deployments = (deployment("e", "blue", 100, model_=("m", "1")),
                   deployment("e", "standby", 0, idle_hours=48, model_=("m", "1")),
                   deployment("e", "old", 0, idle_hours=48, model_=("m", "0")))
    p = plan(ARCHIVE_ALL, deployments=deployments)
    assert kinds(p) == {(ActionKind.DELETE_DEPLOYMENT, DeploymentKey("e", "old"))}
    assert spared(p) == {DeploymentKey("e", "standby"): "serves the champion model of endpoint e"}


def test_inputs_and_outputs_of_running_or_queued_jobs_are_protected():
    versions = (data("d", 1, 90, paths=["d/1/"]), data("d", 2, 90))
    jobs = (Job("train", "Running", inputs=(DataKey("d", "1"), ModelKey("m", "1"), BlobPath("landing", "extra/"))),
            Job("later", "Queued", inputs=(DataKey("d", "2"),), outputs={"o": BlobPath("landing", "out/")}),
            Job("past", "Completed", inputs=(ModelKey("m", "2"),), finished_at=ago(1)))
    p = plan(ARCHIVE_ALL, data_versions=tuple(dataclasses.replace(v, archived=True) for v in versions),
             model_versions=(model("m", 1, 90), model("m", 2, 90)), jobs=jobs,
             blobs=(blob("d/1/x", 90), blob("extra/y", 90), blob("out/z", 90), blob("free/w", 90)))
    assert {str(a.target) for a in p.actions} == {"model:m:2", "blob:landing/free/w"}
    assert spared(p)[DataKey("d", "2")] == "used by queued job later"


def test_unknown_job_statuses_and_rollout_states_protect():
    assert not Job("j", "Finalizing").finished and Job("j", "Canceled").finished
    assert Rollout("e", ModelKey("m", "1"), "SomethingNew").in_flight
    assert Rollout("e", ModelKey("m", "1"), "completed").in_flight  # not a phase: in flight, as for the ledger
    assert Rollout("e", ModelKey("m", "1"), "").in_flight  # unreadable: protects
    assert Rollout("e", ModelKey("m", "1"), "shifting").in_flight
    assert not Rollout("e", ModelKey("m", "1"), "succeeded").in_flight
    assert not Rollout("e", ModelKey("m", "1"), "rolled_back").in_flight


def test_models_data_and_deployments_of_an_in_flight_rollout_are_protected():
    models = (model("m", 1, 90, trained_on=("d", "1")), model("m", 2, 90))
    deployments = (deployment("e", "blue", 100, model_=("x", "1")),
                   deployment("e", "canary", 0, idle_hours=48, model_=("m", "1")),
                   deployment("e", "old", 0, idle_hours=48, model_=("y", "1")))
    rollouts = (Rollout("e", ModelKey("m", "1"), "canary"), Rollout("e", ModelKey("m", "2"), "rolled_back"))
    p = plan(ARCHIVE_ALL, data_versions=(data("d", 1, 90),), model_versions=models, deployments=deployments,
             rollouts=rollouts)
    assert kinds(p) == {(ActionKind.DELETE_MODEL, ModelKey("m", "2")),
                        (ActionKind.DELETE_DEPLOYMENT, DeploymentKey("e", "old"))}
    assert spared(p)[DeploymentKey("e", "canary")] == "part of the canary rollout on e"
    assert "candidate of the canary rollout on e" in spared(p)[DataKey("d", "1")]


def test_the_protection_tag_protects_every_kind_of_asset():
    tagged = dict(KEEP)
    p = plan(ARCHIVE_ALL, data_versions=(data("d", 1, 90, tags=tagged, paths=["d/"]), data("d", 2, 90)),
             model_versions=(model("m", 1, 90, tags={"evergreen.keep": "yes please"}),
                             model("m", 2, 90, tags={"evergreen.keep": "false"})),
             blobs=(blob("x", 90, tags=tagged), blob("d/y", 90)),
             deployments=(deployment("e", "z", 0, idle_hours=9, tags=tagged),))
    assert {str(a.target) for a in p.actions} == {"data:d:2", "model:m:2"}
    custom = plan_retention(Inventory(NOW, data_versions=(data("d", 1, 90, tags={"hold": "1"}),)), ARCHIVE_ALL,
                            protect_tag="hold")
    assert custom.is_empty and custom.protected[0].reason == "tagged hold"


# -- idempotency and determinism --------------------------------------------------------------------------
def _world() -> Inventory:
    return Inventory(
        now=NOW,
        data_versions=tuple(data("d", v, 100 - v * 10, paths=[f"d/{v}/"]) for v in range(1, 8)),
        model_versions=tuple(model("m", v, 100 - v * 10, metrics={"auc": v / 10}) for v in range(1, 6)),
        blobs=tuple(blob(f"d/{v}/part-{i}.csv", {8: 40, 9: 50, 10: 70, 11: 5}.get(v, 100 - v * 10))
                    for v in range(1, 12) for i in range(2)),
        deployments=(deployment("e", "blue", 100, model_=("m", "5")), deployment("e", "old", 0, idle_hours=48,
                                                                                  model_=("m", "4"))),
    )


RULES = [
    rule("data_versions", {"keep_latest": 2, "archive": {"days_after_creation_greater_than": 30}}, name="data"),
    rule("model_versions", {"keep_latest": 1, "archive": {"days_after_creation_greater_than": 20}}, name="models"),
    rule("blobs", {"tier_to_cool": {"days_after_modification_greater_than": 30},
                   "delete": {"days_after_modification_greater_than": 60}}, name="blobs"),
    rule("deployments", {"delete_idle": {"hours_at_zero_traffic_greater_than": 24}}, name="idle"),
]


def test_replanning_after_applying_everything_finds_nothing_new_without_cascades():
    world = dataclasses.replace(_world(), deployments=(), blobs=tuple(b for b in _world().blobs if b.name >= "d/8/"))
    first = plan_retention(world, RULES)
    assert first.actions
    assert plan_retention(apply_in_memory(world, first.actions), RULES).is_empty


def test_replanning_after_a_crash_half_way_yields_the_remaining_actions():
    world = dataclasses.replace(_world(), deployments=(), blobs=())
    first = plan_retention(world, RULES)
    done, rest = first.actions[::2], first.actions[1::2]
    assert plan_retention(apply_in_memory(world, done), RULES).actions == rest


def test_cascades_wait_for_the_next_run_and_the_plan_reaches_a_fixpoint():
    world = _world()
    first = plan_retention(world, RULES)
    # d/1 is archived in this run, so its blobs (still referenced) wait; m:4 is still deployed by 'old'
    assert (ActionKind.ARCHIVE_DATA, DataKey("d", "1")) in kinds(first)
    assert not any(isinstance(a.target, BlobKey) and a.target.name.startswith("d/1/") for a in first.actions)
    assert ModelKey("m", "4") not in first.targets()
    second = plan_retention(apply_in_memory(world, first.actions), RULES)
    assert not (first.targets() & second.targets())  # nothing is done twice
    assert {(ActionKind.DELETE_BLOB, BlobKey("landing", "d/1/part-0.csv")),
            (ActionKind.ARCHIVE_MODEL, ModelKey("m", "4"))} <= kinds(second)
    third = plan_retention(apply_in_memory(apply_in_memory(world, first.actions), second.actions), RULES)
    assert third.is_empty


def test_plans_are_deterministic_whatever_the_listing_order():
    world = _world()
    rng = random.Random(7)

    def shuffled(items: Iterable[T]) -> tuple[T, ...]:
        items = list(items)
        rng.shuffle(items)
        return tuple(items)

    other = dataclasses.replace(world, data_versions=shuffled(world.data_versions),
                                model_versions=shuffled(world.model_versions), blobs=shuffled(world.blobs))
    assert plan_retention(world, RULES) == plan_retention(other, RULES)
    a = plan_retention(world, RULES).actions[0]
    assert a.key == Action(a.kind, a.target, "another reason", "another rule").key


def test_the_dry_run_table_lists_actions_then_what_was_spared():
    text = render_plan_table(plan_retention(_world(), RULES))
    lines = text.splitlines()
    assert lines[0].startswith("Retention plan at 2026-11-27T12:00:00+00:00:")
    assert lines[1].split() == ["KIND", "TARGET", "REASON", "RULE"]
    assert any(line.startswith("tier_blob->Cool") for line in lines)
    assert any("delete_deployment  deployment:e/old" in line for line in lines)
    assert "Protected:" in text and "one of the latest 2 versions of d (rule data)" in text
    empty = render_plan_table(RetentionPlan(NOW, (), ()))
    assert "Nothing to retire." in empty and "Protected: 0 asset(s)" in empty


# -- issue 12: retention fails closed (regression tests, one per defect) ------------------------------------
ACCOUNT = "evergreendata"
BOOK = AddressBook.of([Datastore("lake", "AzureDataLakeGen2", ACCOUNT, "landing"),
                       Datastore("landing", "AzureBlob", ACCOUNT, "landing"),
                       Datastore("elsewhere", "AzureBlob", "otheraccount", "landing"),
                       Datastore("workspaceartifactstore", "AzureBlob", ACCOUNT, "azureml"),
                       Datastore("share", "AzureFile", ACCOUNT, "")], [ACCOUNT])
DELETE_BLOBS = rule("blobs", {"delete": {"days_after_modification_greater_than": 1}}, name="raw")
ADDRESS_FORMS = [
    f"abfss://landing@{ACCOUNT}.dfs.core.windows.net/churn/v1/",
    f"wasbs://landing@{ACCOUNT}.blob.core.windows.net/churn/v1/",
    f"https://{ACCOUNT}.dfs.core.windows.net/landing/churn/v1/",
    f"https://{ACCOUNT}.blob.core.windows.net/landing/churn/v1/?sv=2024&sig=secret",
    "azureml://datastores/lake/paths/churn/v1/",
    "azureml://subscriptions/s/resourcegroups/r/workspaces/w/datastores/landing/paths/churn/v1/",
]


def _champion_trained_on(address: str) -> dict[str, Any]:
    where = BOOK.locate(address)
    version = DataVersion("churn", "1", ago(90), archived=True, blob_paths=(where,) if where else ())
    return {"data_versions": (version,), "model_versions": (model("m", 1, 90, trained_on=("churn", "1")),),
            "deployments": (deployment("e", "blue", 100, model_=("m", "1")),),
            "blobs": (blob("churn/v1/part-0.csv", 90), blob("churn/v2/part-0.csv", 90))}


@pytest.mark.parametrize("address", ADDRESS_FORMS)
def test_defect1_every_address_form_protects_the_champions_training_blobs(address: str) -> None:
    p = plan([DELETE_BLOBS], **_champion_trained_on(address))
    assert {str(a.target) for a in p.actions} == {"blob:landing/churn/v2/part-0.csv"}
    assert "trained model:m:1, champion of endpoint e" in spared(p)[BlobKey("landing", "churn/v1/part-0.csv")]


@pytest.mark.parametrize("address", [
    "azureml://datastores/deleted-datastore/paths/churn/v1/",  # a datastore retention does not know
    "s3://bucket/churn/v1/",  # a scheme it does not read
    "azureml://registries/shared/data/churn/versions/1",  # an azureml form without a datastore
])
def test_defect1_an_address_without_a_container_suspends_the_blob_rules(address: str) -> None:
    p = plan([DELETE_BLOBS, rule("job_outputs", {"delete": {"days_after_completion_greater_than": 1}}, name="outs")],
             jobs=(Job("old", "Completed", outputs={"o": BlobPath("landing", "old/")}, finished_at=ago(90)),),
             **_champion_trained_on(address))
    assert p.actions == ()
    assert [s.rule for s in p.suspended] == ["raw", "outs"]
    assert address in p.suspended[0].reason and "champion of endpoint e" in p.suspended[0].reason
    assert "Suspended (fail closed): 2 rule(s)" in render_plan_table(p)


@pytest.mark.parametrize("address", [
    f"https://{ACCOUNT}.blob.core.windows.net/?sv=2024&sig=secret",  # our account, no container
    "azureml://datastores/deleted-datastore/paths/churn/v1/?sv=2024&sig=secret",
    "s3://bucket/churn/v1/part.csv?X-Amz-Signature=secret",
])
def test_defect8_an_unreadable_address_is_shown_without_its_query_in_the_plan_and_its_reasons(address: str) -> None:
    """The suspension's reason goes to the dry-run table, the audit log (`retention.suspended`) and the logs:
    an address with a SAS or signed query must show neither."""
    p = plan([DELETE_BLOBS], **_champion_trained_on(address))
    assert [s.rule for s in p.suspended] == ["raw"]
    shown = render_plan_table(p) + " ".join(s.reason for s in p.suspended)
    assert "secret" not in shown and address.split("?", 1)[0] in shown


def test_defect1_a_known_datastore_with_an_unknown_path_form_protects_its_whole_container() -> None:
    address = "azureml://datastores/landing/ExperimentRun/dcid.x"
    assert BOOK.locate(address) == Unreadable(address, "path form not understood", "landing")
    p = plan([DELETE_BLOBS], **_champion_trained_on(address))
    assert p.actions == () and p.suspended == ()
    assert "all of container landing is kept" in spared(p)[BlobKey("landing", "churn/v2/part-0.csv")]


def test_defect1_another_account_protects_nothing_here_and_never_maps_onto_our_container() -> None:
    for address in ("abfss://landing@otheraccount.dfs.core.windows.net/churn/v1/",
                    "https://otheraccount.blob.core.windows.net/landing/churn/v1/",
                    "azureml://datastores/elsewhere/paths/churn/v1/", "azureml://datastores/share/paths/churn/v1/"):
        assert BOOK.locate(address) is None, address
    p = plan([DELETE_BLOBS], **_champion_trained_on("https://otheraccount.blob.core.windows.net/landing/churn/v1/"))
    assert p.suspended == () and len(p.actions) == 2  # the champion's bytes are elsewhere: ours are not its
    # a job output on another account is never ours to delete either
    assert BOOK.locate("azureml://datastores/elsewhere/paths/azureml/j/out/") is None


def test_defect1_a_label_input_of_a_running_job_protects_every_version_of_the_asset_or_suspends() -> None:
    versions = (data("churn", 1, 90, archived=True, paths=["churn/v1/"]), data("churn", 2, 90, archived=True,
                                                                               paths=["churn/v2/"]))
    job = Job("train", "Running", inputs=(read_job_input("azureml:churn@latest", "uri_folder", BOOK),))
    blobs = (blob("churn/v1/a.csv", 90), blob("churn/v2/a.csv", 90))
    p = plan([DELETE_BLOBS], data_versions=versions, jobs=(job,), blobs=blobs)
    assert p.actions == ()
    assert "(as azureml:churn@latest)" in spared(p)[BlobKey("landing", "churn/v2/a.csv")]
    unknown = Job("train", "Running", inputs=(read_job_input("azureml:nobody@prod", "uri_folder", BOOK),))
    p = plan([DELETE_BLOBS], data_versions=versions, jobs=(unknown,), blobs=blobs)
    assert p.actions == () and "no version of nobody is listed" in p.suspended[0].reason


def test_defect2_a_job_output_is_deleted_only_when_the_job_owns_it_alone() -> None:
    old = Job("old", "Completed", outputs={"out": BlobPath("runs", "exp/")}, finished_at=ago(90))
    newer = Job("newer", "Completed", outputs={"out": BlobPath("runs", "exp/newer/")}, finished_at=ago(2))
    alone = Job("alone", "Completed", outputs={"out": BlobPath("runs", "alone/")}, finished_at=ago(90))
    reader = Job("reader", "Completed", inputs=(BlobPath("runs", "alone/part.csv"),), finished_at=ago(90))
    registered = Job("registered", "Failed", outputs={"out": BlobPath("runs", "reg/")}, finished_at=ago(90))
    archived_data = data("d", 1, 90, archived=True)
    archived_data = dataclasses.replace(archived_data, blob_paths=(BlobPath("runs", "reg/part/"),))
    outputs = rule("job_outputs", {"delete": {"days_after_completion_greater_than": 30}})
    p = plan([outputs], jobs=(old, newer, alone, registered), data_versions=(archived_data,))
    assert {str(a.target) for a in p.actions} == {"job-output:alone/out"}
    why = {k.job: v for k, v in spared(p).items()}
    assert why["old"] == "shared: output out of job newer"
    assert why["registered"] == "shared: registered as data:d:1"
    p = plan([outputs], jobs=(alone, reader))
    assert p.actions == () and spared(p)[JobOutputKey("alone", "out", BlobPath("runs", "alone/"))] == (
        "shared: input of job reader")


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("direction", ["higher_is_better", "lower_is_better"])
def test_defect3_nan_and_infinite_metrics_rank_last_and_never_keep_a_version(bad: float, direction: str) -> None:
    best = 0.95 if direction == "higher_is_better" else 0.05
    models = (model("m", 1, 90, metrics={"auc": best}), model("m", 2, 80, metrics={"auc": bad}),
              model("m", 3, 70, metrics={"auc": 0.5}))
    r = rule("model_versions", {"keep_top_k": {"k": 1, "metric": "auc", "direction": direction},
                               "archive": {"days_after_creation_greater_than": 30}})
    p = plan([r], model_versions=models)
    assert {str(a.target) for a in p.actions} == {"model:m:2", "model:m:3"}
    assert "in the top 1 of m by auc" in spared(p)[ModelKey("m", "1")]


def test_defect6_the_rollback_target_is_protected_until_the_rollout_has_finished() -> None:
    models = (model("m", 1, 90, trained_on=("d", "1")), model("m", 2, 1))
    deployments = (deployment("e", "green", 100, model_=("m", "2")),
                   deployment("e", "blue", 0, idle_hours=48, model_=("m", "1")))
    every = [*ARCHIVE_ALL, rule("model_versions", {"archive": {"days_after_creation_greater_than": 0}}, name="old")]

    def in_state(state: str) -> RetentionPlan:
        rollout = Rollout("e", ModelKey("m", "2"), state, "green", champion_deployment="blue",
                          champion_model=ModelKey("m", "1"))
        return plan(every, data_versions=(data("d", 1, 90, paths=["d/1/"]),), model_versions=models,
                    deployments=deployments, rollouts=(rollout,), blobs=(blob("d/1/x", 90),))

    grace = in_state("grace")
    assert grace.actions == ()
    assert spared(grace)[DeploymentKey("e", "blue")] == "rollback target of the grace rollout on e"
    assert "rollback target of the grace rollout on e" in spared(grace)[DataKey("d", "1")]
    finished = in_state("succeeded")
    assert DeploymentKey("e", "blue") in finished.targets() and ModelKey("m", "1") not in finished.targets()
