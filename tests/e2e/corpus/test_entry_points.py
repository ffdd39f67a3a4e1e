"""The bad-input corpus through the real local Functions host: every entry point settles every bad input once.

A clear 4xx, or acknowledged and audited as rejected (or ignored with a reason, for a well-formed event
the app does not handle): never a 500, never a retry loop (the queue message is not made visible again,
not poisoned), never a side effect (nothing reaches the promoter or the ingest plan).

The helpers are those of `tests/e2e/test_edge_contract.py` and `tests/e2e/test_registry_webhook_http.py`.
"""

from __future__ import annotations

import functools
import json
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from devstack.stack import Stack
from shared.composition import BLOB_RETRY_QUEUE, RETRAIN_QUEUE, SEAL_QUEUE
from shared.domain.webhooks import DEFAULT_TOLERANCE_SECONDS, MAX_BODY_BYTES, MODEL_REGISTERED
from shared.services.promotion import PROMOTION_RETRY_QUEUE, ROLLOUT_QUEUE
from tests.e2e.helpers import wait_for
from tests.e2e.test_edge_contract import (
    REDELIVERY_WINDOW_SECONDS,
    Sent,
    assert_gone,
    assert_not_poisoned,
    assert_rejected_once,
    audit_records,
    queue,
    rejections,
)
from tests.e2e.test_registry_webhook_http import (
    assert_never_reached_the_promoter,
    databricks_doc,
    error_of,
    mlflow_body,
    post,
    signed_databricks,
    signed_mlflow,
    unique_version,
    unmanaged,
)
from tests.unit.test_webhooks import mlflow_headers

pytestmark = pytest.mark.e2e

# -- queue triggers ----------------------------------------------------------------------------------------
QUEUES = {"seal_batch": SEAL_QUEUE, "advance_rollout": ROLLOUT_QUEUE, "retry_blob": BLOB_RETRY_QUEUE,
          "retry_candidate": PROMOTION_RETRY_QUEUE, "retrain_due": RETRAIN_QUEUE}
BODIES = {  # what -> (message text, fragment of the rejection)
    "deeply nested": ("[" * 20_000 + "]" * 20_000, "not JSON"),
    "huge": (json.dumps("x" * 40_000), "JSON object"),
    "unicode, not JSON": ("\u202e☃ {tag} \U0001f600", "not JSON"),
    "wrong schema": (json.dumps({"unexpected": "{tag}", "seq": [1]}), ""),
}
QUEUE_CASES = [(function, what) for function in QUEUES for what in BODIES]


@pytest.fixture(scope="module")
def sent(local_stack: Stack) -> dict[tuple[str, str], Sent]:
    """Every bad message sent at once; each rejected; then one redelivery window waited out."""
    out = {}
    for function, what in QUEUE_CASES:
        text = BODIES[what][0].replace("{tag}", uuid.uuid4().hex)
        receipt = queue(local_stack, QUEUES[function]).send_message(text)
        out[(function, what)] = Sent(text, receipt.id, str(receipt.pop_receipt))
    for key, message in out.items():
        wait_for(functools.partial(rejections, local_stack, message.message_id), f"the rejection of {key}")
    time.sleep(REDELIVERY_WINDOW_SECONDS)
    return out


@pytest.mark.parametrize(("function", "what"), QUEUE_CASES)
def test_a_bad_queue_message_is_rejected_once_never_retried(local_stack: Stack, sent: dict[tuple[str, str], Sent],
                                                            function: str, what: str) -> None:
    message = sent[(function, what)]
    assert_rejected_once(local_stack, function, message.message_id, BODIES[what][1])
    assert_gone(queue(local_stack, QUEUES[function]), message.message_id, message.pop_receipt)
    assert_not_poisoned(local_stack, QUEUES[function], message.content)


# -- /api/registry-webhook -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def client(local_stack: Stack) -> Any:
    with httpx.Client(base_url=local_stack.env["EVERGREEN_HOST_URL"], timeout=60) as http:
        yield http


@pytest.fixture(scope="module")
def secret(local_stack: Stack) -> str:
    return local_stack.env["EVERGREEN_WEBHOOK_SECRET"]


