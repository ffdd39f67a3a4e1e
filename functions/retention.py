"""Retention on a schedule: a timer trigger on EVERGREEN_RETENTION_SCHEDULE (NCRONTAB, seconds first).

A manual run is the host's `POST /admin/functions/retention`; a dry run is `python -m shared.cli retention --dry-run`.
"""

from __future__ import annotations

import azure.functions as func

from functions.edge import Delivery, Handled, Settled, edge, timer
from shared.composition import get_services
from shared.domain.vocabulary import EdgeAction

bp = func.Blueprint()  # type: ignore[no-untyped-call]


@bp.function_name("retention")
@bp.timer_trigger(arg_name="timer", schedule="%EVERGREEN_RETENTION_SCHEDULE%", run_on_startup=False)
@edge(timer("retention"), subject=lambda t: f"past_due={t.past_due}")
def retention(fired: func.TimerRequest, delivery: Delivery) -> Settled:
    """Plan and apply the policy's retention rules; failed actions fail the invocation (and retry next run)."""
    summary = get_services().retention.run(run_id=delivery.id, dry_run=False)
    counts = ", ".join(f"{n} {status}" for status, n in sorted(summary.counts.items())) or "nothing to do"
    return Handled(action=EdgeAction.APPLIED, detail=f"{counts}; {len(summary.plan.protected)} protected")
