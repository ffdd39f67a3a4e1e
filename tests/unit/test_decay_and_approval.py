"""Pure decisions of a decaying champion (`shared.domain.decay`) and of manual approval (`shared.domain.approval`)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.domain.approval import (
    AlreadyDecided,
    Apply,
    ApprovalRecord,
    Await,
    Expire,
    Proceed,
    Refuse,
    Refused,
    approval_tags,
    parse_duration,
    plan_hold,
    plan_verdict,
    studio_verdict,
)
from shared.domain.decay import (
    Degraded,
    Healthy,
    Unscored,
    code_trigger,
    degradation_trigger,
    judge_decay,
    plan_code_retrain,
    rescore_job_name,
)
from shared.domain.vocabulary import ApprovalState, Direction, PromotionAction, Tag

HIGHER, LOWER = Direction.HIGHER_IS_BETTER, Direction.LOWER_IS_BETTER
D = Decimal
NOW = datetime(2026, 12, 1, 9, tzinfo=UTC)
DAY = timedelta(days=1)


def judge(value: str | None, at_promotion: str | None = "0.80", *, direction: Direction = HIGHER,
          threshold: str | None = "0.70", max_decay: str = "0.02") -> Degraded | Healthy | Unscored:
    promoted = None if at_promotion is None else D(at_promotion)
    limit = None if threshold is None else D(threshold)
    return judge_decay(None if value is None else D(value), at_promotion=promoted, metric="auc", direction=direction,
                       threshold=limit, max_decay=D(max_decay))


# -- decay ------------------------------------------------------------------------------------------------------
def test_below_the_threshold_is_degraded_whatever_the_score_at_promotion() -> None:
    decision = judge("0.69", at_promotion="0.69")
    assert isinstance(decision, Degraded) and decision.code == "below_threshold"


def test_worse_than_at_promotion_by_more_than_max_decay_is_degraded_and_the_reason_names_the_numbers() -> None:
    decision = judge("0.77")
    assert isinstance(decision, Degraded) and decision.code == "decayed"
    assert "0.03 worse than at promotion (0.80)" in decision.reason


def test_exactly_max_decay_worse_is_still_healthy() -> None:
    assert isinstance(judge("0.78"), Healthy)


def test_lower_is_better_metrics_decay_upwards() -> None:
    assert isinstance(judge("0.25", at_promotion="0.20", direction=LOWER, threshold="0.30"), Degraded)
    assert isinstance(judge("0.31", at_promotion="0.31", direction=LOWER, threshold="0.30"), Degraded)
    assert isinstance(judge("0.15", at_promotion="0.20", direction=LOWER, threshold="0.30"), Healthy)


def test_without_a_score_at_promotion_only_the_threshold_counts_and_no_score_decides_nothing() -> None:
    healthy = judge("0.71", at_promotion=None)
    assert isinstance(healthy, Healthy) and "no score at promotion" in healthy.reason
    assert isinstance(judge(None), Unscored)
    assert isinstance(judge("0.50", threshold=None), Degraded)  # decayed by margin, no threshold set


@given(st.decimals(min_value=0, max_value=1, places=3), st.decimals(min_value=0, max_value=1, places=3),
       st.decimals(min_value=0, max_value=D("0.5"), places=3), st.decimals(min_value=0, max_value=D("0.5"), places=3))
def test_a_larger_max_decay_never_turns_healthy_into_degraded(value: Decimal, promoted: Decimal, small: Decimal,
                                                              extra: Decimal) -> None:
    loose = judge_decay(value, at_promotion=promoted, metric="m", direction=HIGHER, threshold=None,
                        max_decay=small + extra)
    tight = judge_decay(value, at_promotion=promoted, metric="m", direction=HIGHER, threshold=None, max_decay=small)
    assert not (isinstance(tight, Healthy) and isinstance(loose, Degraded))
    assert isinstance(judge_decay(promoted, at_promotion=promoted, metric="m", direction=HIGHER, threshold=None,
                                  max_decay=small), Healthy)  # the champion at its own score never decays


def test_keys_are_deterministic_and_distinct() -> None:
    assert rescore_job_name("m:3", "holdout", "2") == rescore_job_name("m:3", "holdout", "2")
    assert rescore_job_name("m:3", "holdout", "2") != rescore_job_name("m:3", "holdout", "3")
    assert rescore_job_name("m:3", "holdout", "2").startswith("evergreen-rescore-")
    assert degradation_trigger("m:3", "h", "2") != degradation_trigger("m:4", "h", "2")
    assert code_trigger("d", "1", "aa") != code_trigger("d", "1", "bb")


def test_changed_code_is_only_a_known_hash_that_differs() -> None:
    assert plan_code_retrain("a" * 64, "b" * 64) is not None
    assert plan_code_retrain("a" * 64, "a" * 64) is None
    assert plan_code_retrain(None, "b" * 64) is None  # a champion without a hash is not "different"


# -- approval ---------------------------------------------------------------------------------------------------
def record(state: ApprovalState = ApprovalState.PENDING, *, at: datetime = NOW, by: str = "") -> ApprovalRecord:
    return ApprovalRecord("ep", "m", "3", state, at, "evt", "gate says promote", decided_by=by,
                          decided_at=NOW if state.final else None)


@pytest.mark.parametrize(("text", "expected"), [
    (72, timedelta(hours=72)), ("72h", timedelta(hours=72)), ("90m", timedelta(minutes=90)), ("3d", 3 * DAY),
    ("PT72H", timedelta(hours=72)), ("P3D", 3 * DAY), ("1.5h", timedelta(minutes=90)),
])
def test_durations_in_every_documented_spelling(text: object, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["", "soon", "-3h", "0h", "P1000D", True, "72 hours", "PXYZ"])
def test_bad_durations_are_refused_with_the_accepted_spellings(text: object) -> None:
    with pytest.raises(ValueError, match=r"duration|between|ISO"):
        parse_duration(text)


def test_the_hold_at_the_gate() -> None:
    assert isinstance(plan_hold(None, manual=False, now=NOW, expires_after=DAY), Proceed)
    first = plan_hold(None, manual=True, now=NOW, expires_after=DAY)
    assert isinstance(first, Await) and first.new and (NOW + DAY).isoformat() in first.reason
    assert isinstance(plan_hold(record(), manual=True, now=NOW + DAY / 2, expires_after=DAY), Await)
    assert isinstance(plan_hold(record(), manual=True, now=NOW + DAY, expires_after=DAY), Expire)
    approved = plan_hold(record(ApprovalState.APPROVED, by="ana"), manual=True, now=NOW + 9 * DAY, expires_after=DAY)
    assert isinstance(approved, Proceed) and "approved by ana" in approved.reason  # approval does not expire later
    rejected = plan_hold(record(ApprovalState.REJECTED, by="bo"), manual=True, now=NOW, expires_after=DAY)
    assert isinstance(rejected, Refuse) and rejected.action is PromotionAction.REJECTED
    expired = plan_hold(record(ApprovalState.EXPIRED), manual=True, now=NOW, expires_after=DAY)
    assert isinstance(expired, Refuse) and expired.action is PromotionAction.EXPIRED


def test_verdicts_are_final_and_idempotent() -> None:
    approve, reject = ApprovalState.APPROVED, ApprovalState.REJECTED
    assert isinstance(plan_verdict(record(), approve, now=NOW, expires_after=DAY, model="m:3"), Apply)
    assert isinstance(plan_verdict(None, approve, now=NOW, expires_after=DAY, model="m:3"), Refused)
    assert isinstance(plan_verdict(record(approve), approve, now=NOW, expires_after=DAY, model="m:3"), AlreadyDecided)
    assert isinstance(plan_verdict(record(approve), reject, now=NOW, expires_after=DAY, model="m:3"), Refused)
    assert isinstance(plan_verdict(record(), reject, now=NOW + DAY, expires_after=DAY, model="m:3"), Expire)
    with pytest.raises(ValueError):
        plan_verdict(record(), ApprovalState.EXPIRED, now=NOW, expires_after=DAY, model="m:3")


def test_the_studio_tag_and_the_tags_written() -> None:
    assert studio_verdict({Tag.APPROVAL.value: " Approved"}) is ApprovalState.APPROVED
    assert studio_verdict({Tag.APPROVAL.value: "REJECTED"}) is ApprovalState.REJECTED
    assert studio_verdict({Tag.APPROVAL.value: "pending"}) is None and studio_verdict({}) is None
    assert approval_tags(record()) == {Tag.APPROVAL.value: "pending"}
    tags = approval_tags(record(ApprovalState.APPROVED, by="ana"))
    assert tags[Tag.APPROVED_BY.value] == "ana" and tags[Tag.APPROVED_AT.value] == NOW.isoformat()
