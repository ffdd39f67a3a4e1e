"""Managed online endpoints against the emulator with the real MLClient, and real local serving.

The model is a tiny scikit-learn classifier pickled with joblib plus a `score.py`, uploaded to
Azurite and registered by its `azureml://datastores/workspaceblobstore/paths/…` URI.
"""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import joblib
import pytest
from azure.ai.ml.entities import ManagedOnlineEndpoint
from azure.core.exceptions import HttpResponseError, ResourceNotFoundError
from sklearn.linear_model import LogisticRegression

from devstack.procs import REPO_ROOT
from devstack.testing.aml import AmlInfo, bearer, start_emulator
from devstack.testing.workloads import deployment, register_model

pytestmark = pytest.mark.integration

ROWS = {"data": [[0.0, 0.1], [5.0, 5.2]]}


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def wait_for(predicate: Callable[[], Any], timeout: float = 20.0, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("condition not met before the deadline")
        time.sleep(interval)


@pytest.fixture(scope="module")
def model_files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("model")
    clf = LogisticRegression().fit([[0, 0], [0, 1], [5, 5], [6, 5]], [0, 0, 1, 1])
    joblib.dump(clf, folder / "model.pkl")
    return folder / "model.pkl"


def set_traffic(ml_client: Any, endpoint: str, traffic: dict[str, int]) -> Any:
    ep = ml_client.online_endpoints.get(endpoint)
    ep.traffic = traffic
    return ml_client.online_endpoints.begin_create_or_update(ep).result()


def score(ml_client: Any, endpoint: str, request_file: Path, deployment_name: str | None = None) -> dict[str, Any]:
    """`invoke()`; azure-ai-ml 1.35.2 writes `azureml-model-deployment` into a shared class-level
    header dict, so once any call names a deployment every later invoke in the process would too."""
    from azure.ai.ml.constants._endpoint import EndpointInvokeFields

    EndpointInvokeFields.DEFAULT_HEADER.pop(EndpointInvokeFields.MODEL_DEPLOYMENT, None)
    return dict(json.loads(ml_client.online_endpoints.invoke(
        endpoint_name=endpoint, request_file=str(request_file), deployment_name=deployment_name)))


@pytest.fixture
def request_file(tmp_path: Path) -> Path:
    path = tmp_path / "request.json"
    path.write_text(json.dumps(ROWS))
    return path


@pytest.fixture
def endpoint(ml_client: Any) -> Iterator[str]:
    name = unique("ep")
    result = ml_client.online_endpoints.begin_create_or_update(
        ManagedOnlineEndpoint(name=name, auth_mode="key", tags={"t": "1"})).result()
    assert result.provisioning_state == "Succeeded"
    yield name


def admin(aml: AmlInfo) -> httpx.Client:

    return httpx.Client(base_url=aml.base_url, verify=aml.env["REQUESTS_CA_BUNDLE"], headers=bearer(aml), timeout=10)


# --- tests ---------------------------------------------------------------------------------------

def test_endpoint_lro_keys_and_validation(ml_client: Any, aml: AmlInfo) -> None:
    name = unique("ep")
    poller = ml_client.online_endpoints.begin_create_or_update(ManagedOnlineEndpoint(name=name, auth_mode="key"))
    created = ml_client.online_endpoints.get(name)  # while the LRO runs
    assert created.provisioning_state in ("Creating", "Succeeded")
    result = poller.result()
    assert result.provisioning_state == "Succeeded"
    assert result.scoring_uri.startswith("http://127.0.0.1:") and result.scoring_uri.endswith(f"/{name}/score")
    assert name in [e.name for e in ml_client.online_endpoints.list()]
    keys = ml_client.online_endpoints.get_keys(name)
    assert keys.primary_key and keys.secondary_key and keys.primary_key != keys.secondary_key

    # no deployment yet: unknown names, bad sums
    ep = ml_client.online_endpoints.get(name)
    ep.traffic = {"ghost": 100}
    with pytest.raises(HttpResponseError, match="ghost do not exist") as err:
        ml_client.online_endpoints.begin_create_or_update(ep).result()
    assert err.value.status_code == 400
    with admin(aml) as client:  # the SDK checks names itself; the service does too
        resp = client.put(f"{aml.workspace_url}/onlineEndpoints/ab", params={"api-version": "2022-02-01-preview"},
                          json={"location": "westeurope", "properties": {"authMode": "Key"}})
        assert resp.status_code == 400 and "3-32 characters" in resp.json()["error"]["message"]

    # scoring without a valid key: 401; without deployments: 404
    with httpx.Client(timeout=10) as client:
        assert client.post(result.scoring_uri, json=ROWS).status_code == 401
        assert client.post(result.scoring_uri, json=ROWS, headers={"Authorization": "Bearer nope"}).status_code == 401
        resp = client.post(result.scoring_uri, json=ROWS, headers={"Authorization": f"Bearer {keys.secondary_key}"})
        assert resp.status_code == 404 and "No valid deployments" in resp.text

    ml_client.online_endpoints.begin_delete(name).result()
    with pytest.raises(ResourceNotFoundError):
        ml_client.online_endpoints.get(name)


def test_blue_green_rollout_with_continuous_traffic(
    ml_client: Any, aml: AmlInfo, endpoint: str, model_files: Path, request_file: Path
) -> None:
    blue_model = register_model(ml_client, aml, model_files, "blue")
    green_model = register_model(ml_client, aml, model_files, "green")

    blue = ml_client.online_deployments.begin_create_or_update(deployment("blue", endpoint, blue_model)).result()
    assert blue.provisioning_state == "Succeeded"
    assert blue.scale_settings.type == "default"
    set_traffic(ml_client, endpoint, {"blue": 100})
    assert score(ml_client, endpoint, request_file) == {"predictions": [0, 1], "version": "blue"}

    # green at 0%: reachable only through the deployment header
    ml_client.online_deployments.begin_create_or_update(deployment("green", endpoint, green_model)).result()
    assert ml_client.online_endpoints.get(endpoint).traffic == {"blue": 100, "green": 0}  # the SDK adds 0s
    assert score(ml_client, endpoint, request_file, "green")["version"] == "green"
    assert score(ml_client, endpoint, request_file)["version"] == "blue"

    # deleting a deployment that takes traffic is refused
    with pytest.raises(HttpResponseError, match="receives traffic") as err:
        ml_client.online_deployments.begin_delete(name="blue", endpoint_name=endpoint).result()
    assert err.value.status_code == 400
    with pytest.raises(HttpResponseError, match="sum to 100 or 0"):
        set_traffic(ml_client, endpoint, {"blue": 60, "green": 60})

    # continuous scoring from a thread while traffic shifts 0 -> 50 -> 100 and blue is deleted
    ep = ml_client.online_endpoints.get(endpoint)
    key = ml_client.online_endpoints.get_keys(endpoint).primary_key
    stop = threading.Event()
    seen: list[tuple[int, str | None]] = []

    def hammer() -> None:
        with httpx.Client(timeout=30) as client:
            while not stop.is_set():
                resp = client.post(ep.scoring_uri, json=ROWS, headers={"Authorization": f"Bearer {key}"})
                seen.append((resp.status_code, resp.headers.get("azureml-model-deployment")))

    worker = threading.Thread(target=hammer)
    worker.start()
    try:
        set_traffic(ml_client, endpoint, {"blue": 50, "green": 50})
        wait_for(lambda: {"blue", "green"} <= {d for _, d in seen})
        set_traffic(ml_client, endpoint, {"blue": 0, "green": 100})
        count = len(seen)
        wait_for(lambda: len(seen) > count + 5)
        ml_client.online_deployments.begin_delete(name="blue", endpoint_name=endpoint).result()
        count = len(seen)
        wait_for(lambda: len(seen) > count + 5)
    finally:
        stop.set()
        worker.join(timeout=30)
    assert seen and all(status == 200 for status, _ in seen), {s for s, _ in seen}
    assert seen[-1][1] == "green"
    assert [d.name for d in ml_client.online_deployments.list(endpoint)] == ["green"]

    logs = ml_client.online_deployments.get_logs(name="green", endpoint_name=endpoint, lines=100000)
    assert "init done, version green" in logs
    assert len(ml_client.online_deployments.get_logs(name="green", endpoint_name=endpoint, lines=1).splitlines()) == 1


def test_faults_for_rollback(ml_client: Any, aml: AmlInfo, endpoint: str, model_files: Path,
                             request_file: Path) -> None:
    model = register_model(ml_client, aml, model_files, "faulty")
    with admin(aml) as client:
        resp = client.post("/_emulator/faults", json={"model": model.name, "fault": "provisioning"})
        assert resp.status_code == 201
        client.post("/_emulator/faults", json={"model": model.name, "fault": "smoke"}).raise_for_status()

    # provisioning fault: the LRO fails and the deployment is Failed
    with pytest.raises(HttpResponseError, match="provisioning on purpose"):
        ml_client.online_deployments.begin_create_or_update(deployment("bad", endpoint, model)).result()
    assert ml_client.online_deployments.get(name="bad", endpoint_name=endpoint).provisioning_state == "Failed"
    with pytest.raises(HttpResponseError, match="not in a Succeeded state"):
        set_traffic(ml_client, endpoint, {"bad": 100})

    # smoke fault: provisioning succeeds, scoring answers 500 with the deployment named
    ml_client.online_deployments.begin_create_or_update(deployment("smoky", endpoint, model)).result()
    key = ml_client.online_endpoints.get_keys(endpoint).primary_key
    uri = ml_client.online_endpoints.get(endpoint).scoring_uri
    resp = httpx.post(uri, json=ROWS, timeout=10,
                      headers={"Authorization": f"Bearer {key}", "azureml-model-deployment": "smoky"})
    assert resp.status_code == 500 and resp.headers["azureml-model-deployment"] == "smoky"
    with pytest.raises(HttpResponseError):
        score(ml_client, endpoint, request_file, "smoky")

    # init fault through the deployment's environment variables: Failed, traceback in getLogs
    with pytest.raises(HttpResponseError, match="crashed or terminated"):
        ml_client.online_deployments.begin_create_or_update(
            deployment("crashy", endpoint, model, environment_variables={"EVERGREEN_FAULT": "init"})).result()
    logs = ml_client.online_deployments.get_logs(name="crashy", endpoint_name=endpoint, lines=100)
    assert "init() fails on purpose" in logs and "Traceback" in logs


def test_restart_reserves_deployments(
    ml_client: Any, azurite: Any, tmp_path: Path, model_files: Path, request_file: Path, aml: AmlInfo
) -> None:
    from azure.ai.ml import MLClient
    from azure.identity import DefaultAzureCredential

    own = start_emulator(tmp_path / "aml", azurite.connection_string)
    restarted: AmlInfo | None = None
    try:
        _use_env(own)  # MLClient reads AZUREML_DEV_URL_MFE when it is built
        client = MLClient(DefaultAzureCredential(), own.subscription_id, own.resource_group, own.workspace)
        model = register_model(client, own, model_files, "durable")
        name = unique("ep")
        client.online_endpoints.begin_create_or_update(ManagedOnlineEndpoint(name=name)).result()
        client.online_deployments.begin_create_or_update(deployment("blue", name, model)).result()
        set_traffic(client, name, {"blue": 100})
        assert score(client, name, request_file)["version"] == "durable"

        own.service.stop()
        restarted = start_emulator(own.state_dir, azurite.connection_string, port=own.port)
        client = MLClient(DefaultAzureCredential(), own.subscription_id, own.resource_group, own.workspace)
        assert score(client, name, request_file)["version"] == "durable"
        assert client.online_deployments.get(name="blue", endpoint_name=name).provisioning_state == "Succeeded"
    finally:
        _use_env(aml)
        (restarted or own).service.stop()


def _use_env(info: AmlInfo) -> None:
    os.environ.update(info.env)


def test_raw_protocol_matches_the_recording(aml: AmlInfo) -> None:
    """PUT/poll/GET/token/DELETE as in test_online_endpoint_e2e.json: statuses, LRO headers, body keys."""
    recording = json.loads((REPO_ROOT.parent / "shared" / "aml-recordings" /
                            "test_online_endpoint.pyTestOnlineEndpointtest_online_endpoint_e2e.json").read_text())
    recorded_put = next(e for e in recording["Entries"] if e["RequestMethod"] == "PUT")
    name = unique("raw")
    url = f"{aml.workspace_url}/onlineEndpoints/{name}"
    version = {"api-version": "2022-02-01-preview"}
    with admin(aml) as client:
        resp = client.put(url, params=version, json={**recorded_put["RequestBody"], "location": "westeurope"})
        assert resp.status_code == 201
        body = resp.json()
        assert set(body) == set(recorded_put["ResponseBody"])
        assert set(body["properties"]) == set(recorded_put["ResponseBody"]["properties"])
        assert body["properties"]["provisioningState"] == "Creating" and body["properties"]["scoringUri"] is None
        status_url = resp.headers["Azure-AsyncOperation"]
        assert "/mfeOperationsStatus/oe:" in status_url and status_url.startswith(aml.base_url)
        assert body["properties"]["properties"]["AzureAsyncOperationUri"] == status_url
        assert resp.headers["Location"].split("?")[0] == url
        assert resp.headers["x-ms-async-operation-timeout"] == "PT30M"
        statuses = [client.get(status_url).json()["status"]]
        while statuses[-1] not in ("Succeeded", "Failed"):
            time.sleep(0.1)
            statuses.append(client.get(status_url).json()["status"])
            assert len(statuses) < 200
        assert statuses[0] == "Updating" and statuses[-1] == "Succeeded"
        got = client.get(url, params=version).json()["properties"]
        assert got["provisioningState"] == "Succeeded" and got["scoringUri"].endswith(f"/endpoints/{name}/score")
        assert got["authMode"] == "AMLToken"
        assert client.get(f"{url}/deployments", params=version).json() == {"value": []}
        token = client.post(f"{url}/token", params=version).json()
        assert set(token) == {"accessToken", "tokenType", "expiryTimeUtc", "refreshAfterTimeUtc"}
        deleted = client.delete(url, params=version)
        assert deleted.status_code == 202 and deleted.content == b"null"
        assert "/mfeOperationResults/oe:" in deleted.headers["Location"]
        wait_for(lambda: client.get(deleted.headers["Azure-AsyncOperation"]).json()["status"] == "Succeeded")
        assert client.get(url, params=version).status_code == 404
