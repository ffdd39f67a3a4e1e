"""Evergreen's one vocabulary: phases, states, outcome kinds, tag names, directions, version order.

Every module that stores, compares or prints one of these names imports it from here, so a word
means one thing everywhere: in the ledger (stored by value), in the audit log, in registry tags and
in the policy file. Enums are `str` enums, so `Phase.GRACE == "grace"` and a stored row needs no
translation.
"""

from __future__ import annotations

import logging
import unicodedata
from enum import StrEnum

log = logging.getLogger(__name__)


class Phase(StrEnum):
    """A rollout's phase (the persisted state of `shared.domain.rollout`)."""

    ENDPOINT = "endpoint"  # make sure the endpoint exists and is not busy
    DEPLOY = "deploy"  # create the candidate's deployment (it takes no traffic yet)
    PROVISIONING = "provisioning"  # wait for it
    SMOKE = "smoke"  # score the policy's sample request on the candidate alone
    SHIFT = "shift"  # apply the next canary step
    SHIFTING = "shifting"  # wait for the traffic update, check, go to the next step
    GRACE = "grace"  # all traffic on the candidate; after the grace period delete the old deployment, wait
    ROLLBACK = "rollback"  # traffic back to the champion
    CLEANUP = "cleanup"  # delete the failed candidate, wait until it is gone
    SUCCEEDED = "succeeded"
    ROLLED_BACK = "rolled_back"

    @property
    def finished(self) -> bool:
        return self in FINAL_PHASES


FINAL_PHASES = frozenset({Phase.SUCCEEDED, Phase.ROLLED_BACK})
ROLLBACK_PHASES = frozenset({Phase.ROLLBACK, Phase.CLEANUP})


def rollout_finished(state: str) -> bool:
    """Whether a stored rollout state is over. The one definition: the ledger, the rollout and retention use it.

    An empty state (a row that never started) is over; any state that is not a known phase is NOT:
    retention must treat what it cannot read as in flight (fail closed).
    """
    if not state:
        return True
    try:
        return Phase(state).finished
    except ValueError:
        return False


class BatchState(StrEnum):
    """A folder batch generation: files arrive while open; one instance seals it into one data version."""

    OPEN = "open"
    SEALING = "sealing"
    SEALED = "sealed"


class ContentState(StrEnum):
    """One distinct content of a dataset: claimed, registered in Azure ML, then announced on Event Grid."""

    PENDING = "pending"
    REGISTERED = "registered"
    PUBLISHED = "published"


class RunStatus(StrEnum):
    """What the ledger remembers of a retraining run of one (dataset, data version)."""

    SUBMITTING = "submitting"
    SUBMITTED = "submitted"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELED = "canceled"


# Azure ML job statuses after which a job reads and writes nothing more. Any other status, including
# one we do not know, counts as running: an unknown state must protect, not expose.
FINISHED_JOB_STATUSES = frozenset({"completed", "failed", "canceled", "cancelled"})
# Provisioning states of endpoints and deployments that mean "an operation is under way".
IN_PROGRESS_STATES = frozenset({"creating", "updating", "scaling", "deleting", "provisioning", "notstarted"})
FAILED_STATES = frozenset({"failed", "canceled", "cancelled"})


class IngestAction(StrEnum):
    """What handling a blob event or a seal request did (audit kind `data.<value>`)."""

    REGISTERED = "registered"
    DUPLICATE = "duplicate"
    IGNORED = "ignored"
    BATCHED = "batched"
    SEALED = "sealed"
    WAITING = "waiting"  # another instance holds the work: a retry is scheduled for its lease's end
    SKIPPED = "skipped"
    REDRIVEN = "redriven"  # the reconciler re-drove stuck work (audit kind `data.redriven`)


class RetrainAction(StrEnum):
    """What a data-version or run event did to retraining (audit kind `retrain.<value>`)."""

    SUBMITTED = "submitted"
    COALESCED = "coalesced"
    SKIPPED = "skipped"
    FINISHED = "finished"
    FAILED = "failed"
    DEFERRED = "deferred"  # another instance holds the submission: a re-check is scheduled for its lease's end
    REDRIVEN = "redriven"  # the reconciler re-drove a stuck dataset (audit `retrain.redriven`)


class PromotionAction(StrEnum):
    """What a registered model version did (audit kind `promotion.<value>`)."""

    SKIPPED = "skipped"
    DUPLICATE = "duplicate"
    STARTED = "started"
    QUEUED = "queued"
    RESCHEDULED = "rescheduled"  # the endpoint's row kept changing: the candidate is looked at again later
    COMPARING = "comparing"  # a comparison job scores it against the champion; its RunCompleted decides
    AWAITING_APPROVAL = "awaiting_approval"  # passed the gate; `promotion.approval: manual` waits for a person
    APPROVED = "approved"  # a person approved it (CLI or the studio tag): it continues into the rollout
    REJECTED = "rejected"  # a person rejected it: never deployed
    EXPIRED = "expired"  # nobody decided within `approval_expires_after`: never deployed
    REGATED = "regated"  # it waited for its evaluation data (`evaluation_data_missing`); a version landed: gated


