"""Manual approval of a candidate that passed the gate (`promotion.approval: manual`): the decisions, pure.

A candidate that wins the gate on an endpoint whose policy asks for manual approval is *held*: the
ledger keeps one `ApprovalRecord` per (endpoint, model, version), first `pending`, then `approved`,
`rejected` or `expired` — a final state never changes again, so a redelivered event, a second
`approve`, or a studio tag read twice decide nothing new. `shared.services.approval.Approvals`
executes these decisions; the Promoter asks `plan_hold` at its one seam (`_on_promote`).

Durations: `approval_expires_after` is hours as a number (`72`), or text `90m`, `72h`, `3d`, or an
ISO 8601 duration (`PT72H`, `P3D`).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

from pydantic import TypeAdapter, ValidationError

from shared.domain.vocabulary import ApprovalState, PromotionAction, Tag

log = logging.getLogger(__name__)

MAX_EXPIRY = timedelta(days=90)
_SHORT = re.compile(r"^\s*(?P<n>\d+(?:\.\d+)?)\s*(?P<unit>[mhd])\s*$", re.IGNORECASE)
_UNITS = {"m": timedelta(minutes=1), "h": timedelta(hours=1), "d": timedelta(days=1)}
_ISO = TypeAdapter(timedelta)


def parse_duration(value: object) -> timedelta:
    """`72` (hours), `72h`, `90m`, `3d` or ISO 8601 (`PT72H`, `P3D`) → a timedelta of 1 minute to 90 days.

    Raises ValueError saying which spellings are accepted.
    """
    if isinstance(value, timedelta):
        duration = value
    elif isinstance(value, bool):
        raise ValueError(f"must be a duration such as 72h, 3d, PT72H or a number of hours (got {value!r})")
    elif isinstance(value, int | float):
        duration = timedelta(hours=float(value))
    elif isinstance(value, str) and (match := _SHORT.match(value)):
        duration = float(match["n"]) * _UNITS[match["unit"].lower()]
    elif isinstance(value, str) and value.strip().upper().startswith("P"):
        try:
            duration = _ISO.validate_python(value.strip().upper())
        except ValidationError:
            raise ValueError(f"{value!r} is not an ISO 8601 duration such as PT72H or P3D") from None
    else:
        raise ValueError(f"must be a duration such as 72h, 3d, PT72H or a number of hours (got {value!r})")
    if not timedelta(minutes=1) <= duration <= MAX_EXPIRY:
        raise ValueError(f"must be between 1 minute and {MAX_EXPIRY.days} days (got {duration})")
    return duration


@dataclass(frozen=True)
class ApprovalRecord:
    """The ledger's memory of one candidate's approval on one endpoint."""

    endpoint: str
    model_name: str
    version: str
    state: ApprovalState
    requested_at: datetime  # when the candidate passed the gate and started waiting
    event_id: str  # the event the candidate arrived with (a resumed rollout keeps it, for correlation)
    gate_reason: str = ""  # why the gate said promote
    decided_at: datetime | None = None
    decided_by: str = ""
    reason: str = ""  # the person's (or the expiry's) reason
    etag: str = ""  # of the row it was read from; "" for a record not read from the ledger

    @property
    def model(self) -> str:
        return f"{self.model_name}:{self.version}"

    def expires_at(self, after: timedelta) -> datetime:
        return self.requested_at + after


# -- the hold at the gate's seam ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Proceed:
    """Start the rollout (automatic approval, or a person approved it)."""

    reason: str


@dataclass(frozen=True)
class Await:
    """Hold the candidate: write a pending record (`new`), or it is already waiting."""

    new: bool
    reason: str


@dataclass(frozen=True)
class Refuse:
    """Never deploy it: it was rejected or its approval expired (`action` says which)."""

    action: PromotionAction
    reason: str


@dataclass(frozen=True)
class Expire:
    """Its wait is over: mark it expired (audited, tagged), then refuse it."""

    reason: str


HoldDecision = Proceed | Await | Refuse | Expire


def plan_hold(record: ApprovalRecord | None, *, manual: bool, now: datetime, expires_after: timedelta) -> HoldDecision:
    """What a candidate the gate wants to promote needs before its rollout starts. Pure."""
    if not manual:
        return Proceed("approval: auto")
    if record is None:
        return Await(True, f"approval: manual; waiting for approve or reject until "
                           f"{(now + expires_after).isoformat()}")
    if record.state is ApprovalState.APPROVED:
        return Proceed(f"approved by {record.decided_by or 'someone'}"
                       + (f" at {record.decided_at.isoformat()}" if record.decided_at else "")
                       + (f": {record.reason}" if record.reason else ""))
    if record.state is ApprovalState.REJECTED:
        return Refuse(PromotionAction.REJECTED, f"{record.model} was rejected by {record.decided_by or 'someone'}"
                      + (f": {record.reason}" if record.reason else ""))
    if record.state is ApprovalState.EXPIRED:
        return Refuse(PromotionAction.EXPIRED, f"the approval of {record.model} expired; register a new version "
                      "to try again")
    if now >= record.expires_at(expires_after):
        return Expire(expiry_reason(record, expires_after))
    return Await(False, f"{record.model} is already awaiting approval (since {record.requested_at.isoformat()}, "
                        f"until {record.expires_at(expires_after).isoformat()})")


def expiry_reason(record: ApprovalRecord, expires_after: timedelta) -> str:
    return (f"nobody approved or rejected {record.model} within {expires_after} "
            f"(waiting since {record.requested_at.isoformat()})")


# -- a person's verdict (CLI, studio tag) -----------------------------------------------------------------
@dataclass(frozen=True)
class Apply:
    """Record the verdict on the pending record; an approval then continues into the rollout."""

    state: ApprovalState
    reason: str


@dataclass(frozen=True)
class AlreadyDecided:
    """The same verdict is already recorded: nothing changes (an approval is re-sent into the rollout path)."""

    state: ApprovalState
    reason: str


@dataclass(frozen=True)
class Refused:
    """The verdict cannot apply (nothing awaits, or another verdict is final); says why."""

    reason: str


VerdictDecision = Apply | AlreadyDecided | Refused | Expire


def plan_verdict(record: ApprovalRecord | None, verdict: ApprovalState, *, now: datetime,
                 expires_after: timedelta, model: str) -> VerdictDecision:
    """What `approve`/`reject` (or the studio tag) does to a candidate's approval. Pure.

    Raises ValueError if `verdict` is not approved or rejected.
    """
    if verdict not in (ApprovalState.APPROVED, ApprovalState.REJECTED):
        raise ValueError(f"a verdict is approved or rejected, not {verdict.value!r}")
    if record is None:
        return Refused(f"{model} is not awaiting approval (it has not passed the gate on an endpoint with "
                       "approval: manual)")
    if record.state is verdict:
        return AlreadyDecided(verdict, f"{record.model} was already {verdict.value} by "
                                       f"{record.decided_by or 'someone'}")
    if record.state.final:
        return Refused(f"{record.model} is already {record.state.value}"
                       + (f" by {record.decided_by}" if record.decided_by else "") + "; that is final")
    if now >= record.expires_at(expires_after):
        return Expire(expiry_reason(record, expires_after))
    return Apply(verdict, f"{record.model} {verdict.value}")


def studio_verdict(tags: Mapping[str, str]) -> ApprovalState | None:
    """The verdict someone set as the tag `evergreen.approval` in the Azure ML studio; None if there is none.

    Only `approved` and `rejected` count (any case, surrounding spaces ignored): `pending` is what
    Evergreen writes, anything else is not a verdict.
    """
    text = str(tags.get(Tag.APPROVAL.value, "")).strip().lower()
    if text == ApprovalState.APPROVED.value:
        return ApprovalState.APPROVED
    if text == ApprovalState.REJECTED.value:
        return ApprovalState.REJECTED
    return None


def approval_tags(record: ApprovalRecord) -> dict[str, str]:
    """The tags that show a record's state on the model in the studio (who and when once decided)."""
    tags = {Tag.APPROVAL.value: record.state.value}
    if record.state.final:
        tags[Tag.APPROVED_BY.value] = record.decided_by
        tags[Tag.APPROVED_AT.value] = record.decided_at.isoformat() if record.decided_at else ""
        if record.reason:
            tags[Tag.APPROVAL_REASON.value] = record.reason[:256]
    return tags