@pytest.mark.parametrize(("body", "headers", "status", "fragment"), [
    (b"[" * 100_000 + b"]" * 100_000, {}, 400, "nests deeper than"),
    (b'{"a":' * 30_000 + b"1" + b"}" * 30_000, {}, 400, "nests deeper than"),
    (b"[" + b" " * (MAX_BODY_BYTES + 1) + b"]", {}, 413, "at most"),
    (b"\xff\xfe not utf-8", {}, 400, "not valid JSON"),
    (b"<xml/>", {"Content-Type": "application/xml"}, 400, "not valid JSON"),
    (b"a=1&b=2", {"Content-Type": "application/x-www-form-urlencoded"}, 400, "not valid JSON"),
    (b"", {}, 400, "not valid JSON"),
])
def test_malformed_bodies_and_wrong_content_types_are_4xx(client: httpx.Client, body: bytes, headers: dict[str, str],
                                                         status: int, fragment: str) -> None:
    request_id = f"corpus-{uuid.uuid4().hex}"
    response = post(client, body, {"X-Request-Id": request_id, **headers})
    assert response.status_code == status, response.text[:300]
    assert fragment in error_of(response)


def test_an_unknown_event_type_is_ignored_with_the_reason(client: httpx.Client) -> None:
    event = {"id": str(uuid.uuid4()), "eventType": "Contoso.Surprise", "subject": "x", "data": {},
             "eventTime": datetime.now(UTC).isoformat(), "dataVersion": "1"}
    response = post(client, [event], {"aeg-event-type": "Notification"})
    assert response.status_code == 202, response.text
    assert "Contoso.Surprise is not handled" in response.json()["ignored"]


def test_a_replayed_signature_is_401_and_reaches_nothing(client: httpx.Client, secret: str,
                                                         local_stack: Stack) -> None:
    name, version = unmanaged(), unique_version()
    body = mlflow_body(name, version)
    stale = datetime.now(UTC) - timedelta(seconds=DEFAULT_TOLERANCE_SECONDS + 60)
    headers = mlflow_headers(body, secret=secret, at=stale, delivery=f"d-{uuid.uuid4().hex}")
    assert post(client, body, headers).status_code == 401
    assert post(client, body, headers).status_code == 401  # the same captured request, sent again
    assert_never_reached_the_promoter(local_stack, name)


def test_a_bad_signature_is_401(client: httpx.Client, local_stack: Stack) -> None:
    name = unmanaged()
    response = signed_mlflow(client, mlflow_body(name), "not-the-secret")
    assert response.status_code == 401 and "does not match" in error_of(response)
    assert_never_reached_the_promoter(local_stack, name)


@pytest.mark.parametrize("to_stage", ["Archived", "None"])
def test_defect5_databricks_transition_to_archived_is_ignored_over_http(client: httpx.Client, secret: str,
                                                                        local_stack: Stack, to_stage: str) -> None:
    name = unmanaged()
    doc = {**databricks_doc(name, event="MODEL_VERSION_TRANSITIONED_STAGE"), "to_stage": to_stage}
    response = signed_databricks(client, doc, secret)
    assert response.status_code == 202, response.text
    assert f"to stage '{to_stage}' is not handled" in response.json()["ignored"]
    assert_never_reached_the_promoter(local_stack, name)


def test_defect5_deeply_nested_json_is_400_and_audited_once(client: httpx.Client, local_stack: Stack) -> None:
    request_id = f"corpus-{uuid.uuid4().hex}"
    response = post(client, b"[" * 50_000 + b"]" * 50_000, {"X-Request-Id": request_id})
    assert response.status_code == 400, response.text[:300]
    assert_rejected_once(local_stack, "registry_webhook", request_id, "nests deeper than")


@pytest.mark.parametrize("rate", ["²".encode("latin-1"), b"9" * 5000])
def test_defect5_a_handshake_rate_that_is_not_a_plain_number_is_400(client: httpx.Client, rate: bytes) -> None:
    """`str.isdigit` accepts both ('²' as the header's ISO-8859-1 byte); `int` reads neither: once a 500."""
    response = client.options("/api/registry-webhook", headers={"WebHook-Request-Origin": "eventgrid.azure.net",
                                                                "WebHook-Request-Rate": rate})
    assert response.status_code == 400 and "positive integer" in error_of(response), response.text[:300]


# -- GET /api/status and /api/status.json --------------------------------------------------------------------------
@pytest.mark.parametrize("path", ["/api/status", "/api/status.json"])
@pytest.mark.parametrize("params", [{"limit": "²"}, {"limit": "9" * 2000}, {"limit": "0"}, {"colour": "red"},
                                    {"model": "\u202e<script>" * 20}, {"kind": "[" * 500}])
