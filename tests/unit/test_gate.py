"""The champion/challenger gate and its policy fragment (pure)."""

from __future__ import annotations

import json
from decimal import Decimal, localcontext
from pathlib import Path

import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from pydantic import ValidationError

from shared.config.promotion import PromotionPolicy
from shared.domain.gate import (
    ModelSnapshot,
    Promote,
    PromoteCode,
    PromotionRule,
    Skip,
    SkipCode,
    parse_metric,
    plan_promotion,
)
from shared.domain.vocabulary import Direction
from shared.domain.webhooks import parse_model_registered

PAYLOADS = Path(__file__).resolve().parents[1] / "fixtures" / "payloads"
HIGHER = PromotionRule(metric="auc", direction=Direction.HIGHER_IS_BETTER, endpoint="churn-online",
                       min_improvement=0.01)
LOWER = PromotionRule(metric="rmse", direction=Direction.LOWER_IS_BETTER, endpoint="churn-online",
                      min_improvement=0.5)


def model(version: str, name: str = "churn", endpoint: str | None = None, **metrics: object) -> ModelSnapshot:
    return ModelSnapshot(name, version, metrics=metrics, endpoint=endpoint)  # type: ignore[arg-type]


def test_first_model_is_promoted():
    d = plan_promotion(model("1", auc="0.8"), None, HIGHER)
    assert isinstance(d, Promote) and d.code is PromoteCode.FIRST_MODEL
    assert "first model" in d.reason and d.candidate_value == 0.8 and d.champion is None
    assert d.endpoint == "churn-online" and len(d.key) == 16


def test_clear_improvement_is_promoted_with_both_numbers():
    d = plan_promotion(model("2", auc="0.93"), model("1", auc="0.91"), HIGHER)
    assert isinstance(d, Promote) and d.code is PromoteCode.IMPROVED
    assert "auc=0.93" in d.reason and "auc=0.91" in d.reason
    assert (d.candidate_value, d.champion_value) == (0.93, 0.91)


@pytest.mark.parametrize(
    ("new", "old", "code", "fragments"),
    [
        ("0.91", "0.91", SkipCode.NOT_BETTER, ["ties", "auc=0.91 vs champion churn:1 auc=0.91"]),
        ("0.90", "0.91", SkipCode.NOT_BETTER, ["is worse", "0.90", "0.91"]),
        ("0.915", "0.91", SkipCode.TOO_SMALL, ["0.915", "0.91", "improvement 0.005 is below the required 0.01"]),
    ],
)
def test_ties_and_small_improvements_are_skipped_with_both_numbers(new, old, code, fragments):
    d = plan_promotion(model("2", auc=new), model("1", auc=old), HIGHER)
    assert isinstance(d, Skip) and d.code is code
    for fragment in fragments:
        assert fragment in d.reason


def test_min_improvement_is_exact_in_decimal_terms():
    # 0.3 - 0.2 is 0.09999999999999998 in binary floats; the policy author means 0.1.
    rule = PromotionRule("auc", Direction.HIGHER_IS_BETTER, "churn-online", min_improvement=0.1)
    assert isinstance(plan_promotion(model("2", auc="0.3"), model("1", auc="0.2"), rule), Promote)
    assert isinstance(plan_promotion(model("2", auc=0.3), model("1", auc=0.2), rule), Promote)


def test_lower_is_better():
    assert isinstance(plan_promotion(model("2", rmse="10.0"), model("1", rmse="10.5"), LOWER), Promote)
    worse = plan_promotion(model("2", rmse="10.6"), model("1", rmse="10.5"), LOWER)
    assert isinstance(worse, Skip) and worse.code is SkipCode.NOT_BETTER and "lower_is_better" in worse.reason
    small = plan_promotion(model("2", rmse="10.2"), model("1", rmse="10.5"), LOWER)
    assert isinstance(small, Skip) and small.code is SkipCode.TOO_SMALL


def test_relative_improvement():
    rule = PromotionRule("auc", Direction.HIGHER_IS_BETTER, "e-1", min_relative_improvement=0.02)
    assert isinstance(plan_promotion(model("2", auc="0.51"), model("1", auc="0.50"), rule), Promote)  # 2 %
    d = plan_promotion(model("2", auc="0.509"), model("1", auc="0.50"), rule)
    assert isinstance(d, Skip) and "below the required 0.0100" in d.reason


def test_candidate_without_the_metric_is_skipped():
    d = plan_promotion(model("2", loss="0.1"), model("1", auc="0.9"), HIGHER)
    assert isinstance(d, Skip) and d.code is SkipCode.MISSING_METRIC
    assert "evergreen.metric.auc" in d.reason
    assert plan_promotion(model("1"), None, HIGHER).code is SkipCode.MISSING_METRIC


