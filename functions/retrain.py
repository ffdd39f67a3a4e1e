"""Data version → retraining: Event Grid triggers for Evergreen.DataVersionRegistered and Azure ML run events,
and the queue trigger of scheduled re-checks (the end of a minimum interval, a submission's lease)."""

from __future__ import annotations

import azure.functions as func

from functions.edge import Delivery, Settled, edge, event_grid, queue_message
from shared.composition import RETRAIN_QUEUE, get_services, on_run_finished
from shared.composition import on_data_version_registered as route_data_version
from shared.domain.events import DataVersionRegistered
from shared.domain.retrain import (
    RetrainCheck,
    RunFinished,
    parse_data_version_registered,
    parse_run_event,
    retrain_check_from_json,
)

bp = func.Blueprint()  # type: ignore[no-untyped-call]


@bp.function_name("on_data_version_registered")
@bp.event_grid_trigger(arg_name="event")
@edge(event_grid(lambda event: parse_data_version_registered(event["data"])),
      subject=lambda data: f"{data.asset_name}:{data.version}")
def on_data_version_registered(registered: DataVersionRegistered, delivery: Delivery) -> Settled:
    """Start (or coalesce, or skip with a reason) the dataset's retraining pipeline; a version of some model's
    evaluation data re-scores that model's champion on it (`shared.services.monitor`) and gates the candidates
    that waited for it (`Promoter.on_evaluation_data`)."""
    return route_data_version(get_services(), registered, delivery.id)  # routed in the composition root


@bp.function_name("on_run_event")
@bp.event_grid_trigger(arg_name="event")
@edge(event_grid(lambda event: parse_run_event(event["eventType"], event["data"])),
      subject=lambda run: f"{run.run_id}:{run.status}")
def on_run_event(finished: RunFinished, delivery: Delivery) -> Settled:
    """A run ended: a challenger's comparison job goes to the promoter (it decides from comparison.json);
    a retraining run is recorded, and the coalesced follow-up run starts if newer data arrived meanwhile."""
    return on_run_finished(get_services(), finished, delivery.id)  # the same routing as a replayed dead letter


@bp.function_name("retrain_due")
@bp.queue_trigger(arg_name="msg", queue_name=RETRAIN_QUEUE, connection="AzureWebJobsStorage")
@edge(queue_message(retrain_check_from_json), subject=lambda check: check.dataset)
def retrain_due(check: RetrainCheck, delivery: Delivery) -> Settled:
    """A re-check came due: run the newest version that waited for the minimum interval, or resume a
    submission whose lease ran out."""
    return get_services().retrainer.on_recheck(check, delivery.id)
