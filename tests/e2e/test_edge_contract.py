"""The edge contract through the real local Functions host: malformed input is settled once, never retried.

For each event and queue trigger, a malformed event or message goes in the way the platform delivers it
(a queue message on the trigger's queue, an event published to the local Event Grid topic that the
trigger's subscription reads). Each must be handled exactly once: the queue message is deleted (not made
visible again, not moved to `<queue>-poison`), the Event Grid delivery is answered 2xx on its first attempt
(not retried, not dead-lettered), the host logs one `outcome=rejected` line, and one `event.rejected`
audit record names the reason.

The blob trigger has no input that reaches the function and is malformed: the host itself answers 400 to
a BlobCreated event naming no blob (so Event Grid dead-letters it, as in Azure), skips a blob that no
longer exists, and the function sees only a real blob, whose name the ingest plan either takes or
*ignores* with a reason. So for `on_blob_created` the test shows the ignored outcome is settled once too.
"""

from __future__ import annotations

import functools
import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from azure.core.exceptions import HttpResponseError
from azure.storage.queue import QueueClient, TextBase64EncodePolicy

from devstack.stack import Stack
from shared.composition import SEAL_QUEUE
from shared.domain.webhooks import MODEL_REGISTERED
from shared.services.audit import AUDIT_TABLE
from shared.services.promotion import ROLLOUT_QUEUE
from tests.e2e.helpers import wait_for

pytestmark = pytest.mark.e2e

# host.json: a failed queue message becomes visible again after 10 s; waiting longer proves it was not.
REDELIVERY_WINDOW_SECONDS = 12


# -- what the stack recorded -----------------------------------------------------------------------------------
def audit_records(local_stack: Stack, event_id: str, kind: str | None = None) -> list[dict[str, Any]]:
    """Audit rows (today's and yesterday's partitions) for one event id, optionally of one kind."""
    from azure.core.exceptions import ResourceNotFoundError
    from azure.data.tables import TableServiceClient

    days = sorted({(datetime.now(UTC) - timedelta(days=back)).strftime("%Y%m%d") for back in (0, 1)})
    query = " or ".join(f"PartitionKey eq '{day}'" for day in days)
    table = TableServiceClient.from_connection_string(local_stack.env["AzureWebJobsStorage"]).get_table_client(
        AUDIT_TABLE)
    try:
        rows = [dict(e) for e in table.query_entities(query)]
    except ResourceNotFoundError:
        return []
    # A day's partition may also hold the log's time-ordered index rows (they carry the record's `Key`): not records.
    return [r for r in rows if "Key" not in r and r.get("EventId") == event_id
            and (kind is None or r.get("Kind") == kind)]


def rejections(local_stack: Stack, event_id: str) -> list[dict[str, Any]]:
    return audit_records(local_stack, event_id, "event.rejected")


def edge_lines(local_stack: Stack, function: str, event_id: str) -> list[str]:
    """The host log's edge lines (`function=… event=…`) for one function and event."""
    log = next(s for s in local_stack.services if s.name == "functions-host").log_path
    needle = f"function={function} event={event_id} "
    return [line for line in log.read_text(errors="replace").splitlines() if needle in line]


def assert_rejected_once(local_stack: Stack, function: str, event_id: str, reason: str) -> None:
    records = rejections(local_stack, event_id)
    assert len(records) == 1, records
    assert records[0]["Decision"] == "rejected"
    assert reason in records[0]["Reason"], records[0]
    assert json.loads(records[0]["Assets"]) == {"function": function}
    lines = edge_lines(local_stack, function, event_id)
    assert len(lines) == 1, lines
    assert "outcome=rejected" in lines[0]
    assert reason in lines[0]


# -- queues ----------------------------------------------------------------------------------------------------
def queue(local_stack: Stack, name: str) -> QueueClient:
    return QueueClient.from_connection_string(local_stack.env["AzureWebJobsStorage"], name,
                                              message_encode_policy=TextBase64EncodePolicy())


def assert_gone(client: QueueClient, message_id: str, pop_receipt: str) -> None:
    """The message no longer exists. (One made visible again for a retry has a new pop receipt instead.)"""
    with pytest.raises(HttpResponseError) as raised:
        client.delete_message(message_id, pop_receipt)
    assert getattr(raised.value, "error_code", None) == "MessageNotFound", raised.value


