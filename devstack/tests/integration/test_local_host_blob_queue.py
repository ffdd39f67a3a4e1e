"""The Event Grid–sourced blob trigger as Azure runs it, and defect 10 (issue 11), host half.

The host acknowledges an Event Grid delivery at once (202), runs the function from the blob trigger's
own queue, retries it with the queue's rules and, after `maxDequeueCount` (5 by default) failures, moves
a `BlobTriggerMessage` to `webjobs-blobtrigger-poison` in the data account; Event Grid never sees the
failure, so nothing is dead-lettered. A blob whose name the storage service cannot even sign (`..`)
reaches the app, whose own guard decides.
"""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from azure.core.exceptions import ResourceNotFoundError
from azure.storage.blob import BlobServiceClient, ContainerClient
from azure.storage.queue import QueueClient

from devstack.eventgrid import start_eventgrid
from devstack.host.blobqueue import POISON_QUEUE, BlobTriggerMessage
from devstack.procs import Service, free_port
from devstack.testing.azurite import AzuriteInfo
from devstack.testing.host import SAMPLE_APP, SampleHost, StartFunctionHost, read_results, sample_app_env, wait_for

pytestmark = pytest.mark.integration


def _blob_created(container: str, blob: str) -> dict[str, object]:
    return {
        "id": uuid.uuid4().hex, "topic": "/subscriptions/x/storageAccounts/data", "eventTime": "2024-05-01T12:00:00Z",
        "eventType": "Microsoft.Storage.BlobCreated", "dataVersion": "", "metadataVersion": "1",
        "subject": f"/blobServices/default/containers/{container}/blobs/{blob}",
        "data": {"api": "PutBlob", "blobType": "BlockBlob", "contentLength": 1, "eTag": "0x8D0"},
    }


