"""The fair gate: judge a challenger from a comparison job's `comparison.json`, not from each run's own holdout.

`ml/compare.yml` scores the challenger and the champion on the same labelled rows and writes
`comparison.json` (schema `evergreen.comparison/1`): both models' metrics, the paired difference
challenger - champion with a paired-bootstrap confidence interval, and a per-slice table.

`parse_comparison` reads that file defensively (anything malformed is an `InvalidComparisonError`
naming what is wrong; the promoter turns it into a coded skip, never a crash) with every number as
the `Decimal` of its JSON text. `judge` is pure: it promotes only if the interval's lower bound,
turned so that "up" is better, clears the policy's minimum improvement, no large enough slice
regresses by more than the policy allows, and any threshold holds; every skip is coded and names
its numbers.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from decimal import Decimal, localcontext
from typing import Any

from shared.domain.gate import (
    EXACT_PRECISION,
    ModelSnapshot,
    Promote,
    PromoteCode,
    PromotionDecision,
    PromotionRule,
    Skip,
    SkipCode,
    parse_metric,
    policy_decimal,
    threshold_missed,
)
from shared.domain.vocabulary import Direction
from shared.errors import InvalidEventError

SCHEMA = "evergreen.comparison/1"
COMPARE_PIPELINE = "ml/compare.yml"  # the comparison job, relative to the app root (the policy file's folder)
COMPARE_EXPERIMENT = "evergreen-compare"
COMPARE_NODE = "compare"  # the pipeline's one node, where the (optional) champion is bound
COMPARE_INPUTS = ("challenger_model", "challenger_name", "evaluation_data", "data_asset", "data_version",
                  "label_column", "metric", "direction", "confidence", "resamples", "seed", "slices",
                  "min_slice_rows")  # the pipeline inputs Evergreen sets on every comparison job
MAX_COMPARISON_BYTES = 4 * 1024 * 1024
_MAX_SLICES = 10_000


class InvalidComparisonError(InvalidEventError):
    """`comparison.json` is missing a field, has a wrong type, or a number that is not finite."""


@dataclass(frozen=True)
class EvaluationRule:
    """The policy's evaluation thresholds (`shared.config.promotion.EvaluationPolicy.rule()`)."""

    min_rows: int
    min_slice_rows: int
    max_slice_regression: float  # in the metric's units, >= 0


@dataclass(frozen=True)
class Interval:
    """challenger - champion on `metric`, in its units: the point estimate and the confidence interval."""

    metric: str
    estimate: Decimal
    low: Decimal
    high: Decimal

    def text(self) -> str:
        return f"[{self.low}, {self.high}]"

    def mirrored(self) -> Interval:
        """The interval of champion - challenger."""
        return Interval(self.metric, -self.estimate, -self.high, -self.low)


@dataclass(frozen=True)
class ScoredModel:
    model: str  # name:version
    metrics: Mapping[str, Decimal] = field(default_factory=dict, hash=False)


@dataclass(frozen=True)
class SliceRow:
    column: str
    value: str | None
    rows: int
    challenger: Decimal | None
    champion: Decimal | None
    difference: Decimal | None  # challenger - champion; None where the metric is undefined on the slice


@dataclass(frozen=True)
class Comparison:
    """One `comparison.json`, typed."""

    data_asset: str
    data_version: str
    rows: int
    label_column: str
    seed: int
    resamples: int
    confidence: Decimal
    metric: str
    direction: Direction
    challenger: ScoredModel
    champion: ScoredModel | None
    difference: Interval | None
    slices: tuple[SliceRow, ...] = ()

    def swapped(self) -> Comparison:
        """The same comparison with champion and challenger exchanged (the interval mirrored).

        Raises InvalidComparisonError for a model scored alone (there is nothing to swap it with).
        """
        if self.champion is None or self.difference is None:
            raise InvalidComparisonError("a model scored alone has no champion to swap with")
        slices = tuple(replace(s, challenger=s.champion, champion=s.challenger,
                               difference=None if s.difference is None else -s.difference) for s in self.slices)
        return replace(self, challenger=self.champion, champion=self.challenger,
                       difference=self.difference.mirrored(), slices=slices)