def assert_not_poisoned(local_stack: Stack, name: str, content: str) -> None:
    from azure.core.exceptions import ResourceNotFoundError

    try:
        poisoned = [m.content for m in queue(local_stack, f"{name}-poison").peek_messages(max_messages=32)]
    except ResourceNotFoundError:  # no message of this queue was ever poisoned
        return
    assert content not in poisoned


QUEUE_CASES = {
    "seal-not-json": ("seal_batch", SEAL_QUEUE, "not json {tag}", "seal request is not JSON"),
    "seal-lacks-fields": ("seal_batch", SEAL_QUEUE, json.dumps({"dataset": "churn", "note": "{tag}"}),
                          "seal request lacks folder, generation"),
    "tick-not-an-object": ("advance_rollout", ROLLOUT_QUEUE, json.dumps(["{tag}"]),
                           "rollout message must be a JSON object"),
    "tick-bad-fields": ("advance_rollout", ROLLOUT_QUEUE,
                        json.dumps({"endpoint": "churn", "rolloutId": "{tag}", "seq": -1}),
                        "eventId must be a non-empty string; seq must be a non-negative integer"),
}


@dataclass(frozen=True)
class Sent:
    content: str
    message_id: str
    pop_receipt: str


@pytest.fixture(scope="module")
def sent_messages(local_stack: Stack) -> dict[str, Sent]:
    """Every malformed message sent at once, each rejected, then one redelivery window waited out."""
    sent = {}
    for case, (_function, queue_name, content, _reason) in QUEUE_CASES.items():
        text = content.replace("{tag}", uuid.uuid4().hex)
        receipt = queue(local_stack, queue_name).send_message(text)
        sent[case] = Sent(text, receipt.id, str(receipt.pop_receipt))
    for case, message in sent.items():
        wait_for(functools.partial(rejections, local_stack, message.message_id), f"the rejection of {case}")
    time.sleep(REDELIVERY_WINDOW_SECONDS)
    return sent


@pytest.mark.parametrize("case", list(QUEUE_CASES))
def test_a_malformed_queue_message_is_rejected_once_and_not_retried(local_stack: Stack,
                                                                    sent_messages: dict[str, Sent],
                                                                    case: str) -> None:
    function, queue_name, _content, reason = QUEUE_CASES[case]
    message = sent_messages[case]

    assert_rejected_once(local_stack, function, message.message_id, reason)
    assert_gone(queue(local_stack, queue_name), message.message_id, message.pop_receipt)
    assert_not_poisoned(local_stack, queue_name, message.content)


# -- Event Grid --------------------------------------------------------------------------------------------------
def publish(local_stack: Stack, topic: str, event_type: str, subject: str, data: object) -> str:
    """Publish one Event Grid–schema event to a local topic; returns its id."""
    ident = str(uuid.uuid4())
    event = {"id": ident, "eventType": event_type, "subject": subject, "eventTime": datetime.now(UTC).isoformat(),
             "data": data, "dataVersion": "1"}
    response = httpx.post(f"{local_stack.env['EVERGREEN_EVENTGRID_URL']}/topics/{topic}/api/events",
                          json=[event], headers={"aeg-sas-key": local_stack.env["EVERGREEN_EVENTS_TOPIC_KEY"]})
    assert response.status_code == 200, response.text
    return ident


def eventgrid(local_stack: Stack, path: str) -> list[dict[str, Any]]:
    response = httpx.get(f"{local_stack.env['EVERGREEN_EVENTGRID_URL']}/{path}", params={"limit": 1000})
    response.raise_for_status()
    return list(response.json())


def finished_delivery(local_stack: Stack, event_id: str) -> Callable[[], dict[str, Any] | None]:
    def probe() -> dict[str, Any] | None:
        found = [d for d in eventgrid(local_stack, "deliveries") if d["eventId"] == event_id]
        return found[0] if found and found[0]["status"] != "pending" else None

    return probe


def assert_delivered_once(local_stack: Stack, event_id: str, function: str) -> None:
    deliveries = [d for d in eventgrid(local_stack, "deliveries") if d["eventId"] == event_id]
    assert [(d["function"], d["status"], d["attempts"]) for d in deliveries] == [(function, "delivered", 1)], \
        deliveries
    assert 200 <= deliveries[0]["lastStatus"] < 300
    assert [d for d in eventgrid(local_stack, "deadletters") if d["eventId"] == event_id] == []


