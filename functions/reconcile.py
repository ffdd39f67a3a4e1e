"""The reconciler on a schedule: a timer trigger on EVERGREEN_RECONCILE_SCHEDULE (NCRONTAB, default every 5 minutes).

Each flow's service re-drives its own stuck work and audits each re-drive (`<flow>.redriven`); the timer
logs one summary line. An on-demand pass is `python -m shared.cli reconcile`.
"""

from __future__ import annotations

import azure.functions as func

from functions.edge import Delivery, Handled, Settled, edge, timer
from shared.composition import get_reconciler
from shared.domain.vocabulary import EdgeAction

bp = func.Blueprint()  # type: ignore[no-untyped-call]


@bp.function_name("reconcile")
@bp.timer_trigger(arg_name="timer", schedule="%EVERGREEN_RECONCILE_SCHEDULE%", run_on_startup=False)
@edge(timer("reconcile"), subject=lambda t: f"past_due={t.past_due}")
def reconcile(fired: func.TimerRequest, delivery: Delivery) -> Settled:
    """Re-drive stuck work in every flow; a flow that fails fails the run (the next tick tries again)."""
    summary = get_reconciler().run(run_id=delivery.id)
    return Handled(action=EdgeAction.RECONCILED, detail=summary.detail)
