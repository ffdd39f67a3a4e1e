"""Upload → data version: the Event Grid–sourced blob trigger, the batch-seal queue trigger, and the queue
trigger of blob events re-scheduled while another instance held their work."""

from __future__ import annotations

import azure.functions as func

from functions.edge import Delivery, Settled, blob_client, edge, queue_message
from shared.composition import BLOB_RETRY_QUEUE, SEAL_QUEUE, get_services
from shared.domain.events import BlobCreated, SealRequest
from shared.domain.ingest import blob_created_from_json, seal_request_from_json

bp = func.Blueprint()  # type: ignore[no-untyped-call]


@bp.function_name("on_blob_created")
@bp.blob_trigger(arg_name="client", path="%EVERGREEN_LANDING_CONTAINER%/{name}", connection="DATA_STORAGE",
                 source=func.BlobSource.EVENT_GRID)
@edge(blob_client(), subject=lambda blob: blob.path)
def on_blob_created(blob: BlobCreated, delivery: Delivery) -> Settled:
    """A blob landed: register it, add it to its folder's batch, or ignore it with a reason.

    The host acknowledges Event Grid at once and runs this from its own queue: a failure is retried
    `maxDequeueCount` times, then lands in `webjobs-blobtrigger-poison` of the data account (not in
    Event Grid's dead letters); `python -m shared.cli redrive` replays it.
    """
    return get_services().ingestor.on_blob_created(blob)


@bp.function_name("seal_batch")
@bp.queue_trigger(arg_name="msg", queue_name=SEAL_QUEUE, connection="AzureWebJobsStorage")
@edge(queue_message(seal_request_from_json), subject=lambda r: f"{r.dataset}/{r.folder}#{r.generation}")
def seal_batch(request: SealRequest, delivery: Delivery) -> Settled:
    """Check whether a folder batch is complete (marker or quiet period) and seal it into one version."""
    return get_services().ingestor.on_seal_request(request)


@bp.function_name("retry_blob")
@bp.queue_trigger(arg_name="msg", queue_name=BLOB_RETRY_QUEUE, connection="AzureWebJobsStorage")
@edge(queue_message(blob_created_from_json), subject=lambda blob: blob.path)
def retry_blob(blob: BlobCreated, delivery: Delivery) -> Settled:
    """A blob event whose content another instance was registering: handle it again (its lease has ended)."""
    return get_services().ingestor.on_blob_created(blob)
