"""Pure parts of the Azure ML emulator: URI normalisation, paging tokens, storage parsing, certs, store."""

from __future__ import annotations

import threading
from pathlib import Path

import jwt
import pytest

from devstack.aml.assets import DATA, MODELS, normalise_uri
from devstack.aml.config import WorkspaceCoords
from devstack.aml.errors import ArmError
from devstack.aml.identity import audience
from devstack.aml.storage import DatastoreMap, StorageAccount, parse_azureml_uri
from devstack.aml.store import Store
from devstack.aml.web import Call, paged
from devstack.certs import ensure_certs

COORDS = WorkspaceCoords()
AZURITE = (
    "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey=a2V5;"
    "BlobEndpoint=http://127.0.0.1:10000/devstoreaccount1;"
)


def call(query: dict[str, str] | None = None) -> Call:
    return Call("GET", "/p", "/p", {}, {k.lower(): v for k, v in (query or {}).items()}, None, "https://h:1")


def test_short_datastore_uri_becomes_long_form_naming_the_workspace() -> None:
    long = normalise_uri(DATA, "azureml://datastores/landing/paths/a/b", COORDS, folder=True)
    assert long == (
        "azureml://subscriptions/00000000-0000-0000-0000-000000000000/resourcegroups/evergreen-local"
        "/workspaces/evergreen-ws/datastores/landing/paths/a/b/"
    )
    assert normalise_uri(DATA, long, COORDS, folder=True) == long  # idempotent
    model = normalise_uri(MODELS, long.replace("resourcegroups", "resourceGroups"), COORDS, folder=False)
    assert "/resourceGroups/evergreen-local/" in model
    assert normalise_uri(DATA, "https://x/y.csv", COORDS, folder=False) == "https://x/y.csv"


def test_parse_azureml_uri_rejects_other_uris() -> None:
    assert parse_azureml_uri("https://x/y") is None
    parsed = parse_azureml_uri("azureml://datastores/ds/paths/")
    assert parsed is not None and (parsed.datastore, parsed.path) == ("ds", "")


def test_storage_account_from_connection_strings() -> None:
    acct = StorageAccount.from_connection_string(AZURITE)
    assert (acct.account_name, acct.account_key, acct.blob_endpoint) == (
        "devstoreaccount1", "a2V5", "http://127.0.0.1:10000/devstoreaccount1")
    cloud = StorageAccount.from_connection_string("AccountName=acc;AccountKey=k;EndpointSuffix=core.windows.net")
    assert cloud.blob_endpoint == "https://acc.blob.core.windows.net"
    with pytest.raises(ValueError, match=r"accountkey"):
        StorageAccount.from_connection_string("AccountName=acc")
    stores = DatastoreMap(acct)
    assert stores.get("LANDING") is not None and stores.get("nope") is None
    assert stores.resolve("azureml://datastores/nope/paths/x") is None


def test_paging_carries_filters_and_an_opaque_token() -> None:
    items = [{"name": str(i)} for i in range(5)]
    first = paged(call({"listViewType": "All", "api-version": "1"}), items, 2).body
    assert [i["name"] for i in first["value"]] == ["0", "1"]
    link = first["nextLink"]
    assert link.startswith("https://h:1/p?") and "listViewType=All" in link and "api-version" not in link
    token = link.split("%24skipToken=")[-1] if "%24skipToken=" in link else link.split("$skipToken=")[-1]
    second = paged(call({"$skipToken": token}), items, 2).body
    assert [i["name"] for i in second["value"]] == ["2", "3"]
    assert "nextLink" not in paged(call({"$top": "2"}), items, 2).body
    with pytest.raises(ArmError) as err:
        paged(call({"$skipToken": "garbage!"}), items, 2)
    assert err.value.status == 400


def test_audience_has_no_trailing_slash_for_azure_ml() -> None:
    assert audience("https://ml.azure.com/") == "https://ml.azure.com"
    assert audience("https://management.azure.com/") == "https://management.azure.com/"
    token = jwt.encode({"aud": audience("https://ml.azure.com")}, "k" * 32, algorithm="HS256")
    assert jwt.decode(token, options={"verify_signature": False})["aud"] == "https://ml.azure.com"


def test_ensure_certs_is_idempotent(tmp_path: Path) -> None:
    first = ensure_certs(tmp_path / "certs")
    stamp = first.ca_pem.stat().st_mtime_ns
    second = ensure_certs(tmp_path / "certs")
    assert first == second and second.ca_pem.stat().st_mtime_ns == stamp
    assert b"BEGIN CERTIFICATE" in first.server_cert_pem.read_bytes()
    assert b"PRIVATE KEY" in first.server_key_pem.read_bytes()


def test_store_write_transactions_do_not_lose_updates(tmp_path: Path) -> None:
    """Two Store objects (as two processes would) increment one counter from many threads."""
    stores = [Store(tmp_path / "aml.sqlite"), Store(tmp_path / "aml.sqlite")]
    with stores[0].write() as tx:
        tx.put("counter", "c", {"n": 0})

    def bump(store: Store) -> None:
        for _ in range(25):
            with store.write() as tx:
                row = tx.get("counter", "C")  # case-insensitive keys
                assert row is not None
                tx.put("counter", "c", {"n": row.body["n"] + 1})

    threads = [threading.Thread(target=bump, args=(stores[i % 2],)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    with stores[1].read() as tx:
        row = tx.get("counter", "c")
    assert row is not None and row.body["n"] == 200
    assert (tmp_path / "aml.sqlite-wal").exists()  # WAL mode