def test_defect6_unscored_champion_is_kept_with_a_coded_reason():
    """A champion without the metric is not replaced blind: the gate skips and says what to do."""
    d = plan_promotion(model("2", auc="0.7"), model("1"), HIGHER)
    assert isinstance(d, Skip) and d.code is SkipCode.CHAMPION_UNSCORED and d.code.value == "champion_unscored"
    assert "champion churn:1 carries no 'auc' metric" in d.reason
    assert "replace_unscored_champion" in d.reason and "evergreen.metric.auc" in d.reason


def test_defect6_unscored_champion_is_replaced_only_when_the_policy_says_so():
    rule = PromotionRule("auc", Direction.HIGHER_IS_BETTER, "churn-online", replace_unscored_champion=True)
    d = plan_promotion(model("2", auc="0.7"), model("1"), rule)
    assert isinstance(d, Promote) and d.code is PromoteCode.CHAMPION_UNSCORED
    assert "champion churn:1 carries no 'auc' metric" in d.reason and d.champion_value is None
    # the candidate's own checks still apply: no metric, or below the threshold, is still skipped
    assert plan_promotion(model("2"), model("1"), rule).code is SkipCode.MISSING_METRIC
    strict = PromotionRule("auc", Direction.HIGHER_IS_BETTER, "churn-online", threshold=0.8,
                           replace_unscored_champion=True)
    assert plan_promotion(model("2", auc="0.7"), model("1"), strict).code is SkipCode.BELOW_THRESHOLD


def test_model_of_another_endpoint_is_skipped():
    d = plan_promotion(model("2", endpoint="fraud-online", auc="0.99"), model("1", auc="0.5"), HIGHER)
    assert isinstance(d, Skip) and d.code is SkipCode.OTHER_ENDPOINT and "'fraud-online'" in d.reason
    same = plan_promotion(model("2", endpoint="churn-online", auc="0.99"), model("1", auc="0.5"), HIGHER)
    assert isinstance(same, Promote)


def test_redelivered_event_for_the_champion_is_skipped():
    d = plan_promotion(model("3", auc="0.99"), model("3", auc="0.99"), HIGHER)
    assert isinstance(d, Skip) and d.code is SkipCode.ALREADY_CHAMPION
    other_name = plan_promotion(model("3", name="churn-v2", auc="0.99"), model("3", auc="0.5"), HIGHER)
    assert isinstance(other_name, Promote)


@pytest.mark.parametrize("bad", ["nan", "NaN", "inf", "-Infinity", float("nan"), float("inf"), "abc", "", "0,91",
                                 "1e5000", True, None, "1_000", "0x10"])
def test_unusable_candidate_metrics_are_skipped(bad):
    d = plan_promotion(model("2", auc=bad), model("1", auc="0.5"), HIGHER)
    assert isinstance(d, Skip) and d.code is SkipCode.INVALID_METRIC and "unusable" in d.reason


@pytest.mark.parametrize("bad", ["nan", "inf", "n/a"])
def test_unusable_champion_metrics_stop_the_gate_and_say_what_to_fix(bad):
    d = plan_promotion(model("2", auc="0.9"), model("1", auc=bad), HIGHER)
    assert isinstance(d, Skip) and d.code is SkipCode.INVALID_METRIC and "fix its tag evergreen.metric.auc" in d.reason


@pytest.mark.parametrize(("raw", "value"), [(" 0.91 ", "0.91"), ("9.1e-1", "0.91"), ("\u22120.5", "-0.5"),
                                            (3, "3"), (0.25, "0.25"), ("+1", "1")])
def test_metric_values_are_parsed_robustly(raw, value):
    assert parse_metric(raw) == Decimal(value)


def test_threshold_guards_every_promotion_including_the_first():
    rule = PromotionRule("auc", Direction.HIGHER_IS_BETTER, "churn-online", threshold=0.75)
    d = plan_promotion(model("1", auc="0.7"), None, rule)
    assert isinstance(d, Skip) and d.code is SkipCode.BELOW_THRESHOLD and "at least 0.75" in d.reason
    low = PromotionRule("rmse", Direction.LOWER_IS_BETTER, "churn-online", threshold=12)
    assert plan_promotion(model("1", rmse="13"), None, low).code is SkipCode.BELOW_THRESHOLD
    assert isinstance(plan_promotion(model("1", rmse="11"), None, low), Promote)


def test_snapshot_from_a_registered_event_prefers_properties_and_reads_the_endpoint():
    raw = json.loads((PAYLOADS / "eventgrid_model_registered.json").read_text())[0]
    event = parse_model_registered(raw)
    snapshot = ModelSnapshot.from_registry(event.model_name, event.version, event.tags, event.properties)
    assert snapshot.metrics == {"auc": "0.912"}  # property (immutable) wins over the tag
    assert snapshot.endpoint == "churn-online" and snapshot.model == "churn-classifier:3"
    assert isinstance(plan_promotion(snapshot, None, HIGHER), Promote)


