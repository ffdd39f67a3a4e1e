"""The storage-connection convention of Azure Functions (`shared.config.connections`), pure."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import pytest

from shared.config import connections
from shared.config.connections import StorageConnection, resolve_storage_connection

CS = "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey=a2V5;BlobEndpoint=http://127.0.0.1:10000/x;"


def test_connection_string_in_the_named_setting() -> None:
    conn = resolve_storage_connection("DATA_STORAGE", {"DATA_STORAGE": CS})
    assert conn == StorageConnection(name="DATA_STORAGE", connection_string=CS)
    assert conn is not None and not conn.uses_identity
    assert conn.endpoint("blob") is None


def test_nothing_defined_is_none() -> None:
    assert resolve_storage_connection("DATA_STORAGE", {}) is None
    assert resolve_storage_connection("DATA_STORAGE", {"DATA_STORAGE": "", "DATA_STORAGE__blobServiceUri": " "}) is None
    assert resolve_storage_connection("DATA_STORAGE", {"OTHER": CS, "DATA_STORAGE__clientId": "cid"}) is None


def test_service_uris_per_service() -> None:
    env = {
        "DATA_STORAGE__blobServiceUri": "https://data.blob.core.windows.net",
        "DATA_STORAGE__queueServiceUri": "https://data.queue.core.windows.net",
        "DATA_STORAGE__tableServiceUri": "https://data.table.core.windows.net",
    }
    conn = resolve_storage_connection("DATA_STORAGE", env)
    assert conn is not None and conn.uses_identity
    assert (conn.endpoint("blob"), conn.endpoint("queue"), conn.endpoint("table")) == (
        "https://data.blob.core.windows.net", "https://data.queue.core.windows.net",
        "https://data.table.core.windows.net",
    )
    assert conn.client_id is None


def test_only_the_services_given_are_set() -> None:
    conn = resolve_storage_connection("D", {"D__blobServiceUri": "https://d.blob.core.windows.net"})
    assert conn == StorageConnection(name="D", blob_service_uri="https://d.blob.core.windows.net")


def test_service_uri_is_an_alias_for_blob_and_queue_not_table() -> None:
    conn = resolve_storage_connection("X", {"X__serviceUri": "https://x.example"})
    assert conn is not None
    assert conn.endpoint("blob") == conn.endpoint("queue") == "https://x.example"
    assert conn.endpoint("table") is None


def test_specific_uri_beats_the_alias_and_the_account() -> None:
    env = {"X__serviceUri": "https://alias", "X__blobServiceUri": "https://blob", "X__accountName": "acct"}
    conn = resolve_storage_connection("X", env)
    assert conn is not None
    assert conn.endpoint("blob") == "https://blob"
    assert conn.endpoint("queue") == "https://alias"
    assert conn.endpoint("table") == "https://acct.table.core.windows.net"


def test_account_name_derives_every_endpoint() -> None:
    conn = resolve_storage_connection("AzureWebJobsStorage", {"AzureWebJobsStorage__accountName": "appstore"})
    assert conn == StorageConnection(
        name="AzureWebJobsStorage",
        blob_service_uri="https://appstore.blob.core.windows.net",
        queue_service_uri="https://appstore.queue.core.windows.net",
        table_service_uri="https://appstore.table.core.windows.net",
    )


def test_connection_string_wins_over_identity_settings() -> None:
    env = {"X": CS, "X__accountName": "acct", "X__credential": "managedidentity", "X__clientId": "cid"}
    assert resolve_storage_connection("X", env) == StorageConnection(name="X", connection_string=CS)


@pytest.mark.parametrize(("credential", "expected"), [
    ("managedidentity", "cid"), ("ManagedIdentity", "cid"), (None, None), ("somethingelse", None),
])
def test_client_id_needs_credential_managedidentity(credential: str | None, expected: str | None) -> None:
    env = {"X__accountName": "acct", "X__clientId": "cid"}
    if credential is not None:
        env["X__credential"] = credential
    conn = resolve_storage_connection("X", env)
    assert conn is not None and conn.client_id == expected


@pytest.mark.parametrize("name", [None, ""])
def test_empty_name_means_azure_webjobs_storage(name: str | None) -> None:
    conn = resolve_storage_connection(name, {"AzureWebJobsStorage": CS})
    assert conn == StorageConnection(name="AzureWebJobsStorage", connection_string=CS)


def test_azure_webjobs_prefix_fallback_keeps_the_asked_name() -> None:
    assert resolve_storage_connection("Data", {"AzureWebJobsData": CS}) == StorageConnection(
        name="Data", connection_string=CS)
    conn = resolve_storage_connection("Data", {"AzureWebJobsData__accountName": "acct"})
    assert conn is not None and conn.endpoint("queue") == "https://acct.queue.core.windows.net"


def test_the_named_setting_wins_over_the_fallback() -> None:
    env = {"Data__blobServiceUri": "https://own", "AzureWebJobsData": CS}
    assert resolve_storage_connection("Data", env) == StorageConnection(name="Data", blob_service_uri="https://own")


def test_no_double_prefix_for_azure_webjobs_names() -> None:
    assert resolve_storage_connection("AzureWebJobsStorage", {"AzureWebJobsAzureWebJobsStorage": CS}) is None


def test_endpoint_rejects_unknown_services() -> None:
    with pytest.raises(ValueError, match="unknown storage service 'file'"):
        StorageConnection(name="X").endpoint("file")  # type: ignore[arg-type]


def test_connection_is_frozen() -> None:
    conn = StorageConnection(name="X", connection_string=CS)
    with pytest.raises(dataclasses.FrozenInstanceError):
        conn.name = "Y"  # type: ignore[misc]


def test_module_is_pure() -> None:
    """No Azure SDK and no environment access at run time (imports under TYPE_CHECKING are allowed)."""
    tree = ast.parse(Path(connections.__file__).read_text(encoding="utf-8"))
    runtime_imports: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            node.body = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            runtime_imports += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            runtime_imports.append(node.module)
    assert not [m for m in runtime_imports if m.split(".")[0] in ("azure", "os")], runtime_imports
