"""`models[].promotion` in evergreen.yaml: when a candidate wins, and how it is rolled out.

Pure pydantic, parsed once with the rest of the policy (`shared.config.policy`), so every problem
is reported together with its path. The gate reads `PromotionPolicy.rule()` (a domain value), the
rollout reads the deployment, smoke test and timing fields.
"""

from __future__ import annotations

import re
from itertools import pairwise
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StrictBool, field_validator, model_validator

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
