"""The names Evergreen's telemetry uses: one list shared by the code that emits spans and by the
Azure Monitor alert rules and workbook in `infra/` (a test checks that every query names only these).

Pure: no OpenTelemetry import here. The span for a handler is `SPAN_PREFIX + <function name>`
(e.g. `evergreen.on_blob_created`), with `Attr.*` attributes.
"""

from __future__ import annotations

from enum import StrEnum

from shared.domain.vocabulary import Tag

SPAN_PREFIX = "evergreen."
TRACEPARENT = "traceparent"  # the W3C field name, in CloudEvents, queue messages, tags and ledger rows
TRACEPARENT_TAG = Tag.TRACEPARENT.value  # the same value as an Azure ML job/model tag


class Attr(StrEnum):
    """Every span attribute Evergreen emits (Application Insights shows them as customDimensions)."""

    TRIGGER = "evergreen.trigger"  # the function name
    EVENT_ID = "evergreen.event_id"
    OUTCOME = "evergreen.outcome"  # the handler's outcome kind (ingested, sealed, started, rolled_back, ...)
    DECISION = "evergreen.decision"  # a gate or retention decision (promote, skip, keep, archive, delete)
    REASON_CODE = "evergreen.reason_code"
    REJECTED = "evergreen.rejected"  # bool: the event was invalid and acknowledged
    DATASET = "evergreen.dataset"
    DATA_VERSION = "evergreen.data_version"
    BATCH = "evergreen.batch"
    BLOB = "evergreen.blob"  # container/name, never a URL with a query string
    JOB = "evergreen.job"
    JOB_STATUS = "evergreen.job_status"
    MODEL = "evergreen.model"
    MODEL_VERSION = "evergreen.model_version"
    ENDPOINT = "evergreen.endpoint"
    ROLLOUT = "evergreen.rollout"
    ROLLOUT_PHASE = "evergreen.rollout_phase"
    TRAFFIC = "evergreen.traffic"  # candidate's traffic percent after the step
    RETENTION_ACTIONS = "evergreen.retention_actions"
    RETENTION_ERRORS = "evergreen.retention_errors"
    STUCK = "evergreen.stuck"  # work the reconciler found overdue
    DEAD_LETTERS = "evergreen.dead_letters"


ATTRIBUTE_NAMES: frozenset[str] = frozenset(a.value for a in Attr)
