"""Retention on a schedule: a timer trigger on EVERGREEN_RETENTION_SCHEDULE (NCRONTAB, seconds first).

A manual run is the host's `POST /admin/functions/retention`; a dry run is `python -m shared.cli retention --dry-run`.
"""

from __future__ import annotations

import logging
import uuid

import azure.functions as func

from shared.clients import get_services

log = logging.getLogger(__name__)

bp = func.Blueprint()  # type: ignore[no-untyped-call]


@bp.function_name("retention")
@bp.timer_trigger(arg_name="timer", schedule="%EVERGREEN_RETENTION_SCHEDULE%", run_on_startup=False)
def retention(timer: func.TimerRequest) -> None:
    """Plan and apply the policy's retention rules; failed actions fail the invocation (and retry next run)."""
    run_id = f"retention-{uuid.uuid4().hex[:12]}"
    log.info("retention run=%s started (past_due=%s)", run_id, timer.past_due)
    summary = get_services().retention.run(run_id=run_id, dry_run=False)
    log.info("retention run=%s done: %d action(s) %s, %d protected", run_id, len(summary.outcomes), summary.counts,
             len(summary.plan.protected))
