"""Queue triggers against Azurite: base64 bodies, delete on success, retries, poison queue, delays."""

from __future__ import annotations

import base64
import json
import time
import uuid

import httpx
import pytest
from azure.storage.queue import QueueClient, TextBase64EncodePolicy

from devstack.testing.host import SampleHost, read_results, wait_for

pytestmark = pytest.mark.integration


def _producer(sample: SampleHost, queue: str | None = None) -> QueueClient:
    """A producer as the app writes them: base64 text, the queue's default message encoding."""
    client = QueueClient.from_connection_string(
        sample.connection_string, queue or sample.work_queue, message_encode_policy=TextBase64EncodePolicy()
    )
    wait_for(lambda: _exists(client), message=f"queue {client.queue_name} created by the host")
    return client


def _exists(client: QueueClient) -> bool:
    try:
        client.get_queue_properties()
    except Exception:
        return False
    return True


def _raw(sample: SampleHost, queue: str) -> QueueClient:
    return QueueClient.from_connection_string(sample.connection_string, queue)


def _poison_contents(sample: SampleHost) -> list[str]:
    poison = _raw(sample, f"{sample.work_queue}-poison")
    if not _exists(poison):
        return []
    return [str(m.content) for m in poison.peek_messages(max_messages=32)]


def test_message_is_decoded_processed_and_deleted(sample_host: SampleHost) -> None:
    message_id = uuid.uuid4().hex
    body = {"id": message_id, "text": "hé ✓"}
    _producer(sample_host).send_message(json.dumps(body))
    recorded = wait_for(lambda: read_results(sample_host, "on_work").get(f"{message_id}-1"), message="processing")
    assert isinstance(recorded, dict)
    assert recorded["body"] == body
    assert recorded["dequeue_count"] == 1
    # deleted on success: it never comes back for a second attempt
    queue = _raw(sample_host, sample_host.work_queue)
    wait_for(lambda: all(json.loads(base64.b64decode(m.content)).get("id") != message_id
                         for m in queue.peek_messages(max_messages=32)), message="the message to be deleted")
    assert f"{message_id}-2" not in read_results(sample_host, "on_work")


def test_failing_message_is_retried_then_moved_to_poison(sample_host: SampleHost) -> None:
    message_id = uuid.uuid4().hex
    sent = _producer(sample_host).send_message(json.dumps({"id": message_id, "fail": True}))
    # host.json: maxDequeueCount 3, visibilityTimeout 1 s
    wait_for(
        lambda: any(message_id in base64.b64decode(c).decode() for c in _poison_contents(sample_host)),
        timeout=30, message="the poison message",
    )
    attempts = {k for k in read_results(sample_host, "on_work") if k.startswith(message_id)}
    assert attempts == {f"{message_id}-1", f"{message_id}-2", f"{message_id}-3"}
    log = sample_host.info.log_text()
    assert f"Message '{sent.id}' on queue '{sample_host.work_queue}' has reached MaxDequeueCount of 3" in log
    assert f"Moving message to queue '{sample_host.work_queue}-poison'" in log


def test_message_that_is_not_base64_goes_to_poison_without_invocation(sample_host: SampleHost) -> None:
    raw = _raw(sample_host, sample_host.work_queue)
    _producer(sample_host)  # waits for the queue
    junk = f"not base64 {uuid.uuid4().hex}!"
    raw.send_message(junk)
    wait_for(lambda: junk in _poison_contents(sample_host), timeout=20, message="junk in the poison queue")


def test_delayed_message_waits_for_its_visibility(sample_host: SampleHost) -> None:
    message_id = uuid.uuid4().hex
    sent_at = time.monotonic()
    _producer(sample_host).send_message(json.dumps({"id": message_id}), visibility_timeout=3)
    wait_for(lambda: read_results(sample_host, "on_work").get(f"{message_id}-1"), timeout=20, message="delayed")
    assert time.monotonic() - sent_at >= 3


def test_admin_invoke_passes_input_as_message_body(sample_host: SampleHost) -> None:
    message_id = uuid.uuid4().hex
    response = httpx.post(f"{sample_host.url}/admin/functions/on_work",
                          json={"input": json.dumps({"id": message_id, "via": "admin"})})
    assert response.status_code == 202
    recorded = wait_for(lambda: read_results(sample_host, "on_work").get(f"{message_id}-1"), message="admin run")
    assert isinstance(recorded, dict)
    assert recorded["body"] == {"id": message_id, "via": "admin"}


def test_queue_output_binding_feeds_the_queue_trigger(sample_host: SampleHost) -> None:
    message_id = uuid.uuid4().hex
    _producer(sample_host)  # waits for the queue
    response = httpx.post(f"{sample_host.url}/api/enqueue", content=json.dumps({"id": message_id, "out": 1}))
    assert response.status_code == 202
    recorded = wait_for(lambda: read_results(sample_host, "on_work").get(f"{message_id}-1"), message="output")
    assert isinstance(recorded, dict)
    assert recorded["body"] == {"id": message_id, "out": 1}
