"""Indexing an in-process app and binding trigger data the way the Python worker does."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from datetime import timedelta
from pathlib import Path

import azure.functions as func
import azurefunctions.extensions.bindings.blob as blob_ext
import pytest
from azure.functions.meta import Datum
from azure.storage.blob import BlobClient

from devstack.host.bindings import (
    Binder,
    BindingError,
    BlobReference,
    InvocationContext,
    TriggerData,
    apply_binding_data,
    decode_queue_message,
    encode_queue_message,
    json_datum,
    string_datum,
)
from devstack.host.connections import ClientCache
from devstack.host.indexing import FunctionInfo, index_functions
from devstack.host.invoker import Invoker
from devstack.host.settings import QueueOptions

CONNECTION = (
    "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey=a2V5;"
    "BlobEndpoint=http://127.0.0.1:1/devstoreaccount1;QueueEndpoint=http://127.0.0.1:2/devstoreaccount1;"
)
SETTINGS = {"AzureWebJobsStorage": CONNECTION, "DATA": CONNECTION, "CONTAINER": "landing", "Q": "work"}


def _app() -> func.FunctionApp:
    app = func.FunctionApp()

    @app.blob_trigger(arg_name="client", path="%CONTAINER%/{name}", connection="DATA",
                      source=func.BlobSource.EVENT_GRID)
    def sdk_blob(client: blob_ext.BlobClient) -> None:
        pass

    @app.blob_trigger(arg_name="stream", path="%CONTAINER%/{name}", connection="DATA",
                      source=func.BlobSource.EVENT_GRID)
    def stream_blob(stream: func.InputStream) -> None:
        pass

    @app.queue_trigger(arg_name="msg", queue_name="%Q%", connection="AzureWebJobsStorage")
    @app.queue_output(arg_name="out", queue_name="%Q%-out", connection="AzureWebJobsStorage")
    def queued(msg: func.QueueMessage, out: func.Out[str], context: func.Context) -> str:
        out.set(msg.get_body().decode())
        return context.invocation_id

    @app.timer_trigger(arg_name="timer", schedule="*/1 * * * * *")
    async def ticking(timer: func.TimerRequest, context: func.Context) -> str:
        await asyncio.sleep(0)
        return f"{timer.past_due}:{context.function_name}"

    @app.timer_trigger(arg_name="timer", schedule="%NOT_SET%")
    def unresolved(timer: func.TimerRequest) -> None:
        pass

    @app.timer_trigger(arg_name="timer", schedule="*/1 * * * * *")
    def sleepy(timer: func.TimerRequest) -> None:
        time.sleep(1.5)

    return app


@pytest.fixture(scope="module")
def functions() -> dict[str, FunctionInfo]:
    return index_functions(_app(), SETTINGS)


@pytest.fixture
def binder() -> Binder:
    return Binder(ClientCache(SETTINGS), QueueOptions())


def _context(name: str) -> InvocationContext:
    return InvocationContext(invocation_id="inv-1", function_name=name, function_directory="/app")


def test_index_resolves_settings_and_flags_errors(functions: dict[str, FunctionInfo]) -> None:
    assert functions["sdk_blob"].trigger.config["path"] == "landing/{name}"
    assert functions["sdk_blob"].blob_pattern is not None
    assert functions["queued"].trigger.config["queueName"] == "work"
    assert [b.name for b in functions["queued"].outputs()] == ["out"]
    assert functions["ticking"].is_async
    assert functions["unresolved"].error is not None
    assert "'%NOT_SET%' does not resolve" in functions["unresolved"].error
    assert all(functions[name].error is None for name in ("sdk_blob", "stream_blob", "queued", "ticking"))


def test_sdk_blob_client_comes_from_model_binding_data(
    functions: dict[str, FunctionInfo], binder: Binder, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the blob extension reads the connection from the process environment, as in Azure
    monkeypatch.setenv("DATA", CONNECTION)
    fn = functions["sdk_blob"]
    trigger = TriggerData(blob=BlobReference("DATA", "landing", "dir/ä b.csv"),
                          datum=lambda: pytest.fail("an SDK-type binding must not download the blob"))
    args, outs = binder.arguments(fn, trigger, _context(fn.name))
    client = args["client"]
    assert isinstance(client, BlobClient)
    assert (client.container_name, client.blob_name) == ("landing", "dir/ä b.csv")
    assert client.url.startswith("http://127.0.0.1:1/devstoreaccount1/landing/")
    assert outs == {}
    # the worker caches SDK clients per (parameter, type, content, function)
    again, _ = binder.arguments(fn, trigger, _context(fn.name))
    assert again["client"] is client


def test_model_binding_content_is_what_the_extension_reads() -> None:
    content = json.loads(BlobReference("DATA", "c", "ü.csv").model_binding_data().content)
    assert content == {"Connection": "DATA", "ContainerName": "c", "BlobName": "ü.csv"}


def test_input_stream_gets_metadata(functions: dict[str, FunctionInfo], binder: Binder) -> None:
    fn = functions["stream_blob"]
    trigger = TriggerData(
        metadata={"BlobTrigger": string_datum("landing/a.txt"), "Uri": string_datum("http://x/landing/a.txt"),
                  "Properties": json_datum({"ContentLength": 3}), "Metadata": json_datum({"k": "v"})},
        datum=lambda: Datum(b"abc", "bytes"),
        blob=BlobReference("DATA", "landing", "a.txt"),
    )
    args, _ = binder.arguments(fn, trigger, _context(fn.name))
    stream = args["stream"]
    assert (stream.name, stream.uri, stream.length, stream.metadata) == (
        "landing/a.txt", "http://x/landing/a.txt", 3, {"k": "v"})
    assert stream.read() == b"abc"


def test_queue_message_context_and_out(functions: dict[str, FunctionInfo], binder: Binder) -> None:
    fn = functions["queued"]
    trigger = TriggerData(
        metadata={"Id": string_datum("m1"), "DequeueCount": Datum(2, "int"),
                  "InsertionTime": string_datum("2024-01-01T00:00:00+00:00")},
        datum=lambda: string_datum("héllo"),
    )
    args, outs = binder.arguments(fn, trigger, _context(fn.name))
    message = args["msg"]
    assert (message.id, message.get_body(), message.dequeue_count) == ("m1", "héllo".encode(), 2)
    assert message.insertion_time is not None
    assert args["context"].invocation_id == "inv-1"
    assert set(outs) == {"out"}


def test_parameter_without_binding_is_an_error(binder: Binder) -> None:
    app = func.FunctionApp()

    @app.timer_trigger(arg_name="timer", schedule="*/1 * * * * *")
    def orphan(timer: func.TimerRequest, stray: str) -> None:
        pass

    fn = index_functions(app, SETTINGS)["orphan"]
    with pytest.raises(BindingError, match="'stray'"):
        binder.arguments(fn, TriggerData(datum=lambda: json_datum({"IsPastDue": False})), _context("orphan"))


def test_queue_message_encoding_round_trip() -> None:
    body = "hé ✓".encode()
    assert decode_queue_message(encode_queue_message(body, "base64"), "base64") == body
    assert encode_queue_message(body, "base64") == base64.b64encode(body).decode()
    assert decode_queue_message("plain", "none") == b"plain"
    with pytest.raises(ValueError):
        decode_queue_message("not base64!", "base64")


def test_apply_binding_data() -> None:
    assert apply_binding_data("out/{name}.json", {"name": "a b"}) == "out/a b.json"
    assert apply_binding_data("out/{NAME}", {"name": "x"}) == "out/x"
    with pytest.raises(BindingError):
        apply_binding_data("out/{missing}", {})


def _invoker(binder: Binder, timeout: float | None = None) -> Invoker:
    return Invoker(binder, app_dir=str(Path.cwd()), threads=2,
                   function_timeout=None if timeout is None else timedelta(seconds=timeout))


def test_invoker_runs_async_functions_with_context(functions: dict[str, FunctionInfo], binder: Binder) -> None:
    invoker = _invoker(binder)
    try:
        trigger = TriggerData(datum=lambda: json_datum({"IsPastDue": True}))
        result = asyncio.run(invoker.invoke(functions["ticking"], trigger, "test"))
    finally:
        invoker.close()
    assert result.succeeded
    assert result.value == "True:ticking"


def test_invoker_enforces_the_function_timeout(functions: dict[str, FunctionInfo], binder: Binder) -> None:
    invoker = _invoker(binder, timeout=0.3)
    try:
        started = time.monotonic()
        trigger = TriggerData(datum=lambda: json_datum({"IsPastDue": False}))
        result = asyncio.run(invoker.invoke(functions["sleepy"], trigger, "test"))
        elapsed = time.monotonic() - started
    finally:
        invoker.close()
    assert not result.succeeded
    assert isinstance(result.error, TimeoutError)
    assert elapsed < 1.2
