"""The unmodified azure-ai-ml SDK (and azure-identity) against the Azure ML emulator."""

from __future__ import annotations

import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from azure.ai.ml.entities import Data, Model
from azure.core.exceptions import HttpResponseError, ResourceNotFoundError

from devstack.aml import lro
from devstack.aml.store import Store
from devstack.testing.aml import TEST_PAGE_SIZE, AmlInfo, bearer, start_emulator

pytestmark = pytest.mark.integration


def unique(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:10]}"


def http(aml: AmlInfo) -> httpx.Client:
    return httpx.Client(verify=aml.env["REQUESTS_CA_BUNDLE"], headers=bearer(aml), timeout=10)


def landing(path: str) -> str:
    return f"azureml://datastores/landing/paths/{path}"


# --- workspace, datastores, computes -------------------------------------------------------------

def test_workspace_datastores_and_compute(ml_client, aml: AmlInfo, azurite) -> None:
    ws = ml_client.workspaces.get()
    assert ws.name == aml.workspace
    assert ws.location == "westeurope"

    default = ml_client.datastores.get_default()
    assert default.name == "workspaceblobstore"
    assert default.container_name == "azureml-blobstore"
    assert default.account_name == "devstoreaccount1"
    assert ml_client.datastores.get("landing").container_name == "landing"
    assert {d.name for d in ml_client.datastores.list()} >= {"workspaceblobstore", "landing"}

    with_secret = ml_client.datastores.get("landing", include_secrets=True)
    assert with_secret.credentials.account_key == azurite.connection_string.split("AccountKey=")[1].split(";")[0]

    compute = ml_client.compute.get("cpu-cluster")
    assert compute.type == "amlcompute"
    with pytest.raises(ResourceNotFoundError):
        ml_client.compute.get("no-such-cluster")
    with pytest.raises(ResourceNotFoundError):
        ml_client.datastores.get("no_such_datastore")


def test_datastore_mapping_is_queryable_in_python(aml: AmlInfo) -> None:
    from devstack.aml.storage import DatastoreMap

    stores = DatastoreMap.from_connection_string(aml.storage_connection_string)
    resolved = stores.resolve(
        "azureml://subscriptions/s/resourcegroups/r/workspaces/w/datastores/WorkspaceBlobStore/paths/a/b.csv"
    )
    assert resolved is not None
    location, path = resolved
    assert (location.container, path) == ("azureml-blobstore", "a/b.csv")
    assert location.container_url.endswith("/devstoreaccount1/azureml-blobstore")
    assert location.container_url.startswith("http://127.0.0.1:")


# --- data ----------------------------------------------------------------------------------------

def test_data_create_get_and_uri_normalisation(ml_client, aml: AmlInfo) -> None:
    name = unique("data")
    created = ml_client.data.create_or_update(Data(name=name, version="1", path=landing("in/a.csv"), type="uri_file"))
    long_prefix = (
        f"azureml://subscriptions/{aml.subscription_id}/resourcegroups/{aml.resource_group}"
        f"/workspaces/{aml.workspace}/datastores/landing/paths/"
    )
    assert created.path == long_prefix + "in/a.csv"
    folder = ml_client.data.create_or_update(Data(name=name, version="2", path=landing("in"), type="uri_folder"))
    assert folder.path == long_prefix + "in/"
    web = ml_client.data.create_or_update(Data(name=name, version="3", path="https://example.org/x.csv"))
    assert web.path == "https://example.org/x.csv"

    got = ml_client.data.get(name, version="1")
    assert (got.version, got.type, got.path) == ("1", "uri_file", long_prefix + "in/a.csv")
    # names are case-insensitive
    assert ml_client.data.get(name.upper(), version="1").path == got.path


def test_data_autoincrement_and_label_latest(ml_client) -> None:
    name = unique("auto")
    first = ml_client.data.create_or_update(Data(name=name, path=landing("1.csv")))
    assert first.version == "1"
    ml_client.data.create_or_update(Data(name=name, version="foo", path=landing("foo.csv")))
    assert ml_client.data.get(name, label="latest").version == "foo"
    second = ml_client.data.create_or_update(Data(name=name, path=landing("2.csv")))
    assert second.version == "2"  # non-numeric versions do not count
    ml_client.data.create_or_update(Data(name=name, version="10", path=landing("10.csv")))
    assert ml_client.data.create_or_update(Data(name=name, path=landing("11.csv"))).version == "11"
    assert ml_client.data.get(name, label="latest").version == "11"


