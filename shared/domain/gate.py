"""The champion/challenger gate: should a newly registered model version replace the one serving?

`plan_promotion` is pure: the caller gathers the candidate and the current champion (from the
registry and the endpoint) and gets back `Promote` or `Skip`, each with a reason for the audit log.
Metrics arrive as registry tags/properties (`evergreen.metric.<name>`), i.e. strings written by
training code, so they are parsed defensively and compared as decimals: `0.3` beats `0.2` by
exactly the `0.1` the policy asks for, which binary floats would get wrong.

The policy-file fragment (`models[].promotion`) lives in `shared.config.promotion`; its `rule()`
gives the `PromotionRule` this module reads.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation, localcontext
from enum import Enum

from shared.domain.keys import digest
from shared.domain.vocabulary import METRIC_TAG_PREFIX, Direction, Tag, metric_tag

ENDPOINT_TAG = Tag.ENDPOINT.value

_MAX_METRIC_TEXT = 64
_MAX_EXPONENT = 1000  # keeps decimal arithmetic exact and far from overflow
EXACT_PRECISION = 2 * _MAX_EXPONENT + 4 * _MAX_METRIC_TEXT  # digits enough for exact differences


class PromoteCode(str, Enum):
    FIRST_MODEL = "first_model"
    CHAMPION_UNSCORED = "champion_unscored"
    IMPROVED = "improved"


class SkipCode(str, Enum):
    OTHER_ENDPOINT = "other_endpoint"
    ALREADY_CHAMPION = "already_champion"
    MISSING_METRIC = "missing_metric"
    INVALID_METRIC = "invalid_metric"
    BELOW_THRESHOLD = "below_threshold"
    NOT_BETTER = "not_better"
    TOO_SMALL = "improvement_too_small"
    CHAMPION_UNSCORED = "champion_unscored"
    # the comparison on shared evaluation data (`shared.domain.comparison`)
    NOT_SIGNIFICANT = "not_significant"
    SLICE_REGRESSED = "slice_regressed"
    EVALUATION_TOO_SMALL = "evaluation_too_small"
    INVALID_COMPARISON = "invalid_comparison"
    COMPARISON_FAILED = "comparison_failed"
    EVALUATION_DATA_MISSING = "evaluation_data_missing"
    SUPERSEDED = "superseded"  # a newer version of the same model is the candidate now (newest wins)


# -- inputs (values) ------------------------------------------------------------------------------
@dataclass(frozen=True)
class ModelSnapshot:
    """One model version as the gate sees it: identity, raw metric values, and endpoint affinity."""

    name: str
    version: str
    metrics: Mapping[str, str | float] = field(default_factory=dict, hash=False)
    tags: Mapping[str, str] = field(default_factory=dict, hash=False)
    endpoint: str | None = None  # from the `evergreen.endpoint` tag; None = no affinity declared

    @classmethod
    def from_registry(
        cls, name: str, version: str, tags: Mapping[str, str], properties: Mapping[str, str] | None = None
    ) -> ModelSnapshot:
        """Build from registry tags and properties; a property wins over a tag of the same name.

        Azure ML properties cannot be changed after registration, so a metric written there cannot be
        edited later to sneak a model past the gate; tags are the fallback for registries without them.
        """
        merged = {**tags, **(properties or {})}
        metrics = {k.removeprefix(METRIC_TAG_PREFIX): v for k, v in merged.items() if k.startswith(METRIC_TAG_PREFIX)}
        endpoint = (merged.get(ENDPOINT_TAG) or "").strip() or None
        return cls(name=name, version=str(version), metrics=metrics, tags=dict(tags), endpoint=endpoint)

    @property
    def model(self) -> str:
        return f"{self.name}:{self.version}"


@dataclass(frozen=True)
class PromotionRule:
    """What "better" means for one endpoint; built from `shared.config.promotion.PromotionPolicy.rule()`."""

    metric: str
    direction: Direction
    endpoint: str
    min_improvement: float = 0.0  # absolute, in the metric's units
    min_relative_improvement: float = 0.0  # fraction of the champion's value, e.g. 0.01 = 1 %
    threshold: float | None = None  # the candidate must reach at least (lower_is_better: at most) this
    replace_unscored_champion: bool = False  # a champion without the metric may be replaced without comparison


# -- decisions (values) ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Promote:
    """Roll the candidate out on the endpoint; `key` names this promotion for idempotency."""

    reason: str
    code: PromoteCode
    candidate: ModelSnapshot
    champion: ModelSnapshot | None
    endpoint: str
    metric: str
    candidate_value: float
    champion_value: float | None = None

    @property
    def key(self) -> str:
        return digest("promote", self.endpoint, self.candidate.name, self.candidate.version, length=16)


@dataclass(frozen=True)
class Skip:
    reason: str
    code: SkipCode


PromotionDecision = Promote | Skip


def parse_metric(raw: object) -> Decimal:
    """A finite metric value from a tag string or number; ValueError says what is wrong with it."""
    if isinstance(raw, bool) or not isinstance(raw, str | int | float):
        raise ValueError(f"{raw!r} is not a number")
    text = raw.strip() if isinstance(raw, str) else repr(raw)
    text = text.replace("\u2212", "-")  # a typographic minus sign from copy-pasted reports
    if not text or len(text) > _MAX_METRIC_TEXT or "_" in text:
        raise ValueError(f"{raw!r} is not a number")
    try:
        value = Decimal(text)
    except InvalidOperation:
        raise ValueError(f"{raw!r} is not a number") from None
    if not value.is_finite():
        raise ValueError(f"{raw!r} is not a finite number")
    if value and abs(value.adjusted()) > _MAX_EXPONENT:
        raise ValueError(f"{raw!r} is out of range")
    return value


def plan_promotion(candidate: ModelSnapshot, champion: ModelSnapshot | None, rule: PromotionRule) -> PromotionDecision:
    """Decide whether `candidate` should replace `champion` on `rule.endpoint`. Pure: no I/O.

    A sequence of small checks, each returning a coded `Skip` or None (go on), then the comparison.
    """
    skip = precheck(candidate, champion, rule)
    if skip is not None:
        return skip
    new = _candidate_value(candidate, rule)
    if isinstance(new, Skip):
        return new
    metric = rule.metric
    if champion is None:
        return Promote(f"first model on {rule.endpoint!r}: {candidate.model} has {metric}={new}",
                       PromoteCode.FIRST_MODEL, candidate, None, rule.endpoint, metric, float(new))
    if metric not in champion.metrics:
        return _unscored_champion(candidate, champion, rule, new)
    old = _champion_value(champion, rule)
    if isinstance(old, Skip):
        return old
    return _compare(candidate, champion, rule, new, old)


def precheck(candidate: ModelSnapshot, champion: ModelSnapshot | None, rule: PromotionRule) -> Skip | None:
    """The checks that need no metric: the candidate belongs to another endpoint, or already serves."""
    return _other_endpoint(candidate, rule) or _already_champion(candidate, champion, rule)


def _other_endpoint(candidate: ModelSnapshot, rule: PromotionRule) -> Skip | None:
    if candidate.endpoint is not None and candidate.endpoint != rule.endpoint:
        return Skip(f"{candidate.model} belongs to endpoint {candidate.endpoint!r} ({ENDPOINT_TAG}), "
                    f"not {rule.endpoint!r}", SkipCode.OTHER_ENDPOINT)
    return None


def _already_champion(candidate: ModelSnapshot, champion: ModelSnapshot | None, rule: PromotionRule) -> Skip | None:
    if champion is not None and (champion.name, champion.version) == (candidate.name, candidate.version):
        return Skip(f"{candidate.model} is already the champion on {rule.endpoint!r} (a redelivered event?)",
                    SkipCode.ALREADY_CHAMPION)
    return None


def _unscored_champion(candidate: ModelSnapshot, champion: ModelSnapshot, rule: PromotionRule,
                       new: Decimal) -> PromotionDecision:
    """A champion without the metric cannot be compared: keep it, unless the policy allows replacing it blind.

    Replacing it by default would let any scored candidate take over a hand-deployed model that simply
    was never tagged, with no evidence that the candidate is better.
    """
    metric = rule.metric
    if rule.replace_unscored_champion:
        return Promote(f"the champion {champion.model} carries no {metric!r} metric and the policy allows "
                       f"replacing it (replace_unscored_champion); promoting {candidate.model} ({metric}={new})",
                       PromoteCode.CHAMPION_UNSCORED, candidate, champion, rule.endpoint, metric, float(new))
    return Skip(f"the champion {champion.model} carries no {metric!r} metric (tag {metric_tag(metric)}), so "
                f"{candidate.model} ({metric}={new}) cannot be compared with it; tag the champion with its "
                "metric, or set promotion.replace_unscored_champion: true to replace it without comparison",
                SkipCode.CHAMPION_UNSCORED)


def _candidate_value(candidate: ModelSnapshot, rule: PromotionRule) -> Decimal | Skip:
    """The candidate's metric, or why it cannot be used (missing, unreadable, short of the threshold)."""
    metric = rule.metric
    if metric not in candidate.metrics:
        return Skip(f"{candidate.model} carries no {metric!r} metric (tag {metric_tag(metric)}); "
                    "the gate cannot compare it", SkipCode.MISSING_METRIC)
    try:
        new = parse_metric(candidate.metrics[metric])
    except ValueError as exc:
        return Skip(f"{candidate.model}'s {metric!r} metric is unusable: {exc}", SkipCode.INVALID_METRIC)
    missed = threshold_missed(new, rule)
    if missed is not None:
        return Skip(f"{candidate.model} has {metric}={new}; the policy requires {missed}", SkipCode.BELOW_THRESHOLD)
    return new


