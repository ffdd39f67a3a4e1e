"""Model registered → gate → rollout: Event Grid and HTTP registry triggers, and the rollout's queue steps."""

from __future__ import annotations

import logging
from datetime import UTC, datetime

import azure.functions as func

from shared.clients import get_services
from shared.errors import InvalidEventError
from shared.promotion import ROLLOUT_QUEUE
from shared.rollout import tick_from_json
from shared.webhooks import Received, SignatureError, parse_model_registered, parse_webhook_request, to_http

log = logging.getLogger(__name__)

bp = func.Blueprint()  # type: ignore[no-untyped-call]


@bp.function_name("on_model_registered")
@bp.event_grid_trigger(arg_name="event")
def on_model_registered(event: func.EventGridEvent) -> None:
    """Azure ML's ModelRegistered: gate the new version against the champion; start a rollout if it wins."""
    registered = parse_model_registered({
        "id": event.id, "eventType": event.event_type, "subject": event.subject, "eventTime": event.event_time,
        "topic": event.topic, "data": event.get_json(),
    })
    outcome = get_services().promoter.on_model_version(registered)
    log.info("on_model_registered event=%s model=%s -> %s: %s", event.id, registered.model, outcome.action,
             outcome.detail)


@bp.function_name("registry_webhook")
@bp.route(route="registry-webhook", methods=["POST", "OPTIONS"], auth_level=func.AuthLevel.FUNCTION)
def registry_webhook(req: func.HttpRequest) -> func.HttpResponse:
    """Event Grid (with its handshake), CloudEvents (with OPTIONS) and signed MLflow/Databricks webhooks."""
    services = get_services()
    try:
        result = parse_webhook_request(req.method, dict(req.headers), req.get_body(),
                                       secret=services.settings.webhook_secret, now=datetime.now(UTC))
    except (SignatureError, InvalidEventError) as exc:
        reply = to_http(exc)
        log.warning("registry_webhook refused (%d): %s", reply.status, exc)
        return func.HttpResponse(reply.body, status_code=reply.status, headers=dict(reply.headers))
    if isinstance(result, Received):
        for item in result.events:
            outcome = services.promoter.on_model_version(item)
            log.info("registry_webhook event=%s source=%s model=%s -> %s: %s", item.event_id, item.source,
                     item.model, outcome.action, outcome.detail)
    reply = to_http(result)
    return func.HttpResponse(reply.body, status_code=reply.status, headers=dict(reply.headers))


@bp.function_name("advance_rollout")
@bp.queue_trigger(arg_name="msg", queue_name=ROLLOUT_QUEUE, connection="AzureWebJobsStorage")
def advance_rollout(msg: func.QueueMessage) -> None:
    """Take the next step of an endpoint's rollout (a persisted state machine; see shared/rollout.py)."""
    tick = tick_from_json(msg.get_body().decode("utf-8"))
    outcome = get_services().promoter.on_tick(tick, msg.dequeue_count or 1)
    log.info("advance_rollout event=%s rollout=%s seq=%d -> %s: %s", tick.event_id, tick.rollout_id, tick.seq,
             outcome.action, outcome.detail)
