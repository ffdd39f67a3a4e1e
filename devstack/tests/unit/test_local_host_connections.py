"""The host's storage connections follow the Azure Functions conventions (parsed by shared.config.connections)."""

from __future__ import annotations

import pytest

from devstack.host.connections import ClientCache, StorageConnection, StorageConnectionError, resolve


def test_connection_string_setting() -> None:
    assert resolve("DATA_STORAGE", "blob", {"DATA_STORAGE": "UseDevelopmentStorage=true"}) == StorageConnection(
        name="DATA_STORAGE", connection_string="UseDevelopmentStorage=true"
    )


def test_empty_connection_means_azure_webjobs_storage() -> None:
    assert resolve(None, "queue", {"AzureWebJobsStorage": "cs"}).connection_string == "cs"
    assert resolve("", "queue", {"AzureWebJobsStorage": "cs"}).name == "AzureWebJobsStorage"


def test_azure_webjobs_prefix_fallback() -> None:
    assert resolve("Data", "blob", {"AzureWebJobsData": "cs"}).connection_string == "cs"


def test_identity_based_service_uris() -> None:
    settings = {
        "DATA_STORAGE__blobServiceUri": "https://data.blob.core.windows.net",
        "DATA_STORAGE__queueServiceUri": "https://data.queue.core.windows.net",
    }
    assert resolve("DATA_STORAGE", "blob", settings).endpoint("blob") == "https://data.blob.core.windows.net"
    assert resolve("DATA_STORAGE", "queue", settings).endpoint("queue") == "https://data.queue.core.windows.net"
    assert resolve("X", "blob", {"X__serviceUri": "https://x.blob"}).endpoint("blob") == "https://x.blob"


def test_account_name_and_user_assigned_identity() -> None:
    settings = {"AzureWebJobsStorage__accountName": "acct", "AzureWebJobsStorage__credential": "managedidentity",
                "AzureWebJobsStorage__clientId": "cid"}
    conn = resolve(None, "queue", settings)
    assert conn.endpoint("queue") == "https://acct.queue.core.windows.net"
    assert conn.client_id == "cid"


def test_missing_connection_says_what_to_set() -> None:
    with pytest.raises(StorageConnectionError, match="DATA_STORAGE__blobServiceUri"):
        resolve("DATA_STORAGE", "blob", {})


def test_a_connection_without_the_needed_service_is_missing_for_it() -> None:
    settings = {"DATA_STORAGE__queueServiceUri": "https://data.queue.core.windows.net"}
    assert resolve("DATA_STORAGE", "queue", settings).endpoint("queue") == "https://data.queue.core.windows.net"
    with pytest.raises(StorageConnectionError, match=r"'DATA_STORAGE__blobServiceUri' to use an identity"):
        resolve("DATA_STORAGE", "blob", settings)


def test_client_cache_builds_identity_clients_on_the_resolved_endpoints() -> None:
    cache = ClientCache({"D__blobServiceUri": "https://d.blob.core.windows.net",
                         "D__queueServiceUri": "https://d.queue.core.windows.net",
                         "D__credential": "managedidentity", "D__clientId": "cid"})
    blob = cache.blob("D")
    assert blob.url.startswith("https://d.blob.core.windows.net")
    assert cache.blob("D") is blob
    assert cache.queue("D").url.startswith("https://d.queue.core.windows.net")
    with pytest.raises(StorageConnectionError):
        cache.blob("OTHER")
