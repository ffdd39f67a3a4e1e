"""The fair gate (`shared.domain.comparison`): parsing comparison.json and judging it. Pure; hypothesis properties."""

from __future__ import annotations

import contextlib
import json
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.domain.comparison import (
    EvaluationRule,
    InvalidComparisonError,
    gain,
    judge,
    parse_comparison,
)
from shared.domain.gate import Promote, PromoteCode, PromotionRule, Skip, SkipCode
from shared.domain.vocabulary import Direction

RULE = PromotionRule(metric="roc_auc", direction=Direction.HIGHER_IS_BETTER, endpoint="churn-endpoint")
EVAL = EvaluationRule(min_rows=500, min_slice_rows=100, max_slice_regression=0.02)


def document(*, challenger: float = 0.80, champion: float | None = 0.77, low: float = 0.01, high: float = 0.05,
             rows: int = 2000, direction: str = "higher_is_better", metric: str = "roc_auc",
             slices: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    alone = champion is None
    return {
        "schema": "evergreen.comparison/1",
        "evaluation": {"data_asset": "churn-holdout", "data_version": "3", "rows": rows, "label_column": "churned"},
        "seed": 7, "resamples": 1000, "confidence": 0.95, "metric": metric, "direction": direction,
        "challenger": {"model": "churn-model:4", "metrics": {metric: challenger, "accuracy": 0.8}},
        "champion": None if alone else {"model": "churn-model:3", "metrics": {metric: champion}},
        "difference": None if alone else {"metric": metric, "estimate": (low + high) / 2, "low": low, "high": high},
        "slices": slices or [],
    }


def parsed(**kwargs: Any) -> Any:
    return parse_comparison(json.dumps(document(**kwargs)))


# -- examples --------------------------------------------------------------------------------------------------
def test_a_clear_improvement_is_promoted_with_its_interval_in_the_reason() -> None:
    decision = judge(parsed(low=0.012, high=0.047), RULE, EVAL)
    assert isinstance(decision, Promote) and decision.code is PromoteCode.IMPROVED
    assert "[0.012, 0.047]" in decision.reason and "2000 rows" in decision.reason and "95 % interval" in decision.reason
    assert decision.champion is not None and decision.champion.model == "churn-model:3"


def test_an_interval_that_includes_zero_is_not_significant() -> None:
    decision = judge(parsed(low=-0.004, high=0.03), RULE, EVAL)
    assert isinstance(decision, Skip) and decision.code is SkipCode.NOT_SIGNIFICANT
    assert "[-0.004, 0.03]" in decision.reason


def test_the_lower_bound_must_clear_the_absolute_and_relative_minimum() -> None:
    rule = PromotionRule("roc_auc", Direction.HIGHER_IS_BETTER, "churn-endpoint", min_improvement=0.02)
    assert isinstance(judge(parsed(low=0.015, high=0.05), rule, EVAL), Skip)
    assert isinstance(judge(parsed(low=0.02, high=0.05), rule, EVAL), Promote)  # exact decimals: 0.02 >= 0.02
    relative = PromotionRule("roc_auc", Direction.HIGHER_IS_BETTER, "churn-endpoint", min_relative_improvement=0.05)
    # 5 % of the champion's 0.77 is 0.0385
    skip = judge(parsed(low=0.03, high=0.06), relative, EVAL)
    assert isinstance(skip, Skip) and "0.0385" in skip.reason
    assert isinstance(judge(parsed(low=0.04, high=0.06), relative, EVAL), Promote)


def test_lower_is_better_uses_the_mirrored_interval() -> None:
    rule = PromotionRule("rmse", Direction.LOWER_IS_BETTER, "house-endpoint")
    better = parsed(metric="rmse", direction="lower_is_better", challenger=9.0, champion=10.0, low=-1.5, high=-0.5)
    worse = parsed(metric="rmse", direction="lower_is_better", challenger=11.0, champion=10.0, low=0.5, high=1.5)
    assert isinstance(judge(better, rule, EVAL), Promote)
    assert isinstance(judge(worse, rule, EVAL), Skip)


def test_a_large_enough_slice_that_regresses_blocks_the_promotion() -> None:
    slices = [
        {"column": "region", "value": "south", "rows": 900, "challenger": 0.82, "champion": 0.80, "difference": 0.02},
        {"column": "region", "value": "north", "rows": 400, "challenger": 0.70, "champion": 0.75, "difference": -0.05},
        {"column": "contract", "value": "one-year", "rows": 50, "challenger": 0.2, "champion": 0.9,
         "difference": -0.7},  # too few rows: ignored
        {"column": "contract", "value": "two-year", "rows": 300, "challenger": None, "champion": None,
         "difference": None},  # metric undefined on the slice: ignored
    ]
    decision = judge(parsed(slices=slices), RULE, EVAL)
    assert isinstance(decision, Skip) and decision.code is SkipCode.SLICE_REGRESSED
    assert "region=north (400 rows)" in decision.reason and "0.05" in decision.reason
    allowed = EvaluationRule(min_rows=500, min_slice_rows=100, max_slice_regression=0.05)
    assert isinstance(judge(parsed(slices=slices), RULE, allowed), Promote)  # exactly the allowed regression


def test_too_few_rows_and_below_threshold_are_coded() -> None:
    small = judge(parsed(rows=499), RULE, EVAL)
    assert isinstance(small, Skip) and small.code is SkipCode.EVALUATION_TOO_SMALL and "499 rows" in small.reason
    rule = PromotionRule("roc_auc", Direction.HIGHER_IS_BETTER, "churn-endpoint", threshold=0.85)
    low = judge(parsed(), rule, EVAL)
    assert isinstance(low, Skip) and low.code is SkipCode.BELOW_THRESHOLD


def test_a_first_model_is_promoted_if_it_meets_the_threshold() -> None:
    alone = parsed(champion=None)
    first = judge(alone, RULE, EVAL)
    assert isinstance(first, Promote) and first.code is PromoteCode.FIRST_MODEL and first.champion is None
    rule = PromotionRule("roc_auc", Direction.HIGHER_IS_BETTER, "churn-endpoint", threshold=0.9)
    assert isinstance(judge(alone, rule, EVAL), Skip)


def test_a_comparison_on_another_metric_is_invalid() -> None:
    decision = judge(parsed(metric="accuracy"), RULE, EVAL)
    assert isinstance(decision, Skip) and decision.code is SkipCode.INVALID_COMPARISON


@pytest.mark.parametrize(("text", "fragment"), [
    ("", "not JSON"),
    ("[1, 2]", "must be an object"),
    ('{"schema": "other/1"}', "schema"),
    (json.dumps({**document(), "direction": "sideways"}), "direction"),
    (json.dumps(document()).replace('"low": 0.01', '"low": NaN'), "NaN"),
    (json.dumps(document()).replace('"low": 0.01', '"low": "0.01"'), "must be a number"),
    (json.dumps(document()).replace('"low": 0.01', '"low": 1e999999'), "out of range"),
    (json.dumps(document(low=0.05, high=0.01)), "above difference.high"),
    (json.dumps({**document(), "difference": None}), "both be set or both be null"),
    (json.dumps(document(rows=-3)), "whole number"),
    (json.dumps({**document(), "challenger": {"metrics": {}}}), "challenger.model"),
    ("[" * 100_000 + "]" * 100_000, "not JSON"),
])
def test_a_malformed_comparison_is_one_invalid_comparison_error(text: str, fragment: str) -> None:
    with pytest.raises(InvalidComparisonError) as raised:
        parse_comparison(text)
    assert fragment in str(raised.value)


# -- properties ------------------------------------------------------------------------------------------------
bounds = st.decimals(min_value=Decimal("-0.5"), max_value=Decimal("0.5"), allow_nan=False, places=4)
metrics = st.decimals(min_value=Decimal("0.01"), max_value=Decimal("0.99"), places=4)
directions = st.sampled_from(["higher_is_better", "lower_is_better"])
margins = st.decimals(min_value=Decimal(0), max_value=Decimal("0.2"), places=3)


def build(value: Decimal, other: Decimal, a: Decimal, b: Decimal, direction: str) -> Any:
    low, high = min(a, b), max(a, b)
    return parsed(challenger=float(value), champion=float(other), low=float(low), high=float(high),
                  direction=direction)


def rule_for(direction: str, margin: Decimal = Decimal(0)) -> PromotionRule:
    return PromotionRule("roc_auc", Direction(direction), "churn-endpoint", min_improvement=float(margin))


@given(value=metrics, spread=st.decimals(min_value=Decimal(0), max_value=Decimal("0.1"), places=4),
       direction=directions, margin=margins)
def test_a_model_compared_with_itself_is_never_promoted_and_its_interval_contains_zero(
        value: Decimal, spread: Decimal, direction: str, margin: Decimal) -> None:
    # The paired differences of a model with itself are all zero: whatever the resampling, the interval is
    # [0, 0]; a step that reported a symmetric spread around zero must not pass either.
    for low, high in ((Decimal(0), Decimal(0)), (-spread, spread)):
        comparison = build(value, value, low, high, direction)
        assert comparison.difference is not None and comparison.difference.low <= 0 <= comparison.difference.high
        assert not isinstance(judge(comparison, rule_for(direction, margin), EVAL), Promote)


@given(value=metrics, other=metrics, a=bounds, b=bounds, direction=directions, margin=margins)
def test_swapping_champion_and_challenger_mirrors_the_interval_and_never_promotes_both(
        value: Decimal, other: Decimal, a: Decimal, b: Decimal, direction: str, margin: Decimal) -> None:
    comparison = build(value, other, a, b, direction)
    swapped = comparison.swapped()
    assert swapped.difference is not None and comparison.difference is not None
    assert (swapped.difference.low, swapped.difference.high) == (-comparison.difference.high,
                                                                 -comparison.difference.low)
    assert swapped.swapped().difference == comparison.difference
    forward, backward = gain(comparison), gain(swapped)
    assert forward is not None and backward is not None and backward == forward.mirrored()
    rule = rule_for(direction, margin)
    assert not (isinstance(judge(comparison, rule, EVAL), Promote) and isinstance(judge(swapped, rule, EVAL), Promote))


@given(value=metrics, other=metrics, a=bounds, b=bounds, direction=directions, smaller=margins, larger=margins)
def test_the_decision_is_monotone_in_min_improvement(value: Decimal, other: Decimal, a: Decimal, b: Decimal,
                                                     direction: str, smaller: Decimal, larger: Decimal) -> None:
    smaller, larger = min(smaller, larger), max(smaller, larger)
    comparison = build(value, other, a, b, direction)
    if isinstance(judge(comparison, rule_for(direction, larger), EVAL), Promote):
        assert isinstance(judge(comparison, rule_for(direction, smaller), EVAL), Promote)


@given(rows=st.integers(min_value=0, max_value=5000), minimum=st.integers(min_value=1, max_value=5000))
def test_fewer_rows_than_the_minimum_never_promote(rows: int, minimum: int) -> None:
    decision = judge(parsed(rows=rows), RULE, EvaluationRule(minimum, 100, 0.02))
    assert isinstance(decision, Promote) == (rows >= minimum)


@given(st.text(max_size=200) | st.binary(max_size=200).map(lambda b: b.decode("latin-1")))
def test_any_text_parses_or_is_an_invalid_comparison(text: str) -> None:
    with contextlib.suppress(InvalidComparisonError):
        parse_comparison(text)
