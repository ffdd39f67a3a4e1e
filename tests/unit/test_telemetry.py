"""Tracing: the span file, the trace context's round trip through every message and event, and the cheap no-op.

Spans are made on a local `TracerProvider` (never the process-wide one, which other tests share);
what needs the process-wide set-up (`configure`, `import function_app`) runs in a subprocess.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import azure.functions as func
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

from functions import edge
from shared import telemetry
from shared.adapters.memory.eventgrid import MemoryEventPublisher
from shared.adapters.memory.queues import MemoryDelayedQueue
from shared.adapters.trace_file import JsonLinesSpanExporter
from shared.config.settings import load_telemetry_settings
from shared.domain.events import BlobCreated, DataVersionRegistered, SealRequest
from shared.domain.ingest import (
    blob_created_from_json,
    blob_created_to_json,
    seal_request_from_json,
    seal_request_to_json,
)
from shared.domain.retrain import (
    RetrainCheck,
    parse_data_version_registered,
    retrain_check_from_json,
    retrain_check_to_json,
)
from shared.domain.rollout import CandidateRetry, RolloutTick, candidate_retry_from_json, tick_from_json
from shared.domain.telemetry import TRACEPARENT, TRACEPARENT_TAG, Attr
from shared.errors import ConfigurationError
from tests.unit.test_function_app import ENV, REPO

TRACEPARENT_VALUE = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


@pytest.fixture
def tracer(tmp_path: Path) -> Iterator[tuple[trace.Tracer, Path]]:
    path = tmp_path / "traces.jsonl"
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(JsonLinesSpanExporter(path)))
    yield provider.get_tracer("test"), path
    provider.shutdown()


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


# -- the span file -----------------------------------------------------------------------------------
def test_the_file_exporter_writes_one_json_line_per_finished_span(tracer: tuple[trace.Tracer, Path]) -> None:
    spans, path = tracer
    blob = {Attr.BLOB.value: "landing/a.csv"}
    with spans.start_as_current_span("evergreen.on_blob_created", attributes=blob) as root, \
            spans.start_as_current_span("child", links=[trace.Link(root.get_span_context())]):
        pass
    child, parent = lines(path)  # a span is written when it ends: the child first
    assert parent["name"] == "evergreen.on_blob_created" and parent["parent_span_id"] is None
    assert parent["attributes"] == {"evergreen.blob": "landing/a.csv"}
    assert child["trace_id"] == parent["trace_id"] and len(parent["trace_id"]) == 32
    assert child["parent_span_id"] == parent["span_id"] and len(parent["span_id"]) == 16
    assert child["links"] == [{"trace_id": parent["trace_id"], "span_id": parent["span_id"]}]
    assert child["status"]["code"] == "UNSET" and parent["start"] <= child["start"] <= child["end"] <= parent["end"]


def test_a_failing_handler_span_is_an_error_with_the_exception(tracer: tuple[trace.Tracer, Path]) -> None:
    spans, path = tracer
    with pytest.raises(RuntimeError), spans.start_as_current_span("boom", record_exception=True,
                                                                  set_status_on_exception=True):
        raise RuntimeError("no")
    (span,) = lines(path)
    assert span["status"]["code"] == "ERROR" and "RuntimeError" in span["status"]["description"]


def test_an_unwritable_file_is_a_failed_export_not_an_exception(tmp_path: Path) -> None:
    provider = TracerProvider()
    exporter = JsonLinesSpanExporter(tmp_path / "missing" / "traces.jsonl")
    span = provider.get_tracer("t").start_span("x")
    span.end()
    assert exporter.export([span]).name == "FAILURE"  # type: ignore[list-item]


# -- annotate -----------------------------------------------------------------------------------------
def test_annotate_is_a_no_op_without_a_recording_span() -> None:
    assert not trace.get_current_span().is_recording()
    telemetry.annotate({Attr.DATASET: "churn", Attr.TRAFFIC: 25})  # nothing to set, nothing raised


def test_annotate_sets_values_skips_none_and_strips_query_strings(tracer: tuple[trace.Tracer, Path]) -> None:
    spans, path = tracer
    with spans.start_as_current_span("s"):
        telemetry.annotate({Attr.DATASET: "churn", Attr.JOB: None, Attr.TRAFFIC: 25, Attr.REJECTED: False,
                            Attr.BLOB: "https://acct.blob.core.windows.net/landing/a.csv?sv=1&sig=secret"})
    (span,) = lines(path)
    assert span["attributes"] == {"evergreen.dataset": "churn", "evergreen.traffic": 25, "evergreen.rejected": False,
                                  "evergreen.blob": "https://acct.blob.core.windows.net/landing/a.csv"}


# -- the trace context's round trip -------------------------------------------------------------------
MESSAGES: list[tuple[object, Callable[[Any], str], Callable[[str], object]]] = [
    (SealRequest("churn-training", "churn/d1/", 2, "marker"), seal_request_to_json, seal_request_from_json),
    (BlobCreated("landing", "houses/a.csv", "https://a.blob/landing/houses/a.csv"), blob_created_to_json,
     blob_created_from_json),
    (RetrainCheck("churn-training", "the minimum interval ends"), retrain_check_to_json, retrain_check_from_json),
    (RolloutTick("churn-endpoint", "r1", 3, "e1"), RolloutTick.to_json, tick_from_json),
    (CandidateRetry("churn-model", "7", "e1"), CandidateRetry.to_json, candidate_retry_from_json),
]


@pytest.mark.parametrize(("item", "encode", "decode"), MESSAGES, ids=lambda v: type(v).__name__)
def test_every_queue_message_carries_the_trace_context_and_still_parses(
        tracer: tuple[trace.Tracer, Path], item: object, encode: Callable[[Any], str],
        decode: Callable[[str], object]) -> None:
    spans, _ = tracer
    with spans.start_as_current_span("sender"):
        sent = telemetry.current_traceparent()
        text = telemetry.with_traceparent(encode(item))
        queue: MemoryDelayedQueue[object] = MemoryDelayedQueue()
        queue.send(item, 0)
    assert sent.startswith("00-") and telemetry.traceparent_of_message(text) == sent
    assert decode(text) == item  # the parsers ignore the extra key
    assert edge._message_traceparent(func.QueueMessage(body=text.encode())) == sent
    received = queue.receive()
    assert received is not None and received.traceparent == sent  # the in-memory queue carries it alike


def test_a_message_keeps_the_trace_context_it_already_has(tracer: tuple[trace.Tracer, Path]) -> None:
    spans, _ = tracer
    replayed = json.dumps({"dataset": "d", TRACEPARENT: TRACEPARENT_VALUE})
    with spans.start_as_current_span("redrive"):
        assert telemetry.traceparent_of_message(telemetry.with_traceparent(replayed)) == TRACEPARENT_VALUE
    assert telemetry.with_traceparent("not json") == "not json"
    assert telemetry.traceparent_of_message('{"traceparent": "garbage"}') == ""


def test_the_data_version_event_carries_the_trace_context_to_its_consumer(tracer: tuple[trace.Tracer, Path]) -> None:
    spans, _ = tracer
    event = DataVersionRegistered("churn-training", "churn-training", "4", "azureml://x", "uri_folder", "ab" * 32, 2,
                                  ("a.csv", "b.csv"))
    publisher = MemoryEventPublisher()
    with spans.start_as_current_span("seal"):
        sent = telemetry.current_traceparent()
        publisher.data_version_registered(event)
    (published,) = publisher.events
    assert published.traceparent == sent and published == event  # not part of the event's identity
    data = {**asdict(published), "files": list(published.files)}  # what the Azure publisher sends
    assert parse_data_version_registered(data).traceparent == sent
    delivered = func.EventGridEvent(id="1", data=data, topic="t", subject="s", event_type=event.EVENT_TYPE,
                                    event_time=None, data_version="1.0")
    assert edge._event_traceparent(delivered) == sent


@pytest.mark.parametrize("field", ["modelTags", "runTags"])
def test_azure_ml_events_continue_the_trace_of_the_asset_tag(field: str) -> None:
    delivered = func.EventGridEvent(id="1", data={"modelName": "m", field: {TRACEPARENT_TAG: TRACEPARENT_VALUE}},
                                    topic="t", subject="s", event_type="x", event_time=None, data_version="1")
    assert edge._event_traceparent(delivered) == TRACEPARENT_VALUE
    untagged = func.EventGridEvent(id="2", data={"modelName": "m"}, topic="t", subject="s", event_type="x",
                                   event_time=None, data_version="1")
    assert edge._event_traceparent(untagged) == ""


def test_job_tags_gain_the_trace_context_only_when_there_is_one(tracer: tuple[trace.Tracer, Path]) -> None:
    assert telemetry.traced_tags({"a": "1"}) == {"a": "1"}
    spans, _ = tracer
    with spans.start_as_current_span("submit"):
        assert telemetry.traced_tags({"a": "1"}) == {"a": "1", TRACEPARENT_TAG: telemetry.current_traceparent()}


def test_without_an_sdk_the_handler_span_passes_the_context_through() -> None:
    """Tracing off: no span is recorded, yet what the handler sends carries the context it got."""
    with telemetry.handler_span("advance_rollout", traceparent=TRACEPARENT_VALUE, event_id="m1"):
        assert telemetry.current_traceparent() == TRACEPARENT_VALUE
    with telemetry.continued(TRACEPARENT_VALUE):
        assert telemetry.current_traceparent() == TRACEPARENT_VALUE
    assert telemetry.current_traceparent() == ""
    with telemetry.continued("00-garbage"):
        assert telemetry.current_traceparent() == ""


# -- settings, set-up and the cold start --------------------------------------------------------------
def test_telemetry_settings_name_every_problem_at_once(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError) as caught:
        load_telemetry_settings({"APPLICATIONINSIGHTS_CONNECTION_STRING": "nope",
                                 "EVERGREEN_TRACE_FILE": str(tmp_path / "no" / "traces.jsonl")})
    assert [p.split(":")[0] for p in caught.value.problems] == ["APPLICATIONINSIGHTS_CONNECTION_STRING",
                                                                "EVERGREEN_TRACE_FILE"]
    settings = load_telemetry_settings({"EVERGREEN_TRACE_FILE": str(tmp_path / "t.jsonl"), "AZURE_CLIENT_ID": "c"})
    assert (settings.connection_string, settings.trace_file, settings.client_id) == (None, tmp_path / "t.jsonl", "c")


def _run(code: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    prefixes = ("AZURE", "EVERGREEN", "DATA_STORAGE", "AzureWeb", "APPLICATIONINSIGHTS")
    clean = {k: v for k, v in os.environ.items() if not k.startswith(prefixes)}
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, env={**clean, **env}, capture_output=True,
                          text=True, timeout=60)


def test_importing_function_app_imports_neither_azure_monitor_nor_the_sdk() -> None:
    result = _run("import sys, function_app; print(sorted({m.split('.')[0] + '.' + m.split('.')[1] for m in "
                  "sys.modules if m.startswith(('azure.monitor', 'opentelemetry.sdk'))}))", ENV)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_a_trace_file_gets_the_handler_spans_of_a_configured_process(tmp_path: Path) -> None:
    path = tmp_path / "traces.jsonl"
    code = ("import sys; from shared import telemetry\n"
            "print(telemetry.configure())\n"
            "with telemetry.handler_span('seal_batch', traceparent=sys.argv[1], event_id='m1'):\n"
            "    telemetry.annotate({telemetry.Attr.DATASET: 'churn'})\n"
            "print('azure.monitor' in sys.modules)\n")
    result = subprocess.run([sys.executable, "-c", code, TRACEPARENT_VALUE], cwd=REPO, capture_output=True,
                            text=True, timeout=60, env={**os.environ, "EVERGREEN_TRACE_FILE": str(path),
                                                        "APPLICATIONINSIGHTS_CONNECTION_STRING": ""})
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["('file',)", "False"]
    (span,) = lines(path)
    assert span["name"] == "evergreen.seal_batch" and span["kind"] == "CONSUMER"
    assert span["trace_id"] == TRACEPARENT_VALUE.split("-")[1]  # a child of the message's context
    assert span["parent_span_id"] == TRACEPARENT_VALUE.split("-")[2]
    assert span["attributes"] == {"evergreen.trigger": "seal_batch", "evergreen.event_id": "m1",
                                  "evergreen.dataset": "churn"}


EDGE_SCRIPT = '''
import sys
import azure.functions as func
from functions.edge import Handled, edge, queue_message
from shared import telemetry
from shared.errors import InvalidEventError

class Audit:
    def record(self, record): pass

def parse(text):
    if text.startswith("bad"):
        raise InvalidEventError("bad message")
    return text

@edge(queue_message(parse), audit=lambda: Audit())
def handler(event, delivery):
    if event.startswith("boom"):
        raise RuntimeError("boom")
    return Handled(action="done", detail=event)

telemetry.configure()
handler(msg=func.QueueMessage(id="m1", body=('{"traceparent": "%s"}' % sys.argv[1]).encode()))
handler(msg=func.QueueMessage(id="m2", body=b"bad"))
try:
    handler(msg=func.QueueMessage(id="m3", body=b"boom"))
except RuntimeError:
    pass
'''


def test_the_edge_makes_every_run_a_span_with_its_outcome(tmp_path: Path) -> None:
    path = tmp_path / "traces.jsonl"
    result = subprocess.run([sys.executable, "-c", EDGE_SCRIPT, TRACEPARENT_VALUE], cwd=REPO, capture_output=True,
                            text=True, timeout=60, env={**os.environ, "EVERGREEN_TRACE_FILE": str(path),
                                                        "APPLICATIONINSIGHTS_CONNECTION_STRING": ""})
    assert result.returncode == 0, result.stderr
    done, rejected, failed = lines(path)
    assert {s["name"] for s in (done, rejected, failed)} == {"evergreen.handler"}
    assert done["trace_id"] == TRACEPARENT_VALUE.split("-")[1]  # the message's context continues
    assert (done["attributes"]["evergreen.outcome"], done["attributes"]["evergreen.rejected"]) == ("done", False)
    assert done["attributes"]["evergreen.event_id"] == "m1" and done["status"]["code"] == "UNSET"
    assert rejected["parent_span_id"] is None  # no context: a new trace
    assert (rejected["attributes"]["evergreen.outcome"], rejected["attributes"]["evergreen.rejected"]) == (
        "rejected", True)
    assert rejected["status"]["code"] == "UNSET"  # acknowledged, not an error
    assert failed["attributes"]["evergreen.outcome"] == "failed" and failed["status"]["code"] == "ERROR"
    assert "RuntimeError: boom" in failed["status"]["description"]
