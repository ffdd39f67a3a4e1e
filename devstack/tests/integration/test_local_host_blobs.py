"""Event Grid–sourced blob triggers: path matching, SDK-type (BlobClient) and InputStream bindings.

The host answers the delivery at once and runs the function from the blob trigger's queue, so the
tests wait for the function's record (see test_local_host_blob_queue.py for the queue itself).
"""

from __future__ import annotations

import hashlib
import uuid
from urllib.parse import quote

import httpx
import pytest
from azure.storage.blob import BlobServiceClient

from devstack.testing.host import SampleHost, read_results, wait_for

pytestmark = pytest.mark.integration


def _blob_created(container: str, blob: str, *, subject: bool = True, account_url: str = "") -> dict[str, object]:
    event: dict[str, object] = {
        "id": uuid.uuid4().hex, "topic": "/subscriptions/x/storageAccounts/data", "eventTime": "2024-05-01T12:00:00Z",
        "eventType": "Microsoft.Storage.BlobCreated", "dataVersion": "", "metadataVersion": "1",
        "subject": f"/blobServices/default/containers/{container}/blobs/{blob}" if subject else "",
        "data": {"api": "PutBlob", "blobType": "BlockBlob", "contentLength": 1,
                 "url": f"{account_url}/{container}/{quote(blob)}"},
    }
    return event


def _deliver(sample: SampleHost, function: str, events: list[dict[str, object]]) -> httpx.Response:
    return httpx.post(
        f"{sample.url}/runtime/webhooks/blobs?functionName=Host.Functions.{function}",
        json=events, headers={"aeg-event-type": "Notification"}, timeout=30,
    )


def _upload(sample: SampleHost, blob: str, content: bytes) -> None:
    service = BlobServiceClient.from_connection_string(sample.connection_string)
    service.get_blob_client(sample.landing_container, blob).upload_blob(content, overwrite=True)


def _recorded(sample: SampleHost, function: str, key: str) -> dict[str, object]:
    found = wait_for(lambda: read_results(sample, function).get(key), message=f"{function} to record {key}")
    assert isinstance(found, dict)
    return found


AWKWARD_NAMES = [
    "plain.csv",
    "with spaces/and more spaces.csv",
    "ünïcødé/数据/файл.csv",
    "symbols/100% sure #1 (final)+&=;,.csv",
    "deep/" + "/".join(f"level{i}" for i in range(20)) + "/leaf.csv",
    "long-" + "x" * 900 + ".csv",
]


@pytest.mark.parametrize("blob_name", AWKWARD_NAMES, ids=range(len(AWKWARD_NAMES)))
def test_blob_client_binding_reads_the_blob(sample_host: SampleHost, blob_name: str) -> None:
    content = f"rows for {blob_name}\n".encode() * 3
    _upload(sample_host, blob_name, content)
    response = _deliver(sample_host, "on_landing", [_blob_created(sample_host.landing_container, blob_name)])
    assert response.status_code in {200, 202}
    key = hashlib.sha256(blob_name.encode()).hexdigest()
    recorded = _recorded(sample_host, "on_landing", key)
    assert recorded == {
        "blob_name": blob_name, "container": sample_host.landing_container,
        "sha256": hashlib.sha256(content).hexdigest(), "length": len(content),
    }


def test_blob_path_taken_from_url_when_subject_is_missing(sample_host: SampleHost) -> None:
    blob_name = "from url/ä b.csv"
    _upload(sample_host, blob_name, b"via url")
    account_url = "http://127.0.0.1:10000/devstoreaccount1"
    event = _blob_created(sample_host.landing_container, blob_name, subject=False, account_url=account_url)
    assert _deliver(sample_host, "on_landing", [event]).status_code in {200, 202}
    recorded = _recorded(sample_host, "on_landing", hashlib.sha256(blob_name.encode()).hexdigest())
    assert recorded["length"] == len(b"via url")