def test_data_list_crosses_pages(ml_client, aml: AmlInfo) -> None:
    name = unique("paged")
    count = TEST_PAGE_SIZE * 2 + 1
    for i in range(count):
        ml_client.data.create_or_update(Data(name=name, version=str(i + 1), path=landing(f"{i}.csv")))
    versions = [d.version for d in ml_client.data.list(name=name)]
    assert versions == [str(i) for i in range(count, 0, -1)]  # newest first, all pages

    with http(aml) as client:
        first = client.get(f"{aml.workspace_url}/data/{name}/versions",
                           params={"api-version": "2023-04-01-preview", "listViewType": "All"}).json()
        assert len(first["value"]) == TEST_PAGE_SIZE
        link = first["nextLink"]
        assert link.startswith(aml.base_url) and "listViewType=All" in link and "skipToken" in link
        second = client.get(link).json()
        assert [v["name"] for v in second["value"]] == [str(i) for i in range(count - 3, count - 6, -1)]
        top = client.get(f"{aml.workspace_url}/data/{name}/versions",
                         params={"$orderBy": "createdtime desc", "$top": "1"}).json()
        assert [v["name"] for v in top["value"]] == [str(count)] and "nextLink" not in top


def test_data_archive_and_restore(ml_client) -> None:
    name = unique("arch")
    for v in ("1", "2"):
        ml_client.data.create_or_update(Data(name=name, version=v, path=landing(f"{v}.csv")))
    ml_client.data.archive(name, version="1")
    assert [d.version for d in ml_client.data.list(name=name)] == ["2"]
    assert [d.version for d in ml_client.data.list(name=name, list_view_type="ArchivedOnly")] == ["1"]
    assert [d.version for d in ml_client.data.list(name=name, list_view_type="All")] == ["2", "1"]
    assert ml_client.data.get(name, version="1").version == "1"  # still readable directly
    ml_client.data.restore(name, version="1")
    assert [d.version for d in ml_client.data.list(name=name)] == ["2", "1"]

    ml_client.data.archive(name)  # the container
    assert name not in {d.name for d in ml_client.data.list()}
    ml_client.data.restore(name)
    assert name in {d.name for d in ml_client.data.list()}


def test_asset_path_cannot_change(ml_client) -> None:
    name = unique("immut")
    ml_client.data.create_or_update(Data(name=name, version="1", path=landing("a.csv")))
    with pytest.raises(HttpResponseError) as err:
        ml_client.data.create_or_update(Data(name=name, version="1", path=landing("b.csv")))
    assert str(err.value).startswith("(UserError) Asset paths cannot be updated.")
    updated = ml_client.data.create_or_update(
        Data(name=name, version="1", path=landing("a.csv"), description="now described")
    )
    assert updated.description == "now described"


def test_not_found_maps_to_resource_not_found(ml_client, aml: AmlInfo) -> None:
    with pytest.raises(ResourceNotFoundError):
        ml_client.data.get(unique("missing"), version="1")
    with pytest.raises(ResourceNotFoundError):
        ml_client.models.get(unique("missing"), version="1")
    name = unique("probe")
    with http(aml) as client:
        resp = client.get(f"{aml.workspace_url}/models/{name}/versions",
                          params={"api-version": "2023-08-01-preview", "$orderBy": "createdtime desc", "$top": "1"})
    assert resp.status_code == 404
    error = resp.json()["error"]
    assert error["code"] == "UserError"
    assert error["details"][0]["code"] == "ModelNotFound"
    assert error["details"][0]["message"] == f"Model container with name: {name} not found."


# --- models --------------------------------------------------------------------------------------

