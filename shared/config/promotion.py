"""`models[].promotion` in evergreen.yaml: when a candidate wins, and how it is rolled out.

Pure pydantic, parsed once with the rest of the policy (`shared.config.policy`), so every problem
is reported together with its path. The gate reads `PromotionPolicy.rule()` (a domain value), the
rollout reads the deployment, smoke test and timing fields.
"""

from __future__ import annotations

import re
from datetime import timedelta
from itertools import pairwise
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, field_validator, model_validator

from shared.domain.approval import parse_duration
from shared.domain.comparison import EvaluationRule
from shared.domain.gate import PromotionRule
from shared.domain.vocabulary import Direction

_ENDPOINT_RE = re.compile(r"^[A-Za-z][A-Za-z0-9-]{1,30}[A-Za-z0-9]$")
_INSTANCE_TYPE_RE = re.compile(r"^[A-Za-z0-9_]{1,64}$")


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class DeploymentPolicy(_Frozen):
    """The managed online deployment a candidate gets."""

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
    """The sample request a candidate must answer, alone and between canary steps."""

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


_DATA_REF_RE = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9_.-]{0,254}?)"
                          r"(?:@(?P<label>latest)|:(?P<version>[A-Za-z0-9_.-]{1,64}))$")
_COLUMN_RE = re.compile(r"^[^\s,][^,]{0,127}$")


class EvaluationPolicy(_Frozen):
    """`models[].promotion.evaluation`: score champion and challenger on the same labelled rows.

    With it, a candidate is judged by a comparison job (`ml/compare.yml`): the lower bound of a
    paired-bootstrap interval of (challenger - champion) must clear `min_improvement`, and no large
    enough slice may regress by more than `max_slice_regression`.
    """

    data: str = Field(description="labelled evaluation data asset, `name@latest` or `name:version`; must be a "
                      "dataset declared in `datasets:`")
    label_column: str = Field(description="column of `data` holding the true label (or target)")
    min_rows: Annotated[int, Field(ge=1)] = 500
    confidence: Annotated[float, Field(ge=0.5, le=0.999, allow_inf_nan=False)] = 0.95
    resamples: Annotated[int, Field(ge=100, le=100_000)] = 1000
    seed: Annotated[int, Field(ge=0, le=2**31 - 1)] = 7
    slices: tuple[str, ...] = Field(default=(), description="columns whose values are compared one by one, "
                                    "e.g. [region, contract]")
    min_slice_rows: Annotated[int, Field(ge=1)] = 200
    max_slice_regression: Annotated[float, Field(ge=0, allow_inf_nan=False)] = 0.02
    max_decay: Annotated[float, Field(ge=0, allow_inf_nan=False)] = Field(
        default=0.02, description="re-scored on newer evaluation data, the champion counts as degraded (and "
        "retraining starts) if its metric is worse than its score at promotion by more than this (metric units)")

    @field_validator("data")
    @classmethod
    def _data_ref(cls, value: str) -> str:
        if not _DATA_REF_RE.match(value):
            raise ValueError("must be a data asset as name@latest or name:version, e.g. churn-holdout@latest")
        return value

    @field_validator("label_column")
    @classmethod
    def _label(cls, value: str) -> str:
        if not _COLUMN_RE.match(value) or value != value.strip():
            raise ValueError("must be a column name (no leading/trailing spaces, no ',')")
        return value

    @field_validator("slices")
    @classmethod
    def _slices(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        bad = [column for column in value if not _COLUMN_RE.match(column) or column != column.strip()]
        if bad:
            raise ValueError(f"slice columns must be column names without ',' or surrounding spaces: {bad}")
        if len(set(value)) != len(value):
            raise ValueError("slice columns must be unique")
        return value

    def rule(self) -> EvaluationRule:
        """The pure gate's view of these thresholds (`shared.domain.comparison.judge`)."""
        return EvaluationRule(min_rows=self.min_rows, min_slice_rows=self.min_slice_rows,
                              max_slice_regression=self.max_slice_regression)

    @property
    def data_name(self) -> str:
        """The data asset's name (without `@latest` / `:version`)."""
        match = _DATA_REF_RE.match(self.data)
        return match.group("name") if match else self.data

    @property
    def data_version(self) -> str | None:
        """The pinned version; None for `@latest` (resolved to a concrete version at submit time)."""
        match = _DATA_REF_RE.match(self.data)
        return match.group("version") if match else None


class PromotionPolicy(_Frozen):
    """`models[].promotion` in evergreen.yaml: when a candidate wins, and how it is rolled out."""

    metric: str = Field(description="metric name; read from the tag evergreen.metric.<metric>")
    direction: Direction = Field(description="higher_is_better or lower_is_better (max/min: deprecated)")
    endpoint: str = Field(description="managed online endpoint name")
    min_improvement: Annotated[float, Field(ge=0, allow_inf_nan=False)] = 0.0
    min_relative_improvement: Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)] = 0.0
    threshold: Annotated[float, Field(allow_inf_nan=False)] | None = None
    replace_unscored_champion: StrictBool = Field(default=False, description="replace a champion that carries "
                                                  "no value of the metric without comparison (default: skip)")
    deployment: DeploymentPolicy
    smoke_test: SmokeTestPolicy
    canary_steps: tuple[int, ...] = (10, 50, 100)
    canary_interval_seconds: Annotated[float, Field(ge=0, le=86400)] = 60.0
    grace_period_seconds: Annotated[float, Field(ge=0, le=86400)] = 300.0
    poll_interval_seconds: Annotated[float, Field(gt=0, le=3600)] = 30.0
    provisioning_timeout_seconds: Annotated[float, Field(gt=0, le=86400)] = 3600.0
    approval: Literal["auto", "manual"] = Field(default="auto", description="manual: a candidate that passes "
                                                "the gate waits for `python -m shared.cli approve|reject` or the "
                                                "tag evergreen.approval=approved|rejected in the studio")
    approval_expires_after: int | float | str = Field(default="72h", description="how long a candidate waits "
                                                      "for approval before it expires: hours (72), 90m, 72h, 3d "
                                                      "or ISO 8601 (PT72H, P3D)")
    evaluation: EvaluationPolicy | None = Field(default=None, description="score champion and challenger on "
                                                "the same labelled data (a comparison job); without it the gate "
                                                "compares the metrics each training run computed on its own holdout")

    @field_validator("approval_expires_after")
    @classmethod
    def _expiry(cls, value: int | float | str) -> int | float | str:
        parse_duration(value)  # raises ValueError naming the accepted spellings
        return value

    @property
    def approval_expiry(self) -> timedelta:
        """`approval_expires_after` as a duration (validated at load, so this never raises)."""
        return parse_duration(self.approval_expires_after)

    @property
    def manual_approval(self) -> bool:
        return self.approval == "manual"

    @field_validator("direction", mode="before")
    @classmethod
    def _direction(cls, value: object) -> Direction:
        """One spelling everywhere; the legacy max/min still parse, with a warning (`Direction.parse`)."""
        return Direction.parse(value)

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
        """The gate's view of this policy: what "better" means on this endpoint."""
        return PromotionRule(
            metric=self.metric,
            direction=self.direction,
            endpoint=self.endpoint,
            min_improvement=self.min_improvement,
            min_relative_improvement=self.min_relative_improvement,
            threshold=self.threshold,
            replace_unscored_champion=self.replace_unscored_champion,
        )
