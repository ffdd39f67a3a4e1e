"""What the ledger remembers, as typed values: content claims, batches, retraining state, rollouts,
comparisons in flight.

Pure data. A record read from the ledger carries its `row` (the stored entity and the ETag it was
read at) so that the ledger can write it back only if nobody changed it since; a record built in a
test or a plan has none.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from shared.domain.keys import digest
from shared.domain.vocabulary import BatchState, Phase, RunStatus, rollout_finished

CLAIM_LEASE = timedelta(minutes=10)
SEAL_LEASE = CLAIM_LEASE  # how long a sealer owns a batch before anyone may take the seal over
CONTENT_LEASE = CLAIM_LEASE  # how long a registrar owns a content claim before anyone may take it over
HOLDER_WAIT = timedelta(seconds=3)  # how long a duplicate waits for a live holder before re-scheduling itself
# A retraining submission (load the pipeline YAML, create the job) is unconfirmed until Azure ML
# answered; whoever finds its lease expired resumes it (the job name is deterministic: never twice).
SUBMIT_LEASE = timedelta(minutes=5)


@dataclass(frozen=True)
class Leases:
    """How long a holder owns a claim before anyone may take it over: what a dead holder costs its flow.

    The production defaults are the constants above; `EVERGREEN_LEASE_SECONDS` sets all three
    (`Leases.of`). A lease must outlast the holder's longest call (see `EVERGREEN_AZUREML_TIMEOUT_SECONDS`),
    or a live holder loses its claim mid-work; then it and its taker both work for a while, which is
    safe because every step is idempotent by key, only wasteful.
    """

    seal: timedelta = SEAL_LEASE  # a sealer's hold on a batch
    content: timedelta = CONTENT_LEASE  # a registrar's hold on a content claim
    submit: timedelta = SUBMIT_LEASE  # a retraining submission's hold on its dataset

    @classmethod
    def of(cls, seconds: float) -> Leases:
        """One duration for every claim (the `EVERGREEN_LEASE_SECONDS` setting)."""
        lease = timedelta(seconds=seconds)
        return cls(seal=lease, content=lease, submit=lease)

    @property
    def longest(self) -> timedelta:
        """The longest lease: an open-work entry older than this whose item never appeared was abandoned."""
        return max(self.seal, self.content, self.submit)


DEFAULT_LEASES = Leases()
# A scheduled retraining re-check (end of the minimum interval) this late counts as lost.
RECHECK_GRACE = timedelta(minutes=10)


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
    owner: str = ""  # who holds the claim (an Ingestor instance id)
    lease_until: datetime | None = None  # after this anyone may take the claim over
    traceparent: str = ""  # the W3C trace context the content was claimed in (a re-drive continues it)

    def lease_expired(self, now: datetime, lease: timedelta = CONTENT_LEASE) -> bool:
        """Whether a pending claim outlived its lease (its holder died): then anyone may take it over.

        Judged from the stored `lease_until`; `lease` after `claimed_at` only for an old row without one.
        """
        until = self.lease_until or (self.claimed_at + lease if self.claimed_at else None)
        return until is None or now >= until


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
    owner: str = ""  # who holds the seal (an Ingestor instance id); "" when not sealing
    lease_until: datetime | None = None  # while sealing: after this anyone may take the seal over
    seal_reason: str = ""  # why the holder sealed (kept, so a take-over tags the version alike)
    traceparent: str = ""  # the W3C trace context the generation was opened in (a re-drive continues it)

    def seal_held(self, now: datetime, lease: timedelta = SEAL_LEASE) -> bool:
        """Whether a live sealer holds this batch (sealing, lease not yet expired).

        Judged from the stored `lease_until`; `lease` after `sealing_since` only for an old row without one.
        """
        if self.state != BatchState.SEALING:
            return False
        until = self.lease_until or (self.sealing_since + lease if self.sealing_since else None)
        return until is not None and now < until

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
    active_asset: str | None = None  # what the active run reads, so a lost submission can be resumed
    active_asset_type: str | None = None
    active_event: str | None = None  # the event that started it (the job's lineage tag)
    active_rerun: str | None = None  # the active run's rerun key (a resumed rerun keeps its key, tags and run row)
    active_status: RunStatus | None = None  # SUBMITTING until Azure ML confirmed the job, then SUBMITTED
    lease_owner: str | None = None  # who is submitting (while SUBMITTING)
    lease_until: datetime | None = None  # after this, anyone may resume the submission
    last_version: str | None = None  # the newest version a run was started for (older late events are skipped)
    recheck_at: datetime | None = None  # when the scheduled re-check of the pending version is due
    traceparent: str = ""  # the W3C trace context of the newest work the row holds (a re-drive continues it)

    @property
    def submitting(self) -> bool:
        """An active run whose submission Azure ML has not confirmed yet (the job may not exist)."""
        return bool(self.active_job) and self.active_status is RunStatus.SUBMITTING

    def lease_live(self, now: datetime) -> bool:
        """Whether the submission's holder may still be at work (then nobody else resumes it)."""
        return self.submitting and self.lease_until is not None and now < self.lease_until


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
    traceparent: str = ""  # the W3C trace context of the promotion that started it (a re-drive continues it)

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


@dataclass(frozen=True)
class ComparisonWork:
    """A comparison job the promoter submitted and has not decided yet: one entry of its open-work index.

    Read fail closed: `tags` (the job's tags as submitted) is None when the entry's tags cannot be read,
    and `unreadable` says what could not be read ("" when the entry was read whole; an unreadable `since`
    is said there too). Whoever relies on the tags must then assume the worst: retention suspends the
    rules the unknown challenger could break, the reconciler reports the entry as a failure.
    """

    job: str
    tags: Mapping[str, str] | None  # None: not readable (see `unreadable`)
    since: datetime | None = None  # when it was indexed; None when missing or unreadable
    unreadable: str = ""


@dataclass(frozen=True)
class WaitingCandidate:
    """A candidate skipped because its evaluation data had no version (`evaluation_data_missing`): one entry of
    the promoter's open-work index of candidates waiting for that data, gated again when a version lands.

    Read fail closed: `unreadable` says what of the entry could not be read ("" when it was read whole); an
    entry that cannot be read is never guessed at (the reconciler reports it as a failure).
    """

    key: str  # the entry's row key
    model_name: str
    version: str
    data_asset: str  # the evaluation data asset's name (`evaluation.data_name`): what DataVersionRegistered names
    data: str  # the evaluation data as the policy wrote it (`name@latest`, `name:version`) when it was skipped
    event_id: str  # the event that was skipped (the correlation id of the re-gate)
    since: datetime | None = None  # when it was indexed
    unreadable: str = ""

    @property
    def model(self) -> str:
        return f"{self.model_name}:{self.version}"