def test_model_create_get_archive_restore(ml_client) -> None:
    name = unique("model")
    path = "azureml://datastores/workspaceblobstore/paths/models/m/model.pkl"
    one = ml_client.models.create_or_update(Model(name=name, path=path, tags={"k": "v"}))
    assert (one.version, one.stage, one.tags) == ("1", "Development", {"k": "v"})
    assert one.path.startswith("azureml://subscriptions/") and "/resourceGroups/" in one.path
    mlflow_path = path.replace("model.pkl", "mlflow")
    two = ml_client.models.create_or_update(Model(name=name, path=mlflow_path, type="mlflow_model"))
    assert two.type == "mlflow_model"
    assert two.version == "2"
    assert ml_client.models.get(name, label="latest").version == "2"
    ml_client.models.archive(name, version="1")
    assert ml_client.models.get(name, version="1").stage == "Archived"
    assert [m.version for m in ml_client.models.list(name=name)] == ["2"]
    assert [m.version for m in ml_client.models.list(name=name, list_view_type="ArchivedOnly")] == ["1"]
    ml_client.models.restore(name, version="1")
    assert ml_client.models.get(name, version="1").stage == "Development"
    assert [m.version for m in ml_client.models.list(name=name)] == ["2", "1"]
    assert name in {m.name for m in ml_client.models.list()}


def test_model_registration_queues_event(ml_client, aml: AmlInfo) -> None:
    name = unique("evented")
    ml_client.models.create_or_update(Model(name=name, path="azureml://datastores/workspaceblobstore/paths/x.pkl"))
    store = Store(aml.state_dir / "aml.sqlite")
    with store.read() as tx:
        events = [e for e in tx.events() if e["subject"] == f"models/{name}:1"]
    store.close()
    assert len(events) == 1
    assert events[0]["eventType"] == "Microsoft.MachineLearningServices.ModelRegistered"
    assert events[0]["data"]["modelVersion"] == "1"


# --- concurrency, persistence --------------------------------------------------------------------

@pytest.mark.parametrize("asset", ["data", "models"])
def test_concurrent_autoincrement_never_overwrites_silently(aml: AmlInfo, asset: str) -> None:
    """As in Azure: racing auto-increments give distinct versions or the path-conflict error, never a lost write."""
    from azure.ai.ml import MLClient
    from azure.identity import DefaultAzureCredential

    name = unique(f"race_{asset}")
    client = MLClient(DefaultAzureCredential(), aml.subscription_id, aml.resource_group, aml.workspace)

    def register(i: int) -> tuple[int, str | None, str | None]:
        path = f"azureml://datastores/landing/paths/race/{i}.csv"
        try:
            if asset == "data":
                made = client.data.create_or_update(Data(name=name, path=path, description=f"writer {i}"))
            else:
                made = client.models.create_or_update(Model(name=name, path=path, description=f"writer {i}"))
        except Exception as exc:  # the SDK surfaces the service's 400 in its own exception types
            return i, None, str(exc)
        return i, str(made.version), None

    with ThreadPoolExecutor(max_workers=20) as pool:
        results = list(pool.map(register, range(20)))
    won = {version: i for i, version, _ in results if version is not None}
    errors = [error for _, version, error in results if version is None]
    assert won, "no writer succeeded"
    assert len(won) + len(errors) == 20
    assert len(won) == len([r for r in results if r[1] is not None]), "two writers were told the same version"
    assert all("Asset paths cannot be updated" in str(e) for e in errors), errors
    ops = client.data if asset == "data" else client.models
    stored = {v.version: (v.description, v.path) for v in ops.list(name=name)}
    assert set(stored) == set(won)
    for version, writer in won.items():  # each winner's row holds its own description and path
        description, path = stored[version]
        assert description == f"writer {writer}"
        assert path.rstrip("/").endswith(f"/race/{writer}.csv")
    # a later auto-increment still gets the next free version
    later = register(99)
    assert later[1] == str(max(int(v) for v in won) + 1)


