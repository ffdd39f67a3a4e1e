"""Upload → data version: the Event Grid–sourced blob trigger and the batch-seal queue trigger."""

from __future__ import annotations

import logging

import azure.functions as func
from azurefunctions.extensions.bindings import blob

from shared.clients import SEAL_QUEUE, get_services
from shared.events import BlobCreated
from shared.ingest import seal_request_from_json

log = logging.getLogger(__name__)

bp = func.Blueprint()  # type: ignore[no-untyped-call]


@bp.function_name("on_blob_created")
@bp.blob_trigger(
    arg_name="client",
    path="%EVERGREEN_LANDING_CONTAINER%/{name}",
    connection="DATA_STORAGE",
    source=func.BlobSource.EVENT_GRID,
)
def on_blob_created(client: blob.BlobClient) -> None:
    """A blob landed: register it, or add it to its folder's batch. Failures propagate (retry/dead-letter)."""
    event = BlobCreated(container=client.container_name, name=client.blob_name, url=client.url)
    outcome = get_services().ingestor.on_blob_created(event)
    log.info("on_blob_created blob=%s -> %s: %s", event.path, outcome.action, outcome.detail)


@bp.function_name("seal_batch")
@bp.queue_trigger(arg_name="msg", queue_name=SEAL_QUEUE, connection="AzureWebJobsStorage")
def seal_batch(msg: func.QueueMessage) -> None:
    """Check whether a folder batch is complete (marker or quiet period) and seal it into one version."""
    request = seal_request_from_json(msg.get_body().decode("utf-8"))
    outcome = get_services().ingestor.on_seal_request(request)
    log.info("seal_batch msg=%s dataset=%s folder=%s -> %s: %s", msg.id, request.dataset, request.folder,
             outcome.action, outcome.detail)
