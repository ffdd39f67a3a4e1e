"""The edge decorator: rejections are audited and acknowledged, everything else propagates, one log format."""

from __future__ import annotations

import contextlib
import inspect
import json
import logging
import re
import typing
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import azure.functions as func
import azure.functions.queue as worker_queue
import azure.functions.timer as worker_timer
import pytest
from azure.core.exceptions import ServiceRequestError
from azurefunctions.extensions.bindings import blob

from functions.edge import (
    REJECTED_KIND,
    Delivery,
    Handled,
    Settled,
    Source,
    blob_client,
    blob_created,
    edge,
    event_grid,
    http_request,
    queue_message,
    strip_query,
    timer,
)
from shared.domain.audit import AuditRecord
from shared.domain.vocabulary import IngestAction
from shared.domain.webhooks import MODEL_REGISTERED, HttpReply, parse_model_registered
from shared.errors import ConcurrentUpdateError, InvalidEventError, SignatureError

LINE = re.compile(r"^function=\S+ event=\S+ subject=.+ outcome=\S+ detail=.* ms=\d+$", re.DOTALL)


# -- hand-written stubs -------------------------------------------------------------------------------------
class RecordingAudit:
    def __init__(self) -> None:
        self.records: list[AuditRecord] = []

    def record(self, rec: AuditRecord) -> None:
        self.records.append(rec)

    def query(self, *, days: int = 1, kind_prefix: str = "", now: datetime | None = None) -> Iterator[AuditRecord]:
        return iter([r for r in self.records if r.kind.startswith(kind_prefix)])


class BrokenAudit(RecordingAudit):
    def record(self, rec: AuditRecord) -> None:
        raise ServiceRequestError("table storage is unreachable")


@dataclass(frozen=True)
class Outcome:
    action: Any
    detail: str


@dataclass(frozen=True)
class Job:
    name: str


def parse_job(text: str) -> Job:
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise InvalidEventError(f"job message is not JSON: {exc}") from exc
    if not isinstance(data, dict) or "name" not in data:
        raise InvalidEventError("job message lacks name")
    return Job(str(data["name"]))


def message(body: bytes, *, id: str = "m-1", dequeue_count: int = 1) -> func.QueueMessage:
    """The worker's message type (the public `func.QueueMessage` cannot carry a dequeue count)."""
    return worker_queue.QueueMessage(id=id, body=body, dequeue_count=dequeue_count)  # type: ignore[no-untyped-call]


def queue_trigger(audit: RecordingAudit, behaviour: Exception | None = None) -> tuple[Any, list[tuple[Job, Delivery]]]:
    """A queue trigger `run_job` whose handler records its calls and raises `behaviour` if given."""
    calls: list[tuple[Job, Delivery]] = []

    @edge(queue_message(parse_job), subject=lambda job: job.name, audit=lambda: audit)
    def run_job(job: Job, delivery: Delivery) -> Settled:
        calls.append((job, delivery))
        if behaviour is not None:
            raise behaviour
        return Outcome(IngestAction.REGISTERED, f"job {job.name} done")

    return run_job, calls


def edge_lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "functions.edge"]


@pytest.fixture(autouse=True)
def _capture(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="functions.edge")


# -- invalid input: audited, acknowledged --------------------------------------------------------------------
@pytest.mark.parametrize(("body", "reason"), [(b"{not json", "job message is not JSON"),
                                              (b'{"other": 1}', "job message lacks name"),
                                              (b"\xff\xfe", "is not UTF-8 text")])
def test_an_invalid_message_is_audited_as_rejected_and_acknowledged(caplog, body, reason):
    audit = RecordingAudit()
    run_job, calls = queue_trigger(audit)

    assert run_job(msg=message(body, id="m-42")) is None  # returning normally deletes the message: no retry

    assert calls == []
    [record] = audit.records
    assert (record.kind, record.decision, record.event_id, dict(record.assets)) == (
        REJECTED_KIND, "rejected", "m-42", {"function": "run_job"})
    assert REJECTED_KIND == "event.rejected"
    assert reason in record.reason
    [line] = edge_lines(caplog)
    assert line.levelno == logging.WARNING
    assert line.getMessage().startswith("function=run_job event=m-42 subject=- outcome=rejected detail=")
    assert reason in line.getMessage()


def test_an_invalid_event_found_by_the_service_is_rejected_too(caplog):
    audit = RecordingAudit()
    run_job, calls = queue_trigger(audit, InvalidEventError("seal request names unknown dataset 'x'"))

    assert run_job(msg=message(b'{"name": "x"}')) is None

    assert len(calls) == 1
    assert [(r.kind, r.reason) for r in audit.records] == [(REJECTED_KIND, "seal request names unknown dataset 'x'")]
    assert "subject=x outcome=rejected" in edge_lines(caplog)[0].getMessage()


