"""The champion/challenger gate: should a newly registered model version replace the one serving?

`plan_promotion` is pure: the caller gathers the candidate and the current champion (from the
registry and the endpoint) and gets back `Promote` or `Skip`, each with a reason for the audit log.
Metrics arrive as registry tags/properties (`evergreen.metric.<name>`), i.e. strings written by
training code, so they are parsed defensively and compared as decimals: `0.3` beats `0.2` by
exactly the `0.1` the policy asks for, which binary floats would get wrong.

`PromotionPolicy` is the policy-file fragment (`models[].promotion`) the gate and the rollout read.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation, localcontext
from enum import Enum
from itertools import pairwise
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from shared.keys import digest

METRIC_TAG_PREFIX = "evergreen.metric."
ENDPOINT_TAG = "evergreen.endpoint"

_MAX_METRIC_TEXT = 64
_MAX_EXPONENT = 1000  # keeps decimal arithmetic exact and far from overflow
_EXACT_PRECISION = 2 * _MAX_EXPONENT + 4 * _MAX_METRIC_TEXT  # digits enough for exact differences
_ENDPOINT_RE = re.compile(r"^[A-Za-z][A-Za-z0-9-]{1,30}[A-Za-z0-9]$")
_INSTANCE_TYPE_RE = re.compile(r"^[A-Za-z0-9_]{1,64}$")


class Direction(str, Enum):
    HIGHER_IS_BETTER = "higher_is_better"
    LOWER_IS_BETTER = "lower_is_better"


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
    """What "better" means for one endpoint; built from `PromotionPolicy.rule()`."""

    metric: str
    direction: Direction
    endpoint: str
    min_improvement: float = 0.0  # absolute, in the metric's units
    min_relative_improvement: float = 0.0  # fraction of the champion's value, e.g. 0.01 = 1 %
    threshold: float | None = None  # the candidate must reach at least (lower_is_better: at most) this


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
    """Decide whether `candidate` should replace `champion` on `rule.endpoint`. Pure: no I/O."""
    if candidate.endpoint is not None and candidate.endpoint != rule.endpoint:
        return Skip(f"{candidate.model} belongs to endpoint {candidate.endpoint!r} ({ENDPOINT_TAG}), "
                    f"not {rule.endpoint!r}", SkipCode.OTHER_ENDPOINT)
    if champion is not None and (champion.name, champion.version) == (candidate.name, candidate.version):
        return Skip(f"{candidate.model} is already the champion on {rule.endpoint!r} (a redelivered event?)",
                    SkipCode.ALREADY_CHAMPION)

    metric = rule.metric
    if metric not in candidate.metrics:
        return Skip(f"{candidate.model} carries no {metric!r} metric (tag {METRIC_TAG_PREFIX}{metric}); "
                    "the gate cannot compare it", SkipCode.MISSING_METRIC)
    try:
        new = parse_metric(candidate.metrics[metric])
    except ValueError as exc:
        return Skip(f"{candidate.model}'s {metric!r} metric is unusable: {exc}", SkipCode.INVALID_METRIC)

    if rule.threshold is not None:
        bound = _dec(rule.threshold)
        if (new < bound) if rule.direction is Direction.HIGHER_IS_BETTER else (new > bound):
            limit = "at least" if rule.direction is Direction.HIGHER_IS_BETTER else "at most"
            return Skip(f"{candidate.model} has {metric}={new}; the policy requires {limit} {bound}",
                        SkipCode.BELOW_THRESHOLD)

    if champion is None:
        return Promote(f"first model on {rule.endpoint!r}: {candidate.model} has {metric}={new}",
                       PromoteCode.FIRST_MODEL, candidate, None, rule.endpoint, metric, float(new))
    if metric not in champion.metrics:
        return Promote(f"the champion {champion.model} carries no {metric!r} metric; promoting {candidate.model} "
                       f"({metric}={new})", PromoteCode.CHAMPION_UNSCORED, candidate, champion, rule.endpoint,
                       metric, float(new))
    try:
        old = parse_metric(champion.metrics[metric])
    except ValueError as exc:
        return Skip(f"the champion {champion.model}'s {metric!r} metric is unusable: {exc}; fix its tag "
                    f"{METRIC_TAG_PREFIX}{metric} (or remove it) to let the gate compare", SkipCode.INVALID_METRIC)

    with localcontext() as ctx:
        ctx.prec = _EXACT_PRECISION
        improvement = new - old if rule.direction is Direction.HIGHER_IS_BETTER else old - new
        required = max(_dec(rule.min_improvement), _dec(rule.min_relative_improvement) * abs(old))
    scores = f"{candidate.model} {metric}={new} vs champion {champion.model} {metric}={old}"
    if improvement <= 0:
        what = "ties" if improvement == 0 else "is worse"
        return Skip(f"{scores}: the candidate {what} ({rule.direction.value})", SkipCode.NOT_BETTER)
    if improvement < required:
        return Skip(f"{scores}: improvement {improvement} is below the required {required}", SkipCode.TOO_SMALL)
    return Promote(f"{scores}: improvement {improvement} >= required {required}", PromoteCode.IMPROVED,
                   candidate, champion, rule.endpoint, metric, float(new), float(old))


def _dec(value: float) -> Decimal:
    """A policy number as the decimal its author wrote (0.1, not 0.1000000000000000055...)."""
    return Decimal(repr(float(value)))


# -- the policy-file fragment ----------------------------------------------------------------------
class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class DeploymentPolicy(_Frozen):
    instance_type: str = Field(description="managed online deployment SKU, e.g. Standard_DS3_v2")
    instance_count: Annotated[int, Field(ge=1, le=100)] = 1
    environment: str | None = Field(default=None, description="serving environment, e.g. "
                                    "azureml:AzureML-sklearn-1.5@latest (none for MLflow models)")
    code: str | None = Field(default=None, description="folder with the scoring script, relative to the app root")
    scoring_script: str | None = Field(default=None, description="file in `code` with init()/run(), e.g. score.py")

    @model_validator(mode="after")
    def _code_and_script(self) -> DeploymentPolicy:
        if (self.code is None) != (self.scoring_script is None):
            raise ValueError("set both code and scoring_script (a custom scoring script), or neither (MLflow model)")
        if self.code is not None and (self.code.startswith("/") or ".." in self.code.split("/")):
            raise ValueError("code must be a folder relative to the app root, e.g. ml/src")
        return self

    @field_validator("instance_type")
    @classmethod
    def _sku(cls, value: str) -> str:
        if not _INSTANCE_TYPE_RE.match(value):
            raise ValueError("must be an Azure VM size such as Standard_DS3_v2 (letters, digits, '_')")
        return value


class SmokeTestPolicy(_Frozen):
    request: dict[str, Any] = Field(description="sample scoring request (JSON) sent to the new deployment")
    timeout_seconds: Annotated[float, Field(gt=0, le=300)] = 30.0
    expect_keys: tuple[str, ...] = Field(default=(), description="keys the JSON reply must contain, e.g. "
                                         "[predictions]")

    @field_validator("request")
    @classmethod
    def _not_empty(cls, value: dict[str, Any]) -> dict[str, Any]:
        if not value:
            raise ValueError("must be a non-empty JSON object (a request the model can score)")
        return value


class PromotionPolicy(_Frozen):
    """`models[].promotion` in evergreen.yaml: when a candidate wins, and how it is rolled out."""

    metric: str = Field(description="metric name; read from the tag evergreen.metric.<metric>")
    direction: Direction
    endpoint: str = Field(description="managed online endpoint name")
    min_improvement: Annotated[float, Field(ge=0, allow_inf_nan=False)] = 0.0
    min_relative_improvement: Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)] = 0.0
    threshold: Annotated[float, Field(allow_inf_nan=False)] | None = None
    deployment: DeploymentPolicy
    smoke_test: SmokeTestPolicy
    canary_steps: tuple[int, ...] = (10, 50, 100)
    canary_interval_seconds: Annotated[float, Field(ge=0, le=86400)] = 60.0
    grace_period_seconds: Annotated[float, Field(ge=0, le=86400)] = 300.0
    poll_interval_seconds: Annotated[float, Field(gt=0, le=3600)] = 30.0
    provisioning_timeout_seconds: Annotated[float, Field(gt=0, le=86400)] = 3600.0

    @field_validator("metric")
    @classmethod
    def _metric_name(cls, value: str) -> str:
        if not value or value != value.strip() or any(ch.isspace() for ch in value):
            raise ValueError("must be a non-empty metric name without spaces, e.g. auc")
        return value

    @field_validator("endpoint")
    @classmethod
    def _endpoint_name(cls, value: str) -> str:
        if not _ENDPOINT_RE.match(value):
            raise ValueError("must be 3-32 characters: a letter first, then letters, digits or '-', "
                             "not ending with '-' (Azure ML's rule for endpoint names)")
        return value

    @field_validator("canary_steps")
    @classmethod
    def _steps(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        if not value:
            raise ValueError("list at least one traffic percentage, ending with 100")
        if any(not 1 <= step <= 100 for step in value):
            raise ValueError("each step is a traffic percentage between 1 and 100")
        if any(b <= a for a, b in pairwise(value)):
            raise ValueError("steps must increase, e.g. [10, 50, 100]")
        if value[-1] != 100:
            raise ValueError("the last step must be 100 (the candidate ends up taking all traffic)")
        return value

    def rule(self) -> PromotionRule:
        return PromotionRule(
            metric=self.metric,
            direction=self.direction,
            endpoint=self.endpoint,
            min_improvement=self.min_improvement,
            min_relative_improvement=self.min_relative_improvement,
            threshold=self.threshold,
        )
