"""Data version → retraining: Event Grid triggers for Evergreen.DataVersionRegistered and Azure ML run events."""

from __future__ import annotations

import logging

import azure.functions as func

from shared.clients import get_services
from shared.retrain import parse_data_version_registered, parse_run_event

log = logging.getLogger(__name__)

bp = func.Blueprint()  # type: ignore[no-untyped-call]


@bp.function_name("on_data_version_registered")
@bp.event_grid_trigger(arg_name="event")
def on_data_version_registered(event: func.EventGridEvent) -> None:
    """Start (or coalesce, or skip with a reason) the dataset's retraining pipeline."""
    registered = parse_data_version_registered(event.get_json())
    outcome = get_services().retrainer.on_data_version_registered(registered, event.id)
    log.info("on_data_version_registered event=%s data=%s:%s -> %s: %s", event.id, registered.asset_name,
             registered.version, outcome.action, outcome.detail)


@bp.function_name("on_run_event")
@bp.event_grid_trigger(arg_name="event")
def on_run_event(event: func.EventGridEvent) -> None:
    """A run ended: record it, and start the coalesced follow-up run if newer data arrived meanwhile."""
    finished = parse_run_event(event.event_type, event.get_json())
    outcome = get_services().retrainer.on_run_finished(finished, event.id)
    log.info("on_run_event event=%s run=%s status=%s -> %s: %s", event.id, finished.run_id, finished.status,
             outcome.action, outcome.detail)
