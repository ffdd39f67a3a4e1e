"""A decaying champion, and changed training code: the decisions, pure.

The champion is re-scored *alone* on the newest version of its evaluation data (a compare job with no
`champion_model`; `comparison.json` then carries `challenger.metrics` only). `judge_decay` compares
that score with the policy's `threshold` and with the champion's own score at promotion (its
`evergreen.metric.<m>` tag/property): degraded if it fails the threshold, or is worse than at
promotion by more than `promotion.evaluation.max_decay`. `plan_code_retrain` says whether the
deployed training code differs from the code the champion was trained with. Each decision carries
a deterministic key (job name, retrain trigger), so a redelivery acts once.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import ClassVar

from shared.domain.keys import digest
from shared.domain.vocabulary import Direction

log = logging.getLogger(__name__)

RESCORE_PREFIX = "evergreen-rescore-"


@dataclass(frozen=True)
class ChampionScore:
    """One re-score of an endpoint's champion: its metric on one evaluation data version, and the verdict."""

    endpoint: str
    model: str  # "name:version"
    data_asset: str
    data_version: str
    metric: str
    value: str  # the metric as exact decimal text ("" if the job produced none)
    at: datetime
    job_name: str
    degraded: bool = False
    reason: str = ""


def rescore_job_name(champion: str, data_asset: str, data_version: str) -> str:
    """The compare job that re-scores `champion` alone on one evaluation data version: one per (champion, data)."""
    return f"{RESCORE_PREFIX}{digest('rescore', champion, data_asset, data_version, length=16)}"


def decimal_of(value: object) -> Decimal | None:
    """A finite Decimal from a number or its text (via `str`, so 0.1 stays 0.1); None if it is not one."""
    if value is None or isinstance(value, bool):
        return None
    try:
        number = Decimal(str(value).strip())
    except (InvalidOperation, ValueError):
        return None
    return number if number.is_finite() else None


@dataclass(frozen=True)
class Healthy:
    reason: str


@dataclass(frozen=True)
class Degraded:
    code: str  # below_threshold | decayed
    reason: str


@dataclass(frozen=True)
class Unscored:
    """The re-score produced no value of the metric: nothing is decided (the job's log says why)."""

    reason: str


DecayDecision = Healthy | Degraded | Unscored


def _worse_by(value: Decimal, than: Decimal, direction: Direction) -> Decimal:
    """How much worse `value` is than `than`, in metric units (negative: better)."""
    return than - value if direction is Direction.HIGHER_IS_BETTER else value - than


def judge_decay(value: Decimal | None, *, at_promotion: Decimal | None, metric: str, direction: Direction,
                threshold: Decimal | None, max_decay: Decimal) -> DecayDecision:
    """Whether the champion's re-score says it has decayed. Pure, exact decimals.

    Degraded when `value` fails `threshold` (below it for higher-is-better, above it otherwise), or is
    worse than its score at promotion by more than `max_decay`. Without a score at promotion only the
    threshold is checked (the reason says so).
    """
    if value is None:
        return Unscored(f"the re-score produced no value of {metric}")
    if threshold is not None and _worse_by(value, threshold, direction) > 0:
        side = "below" if direction is Direction.HIGHER_IS_BETTER else "above"
        return Degraded("below_threshold", f"{metric} {value} is {side} the threshold {threshold}")
    if at_promotion is None:
        return Healthy(f"{metric} {value} meets the threshold; no score at promotion to compare with")
    drop = _worse_by(value, at_promotion, direction)
    if drop > max_decay:
        return Degraded("decayed", f"{metric} {value} is {drop} worse than at promotion ({at_promotion}), "
                                   f"more than max_decay {max_decay}")
    return Healthy(f"{metric} {value} vs {at_promotion} at promotion: within max_decay {max_decay}")


def plan_code_retrain(champion_code: str | None, deployed_code: str) -> str | None:
    """Why the newest training data must be retrained because the training code changed; None if it need not.

    A champion without a code hash (trained before hashes were recorded) is not retrained on that ground:
    unknown is not "different".
    """
    if not champion_code or not deployed_code or champion_code == deployed_code:
        return None
    return f"training code changed: the champion was trained with {champion_code[:12]}, ml/ is now {deployed_code[:12]}"


def degradation_trigger(champion: str, data_asset: str, data_version: str) -> str:
    """The retrain trigger of one degradation: one retrain per (champion, evaluation data version)."""
    return f"degraded-{digest('degraded', champion, data_asset, data_version, length=12)}"


def code_trigger(dataset: str, data_version: str, code: str) -> str:
    """The retrain trigger of one code change: one retrain per (dataset, data version, code hash)."""
    return f"code-{digest('code', dataset, data_version, code, length=12)}"


@dataclass(frozen=True)
class ChampionDegraded:
    """Published to Evergreen's topic (`Evergreen.ChampionDegraded`) when a re-score finds the champion decayed.

    Nothing in Evergreen subscribes to it (the monitor starts the retrain itself): it is for people and
    other systems (an alert, a ticket). Its id is deterministic from the re-score, so consumers dedupe.
    """

    EVENT_TYPE: ClassVar[str] = "Evergreen.ChampionDegraded"

    endpoint: str
    model: str  # the champion, "name:version"
    metric: str
    value: str  # exact decimal text
    at_promotion: str  # "" when the champion carried no score
    threshold: str  # "" when the policy sets none
    code: str  # below_threshold | decayed
    reason: str
    data_asset: str
    data_version: str
    job_name: str  # the re-score job

    @property
    def event_id(self) -> str:
        return digest(self.EVENT_TYPE, self.endpoint, self.model, self.data_asset, self.data_version, length=32)

    @property
    def subject(self) -> str:
        return f"endpoints/{self.endpoint}/models/{self.model.replace(':', '/versions/', 1)}"