class ComparisonPurpose(StrEnum):
    """The `evergreen.comparison` tag of a comparison job: who reads its RunCompleted."""

    CHALLENGER = "challenger"  # a candidate against the champion: the promoter decides
    RESCORE = "rescore"  # the champion scored alone on new evaluation data (decay monitoring)


class ApprovalState(StrEnum):
    """A candidate's manual approval (ledger rows and the `evergreen.approval` tag, stored by value)."""

    PENDING = "pending"
    APPROVED = "approved"
    REJECTED = "rejected"
    EXPIRED = "expired"

    @property
    def final(self) -> bool:
        return self is not ApprovalState.PENDING


class MonitorAction(StrEnum):
    """What re-scoring a champion did (audit kind `champion.<value>`)."""

    RESCORE_SUBMITTED = "rescore_submitted"
    HEALTHY = "healthy"
    DEGRADED = "degraded"
    CODE_CHANGED = "code_changed"
    SKIPPED = "skipped"


class TickAction(StrEnum):
    """What one rollout queue message did."""

    STALE = "stale"
    RESENT = "resent"
    RESUMED = "resumed"
    WAITING = "waiting"
    ADVANCED = "advanced"
    LOST_RACE = "lost_race"
    FINISHED = "finished"
    REDRIVEN = "redriven"  # the reconciler re-sent a stalled rollout's step (audit kind `rollout.redriven`)


class OperatorAction(StrEnum):
    """What an operator did through `python -m shared.cli` (audit kinds `rollout.aborted`, `rollout.resumed`,
    `retrain.requested`)."""

    ABORTED = "aborted"
    RESUMED = "resumed"
    REQUESTED = "requested"


class EdgeAction(StrEnum):
    """What the edge logged for an input: how it settled one that failed, or the outcome of a handler that
    has no service outcome of its own (timers, HTTP)."""

    REJECTED = "rejected"  # invalid: acknowledged and audited as `event.rejected`, never retried
    RETRY = "retry"  # a transient error: it propagates and the platform retries
    FAILED = "failed"  # any other error: it propagates
    AUDIT_FAILED = "audit_failed"  # the rejection could not be audited (acknowledged anyway)
    APPLIED = "applied"  # the retention timer
    RECONCILED = "reconciled"  # the reconciler timer
    RESCORED = "rescored"  # the champion re-score timer
    RECEIVED = "received"  # a registry webhook's events went to the promoter
    IGNORED = "ignored"  # a registry webhook the app does not handle
    HANDSHAKE = "handshake"  # an Event Grid or CloudEvents subscription handshake
    RENDERED = "rendered"  # the status page


class ReplayAction(StrEnum):
    """What replaying one dead letter or poison message did (`python -m shared.cli redrive replay`)."""

    REPLAYED = "replayed"  # sent again (audit kind `redrive.replayed`) and removed
    UNSUPPORTED = "unsupported"  # not something Evergreen can replay; left in place
    FAILED = "failed"  # the replay failed; left in place
    NOT_FOUND = "not_found"  # no such item (replayed already, or being replayed)


RETENTION_AUDIT_PREFIX = "retention."  # every retention audit kind: `retention.<RetentionAudit>` and one
# `retention.<action kind>` (archive_data, delete_blob, …) per decision, written before it is executed


class RetentionAudit(StrEnum):
    """Retention's audit kinds besides its decisions (audit kind `retention.<value>`; `retention_audit_kind`)."""

    RUN = "run"  # one applied run: how many actions did what
    SUSPENDED = "suspended"  # a rule not applied: an address in use could not be read
    SKIPPED = "skipped"  # an action left undone: its blob changed since listed, or was written after the job
    FAILED = "failed"  # an action that raised (the next run retries it)


def retention_audit_kind(what: str) -> str:
    """The audit kind `retention.<what>` (a `RetentionAudit` or a plan action kind's value)."""
    return f"{RETENTION_AUDIT_PREFIX}{what}"


class ApplyStatus(StrEnum):
    """What executing one retention action did (`Outcome.status`, stored by value in audit rows and JSON), and
    what the retention ports answer: CHANGED and NEWER are port answers the runner reports as SKIPPED."""

    DONE = "done"
    ALREADY = "already"  # nothing left to do: gone, or already in the wanted state
    SKIPPED = "skipped"  # left undone on purpose (the outcome says why)
    FAILED = "failed"
    CHANGED = "changed"  # a blob changed since it was listed: nothing done
    NEWER = "newer"  # blobs under a job output written after the job finished: kept (the rest deleted)


