"""An audit record: one automated decision — what, why, which event, which assets."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime


@dataclass(frozen=True)
class AuditRecord:
    kind: str  # `<flow>.<outcome>`, e.g. data.registered, retrain.submitted, rollout.grace, event.rejected
    decision: str  # what was decided
    reason: str  # why
    event_id: str  # the triggering event / correlation id
    assets: Mapping[str, str] = field(default_factory=dict)  # e.g. {"data": "churn:3", "job": "..."}
    at: datetime = field(default_factory=lambda: datetime.now(UTC))


@dataclass(frozen=True)
class AuditTail:
    """The newest records that matched a bounded search, and whether it stopped before its window's end."""

    records: tuple[AuditRecord, ...]
    scanned: int  # index rows read
    truncated: bool  # the scan limit was reached: older matches may exist