def _key(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()


@pytest.mark.parametrize("name", ["names/a/../b.csv", "names/../escape.csv", "names/x/./../../y.csv"])
def test_defect10_dotdot_blob_name_reaches_the_apps_guard(sample_host: SampleHost, name: str) -> None:
    response = httpx.post(
        f"{sample_host.url}/runtime/webhooks/blobs?functionName=Host.Functions.on_name",
        json=[_blob_created(sample_host.landing_container, name)], headers={"aeg-event-type": "Notification"},
        timeout=30,
    )
    assert response.status_code == 202, response.text
    recorded = wait_for(lambda: read_results(sample_host, "on_name").get(_key(name)), message=f"on_name for {name}")
    assert recorded == {"blob_name": name, "verdict": "rejected"}


# ---------------------------------------------------------------- the queue, through a real local Event Grid


@dataclass(frozen=True)
class Stack:
    host_url: str
    eventgrid_url: str
    landing: ContainerClient
    results: str
    connection_string: str
    host_log: Path

    def results_of(self, function: str) -> dict[str, dict[str, object]]:
        container = BlobServiceClient.from_connection_string(self.connection_string).get_container_client(
            self.results)
        found: dict[str, dict[str, object]] = {}
        for blob in container.list_blobs(name_starts_with=f"{function}/"):
            key = blob.name[len(function) + 1:].removesuffix(".json")
            found[key] = json.loads(container.download_blob(blob.name).readall())
        return found

    def attempts(self, name: str) -> int:
        return sum(1 for key in self.results_of("on_name_attempt") if key.startswith(f"{_key(name)}/"))

    def poison(self, name: str) -> list[dict[str, Any]]:
        queue = QueueClient.from_connection_string(self.connection_string, POISON_QUEUE)
        try:
            peeked = queue.peek_messages(max_messages=32)
        except ResourceNotFoundError:
            return []  # nothing was ever poisoned in this account
        bodies = [json.loads(base64.b64decode(m.content)) for m in peeked]
        container = self.landing.container_name
        return [b for b in bodies if b.get("BlobName") == name and b.get("ContainerName") == container]

    def deliveries(self, name: str) -> list[dict[str, Any]]:
        rows = httpx.get(f"{self.eventgrid_url}/deliveries", params={"limit": 500}).json()
        return [r for r in rows if r["subject"].endswith(f"/blobs/{name}")]

    def dead_letters(self) -> list[dict[str, Any]]:
        return list(httpx.get(f"{self.eventgrid_url}/deadletters", params={"limit": 500}).json())


@pytest.fixture(scope="module")
def stack(azurite: AzuriteInfo, start_function_host: StartFunctionHost,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The sample app with Azure's default maxDequeueCount (5), fed by a local Event Grid watching Azurite."""
    app_dir = tmp_path_factory.mktemp("apps") / f"blobqueue-{uuid.uuid4().hex[:8]}"
    shutil.copytree(SAMPLE_APP, app_dir)
    host_json = json.loads((app_dir / "host.json").read_text())
    del host_json["extensions"]["queues"]["maxDequeueCount"]
    (app_dir / "host.json").write_text(json.dumps(host_json))
    env = sample_app_env(azurite, uuid.uuid4().hex[:8])
    service = BlobServiceClient.from_connection_string(azurite.connection_string)
    service.create_container(env["RESULTS_CONTAINER"])
    landing = service.create_container(env["LANDING_CONTAINER"])
    host = start_function_host(app_dir, env)
    state = tmp_path_factory.mktemp("eventgrid-blobqueue")
    subscriptions = state / "subscriptions.json"
    subscriptions.write_text(json.dumps({"subscriptions": [{
        "name": "names-blob-created", "topic": "storage",
        "destination": {"function": "on_name", "kind": "blobTrigger"},
        "filter": {"includedEventTypes": ["Microsoft.Storage.BlobCreated"],
                   "subjectBeginsWith": f"/blobServices/default/containers/{landing.container_name}/blobs/names/"},
        "retryPolicy": {"maxDeliveryAttempts": 3, "eventTimeToLiveInMinutes": 60},
        "deadLetter": {"container": "deadletter"},
    }]}))
    port = free_port()
    eventgrid: Service = start_eventgrid(
        state, port, host_url=host.url, storage_connection_string=azurite.connection_string,
        subscriptions_path=subscriptions, topic_key="k", watch_interval=0.25, retry_initial_delay=0.2,
    )
    try:
        eventgrid.wait_ready()
        yield Stack(host.url, f"http://127.0.0.1:{port}", landing, env["RESULTS_CONTAINER"],
                    azurite.connection_string, host.log_path)
    finally:
        eventgrid.stop()


def test_a_blob_that_always_fails_ends_in_the_blob_trigger_poison_queue_not_in_dead_letters(stack: Stack) -> None:
    name = f"names/always-fail-{uuid.uuid4().hex[:8]}.csv"
    etag = stack.landing.upload_blob(name, b"x").get_blob_properties().etag
    wait_for(lambda: stack.poison(name), timeout=60, message="the poison message")
    (poisoned,) = stack.poison(name)
    assert poisoned == {
        "Type": "BlobTrigger", "FunctionId": "Host.Functions.on_name", "BlobType": "Block",
        "ContainerName": stack.landing.container_name, "BlobName": name, "ETag": etag.strip('"'),
    }
    assert stack.attempts(name) == 5
    (delivery,) = stack.deliveries(name)
    assert (delivery["status"], delivery["lastStatus"], delivery["attempts"]) == ("delivered", 202, 1)
    assert not [d for d in stack.dead_letters() if d["event"]["subject"].endswith(f"/blobs/{name}")]
    assert "Moving message to queue 'webjobs-blobtrigger-poison'" in stack.host_log.read_text(errors="replace")
    assert BlobTriggerMessage.from_json(json.dumps(poisoned)).blob_path == f"{stack.landing.container_name}/{name}"


def test_a_blob_that_fails_once_runs_twice_and_is_not_poisoned(stack: Stack) -> None:
    name = f"names/fail-once-{uuid.uuid4().hex[:8]}.csv"
    stack.landing.upload_blob(name, b"x")
    recorded = wait_for(lambda: stack.results_of("on_name").get(_key(name)), timeout=60, message="the success")
    assert recorded == {"blob_name": name, "verdict": "accepted"}
    assert stack.attempts(name) == 2
    (delivery,) = stack.deliveries(name)
    assert (delivery["status"], delivery["lastStatus"]) == ("delivered", 202)
    assert stack.poison(name) == []
