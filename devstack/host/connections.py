"""Storage clients for the host's bindings, over connections named the way Azure Functions names them.

A binding's `connection` is the *name* of a setting; `shared.config.connections` is the one parser
of that convention (connection string in `X`, or `X__blobServiceUri` / `X__queueServiceUri` /
`X__serviceUri` / `X__accountName` plus `X__credential` + `X__clientId`, the `AzureWebJobsX`
fallback, an empty name meaning `AzureWebJobsStorage`). This module turns what it finds into
service clients, or into the error the host reports when the connection is not defined.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import TYPE_CHECKING, Literal

from shared.config.connections import DEFAULT_CONNECTION, StorageConnection, resolve_storage_connection

if TYPE_CHECKING:
    from azure.core.credentials import TokenCredential
    from azure.storage.blob import BlobServiceClient
    from azure.storage.queue import QueueServiceClient

__all__ = ["ClientCache", "Service", "StorageConnection", "StorageConnectionError", "resolve"]

Service = Literal["blob", "queue"]


class StorageConnectionError(LookupError):
    """No setting defines the named storage connection (for the service a binding needs)."""


def resolve(name: str | None, service: Service, settings: Mapping[str, str]) -> StorageConnection:
    """The settings behind connection `name`, which must reach the blob or queue service."""
    conn = resolve_storage_connection(name, settings)
    if conn is not None and (conn.connection_string or conn.endpoint(service)):
        return conn
    base = name or DEFAULT_CONNECTION
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
                    client = BlobServiceClient(str(conn.endpoint("blob")), credential=_credential(conn))
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
                    client = QueueServiceClient(str(conn.endpoint("queue")), credential=_credential(conn))
                self._queue[conn.name] = client
            return self._queue[conn.name]


def _credential(conn: StorageConnection) -> TokenCredential:
    from azure.identity import DefaultAzureCredential, ManagedIdentityCredential

    if conn.client_id:
        return ManagedIdentityCredential(client_id=conn.client_id)
    return DefaultAzureCredential(exclude_interactive_browser_credential=True)