def test_a_failed_audit_write_still_acknowledges_the_rejection(caplog):
    run_job, _ = queue_trigger(BrokenAudit())

    assert run_job(msg=message(b"nope", id="m-7")) is None  # no exception: the message is not retried

    levels = [(r.levelno, r.getMessage().split(" outcome=")[1].split(" ")[0]) for r in edge_lines(caplog)]
    assert levels == [(logging.WARNING, "rejected"), (logging.ERROR, "audit_failed")]
    assert "table storage is unreachable" in edge_lines(caplog)[1].getMessage()
    assert "event=m-7" in edge_lines(caplog)[1].getMessage()


def test_an_unreachable_composition_root_is_an_audit_failure_too(caplog):
    def no_services() -> RecordingAudit:
        raise ServiceRequestError("cannot reach the table endpoint")

    @edge(queue_message(parse_job), audit=no_services)
    def run_job(job: Job, delivery: Delivery) -> Settled:
        raise AssertionError("not reached")

    assert run_job(msg=message(b"[]")) is None
    assert [r.levelno for r in edge_lines(caplog)] == [logging.WARNING, logging.ERROR]


# -- everything else propagates (the platform retries) -------------------------------------------------------
def test_a_transient_error_propagates_after_one_warning(caplog):
    audit = RecordingAudit()
    run_job, _ = queue_trigger(audit, ConcurrentUpdateError("the batch row changed"))

    with pytest.raises(ConcurrentUpdateError):
        run_job(msg=message(b'{"name": "a"}', id="m-3"))

    assert audit.records == []
    [line] = edge_lines(caplog)
    assert line.levelno == logging.WARNING
    assert line.getMessage().startswith("function=run_job event=m-3 subject=a outcome=retry "
                                        "detail=ConcurrentUpdateError: the batch row changed ms=")


@pytest.mark.parametrize("error", [ServiceRequestError("connection reset"), KeyError("bug")])
def test_an_azure_error_or_a_bug_propagates_after_one_error_line(caplog, error):
    audit = RecordingAudit()
    run_job, _ = queue_trigger(audit, error)

    with pytest.raises(type(error)):
        run_job(msg=message(b'{"name": "a"}'))

    assert audit.records == []
    [line] = edge_lines(caplog)
    assert line.levelno == logging.ERROR
    assert f"outcome=failed detail={type(error).__name__}: " in line.getMessage()


# -- success ---------------------------------------------------------------------------------------------------
def test_success_logs_the_outcome_and_passes_the_delivery(caplog):
    audit = RecordingAudit()
    run_job, calls = queue_trigger(audit)

    assert run_job(message(b'{"name": "nightly"}', id="m-9", dequeue_count=3)) is None  # positional works too

    assert calls == [(Job("nightly"), Delivery(function="run_job", id="m-9", attempt=3))]
    assert audit.records == []
    [line] = edge_lines(caplog)
    assert line.levelno == logging.INFO
    assert re.fullmatch(r"function=run_job event=m-9 subject=nightly outcome=registered detail=job nightly done "
                        r"ms=\d+", line.getMessage())


def test_every_outcome_is_logged_in_one_format(caplog):
    for behaviour in (None, InvalidEventError("bad"), ConcurrentUpdateError("later"), RuntimeError("bug")):
        run_job, _ = queue_trigger(BrokenAudit(), behaviour)
        with contextlib.suppress(ConcurrentUpdateError, RuntimeError):
            run_job(msg=message(b'{"name": "a"}'))
    lines = edge_lines(caplog)
    assert len(lines) == 5  # success, rejected + audit_failed, retry, failed
    for line in lines:
        assert LINE.match(line.getMessage()), line.getMessage()


def test_urls_are_logged_without_their_query_string(caplog):
    sas = "https://data.blob.core.windows.net/landing/a.csv?sv=2024&sig=SECRET"

    @edge(queue_message(parse_job), audit=RecordingAudit)
    def run_job(job: Job, delivery: Delivery) -> Settled:
        return Outcome("ignored", f"nothing to do for {sas}")

    run_job(msg=message(b'{"name": "a"}'))
    text = edge_lines(caplog)[0].getMessage()
    assert "SECRET" not in text
    assert "detail=nothing to do for https://data.blob.core.windows.net/landing/a.csv ms=" in text
    assert strip_query(f"see {sas}#frag, then") == "see https://data.blob.core.windows.net/landing/a.csv then"


def test_a_blob_event_carries_no_sas():
    @dataclass
    class Client:  # the three attributes of the SDK BlobClient the edge reads
        container_name: str
        blob_name: str
        url: str

    event = blob_created(Client("landing", "churn/a.csv",
                                "https://d.blob.core.windows.net/landing/churn/a.csv?sig=SECRET"))
    assert (event.path, event.url) == ("landing/churn/a.csv", "https://d.blob.core.windows.net/landing/churn/a.csv")