class Tag(StrEnum):
    """Every `evergreen.*` tag or property Evergreen writes or reads on Azure ML assets and blobs."""

    # data versions
    SOURCE_URL = "evergreen.source_url"
    SOURCE_FOLDER = "evergreen.source_folder"
    ETAG = "evergreen.etag"
    SHA256 = "evergreen.sha256"
    SIZE = "evergreen.size"
    FILES = "evergreen.files"
    UPLOADED_AT = "evergreen.uploaded_at"
    BATCH_GENERATION = "evergreen.batch_generation"
    SEALED_BY = "evergreen.sealed_by"
    # retraining jobs and the models they register (lineage)
    DATASET = "evergreen.dataset"
    DATA_ASSET = "evergreen.data_asset"
    DATA_VERSION = "evergreen.data_version"
    JOB_NAME = "evergreen.job_name"
    TRIGGER_EVENT = "evergreen.trigger_event"
    RERUN = "evergreen.rerun"  # a deliberate second run of a data version (a degraded champion, changed code)
    CODE_SHA = "evergreen.code_sha"
    # promotion
    ENDPOINT = "evergreen.endpoint"
    MODEL = "evergreen.model"
    ROLLOUT = "evergreen.rollout"
    EVENT = "evergreen.event"
    MANAGED = "evergreen.managed"
    # the comparison of a challenger with the champion on the same evaluation data (issue 13)
    COMPARISON = "evergreen.comparison"  # on a comparison job: what it is for (`ComparisonPurpose`)
    COMPARED_WITH = "evergreen.compared_with"  # the champion model (n:v) it was compared with; "" = scored alone
    COMPARISON_JOB = "evergreen.comparison_job"
    INTERVAL = "evergreen.interval"  # "[low, high]" of challenger - champion, in the metric's units
    DECISION = "evergreen.decision"  # the gate's code (improved, not_significant, slice_regressed, …)
    # manual approval (`promotion.approval: manual`): pending|approved|rejected|expired, who, when (ISO)
    APPROVAL = "evergreen.approval"
    APPROVED_BY = "evergreen.approved_by"
    APPROVED_AT = "evergreen.approved_at"
    APPROVAL_REASON = "evergreen.approval_reason"
    # the code hash the training pipeline's register step writes on a model (`ml/src/steplib.code_sha256`)
    CODE_SHA256 = "evergreen.code_sha256"
    # retention
    KEEP = "evergreen.keep"
    # retraining pipeline jobs: the metrics a pipeline writes, "roc_auc,accuracy" (checked by `validate`)
    PIPELINE_METRICS = "evergreen.metrics"
    # tracing: the W3C trace context a retraining job gets and its models carry on (`shared.domain.telemetry`)
    TRACEPARENT = "evergreen.traceparent"


TAG_PREFIX = "evergreen."  # every `Tag` (and metric tag) starts with it: Evergreen's own tags among a user's
METRIC_TAG_PREFIX = f"{TAG_PREFIX}metric."
LINEAGE_TAGS = (Tag.DATA_ASSET.value, Tag.DATA_VERSION.value, Tag.JOB_NAME.value)


def metric_tag(metric: str) -> str:
    """The tag (or property) that carries a model's metric: `evergreen.metric.<name>`."""
    return f"{METRIC_TAG_PREFIX}{metric}"


class Direction(StrEnum):
    """Which way a metric improves. One spelling in the policy; `max`/`min` still parse, with a warning."""

    HIGHER_IS_BETTER = "higher_is_better"
    LOWER_IS_BETTER = "lower_is_better"

    @classmethod
    def parse(cls, value: object) -> Direction:
        """Accept the canonical spelling, or the old `max`/`min` with a deprecation warning.

        Raises ValueError naming the accepted spellings.
        """
        if isinstance(value, Direction):
            return value
        text = str(value).strip().lower()
        legacy = LEGACY_DIRECTIONS.get(text)
        if legacy is not None:
            log.warning("policy: direction %r is deprecated; write %r", text, legacy.value)
            return legacy
        try:
            return cls(text)
        except ValueError:
            raise ValueError(f"direction must be {cls.HIGHER_IS_BETTER.value!r} or {cls.LOWER_IS_BETTER.value!r} "
                             f"(got {value!r})") from None


LEGACY_DIRECTIONS = {"max": Direction.HIGHER_IS_BETTER, "min": Direction.LOWER_IS_BETTER}  # old spellings


def version_order(version: str) -> tuple[int, int, str]:
    """The one sort key for asset versions: numbers as numbers ('9' < '10'), other labels after them, as text.

    Only ASCII digits count as a number: `str.isdigit` also accepts '²', which `int` cannot read.
    """
    text = unicodedata.normalize("NFC", version)
    if text.isascii() and text.isdigit():
        return (0, int(text), "")
    return (1, 0, text)