def threshold_missed(value: Decimal, rule: PromotionRule) -> str | None:
    """What `rule.threshold` requires ("at least 0.85" / "at most 12.5") if `value` misses it; None if it holds."""
    if rule.threshold is None:
        return None
    bound = policy_decimal(rule.threshold)
    higher = rule.direction is Direction.HIGHER_IS_BETTER
    if (value < bound) if higher else (value > bound):
        return f"{'at least' if higher else 'at most'} {bound}"
    return None


def _champion_value(champion: ModelSnapshot, rule: PromotionRule) -> Decimal | Skip:
    metric = rule.metric
    try:
        return parse_metric(champion.metrics[metric])
    except ValueError as exc:
        return Skip(f"the champion {champion.model}'s {metric!r} metric is unusable: {exc}; fix its tag "
                    f"{metric_tag(metric)} (or remove it) to let the gate compare", SkipCode.INVALID_METRIC)


def _compare(candidate: ModelSnapshot, champion: ModelSnapshot, rule: PromotionRule, new: Decimal,
             old: Decimal) -> PromotionDecision:
    """Promote only if the candidate improves on the champion by at least the policy's margin (exact decimals)."""
    metric = rule.metric
    with localcontext() as ctx:
        ctx.prec = EXACT_PRECISION
        improvement = new - old if rule.direction is Direction.HIGHER_IS_BETTER else old - new
        required = max(policy_decimal(rule.min_improvement), policy_decimal(rule.min_relative_improvement) * abs(old))
    scores = f"{candidate.model} {metric}={new} vs champion {champion.model} {metric}={old}"
    if improvement <= 0:
        what = "ties" if improvement == 0 else "is worse"
        return Skip(f"{scores}: the candidate {what} ({rule.direction.value})", SkipCode.NOT_BETTER)
    if improvement < required:
        return Skip(f"{scores}: improvement {improvement} is below the required {required}", SkipCode.TOO_SMALL)
    return Promote(f"{scores}: improvement {improvement} >= required {required}", PromoteCode.IMPROVED,
                   candidate, champion, rule.endpoint, metric, float(new), float(old))


def policy_decimal(value: float) -> Decimal:
    """A policy number as the decimal its author wrote (0.1, not 0.1000000000000000055...)."""
    return Decimal(repr(float(value)))