# -- what the host sees ----------------------------------------------------------------------------------------
def test_the_host_sees_the_platform_parameter_not_the_handler():
    run_job, _ = queue_trigger(RecordingAudit())

    assert run_job.__name__ == "run_job"
    assert list(inspect.signature(run_job).parameters) == ["msg"]
    assert typing.get_type_hints(run_job) == {"msg": func.QueueMessage, "return": type(None)}


def test_each_source_names_the_parameter_and_type_the_host_binds():
    cases: list[tuple[Source[Any, Any, Any], str, object]] = [
        (blob_client(), "client", blob.BlobClient),
        (event_grid(parse_model_registered), "event", func.EventGridEvent),
        (http_request(lambda req: req), "req", func.HttpRequest),
        (timer("retention"), "timer", func.TimerRequest),
    ]
    for source, name, annotation in cases:
        assert (source.arg_name, source.binding) == (name, annotation)


# -- Event Grid, HTTP and timer sources ----------------------------------------------------------------------
def grid_event(data: Any, *, event_type: str = MODEL_REGISTERED, id: str = "eg-1") -> func.EventGridEvent:
    return func.EventGridEvent(id=id, data=data, topic="/workspaces/ws", subject="models/churn:3",
                               event_type=event_type, event_time=datetime.now(UTC), data_version="1")


def test_an_event_grid_event_is_parsed_from_its_schema_document():
    seen = []

    @edge(event_grid(parse_model_registered), subject=lambda e: e.model, audit=RecordingAudit)
    def on_model(event: Any, delivery: Delivery) -> Settled:
        seen.append((event.model, event.event_id, delivery.id))
        return Outcome("skipped", "not managed")

    assert on_model(event=grid_event({"ModelName": "churn", "ModelVersion": 3})) is None
    assert seen == [("churn:3", "eg-1", "eg-1")]


def test_an_event_grid_event_whose_data_is_not_an_object_is_rejected(caplog):
    audit = RecordingAudit()

    @edge(event_grid(parse_model_registered), audit=lambda: audit)
    def on_model(event: Any, delivery: Delivery) -> Settled:
        raise AssertionError("not reached")

    assert on_model(event=grid_event("a string", id="eg-bad")) is None  # acknowledged: Event Grid does not retry
    [record] = audit.records
    assert (record.kind, record.event_id) == (REJECTED_KIND, "eg-bad")
    assert "data must be an object, not a string" in record.reason


def http(body: bytes, headers: dict[str, str] | None = None) -> func.HttpRequest:
    return func.HttpRequest("POST", "http://localhost/api/hook", headers=headers or {}, body=body)


def parse_signed(req: func.HttpRequest) -> str:
    if req.headers.get("x-signature") != "ok":
        raise SignatureError("the request is not signed")
    if not req.get_body():
        raise InvalidEventError("the body is empty")
    return req.get_body().decode()


def hook(audit: RecordingAudit) -> Any:
    @edge(http_request(parse_signed), audit=lambda: audit)
    def hook(text: str, delivery: Delivery) -> Settled:
        return Handled("received", text, reply=HttpReply(202, {"Content-Type": "text/plain"}, text.encode()))

    return hook


@pytest.mark.parametrize(("headers", "body", "status", "reason"),
                         [({}, b"x", 401, "not signed"), ({"x-signature": "ok"}, b"", 400, "body is empty")])
def test_a_refused_http_request_answers_4xx_and_is_audited(headers, body, status, reason):
    audit = RecordingAudit()
    response = hook(audit)(req=http(body, {**headers, "X-MLflow-Delivery-Id": "d-1"}))
    assert response.status_code == status
    assert reason in json.loads(response.get_body())["error"]
    [record] = audit.records
    assert (record.kind, record.event_id, dict(record.assets)) == (REJECTED_KIND, "d-1", {"function": "hook"})
    assert reason in record.reason


def test_an_accepted_http_request_answers_the_handlers_reply():
    audit = RecordingAudit()
    response = hook(audit)(req=http(b"hello", {"x-signature": "ok"}))
    assert (response.status_code, response.get_body()) == (202, b"hello")
    assert audit.records == []
    assert typing.get_type_hints(hook(audit))["return"] is func.HttpResponse


def test_a_timer_run_gets_a_fresh_run_id(caplog):
    runs = []

    @edge(timer("retention"), audit=RecordingAudit)
    def retention(fired: Any, delivery: Delivery) -> Settled:
        runs.append(delivery.id)
        return Handled("applied", "nothing to do")

    retention(timer=worker_timer.TimerRequest(past_due=False))
    retention(timer=worker_timer.TimerRequest(past_due=True))
    assert len(set(runs)) == 2
    assert all(re.fullmatch(r"retention-[0-9a-f]{12}", run) for run in runs)
    assert f"event={runs[0]} subject=- outcome=applied" in edge_lines(caplog)[0].getMessage()
