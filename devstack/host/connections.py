"""Storage connections named the way Azure Functions names them.

A binding's `connection` is the *name* of a setting: `X` holds a connection string, or (identity
based) `X__blobServiceUri` / `X__queueServiceUri` / `X__serviceUri` / `X__accountName` hold the
endpoint and `X__credential` + `X__clientId` pick a user-assigned identity. The host also falls back
to `AzureWebJobsX`, and an empty connection means `AzureWebJobsStorage`.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from azure.core.credentials import TokenCredential
    from azure.storage.blob import BlobServiceClient
    from azure.storage.queue import QueueServiceClient

Service = Literal["blob", "queue"]
DEFAULT_CONNECTION = "AzureWebJobsStorage"


class StorageConnectionError(LookupError):
    """No setting defines the named storage connection."""


@dataclass(frozen=True)
class StorageConnection:
    """How to reach one storage service: a connection string, or an endpoint plus an identity."""

    name: str
    connection_string: str | None = None
    endpoint: str | None = None
    client_id: str | None = None


def resolve(name: str | None, service: Service, settings: Mapping[str, str]) -> StorageConnection:
    """Find the settings behind connection `name` for the blob or queue service."""
    base = name or DEFAULT_CONNECTION
    for candidate in (base, f"AzureWebJobs{base}"):
        value = settings.get(candidate)
        if value:
            return StorageConnection(name=base, connection_string=value)
        endpoint = settings.get(f"{candidate}__{service}ServiceUri") or settings.get(f"{candidate}__serviceUri")
        account = settings.get(f"{candidate}__accountName")
        if not endpoint and account:
            endpoint = f"https://{account}.{service}.core.windows.net"
        if endpoint:
            client_id = None
            if (settings.get(f"{candidate}__credential") or "").lower() == "managedidentity":
                client_id = settings.get(f"{candidate}__clientId")
            return StorageConnection(name=base, endpoint=endpoint, client_id=client_id)
    raise StorageConnectionError(
        f"Storage connection '{base}' is not defined: set the app setting '{base}' to a connection "
        f"string, or '{base}__{service}ServiceUri' to use an identity"
    )


class ClientCache:
    """Builds one service client per connection and reuses it (clients are thread-safe)."""

    def __init__(self, settings: Mapping[str, str]) -> None:
        self._settings = settings
        self._lock = threading.Lock()
        self._blob: dict[str, BlobServiceClient] = {}
        self._queue: dict[str, QueueServiceClient] = {}

    def blob(self, name: str | None) -> BlobServiceClient:
        from azure.storage.blob import BlobServiceClient

        conn = resolve(name, "blob", self._settings)
        with self._lock:
            if conn.name not in self._blob:
                if conn.connection_string:
                    client = BlobServiceClient.from_connection_string(conn.connection_string)
                else:
                    client = BlobServiceClient(str(conn.endpoint), credential=_credential(conn))
                self._blob[conn.name] = client
            return self._blob[conn.name]

    def queue(self, name: str | None) -> QueueServiceClient:
        from azure.storage.queue import QueueServiceClient

        conn = resolve(name, "queue", self._settings)
        with self._lock:
            if conn.name not in self._queue:
                if conn.connection_string:
                    client = QueueServiceClient.from_connection_string(conn.connection_string)
                else:
                    client = QueueServiceClient(str(conn.endpoint), credential=_credential(conn))
                self._queue[conn.name] = client
            return self._queue[conn.name]


def _credential(conn: StorageConnection) -> TokenCredential:
    from azure.identity import DefaultAzureCredential, ManagedIdentityCredential

    if conn.client_id:
        return ManagedIdentityCredential(client_id=conn.client_id)
    return DefaultAzureCredential(exclude_interactive_browser_credential=True)