def test_state_survives_restart(aml: AmlInfo, azurite, tmp_path: Path) -> None:
    import shutil

    from azure.ai.ml import MLClient
    from azure.identity import DefaultAzureCredential

    shutil.copytree(aml.state_dir / "certs", tmp_path / "state" / "certs")  # the CA the session trusts
    info = start_emulator(tmp_path / "state", azurite.connection_string)
    try:
        env = info.env
        cred = DefaultAzureCredential()
        # the session env (os.environ) points at the session emulator; build this client against `info`
        import os

        saved = os.environ["AZUREML_DEV_URL_MFE"]
        os.environ["AZUREML_DEV_URL_MFE"] = env["AZUREML_DEV_URL_MFE"]
        try:
            client = MLClient(cred, info.subscription_id, info.resource_group, info.workspace)
            client.data.create_or_update(Data(name="kept", path=landing("k.csv"), type="uri_file"))
            client.models.create_or_update(Model(name="kept", path=landing("k.pkl")))
            info.service.stop()
            info = start_emulator(info.state_dir, azurite.connection_string, port=info.port)
            assert client.data.get("kept", version="1").path.endswith("/landing/paths/k.csv")
            assert client.models.get("kept", label="latest").version == "1"
            assert client.data.create_or_update(Data(name="kept", path=landing("k2.csv"))).version == "2"
        finally:
            os.environ["AZUREML_DEV_URL_MFE"] = saved
    finally:
        info.service.stop()


# --- identity, auth, errors ----------------------------------------------------------------------

def test_managed_identity_tokens(aml: AmlInfo) -> None:
    from azure.identity import DefaultAzureCredential, ManagedIdentityCredential

    for credential in (DefaultAzureCredential(), ManagedIdentityCredential()):
        token = credential.get_token("https://ml.azure.com/.default")
        claims = jwt.decode(token.token, options={"verify_signature": False})
        assert claims["aud"] == "https://ml.azure.com"
        assert claims["tid"] and claims["oid"]
        assert token.expires_on > time.time() + 600
    mgmt = DefaultAzureCredential().get_token("https://management.azure.com/.default")
    assert jwt.decode(mgmt.token, options={"verify_signature": False})["aud"] == "https://management.azure.com"

    verify = aml.env["REQUESTS_CA_BUNDLE"]
    url = f"{aml.base_url}/msi/token"
    params = {"api-version": "2019-08-01", "resource": "https://ml.azure.com"}
    assert httpx.get(url, params=params, verify=verify).status_code == 401
    assert httpx.get(url, params=params, headers={"X-IDENTITY-HEADER": "wrong"}, verify=verify).status_code == 401
    ok = httpx.get(url, params=params, headers={"X-IDENTITY-HEADER": aml.env["IDENTITY_HEADER"]}, verify=verify)
    body = ok.json()
    assert body["token_type"] == "Bearer" and body["resource"] == "https://ml.azure.com"
    assert int(body["expires_on"]) > time.time()


def test_requests_without_authorization_get_401(aml: AmlInfo) -> None:
    resp = httpx.get(aml.workspace_url, params={"api-version": "2024-10-01-preview"},
                     verify=aml.env["REQUESTS_CA_BUNDLE"])
    assert resp.status_code == 401
    assert resp.json()["error"]["code"] == "AuthenticationFailed"


def test_malformed_bodies_get_400_naming_the_problem(aml: AmlInfo) -> None:
    url = f"{aml.workspace_url}/data/{unique('bad')}/versions/1"
    with http(aml) as client:
        not_json = client.put(url, content=b"{nope", headers={"Content-Type": "application/json"})
        assert not_json.status_code == 400 and "not valid JSON" in not_json.json()["error"]["message"]
        no_props = client.put(url, json={"foo": 1})
        assert no_props.status_code == 400 and "'properties'" in no_props.json()["error"]["message"]
        bad_type = client.put(url, json={"properties": {"dataType": "csv", "dataUri": "https://x"}})
        assert bad_type.status_code == 400 and "dataType" in bad_type.json()["error"]["message"]
        no_uri = client.put(url, json={"properties": {"dataType": "uri_file"}})
        assert no_uri.status_code == 400 and "dataUri" in no_uri.json()["error"]["message"]


