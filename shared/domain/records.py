"""What the ledger remembers, as typed values: content claims, batches, retraining state, rollouts.

Pure data. A record read from the ledger carries its `row` (the stored entity and the ETag it was
read at) so that the ledger can write it back only if nobody changed it since; a record built in a
test or a plan has none.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from shared.domain.keys import digest
from shared.domain.vocabulary import Phase, rollout_finished

CLAIM_LEASE = timedelta(minutes=10)


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class Row:
    """An entity with the ETag it was read at, for conditional updates."""

    data: dict[str, Any]
    etag: str


@dataclass(frozen=True)
class ContentRecord:
    dataset: str
    sha256: str
    state: str  # pending | registered | published
    version: str | None
    claimed_at: datetime | None
    row: Row | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class BatchRecord:
    dataset: str
    folder: str
    generation: int
    state: str  # open | sealing | sealed
    opened_at: datetime
    sealing_since: datetime | None
    version: str | None
    sealed_at: datetime | None = None  # when the previous generation was sealed (kept on reopen)
    row: Row | None = field(default=None, compare=False, repr=False)

    @property
    def files_partition(self) -> str:
        return f"batchfiles-{digest(self.dataset, self.folder)}-{self.generation}"


@dataclass(frozen=True)
class RetrainState:
    """Per-dataset retraining state: the active run and the newest version waiting for it."""

    dataset: str
    active_job: str | None
    active_version: str | None
    last_submitted_at: datetime | None
    pending_version: str | None
    pending_asset: str | None
    pending_asset_type: str | None
    row: Row | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class RolloutRecord:
    """One endpoint's rollout: the row is the endpoint's lock, and `seq` orders its steps.

    Only the instance whose conditional write moves `seq` forward executes a step; a message for an
    older `seq` is stale. `queued_*` holds the newest candidate that arrived mid-rollout.
    """

    endpoint: str
    rollout_id: str
    seq: int
    state: str  # a `Phase` value, stored as text (read `phase` to compare)
    candidate_name: str
    candidate_version: str
    deployment: str  # the candidate's deployment
    champion_deployment: str  # the deployment taking traffic when the rollout started ("" = none)
    champion_model: str  # "name:version" of the champion ("" = none)
    step: int  # index into the canary steps already applied (-1 = none yet)
    due_at: datetime | None  # when the next step may run (polls, grace period)
    started_at: datetime | None
    reason: str
    queued_name: str
    queued_version: str
    queued_event: str
    event_id: str  # the event that started this rollout (correlation id for every log line)
    phase_since: datetime | None  # when the current state was entered (provisioning timeout)
    attempts: int  # failed tries of the current step (transient errors are retried, then rolled back)
    failure: str  # why the rollout is rolling back ("" = it is not)
    row: Row | None = field(default=None, compare=False, repr=False)

    @property
    def candidate(self) -> str:
        return f"{self.candidate_name}:{self.candidate_version}"

    @property
    def active(self) -> bool:
        return not rollout_finished(self.state)

    @property
    def phase(self) -> Phase:
        """The stored state as a `Phase`; raises ValueError for a state this code does not know."""
        return Phase(self.state)


