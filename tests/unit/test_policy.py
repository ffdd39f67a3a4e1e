from pathlib import Path

import pytest

from shared.config.policy import AssetType, load_policy, parse_policy
from shared.errors import ConfigurationError

REPO = Path(__file__).resolve().parents[2]


def folder(**overrides):
    d = {"name": "churn", "container": "landing", "prefix": "churn/", "type": "uri_folder", "datastore": "landing",
         "batch": {"marker": "_SUCCESS"}}
    d.update(overrides)
    return d


def test_the_shipped_policy_is_valid():
    policy = load_policy(REPO / "evergreen.yaml", landing_container="landing")
    assert {d.name for d in policy.datasets} == {"churn-training", "churn-reference", "house-prices", "churn-holdout"}
    assert policy.dataset("churn-training").type is AssetType.URI_FOLDER


def test_every_problem_is_reported_with_its_path():
    doc = {"datasets": [folder(prefix="churn"), folder(name="b c", prefix="x/", type="table", extra=1)]}
    with pytest.raises(ConfigurationError) as info:
        parse_policy(doc, source="evergreen.yaml")
    problems = info.value.problems
    assert "datasets[0].prefix: must end with '/'" in problems
    assert any(p.startswith("datasets[1].name: must start with a letter") for p in problems)
    assert any(p.startswith("datasets[1].type:") for p in problems)
    assert any(p.startswith("datasets[1].extra:") for p in problems)
    assert str(info.value).startswith("evergreen.yaml is invalid (4 problem(s))")


@pytest.mark.parametrize(
    ("dataset", "expected"),
    [
        (folder(batch=None), "uri_folder datasets need 'batch'"),
        (folder(type="uri_file"), "'batch' applies only to uri_folder datasets"),
        (folder(batch={}), "set marker, quiet_period_seconds, or both"),
        (folder(batch={"quiet_period_seconds": 0}), "greater than 0"),
        (folder(batch={"marker": "a/b"}), "must be a file name"),
        (folder(prefix="/churn/"), "must not start with '/'"),
        (folder(prefix="a/../b/"), "'.' or '..'"),
    ],
)
def test_dataset_rules(dataset, expected):
    with pytest.raises(ConfigurationError) as info:
        parse_policy({"datasets": [dataset]})
    assert expected in str(info.value)


def test_overlapping_prefixes_and_duplicate_names_are_refused():
    with pytest.raises(ConfigurationError, match="overlapping prefixes"):
        parse_policy({"datasets": [folder(), folder(name="other", prefix="churn/sub/")]})
    with pytest.raises(ConfigurationError, match="repeated: churn"):
        parse_policy({"datasets": [folder(), folder(prefix="x/")]})


def test_datasets_must_live_in_the_landing_container():
    with pytest.raises(ConfigurationError) as info:
        parse_policy({"datasets": [folder(container="other")]}, landing_container="landing")
    assert info.value.problems[0].startswith("datasets[0].container: 'other' is not the landing container")


def test_empty_and_unreadable_files(tmp_path):
    with pytest.raises(ConfigurationError, match="declare at least one dataset"):
        parse_policy({"datasets": []})
    bad = tmp_path / "p.yaml"
    bad.write_text("datasets: [unclosed")
    with pytest.raises(ConfigurationError, match="not valid YAML"):
        load_policy(bad)
    with pytest.raises(ConfigurationError, match="cannot read the file"):
        load_policy(tmp_path / "missing.yaml")


def test_policy_is_frozen():
    policy = parse_policy({"datasets": [folder()]})
    with pytest.raises(Exception, match="frozen"):
        policy.datasets[0].prefix = "x/"  # type: ignore[misc]
