"""A tiny v2-programming-model app that exercises every trigger the local host serves.

Used only by the host's own tests. Functions record what they saw as JSON blobs in the
`RESULTS_CONTAINER` container of `AzureWebJobsStorage`, so tests observe real side effects.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import time
import uuid

import azure.functions as func
import azurefunctions.extensions.bindings.blob as blob_ext
from azure.storage.blob import BlobServiceClient

app = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)
log = logging.getLogger("sample_app")


def record(function: str, key: str, payload: dict[str, object]) -> None:
    """Write what a function saw where the tests can read it back."""
    service = BlobServiceClient.from_connection_string(os.environ["AzureWebJobsStorage"])  # noqa: SIM112 (the Functions name)
    container = service.get_container_client(os.environ["RESULTS_CONTAINER"])
    container.upload_blob(f"{function}/{key}.json", json.dumps(payload), overwrite=True)


@app.route(route="hello/{name}", methods=["GET", "POST"])
def hello(req: func.HttpRequest) -> func.HttpResponse:
    greeting = os.environ.get("GREETING", "hi")
    body = {
        "greeting": f"{greeting} {req.route_params['name']}",
        "method": req.method,
        "params": dict(req.params),
        "body": req.get_body().decode(),
        "header": req.headers.get("x-test"),
    }
    return func.HttpResponse(json.dumps(body), mimetype="application/json", headers={"x-sample": "yes"})


@app.route(route="boom", methods=["GET"])
def boom(req: func.HttpRequest) -> func.HttpResponse:
    raise RuntimeError("boom on purpose")


@app.route(route="items/{id:int}/{rest?}", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
async def items(req: func.HttpRequest, context: func.Context) -> func.HttpResponse:
    await asyncio.sleep(0)
    payload = {
        "id": req.route_params["id"],
        "rest": req.route_params.get("rest"),
        "invocation_id": context.invocation_id,
        "function_name": context.function_name,
    }
    return func.HttpResponse(json.dumps(payload), status_code=201, mimetype="application/json")


@app.route(route="webhook", methods=["POST", "OPTIONS"])
def webhook(req: func.HttpRequest) -> func.HttpResponse:
    if req.method == "OPTIONS":
        origin = req.headers.get("webhook-request-origin", "*")
        return func.HttpResponse(status_code=200, headers={"WebHook-Allowed-Origin": origin, "Allow": "POST"})
    return func.HttpResponse("posted", status_code=202)


@app.route(route="enqueue", methods=["POST"])
@app.queue_output(arg_name="work", queue_name="%WORK_QUEUE%", connection="AzureWebJobsStorage")
def enqueue(req: func.HttpRequest, work: func.Out[str]) -> func.HttpResponse:
    work.set(req.get_body().decode())
    return func.HttpResponse("queued", status_code=202)


@app.route(route="slow", methods=["GET"])
def slow(req: func.HttpRequest) -> func.HttpResponse:
    seconds = float(req.params.get("seconds", "2"))
    time.sleep(seconds)
    return func.HttpResponse(f"slept {seconds}")


@app.event_grid_trigger(arg_name="event")
def on_event(event: func.EventGridEvent) -> None:
    # The worker hands CloudEvents 1.0 deliveries over as func.CloudEvent (`type`, not `event_type`).
    data = event.get_json()
    event_type = event.event_type if isinstance(event, func.EventGridEvent) else event.type
    log.info("on_event got %s (%s)", event.id, event_type)
    if isinstance(data, dict) and data.get("fail"):
        raise ValueError(f"event {event.id} asked to fail")
    record("on_event", event.id, {"id": event.id, "type": event_type, "subject": event.subject,
                                  "data": data, "class": type(event).__name__})


@app.blob_trigger(arg_name="client", path="%LANDING_CONTAINER%/{name}", connection="DATA_STORAGE",
                  source=func.BlobSource.EVENT_GRID)
def on_landing(client: blob_ext.BlobClient) -> None:
    content = client.download_blob().readall()
    record("on_landing", hashlib.sha256(client.blob_name.encode()).hexdigest(),
           {"blob_name": client.blob_name, "container": client.container_name,
            "sha256": hashlib.sha256(content).hexdigest(), "length": len(content)})


@app.blob_trigger(arg_name="stream", path="%LANDING_CONTAINER%/streams/{name}.txt", connection="DATA_STORAGE",
                  source=func.BlobSource.EVENT_GRID)
def on_stream(stream: func.InputStream) -> None:
    content = stream.read()
    record("on_stream", hashlib.sha256((stream.name or "").encode()).hexdigest(),
           {"name": stream.name, "uri": stream.uri, "length": stream.length, "content": content.decode()})


@app.blob_trigger(arg_name="named", path="%LANDING_CONTAINER%/names/{name}", connection="DATA_STORAGE",
                  source=func.BlobSource.EVENT_GRID)
def on_name(named: blob_ext.BlobClient) -> None:
    """Judge a blob by its name only (no blob I/O), like the product's name guard; records every attempt.

    Names containing `always-fail` fail every time; `fail-once` fails on the first attempt only.
    """
    name = named.blob_name
    key = hashlib.sha256(name.encode()).hexdigest()
    verdict = "rejected" if any(part in {"", ".", ".."} for part in name.split("/")) else "accepted"
    record("on_name_attempt", f"{key}/{uuid.uuid4().hex}", {"blob_name": name})
    if "always-fail" in name:
        raise RuntimeError(f"blob {name!r} always fails")
    if "fail-once" in name:
        service = BlobServiceClient.from_connection_string(os.environ["AzureWebJobsStorage"])  # noqa: SIM112
        attempts = service.get_container_client(os.environ["RESULTS_CONTAINER"]).list_blobs(
            name_starts_with=f"on_name_attempt/{key}/")
        if len(list(attempts)) < 2:
            raise RuntimeError(f"blob {name!r} fails on its first attempt")
    record("on_name", key, {"blob_name": name, "verdict": verdict})


@app.queue_trigger(arg_name="msg", queue_name="%WORK_QUEUE%", connection="AzureWebJobsStorage")
def on_work(msg: func.QueueMessage) -> None:
    body = json.loads(msg.get_body())
    record("on_work", f"{body['id']}-{msg.dequeue_count}",
           {"id": msg.id, "body": body, "dequeue_count": msg.dequeue_count})
    if body.get("fail"):
        raise RuntimeError(f"message {body['id']} asked to fail")


@app.timer_trigger(arg_name="timer", schedule="%TICK_SCHEDULE%", run_on_startup=False)
def tick(timer: func.TimerRequest) -> None:
    record("tick", uuid.uuid4().hex, {"past_due": timer.past_due, "at": time.time()})