def test_case_insensitive_routes_and_any_api_version(aml: AmlInfo) -> None:
    name = unique("Case")
    with http(aml) as client:
        put = client.put(f"{aml.workspace_url}/data/{name}/versions/1", params={"api-version": "2099-01-01"},
                         json={"properties": {"dataType": "uri_file", "dataUri": "https://x/y"}})
        assert put.status_code == 201
        lower = aml.workspace_url.replace("resourceGroups", "resourcegroups")
        lower = lower.replace(aml.workspace, aml.workspace.upper())
        got = client.get(f"{lower}/DATA/{name.lower()}/versions/1")
        assert got.status_code == 200 and got.json()["name"] == "1"
        assert client.get(f"{lower}/data/{name}").json()["name"] == name  # the original spelling


# --- long-running operations ---------------------------------------------------------------------

def test_lro_status_and_result_routes(aml: AmlInfo) -> None:
    """Operations started by emulator code (here: through the shared SQLite file) are pollable."""
    store = Store(aml.state_dir / "aml.sqlite")
    ws_id = str(httpx.get(aml.workspace_url, headers=bearer(aml), verify=aml.env["REQUESTS_CA_BUNDLE"])
                .json()["properties"]["workspaceId"])
    with store.write() as tx:
        running = lro.create_operation(tx, ws_id, "oe", status="Updating")
        timed = lro.create_operation(tx, ws_id, "od", completes_at=time.time() + 0.3)
    base = (f"{aml.base_url}/subscriptions/{aml.subscription_id}"
            "/providers/Microsoft.MachineLearningServices/locations/westeurope")
    with http(aml) as client:
        status = client.get(f"{base}/mfeOperationsStatus/{running}", params={"api-version": "2022-02-01-preview"})
        assert status.status_code == 200 and status.json()["status"] == "Updating"
        assert status.json()["name"] == running and status.headers["Retry-After"] == "0.1"
        result = client.get(f"{base}/mfeOperationResults/{running}")
        assert result.status_code == 202 and result.json() == {} and "mfeOperationResults" in result.headers["Location"]
        with store.write() as tx:
            lro.finish_operation(tx, running)
        assert client.get(f"{base}/mfeOperationsStatus/{running}").json()["status"] == "Succeeded"
        done = client.get(f"{base}/mfeOperationResults/{running}")
        assert done.status_code == 200 and done.content == b""

        deadline = time.monotonic() + 5
        while client.get(f"{base}/mfeOperationsStatus/{timed}").json()["status"] != "Succeeded":
            assert time.monotonic() < deadline, "operation with a deadline never completed"
            time.sleep(0.05)
        assert client.get(f"{base}/mfeOperationsStatus/unknown:op").status_code == 404
    store.close()


def test_model_registered_is_published_to_event_grid(aml: AmlInfo, azurite, tmp_path: Path) -> None:
    """With --eventgrid-url the emulator POSTs queued events to `{url}/topics/workspace/api/events`."""
    import json
    import shutil
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from devstack.aml import start_aml
    from devstack.procs import free_port

    received: list[tuple[str, str | None, list[dict[str, Any]]]] = []

    class Topic(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers["Content-Length"])
            received.append((self.path, self.headers.get("aeg-sas-key"), json.loads(self.rfile.read(length))))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Topic)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    shutil.copytree(aml.state_dir / "certs", tmp_path / "certs")
    port = free_port()
    service = start_aml(tmp_path, port, storage_connection_string=azurite.connection_string,
                        eventgrid_url=f"http://127.0.0.1:{server.server_port}", eventgrid_key="k3y")
    try:
        service.wait_ready()
        with httpx.Client(verify=aml.env["REQUESTS_CA_BUNDLE"], headers=bearer(aml)) as client:
            url = aml.workspace_url.replace(aml.base_url, f"https://127.0.0.1:{port}")
            resp = client.put(f"{url}/models/published/versions/1",
                              json={"properties": {"modelUri": "azureml://datastores/landing/paths/m.pkl"}})
            assert resp.status_code == 201
        deadline = time.monotonic() + 10
        while not received:
            assert time.monotonic() < deadline, "no event reached the topic"
            time.sleep(0.05)
    finally:
        service.stop()
        server.shutdown()
    path, key, events = received[0]
    assert (path, key) == ("/topics/workspace/api/events", "k3y")
    assert events[0]["subject"] == "models/published:1"
    assert events[0]["eventType"] == "Microsoft.MachineLearningServices.ModelRegistered"
