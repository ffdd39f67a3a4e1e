"""Where the workspace's datastores really live: Azurite containers behind a connection string.

Clients see datastores shaped as in Azure (`accountName`, `containerName`, `endpoint`); the
emulator itself needs the reachable blob endpoint, which only the connection string knows. Later
work (job inputs/outputs, code uploads) resolves `azureml://datastores/<ds>/paths/<p>` through here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# name -> container, as seeded in every workspace (devstack/README.md)
SEEDED_DATASTORES: dict[str, str] = {
    "workspaceblobstore": "azureml-blobstore",
    "workspaceartifactstore": "azureml",
    "landing": "landing",
}
DEFAULT_DATASTORE = "workspaceblobstore"

_AZUREML_URI = re.compile(
    r"^azureml://(?:subscriptions/(?P<sub>[^/]+)/resource[gG]roups/(?P<rg>[^/]+)/"
    r"(?:providers/Microsoft\.MachineLearningServices/)?workspaces/(?P<ws>[^/]+)/)?"
    r"datastores/(?P<ds>[^/]+)/paths/(?P<path>.*)$",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class StorageAccount:
    """The parts of an Azure Storage connection string the emulator needs."""

    account_name: str
    account_key: str
    blob_endpoint: str  # e.g. http://127.0.0.1:10000/devstoreaccount1 (no trailing slash)

    @classmethod
    def from_connection_string(cls, connection_string: str) -> StorageAccount:
        parts: dict[str, str] = {}
        for item in connection_string.split(";"):
            if "=" in item:
                key, _, value = item.partition("=")
                parts[key.strip().lower()] = value.strip()
        missing = [k for k in ("accountname", "accountkey") if not parts.get(k)]
        if missing:
            raise ValueError(f"storage connection string lacks {', '.join(missing)}")
        name = parts["accountname"]
        endpoint = parts.get("blobendpoint") or (
            f"{parts.get('defaultendpointsprotocol', 'https')}://{name}.blob."
            f"{parts.get('endpointsuffix', 'core.windows.net')}"
        )
        return cls(account_name=name, account_key=parts["accountkey"], blob_endpoint=endpoint.rstrip("/"))


@dataclass(frozen=True)
class DatastoreLocation:
    """A datastore resolved to something a blob client can open."""

    datastore: str
    account: StorageAccount
    container: str

    @property
    def container_url(self) -> str:
        return f"{self.account.blob_endpoint}/{self.container}"


@dataclass(frozen=True)
class AzuremlPath:
    """`azureml://[subscriptions/…/workspaces/…/]datastores/<ds>/paths/<path>` split into parts."""

    datastore: str
    path: str
    subscription_id: str | None = None
    resource_group: str | None = None
    workspace: str | None = None


def parse_azureml_uri(uri: str) -> AzuremlPath | None:
    m = _AZUREML_URI.match(uri)
    if m is None:
        return None
    return AzuremlPath(
        datastore=m["ds"], path=m["path"], subscription_id=m["sub"], resource_group=m["rg"], workspace=m["ws"]
    )


class DatastoreMap:
    """Datastore name (case-insensitive) -> Azurite container; queryable by other emulator parts."""

    def __init__(self, account: StorageAccount, containers: dict[str, str] | None = None) -> None:
        self.account = account
        self._containers = {k.lower(): (k, v) for k, v in (containers or SEEDED_DATASTORES).items()}

    @classmethod
    def from_connection_string(cls, connection_string: str) -> DatastoreMap:
        return cls(StorageAccount.from_connection_string(connection_string))

    def names(self) -> list[str]:
        return [display for display, _ in self._containers.values()]

    def get(self, name: str) -> DatastoreLocation | None:
        entry = self._containers.get(name.lower())
        if entry is None:
            return None
        return DatastoreLocation(datastore=entry[0], account=self.account, container=entry[1])

    def resolve(self, uri: str) -> tuple[DatastoreLocation, str] | None:
        """Resolve an `azureml://…datastores/<ds>/paths/<p>` URI to (location, blob path)."""
        parsed = parse_azureml_uri(uri)
        if parsed is None:
            return None
        location = self.get(parsed.datastore)
        return (location, parsed.path) if location else None