def test_input_stream_binding_gets_name_uri_length_and_binding_data(sample_host: SampleHost) -> None:
    blob_name = "streams/report ü.txt"
    _upload(sample_host, blob_name, b"stream content")
    response = _deliver(sample_host, "on_stream", [_blob_created(sample_host.landing_container, blob_name)])
    assert response.status_code in {200, 202}
    full = f"{sample_host.landing_container}/{blob_name}"
    recorded = _recorded(sample_host, "on_stream", hashlib.sha256(full.encode()).hexdigest())
    assert recorded["content"] == "stream content"
    assert recorded["name"] == full
    assert recorded["length"] == len(b"stream content")
    assert str(recorded["uri"]).endswith(f"/{sample_host.landing_container}/{quote(blob_name)}")


def test_non_matching_blob_is_ignored(sample_host: SampleHost) -> None:
    blob_name = f"streams/not-text-{uuid.uuid4().hex}.csv"  # on_stream wants streams/{name}.txt
    _upload(sample_host, blob_name, b"ignored")
    response = _deliver(sample_host, "on_stream", [_blob_created(sample_host.landing_container, blob_name)])
    assert response.status_code in {200, 202}
    wait_for(lambda: f"{blob_name}' does not match the trigger path" in sample_host.info.log_text(),
             message="the ignore log line")
    full = f"{sample_host.landing_container}/{blob_name}"
    assert hashlib.sha256(full.encode()).hexdigest() not in read_results(sample_host, "on_stream")


def test_other_container_is_ignored(sample_host: SampleHost) -> None:
    response = _deliver(sample_host, "on_landing", [_blob_created("elsewhere", "x.csv")])
    assert response.status_code in {200, 202}


def test_other_event_types_are_ignored(sample_host: SampleHost) -> None:
    event = _blob_created(sample_host.landing_container, "deleted.csv")
    event["eventType"] = "Microsoft.Storage.BlobDeleted"
    assert _deliver(sample_host, "on_landing", [event]).status_code in {200, 202}
    wait_for(lambda: f"Ignored event '{event['id']}'" in sample_host.info.log_text(), message="ignore log")


def test_missing_blob_is_skipped(sample_host: SampleHost) -> None:
    blob_name = f"never-uploaded-{uuid.uuid4().hex}.csv"
    response = _deliver(sample_host, "on_landing", [_blob_created(sample_host.landing_container, blob_name)])
    assert response.status_code in {200, 202}
    wait_for(lambda: f"{blob_name}' no longer exists" in sample_host.info.log_text(), message="the skip log line")
    assert hashlib.sha256(blob_name.encode()).hexdigest() not in read_results(sample_host, "on_landing")


def test_validation_handshake_on_blob_webhook(sample_host: SampleHost) -> None:
    body = [{"id": "v", "topic": "t", "subject": "", "eventType": "Microsoft.EventGrid.SubscriptionValidationEvent",
             "eventTime": "2024-05-01T12:00:00Z", "dataVersion": "1", "data": {"validationCode": "blob-code"}}]
    response = httpx.post(
        f"{sample_host.url}/runtime/webhooks/blobs?functionName=Host.Functions.on_landing",
        json=body, headers={"aeg-event-type": "SubscriptionValidation"},
    )
    assert response.json() == {"validationResponse": "blob-code"}


def test_unknown_or_non_blob_function_is_404(sample_host: SampleHost) -> None:
    event = _blob_created(sample_host.landing_container, "x.csv")
    assert _deliver(sample_host, "missing", [event]).status_code == 404
    assert _deliver(sample_host, "on_event", [event]).status_code == 404


def test_malformed_blob_event_is_400(sample_host: SampleHost) -> None:
    event = _blob_created(sample_host.landing_container, "x.csv", subject=False)
    event["data"] = {}
    assert _deliver(sample_host, "on_landing", [event]).status_code == 400


def test_admin_invoke_blob_trigger_with_blob_path(sample_host: SampleHost) -> None:
    blob_name = f"admin/{uuid.uuid4().hex}.csv"
    _upload(sample_host, blob_name, b"admin")
    response = httpx.post(f"{sample_host.url}/admin/functions/on_landing",
                          json={"input": f"{sample_host.landing_container}/{blob_name}"})
    assert response.status_code == 202
    key = hashlib.sha256(blob_name.encode()).hexdigest()
    recorded = wait_for(lambda: read_results(sample_host, "on_landing").get(key), message="admin blob invocation")
    assert isinstance(recorded, dict)
    assert recorded["length"] == len(b"admin")