@pytest.mark.parametrize(
    ("function", "topic", "event_type", "subject", "data", "reason"),
    [("on_data_version_registered", "evergreen", "Evergreen.DataVersionRegistered", "datasets/churn",
      {"dataset": "churn", "version": "3"}, "data lacks asset_name, uri, asset_type, sha256"),
     ("on_data_version_registered", "evergreen", "Evergreen.DataVersionRegistered", "datasets/churn",
      ["not", "an", "object"], "data must be a JSON object"),
     ("on_run_event", "workspace", "Microsoft.MachineLearningServices.RunCompleted", "experiments/e/runs/r",
      {"experimentName": "e"}, "data lacks runId"),
     ("on_run_event", "workspace", "Microsoft.MachineLearningServices.RunStatusChanged", "experiments/e/runs/r",
      {"runId": "r-1"}, "data lacks runStatus"),
     ("on_model_registered", "workspace", MODEL_REGISTERED, "models/edge-contract:1", "a string",
      "data must be an object, not a string"),
     ("on_model_registered", "workspace", MODEL_REGISTERED, "models/no-version", {"ModelName": "edge-contract"},
      "data.ModelVersion is missing")],
)
def test_a_malformed_event_grid_event_is_rejected_once_and_not_retried(local_stack: Stack, function: str,
                                                                       topic: str, event_type: str, subject: str,
                                                                       data: object, reason: str) -> None:
    event_id = publish(local_stack, topic, event_type, subject, data)

    wait_for(finished_delivery(local_stack, event_id), f"the delivery of {event_id} to {function}")

    assert_delivered_once(local_stack, event_id, function)
    assert_rejected_once(local_stack, function, event_id, reason)


# -- the blob trigger: no malformed input reaches it; an ignored blob is settled once -----------------------------
def test_a_blob_the_plan_ignores_is_acknowledged_once(local_stack: Stack, landing: Any) -> None:
    name = f"edge-contract-{uuid.uuid4().hex}/note.txt"  # under no dataset's prefix
    url = landing.upload_blob(name, b"not data").url
    eventgrid_url = local_stack.env["EVERGREEN_EVENTGRID_URL"]

    def delivery() -> dict[str, Any] | None:
        found = [d for d in httpx.get(f"{eventgrid_url}/deliveries", params={"limit": 1000}).json()
                 if d["subject"].endswith(f"/blobs/{name}")]
        return found[0] if found and found[0]["status"] != "pending" else None

    event_id = wait_for(delivery, f"the BlobCreated delivery of {name}")["eventId"]
    wait_for(lambda: edge_lines(local_stack, "on_blob_created", url) or None, "the blob trigger's outcome")

    assert_delivered_once(local_stack, event_id, "on_blob_created")
    [line] = edge_lines(local_stack, "on_blob_created", url)
    assert f"subject=landing/{name} outcome=ignored" in line
    assert [r["Kind"] for r in audit_records(local_stack, url)] == ["data.ignored"]


# -- HTTP: refused with a 4xx, audited ----------------------------------------------------------------------------
@pytest.mark.parametrize(("body", "headers", "status", "reason"),
                         [(b"{not json", {}, 400, "not valid JSON"),
                          (b'{"entity": "model_version"}', {"X-MLflow-Signature": "v1,forged",
                                                             "X-MLflow-Timestamp": "1"}, 401,
                           "lacks X-MLflow-Delivery-Id")])
def test_a_refused_webhook_answers_4xx_and_is_audited_once(local_stack: Stack, body: bytes, headers: dict[str, str],
                                                           status: int, reason: str) -> None:
    request_id = f"edge-{uuid.uuid4().hex}"
    response = httpx.post(f"{local_stack.env['EVERGREEN_HOST_URL']}/api/registry-webhook", content=body,
                          headers={"Content-Type": "application/json", "X-Request-Id": request_id, **headers})
    assert response.status_code == status, response.text
    assert reason in response.json()["error"]
    assert_rejected_once(local_stack, "registry_webhook", request_id, reason)