# -- property: for higher_is_better, Promote iff improvement > 0 and >= min_improvement -------------------
metric_values = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False)


@given(new=metric_values, old=metric_values, minimum=st.floats(min_value=0, max_value=10, allow_nan=False))
@example(new=1.0, old=6.297943006001162e-95, minimum=1.0)  # just short of the minimum, beyond 28 digits
@example(new=0.3, old=0.2, minimum=0.1)  # exactly the minimum, which binary floats miss
def test_promote_iff_improvement_is_positive_and_large_enough(new, old, minimum):
    rule = PromotionRule("auc", Direction.HIGHER_IS_BETTER, "churn-online", min_improvement=minimum)
    d = plan_promotion(model("2", auc=repr(new)), model("1", auc=repr(old)), rule)
    with localcontext() as ctx:
        ctx.prec = 1000  # exact: the gate compares exactly, so must the oracle
        improvement = Decimal(repr(new)) - Decimal(repr(old))
    expected = improvement > 0 and improvement >= Decimal(repr(minimum))
    assert isinstance(d, Promote) == expected
    assert isinstance(d, Skip) or d.champion_value == old


@given(new=metric_values, old=metric_values)
def test_directions_mirror_each_other(new, old):
    up = PromotionRule("m", Direction.HIGHER_IS_BETTER, "e-1")
    down = PromotionRule("m", Direction.LOWER_IS_BETTER, "e-1")
    a = plan_promotion(model("2", m=new), model("1", m=old), up)
    b = plan_promotion(model("2", m=-new), model("1", m=-old), down)
    assert type(a) is type(b)


# -- the policy fragment -----------------------------------------------------------------------------------
def policy(**overrides: object) -> dict[str, object]:
    doc: dict[str, object] = {
        "metric": "auc", "direction": "higher_is_better", "endpoint": "churn-online", "min_improvement": 0.01,
        "deployment": {"instance_type": "Standard_DS3_v2", "instance_count": 2},
        "smoke_test": {"request": {"input_data": {"columns": ["tenure"], "data": [[12]]}}},
    }
    doc.update(overrides)
    return doc


def test_policy_defaults_and_rule():
    p = PromotionPolicy.model_validate(policy())
    assert p.canary_steps == (10, 50, 100) and p.grace_period_seconds == 300
    assert p.rule() == PromotionRule("auc", Direction.HIGHER_IS_BETTER, "churn-online", min_improvement=0.01)
    assert p.replace_unscored_champion is False and p.rule().replace_unscored_champion is False
    opted_in = PromotionPolicy.model_validate(policy(replace_unscored_champion=True))
    assert opted_in.rule().replace_unscored_champion is True
    with pytest.raises(ValidationError, match="frozen"):
        p.metric = "loss"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("overrides", "loc", "fragment"),
    [
        ({"direction": "up"}, ("direction",), "'higher_is_better' or 'lower_is_better'"),
        ({"endpoint": "-bad"}, ("endpoint",), "3-32 characters: a letter first"),
        ({"metric": "a uc"}, ("metric",), "without spaces"),
        ({"min_improvement": -0.1}, ("min_improvement",), "greater than or equal to 0"),
        ({"min_improvement": float("nan")}, ("min_improvement",), "finite number"),
        ({"canary_steps": [50, 10, 100]}, ("canary_steps",), "steps must increase"),
        ({"canary_steps": [10, 50]}, ("canary_steps",), "the last step must be 100"),
        ({"canary_steps": [0, 100]}, ("canary_steps",), "between 1 and 100"),
        ({"canary_steps": []}, ("canary_steps",), "at least one traffic percentage"),
        ({"grace_period_seconds": -1}, ("grace_period_seconds",), "greater than or equal to 0"),
        ({"deployment": {"instance_type": "Standard DS3", "instance_count": 1}}, ("deployment", "instance_type"),
         "Azure VM size"),
        ({"deployment": {"instance_type": "Standard_DS3_v2", "instance_count": 0}}, ("deployment", "instance_count"),
         "greater than or equal to 1"),
        ({"smoke_test": {"request": {}}}, ("smoke_test", "request"), "non-empty JSON object"),
        ({"surprise": 1}, ("surprise",), "Extra inputs are not permitted"),
        ({"replace_unscored_champion": "sometimes"}, ("replace_unscored_champion",), "valid boolean"),
    ],
)
def test_policy_validation_messages_name_the_field(overrides, loc, fragment):
    with pytest.raises(ValidationError) as info:
        PromotionPolicy.model_validate(policy(**overrides))
    errors = info.value.errors()
    assert [e["loc"] for e in errors] == [loc]
    assert fragment in errors[0]["msg"]
