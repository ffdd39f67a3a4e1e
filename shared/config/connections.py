"""Storage connections named the way Azure Functions names them: the one parser of that convention.

A connection is the *name* of a setting, `X`:

- `X` holds a connection string; or, identity based,
- `X__blobServiceUri` / `X__queueServiceUri` / `X__tableServiceUri` hold the service endpoints
  (`X__serviceUri` is an alias of the blob and queue ones), and `X__accountName` derives the
  missing ones as `https://{account}.{service}.core.windows.net`;
- `X__credential=managedidentity` with `X__clientId` picks a user-assigned identity (without
  `managedidentity`, `X__clientId` is ignored, as the Functions host ignores it).

As the Functions host does, an empty name means `AzureWebJobsStorage`, and `X` falls back to
`AzureWebJobsX` when no setting defines it. Pure: the settings come in as a mapping, nothing is
read from the environment and no Azure SDK is imported.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

Service = Literal["blob", "queue", "table"]
SERVICES: tuple[Service, ...] = ("blob", "queue", "table")
DEFAULT_CONNECTION = "AzureWebJobsStorage"
FALLBACK_PREFIX = "AzureWebJobs"
MANAGED_IDENTITY = "managedidentity"
_SERVICE_URI_ALIAS: frozenset[Service] = frozenset({"blob", "queue"})  # `X__serviceUri` stands for these


@dataclass(frozen=True)
class StorageConnection:
    """How to reach one storage account: a connection string, or service endpoints plus an identity."""

    name: str  # the connection name asked for (`AzureWebJobsStorage` for an empty one)
    connection_string: str | None = None
    blob_service_uri: str | None = None
    queue_service_uri: str | None = None
    table_service_uri: str | None = None
    client_id: str | None = None  # a user-assigned managed identity; None: the default credential

    @property
    def uses_identity(self) -> bool:
        return self.connection_string is None

    def endpoint(self, service: Service) -> str | None:
        """The endpoint of `service`; None when it is not configured (or a connection string is used)."""
        if service == "blob":
            return self.blob_service_uri
        if service == "queue":
            return self.queue_service_uri
        if service == "table":
            return self.table_service_uri
        raise ValueError(f"unknown storage service {service!r}; expected one of {', '.join(SERVICES)}")


def resolve_storage_connection(name: str | None, env: Mapping[str, str]) -> StorageConnection | None:
    """The storage connection that setting `name` (and its `__` sub-settings) defines; None if none does.

    `X` is looked at first, then `AzureWebJobsX`; the first of the two that defines a connection
    string, a service endpoint or an account name wins as a whole.
    """
    base = name or DEFAULT_CONNECTION
    candidates = [base] if base.startswith(FALLBACK_PREFIX) else [base, f"{FALLBACK_PREFIX}{base}"]
    for candidate in candidates:
        found = _from_settings(base, candidate, env)
        if found is not None:
            return found
    return None


def _from_settings(name: str, prefix: str, env: Mapping[str, str]) -> StorageConnection | None:
    def setting(suffix: str) -> str | None:
        return (env.get(f"{prefix}__{suffix}") or "").strip() or None

    connection_string = (env.get(prefix) or "").strip()
    if connection_string:
        return StorageConnection(name=name, connection_string=connection_string)
    account = setting("accountName")
    alias = setting("serviceUri")
    uris: dict[Service, str | None] = {}
    for service in SERVICES:
        uri = setting(f"{service}ServiceUri") or (alias if service in _SERVICE_URI_ALIAS else None)
        if uri is None and account is not None:
            uri = f"https://{account}.{service}.core.windows.net"
        uris[service] = uri
    if not any(uris.values()):
        return None
    managed = (setting("credential") or "").lower() == MANAGED_IDENTITY
    return StorageConnection(
        name=name,
        blob_service_uri=uris["blob"],
        queue_service_uri=uris["queue"],
        table_service_uri=uris["table"],
        client_id=setting("clientId") if managed else None,
    )