# -- parsing ------------------------------------------------------------------------------------------------
def _reject_constant(name: str) -> Any:
    raise InvalidComparisonError(f"comparison.json holds {name}, which is not a finite number")


def parse_comparison(text: str | bytes) -> Comparison:
    """Parse `comparison.json`; raises InvalidComparisonError naming the first thing that is wrong."""
    if len(text) > MAX_COMPARISON_BYTES:
        raise InvalidComparisonError(f"comparison.json is larger than {MAX_COMPARISON_BYTES} bytes")
    try:
        raw = json.loads(text, parse_float=Decimal, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:
        raise InvalidComparisonError(f"comparison.json is not JSON: {exc}") from exc
    doc = _mapping(raw, "comparison.json")
    if doc.get("schema") != SCHEMA:
        raise InvalidComparisonError(f"comparison.json: schema is {doc.get('schema')!r}, expected {SCHEMA!r}")
    evaluation = _mapping(doc.get("evaluation"), "evaluation")
    try:
        direction = Direction(_text(doc.get("direction"), "direction"))
    except ValueError as exc:
        raise InvalidComparisonError(f"comparison.json: direction {doc.get('direction')!r} is not "
                                     "higher_is_better or lower_is_better") from exc
    metric = _text(doc.get("metric"), "metric")
    champion = None if doc.get("champion") is None else _scored(doc["champion"], "champion")
    difference = None if doc.get("difference") is None else _interval(doc["difference"], metric)
    if (champion is None) != (difference is None):
        raise InvalidComparisonError("comparison.json: champion and difference must both be set or both be null")
    slices = doc.get("slices") or []
    if not isinstance(slices, list) or len(slices) > _MAX_SLICES:
        raise InvalidComparisonError(f"comparison.json: slices must be a list of at most {_MAX_SLICES} rows")
    return Comparison(
        data_asset=_text(evaluation.get("data_asset"), "evaluation.data_asset"),
        data_version=_text(evaluation.get("data_version"), "evaluation.data_version"),
        rows=_count(evaluation.get("rows"), "evaluation.rows"),
        label_column=_text(evaluation.get("label_column"), "evaluation.label_column"),
        seed=_count(doc.get("seed"), "seed"), resamples=_count(doc.get("resamples"), "resamples"),
        confidence=_number(doc.get("confidence"), "confidence"), metric=metric, direction=direction,
        challenger=_scored(doc.get("challenger"), "challenger"), champion=champion, difference=difference,
        slices=tuple(_slice(row, f"slices[{i}]") for i, row in enumerate(slices)),
    )


def _mapping(value: object, where: str) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise InvalidComparisonError(f"comparison.json: {where} must be an object")
    return value


def _text(value: object, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise InvalidComparisonError(f"comparison.json: {where} must be a non-empty string")
    return value


def _number(value: object, where: str) -> Decimal:
    """A JSON number (floats arrive as the Decimal of their text), finite and in range, exactly."""
    if isinstance(value, bool) or not isinstance(value, int | Decimal):
        raise InvalidComparisonError(f"comparison.json: {where} must be a number, not {value!r}")
    try:
        return parse_metric(str(value))
    except ValueError as exc:
        raise InvalidComparisonError(f"comparison.json: {where}: {exc}") from exc


def _optional(value: object, where: str) -> Decimal | None:
    return None if value is None else _number(value, where)


def _count(value: object, where: str) -> int:
    number = _number(value, where)
    if number != number.to_integral_value() or number < 0:
        raise InvalidComparisonError(f"comparison.json: {where} must be a whole number >= 0, not {number}")
    return int(number)


def _scored(value: object, where: str) -> ScoredModel:
    item = _mapping(value, where)
    metrics = _mapping(item.get("metrics"), f"{where}.metrics")
    parsed = {str(k): v for k, v in ((k, _optional(v, f"{where}.metrics.{k}")) for k, v in metrics.items())
              if v is not None}
    return ScoredModel(_text(item.get("model"), f"{where}.model"), parsed)


def _interval(value: object, metric: str) -> Interval:
    item = _mapping(value, "difference")
    if item.get("metric", metric) != metric:
        raise InvalidComparisonError(f"comparison.json: difference.metric {item.get('metric')!r} is not the "
                                     f"primary metric {metric!r}")
    low, high = _number(item.get("low"), "difference.low"), _number(item.get("high"), "difference.high")
    estimate = _number(item.get("estimate"), "difference.estimate")
    if not low <= high:
        raise InvalidComparisonError(f"comparison.json: difference.low {low} is above difference.high {high}")
    return Interval(metric, estimate, low, high)


def _slice(value: object, where: str) -> SliceRow:
    item = _mapping(value, where)
    raw_value = item.get("value")
    return SliceRow(column=_text(item.get("column"), f"{where}.column"),
                    value=None if raw_value is None else str(raw_value),
                    rows=_count(item.get("rows"), f"{where}.rows"),
                    challenger=_optional(item.get("challenger"), f"{where}.challenger"),
                    champion=_optional(item.get("champion"), f"{where}.champion"),
                    difference=_optional(item.get("difference"), f"{where}.difference"))


# -- the decision -------------------------------------------------------------------------------------------
def gain(comparison: Comparison) -> Interval | None:
    """challenger - champion turned so that positive is better (mirrored for lower_is_better); None if alone."""
    if comparison.difference is None:
        return None
    return comparison.difference if comparison.direction is Direction.HIGHER_IS_BETTER \
        else comparison.difference.mirrored()


def judge(comparison: Comparison, rule: PromotionRule, evaluation: EvaluationRule) -> PromotionDecision:
    """Promote the challenger only on evidence. Pure: no I/O.

    In order: the comparison must be on the policy's metric and direction; the evaluation must have
    at least `min_rows` rows; the challenger must meet `threshold`; with a champion, the lower bound
    of the direction-adjusted interval must be above zero and at least the required improvement
    (`min_improvement`, or `min_relative_improvement` of the champion's value); and no slice with at
    least `min_slice_rows` rows may regress by more than `max_slice_regression`.
    """
    skip = _mismatch(comparison, rule) or _too_small(comparison, evaluation)
    if skip is not None:
        return skip
    challenger = _snapshot(comparison.challenger)
    value = _value(comparison, rule)
    if isinstance(value, Skip):
        return value
    if comparison.champion is None:
        return Promote(f"first model on {rule.endpoint!r}: {challenger.model} scored alone on "
                       f"{_data(comparison)}: {rule.metric}={value}", PromoteCode.FIRST_MODEL, challenger, None,
                       rule.endpoint, rule.metric, float(value))
    champion = _snapshot(comparison.champion)
    significant = _significant(comparison, rule, challenger, champion)
    if isinstance(significant, Skip):
        return significant
    regressed = _regressed_slice(comparison, evaluation)
    if regressed is not None:
        return regressed
    old = comparison.champion.metrics.get(rule.metric)
    return Promote(significant, PromoteCode.IMPROVED, challenger, champion, rule.endpoint, rule.metric,
                   float(value), None if old is None else float(old))


def _mismatch(comparison: Comparison, rule: PromotionRule) -> Skip | None:
    if comparison.metric != rule.metric or comparison.direction is not rule.direction:
        return Skip(f"the comparison is on {comparison.metric} ({comparison.direction.value}), but the policy "
                    f"promotes on {rule.metric} ({rule.direction.value})", SkipCode.INVALID_COMPARISON)
    return None


def _too_small(comparison: Comparison, evaluation: EvaluationRule) -> Skip | None:
    if comparison.rows < evaluation.min_rows:
        return Skip(f"the evaluation data {_data(comparison)} has {comparison.rows} rows; the policy requires at "
                    f"least {evaluation.min_rows} (promotion.evaluation.min_rows)", SkipCode.EVALUATION_TOO_SMALL)
    return None


def _value(comparison: Comparison, rule: PromotionRule) -> Decimal | Skip:
    """The challenger's metric on the evaluation data, or why it cannot be used (missing, under threshold)."""
    model = comparison.challenger.model
    value = comparison.challenger.metrics.get(rule.metric)
    if value is None:
        return Skip(f"the comparison has no {rule.metric!r} for {model}", SkipCode.MISSING_METRIC)
    missed = threshold_missed(value, rule)
    if missed is not None:
        return Skip(f"{model} has {rule.metric}={value} on {_data(comparison)}; the policy requires {missed}",
                    SkipCode.BELOW_THRESHOLD)
    return value


def _significant(comparison: Comparison, rule: PromotionRule, challenger: ModelSnapshot,
                 champion: ModelSnapshot) -> str | Skip:
    """The reason to promote if the lower bound clears the required improvement, else a `not_significant` skip."""
    interval = gain(comparison)
    if interval is None:  # parse_comparison guarantees a difference with a champion
        return Skip("the comparison has a champion but no difference", SkipCode.INVALID_COMPARISON)
    old = (comparison.champion.metrics.get(rule.metric) if comparison.champion else None) or Decimal(0)
    with localcontext() as ctx:
        ctx.prec = EXACT_PRECISION
        required = max(policy_decimal(rule.min_improvement), policy_decimal(rule.min_relative_improvement) * abs(old))
    level = f"{(comparison.confidence * 100).normalize():f} %"
    scores = (f"{challenger.model} vs champion {champion.model} on {_data(comparison)}: {rule.metric} "
              f"difference {comparison.difference.estimate if comparison.difference else '?'}, {level} interval "
              f"{comparison.difference.text() if comparison.difference else '?'}")
    if interval.low <= 0 or interval.low < required:
        why = ("the interval includes no improvement" if interval.low <= 0
               else f"its lower bound {interval.low} is below the required {required}")
        return Skip(f"{scores}: not significant, {why} ({rule.direction.value})", SkipCode.NOT_SIGNIFICANT)
    return f"{scores}: lower bound {interval.low} >= required {required} (> 0)"


def _regressed_slice(comparison: Comparison, evaluation: EvaluationRule) -> Skip | None:
    """The worst slice (with enough rows) that regresses by more than the policy allows; None if none does."""
    limit = policy_decimal(evaluation.max_slice_regression)
    worst: tuple[Decimal, SliceRow] | None = None
    for row in comparison.slices:
        if row.rows < evaluation.min_slice_rows or row.difference is None:
            continue
        loss = -row.difference if comparison.direction is Direction.HIGHER_IS_BETTER else row.difference
        if loss > limit and (worst is None or loss > worst[0]):
            worst = (loss, row)
    if worst is None:
        return None
    loss, row = worst
    return Skip(f"slice {row.column}={row.value} ({row.rows} rows): {comparison.metric} {row.challenger} vs "
                f"champion {row.champion}, a regression of {loss} > the allowed {limit} "
                "(promotion.evaluation.max_slice_regression)", SkipCode.SLICE_REGRESSED)


def _snapshot(scored: ScoredModel) -> ModelSnapshot:
    name, _, version = scored.model.rpartition(":")
    return ModelSnapshot(name=name or scored.model, version=version,
                         metrics={k: str(v) for k, v in scored.metrics.items()})


def _data(comparison: Comparison) -> str:
    return f"{comparison.data_asset}:{comparison.data_version} ({comparison.rows} rows)"