def test_a_bad_status_filter_is_400_naming_it(client: httpx.Client, path: str, params: dict[str, str]) -> None:
    response = client.get(path, params=params)
    assert response.status_code == 400 and "bad status filter" in error_of(response), response.text[:300]


# -- the Event Grid webhooks of the local host -------------------------------------------------------------------
def blob_created(name: str) -> bytes:
    """A BlobCreated delivery naming a blob (that need not exist) in the landing container."""
    return json.dumps([{"id": str(uuid.uuid4()), "eventType": "Microsoft.Storage.BlobCreated",
                        "subject": f"/blobServices/default/containers/landing/blobs/{name}",
                        "eventTime": datetime.now(UTC).isoformat(), "dataVersion": "1",
                        "data": {"api": "PutBlob", "url": f"http://127.0.0.1/devstoreaccount1/landing/{name}",
                                 "blobType": "BlockBlob"}}]).encode()


HOSTILE_NAMES = {"dot-dot": "churn/a/../../b.csv", "control": "churn/\x07bell\x1bescape\x00.csv",
                 "1025 characters": "churn/" + "n" * 1019, "unicode": "churn/ünï cødé ☃ \u202e.csv"}
BAD_DELIVERIES = {"not json": b"{not json", "deeply nested": b"[" * 50_000 + b"]" * 50_000, "empty": b"[]",
                  "wrong schema": b'[{"id": 1}]',
                  "string data": json.dumps([{"id": "x", "eventType": MODEL_REGISTERED, "data": "s"}]).encode(),
                  **{f"blob name: {k}": blob_created(v) for k, v in HOSTILE_NAMES.items()}}


@pytest.mark.parametrize("body", list(BAD_DELIVERIES))
@pytest.mark.parametrize("path", ["/runtime/webhooks/EventGrid?functionName=on_model_registered",
                                  "/runtime/webhooks/EventGrid?functionName=on_run_event",
                                  "/runtime/webhooks/EventGrid?functionName=no_such_function",
                                  "/runtime/webhooks/blobs?functionName=Host.Functions.on_blob_created"])
def test_the_hosts_event_grid_webhooks_never_answer_5xx(client: httpx.Client, path: str, body: str) -> None:
    response = client.post(path, content=BAD_DELIVERIES[body], headers={"Content-Type": "application/json",
                                                                        "aeg-event-type": "Notification"})
    assert response.status_code < 500, (response.status_code, response.text[:300])


# -- hostile blob names: each is settled by the blob trigger, none stops the others ---------------------------------
HOSTILE = {"long": "corpus-{tag}/" + "n" * 1000,
           "unicode": "corpus-{tag}/ünï cødé ☃ \u202e.csv", "percent": "corpus-{tag}/100%25 %2e%2e.csv"}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_a_hostile_blob_name_is_settled_once_without_a_side_effect(local_stack: Stack, landing: Any,
                                                                   case: str) -> None:
    name = HOSTILE[case].replace("{tag}", uuid.uuid4().hex[:8])
    url = landing.upload_blob(name, b"not data").url
    eventgrid_url = local_stack.env["EVERGREEN_EVENTGRID_URL"]

    def delivery() -> dict[str, Any] | None:
        found = [d for d in httpx.get(f"{eventgrid_url}/deliveries", params={"limit": 2000}).json()
                 if f"corpus-{name.split('/')[0][7:]}" in d["subject"]]
        return found[0] if found and found[0]["status"] != "pending" else None

    settled = wait_for(delivery, f"the BlobCreated delivery of {name!r}")
    assert settled["status"] == "delivered" and settled["attempts"] == 1, settled
    lines = wait_for(lambda: [line for line in _blob_lines(local_stack) if name.split("/")[0] in line] or None,
                     "the blob trigger's outcome")
    assert len(lines) == 1 and "outcome=ignored" in lines[0], lines  # under no dataset's prefix: ignored
    assert [r["Kind"] for r in audit_records(local_stack, url)] in (["data.ignored"], [])


def _blob_lines(local_stack: Stack) -> list[str]:
    log = next(s for s in local_stack.services if s.name == "functions-host").log_path
    return [line for line in log.read_text(errors="replace").splitlines() if "function=on_blob_created " in line]

