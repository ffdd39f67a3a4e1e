"""Champion monitoring on a schedule: a timer on EVERGREEN_RESCORE_SCHEDULE (NCRONTAB, default daily 04:30 UTC).

Each champion with `promotion.evaluation` is re-scored alone on the newest evaluation data version (a
compare job; its RunCompleted reaches `functions/retrain.py:on_run_event`, which routes re-scores to
the monitor), and a champion trained with other code than the deployed `ml/src` is retrained once on
the newest training data (`shared.services.monitor.ChampionMonitor`).
"""

from __future__ import annotations

import azure.functions as func

from functions.edge import Delivery, Handled, Settled, edge, timer
from shared.composition import get_monitor
from shared.domain.vocabulary import EdgeAction

bp = func.Blueprint()  # type: ignore[no-untyped-call]


@bp.function_name("rescore")
@bp.timer_trigger(arg_name="timer", schedule="%EVERGREEN_RESCORE_SCHEDULE%", run_on_startup=False)
@edge(timer("rescore"), subject=lambda t: f"past_due={t.past_due}")
def rescore(fired: func.TimerRequest, delivery: Delivery) -> Settled:
    """Re-score every champion on its newest evaluation data; retrain once where the training code changed."""
    outcomes = get_monitor().on_schedule(delivery.id)
    detail = "; ".join(f"{o.action.value}: {o.detail}" for o in outcomes) or "no model has an evaluation or a champion"
    return Handled(action=EdgeAction.RESCORED, detail=detail)
