"""Model registered → gate → rollout: Event Grid and HTTP registry triggers, and the rollout's queue steps."""

from __future__ import annotations

from datetime import UTC, datetime

import azure.functions as func

from functions.edge import Delivery, Handled, Settled, action_value, edge, event_grid, http_request, queue_message
from shared.composition import get_services
from shared.domain.events import ModelVersionEvent
from shared.domain.rollout import (
    PROMOTION_RETRY_QUEUE,
    ROLLOUT_QUEUE,
    CandidateRetry,
    RolloutTick,
    candidate_retry_from_json,
    tick_from_json,
)
from shared.domain.vocabulary import EdgeAction
from shared.domain.webhooks import (
    Ignored,
    Received,
    WebhookResult,
    parse_model_registered,
    parse_webhook_request,
    to_http,
)

bp = func.Blueprint()  # type: ignore[no-untyped-call]


@bp.function_name("on_model_registered")
@bp.event_grid_trigger(arg_name="event")
@edge(event_grid(parse_model_registered), subject=lambda registered: registered.model)
def on_model_registered(registered: ModelVersionEvent, delivery: Delivery) -> Settled:
    """Azure ML's ModelRegistered: gate the new version against the champion; start a rollout if it wins."""
    return get_services().promoter.on_model_version(registered)


def webhook_request(req: func.HttpRequest) -> WebhookResult:
    """Verify and parse a registry webhook or Event Grid delivery; raises SignatureError / InvalidEventError."""
    return parse_webhook_request(req.method, dict(req.headers), req.get_body(),
                                 secret=get_services().settings.webhook_secret, now=datetime.now(UTC))


def _models(result: WebhookResult) -> str:
    return ",".join(item.model for item in result.events) if isinstance(result, Received) else "-"


@bp.function_name("registry_webhook")
@bp.route(route="registry-webhook", methods=["POST", "OPTIONS"], auth_level=func.AuthLevel.FUNCTION)
@edge(http_request(webhook_request), subject=_models)
def registry_webhook(result: WebhookResult, delivery: Delivery) -> Settled:
    """Event Grid (with its handshake), CloudEvents (with OPTIONS) and signed MLflow/Databricks webhooks."""
    reply = to_http(result)
    if isinstance(result, Received):
        promoter = get_services().promoter
        done = [f"{item.model}:{action_value(promoter.on_model_version(item).action)}" for item in result.events]
        return Handled(action=EdgeAction.RECEIVED, detail=", ".join(done), reply=reply)
    if isinstance(result, Ignored):
        return Handled(action=EdgeAction.IGNORED, detail=result.reason, reply=reply)
    return Handled(action=EdgeAction.HANDSHAKE, detail=type(result).__name__, reply=reply)


@bp.function_name("advance_rollout")
@bp.queue_trigger(arg_name="msg", queue_name=ROLLOUT_QUEUE, connection="AzureWebJobsStorage")
@edge(queue_message(tick_from_json), subject=lambda tick: f"{tick.rollout_id}#{tick.seq} cause={tick.event_id}")
def advance_rollout(tick: RolloutTick, delivery: Delivery) -> Settled:
    """Take the next step of an endpoint's rollout (a persisted state machine; see shared/domain/rollout.py)."""
    return get_services().promoter.on_tick(tick, delivery.attempt)


@bp.function_name("retry_candidate")
@bp.queue_trigger(arg_name="msg", queue_name=PROMOTION_RETRY_QUEUE, connection="AzureWebJobsStorage")
@edge(queue_message(candidate_retry_from_json), subject=lambda retry: f"{retry.model_name}:{retry.version}")
def retry_candidate(retry: CandidateRetry, delivery: Delivery) -> Settled:
    """A candidate whose decision kept racing other writes to the endpoint's rollout row: decide it again."""
    return get_services().promoter.on_candidate_retry(retry)
