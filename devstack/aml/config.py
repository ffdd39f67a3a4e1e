"""Settings of one emulator process, parsed once into a frozen object."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_SUBSCRIPTION_ID = "00000000-0000-0000-0000-000000000000"
DEFAULT_RESOURCE_GROUP = "evergreen-local"
DEFAULT_WORKSPACE = "evergreen-ws"
DEFAULT_LOCATION = "westeurope"
DEFAULT_IDENTITY_HEADER = "evergreen-local-identity"
DEFAULT_TENANT_ID = "00000000-0000-0000-0000-000000000000"
# The managed identity's ids: stable, so tokens name the same principal across restarts.
DEFAULT_CLIENT_ID = "e0000000-0000-4000-8000-00000000c11e"
DEFAULT_OBJECT_ID = "e0000000-0000-4000-8000-0000000000b1"


@dataclass(frozen=True)
class WorkspaceCoords:
    """Where the single seeded workspace lives in the ARM namespace."""

    subscription_id: str = DEFAULT_SUBSCRIPTION_ID
    resource_group: str = DEFAULT_RESOURCE_GROUP
    workspace: str = DEFAULT_WORKSPACE
    location: str = DEFAULT_LOCATION

    @property
    def arm_id(self) -> str:
        return (
            f"/subscriptions/{self.subscription_id}/resourceGroups/{self.resource_group}"
            f"/providers/Microsoft.MachineLearningServices/workspaces/{self.workspace}"
        )

    @property
    def workspace_id(self) -> str:
        """The workspace GUID (`properties.workspaceId`), derived so it is stable for the same coordinates."""
        return str(uuid.uuid5(uuid.NAMESPACE_URL, self.arm_id.lower()))

    def matches(self, subscription_id: str, resource_group: str, workspace: str) -> bool:
        return (
            subscription_id.lower() == self.subscription_id.lower()
            and resource_group.lower() == self.resource_group.lower()
            and workspace.lower() == self.workspace.lower()
        )


@dataclass(frozen=True)
class AmlConfig:
    """Everything the app needs; `page_size` and the timings are small in tests."""

    state_dir: Path
    storage_connection_string: str
    coords: WorkspaceCoords = field(default_factory=WorkspaceCoords)
    eventgrid_url: str | None = None
    eventgrid_key: str | None = None
    identity_header: str = DEFAULT_IDENTITY_HEADER
    tenant_id: str = DEFAULT_TENANT_ID
    client_id: str = DEFAULT_CLIENT_ID
    object_id: str = DEFAULT_OBJECT_ID
    page_size: int = 100
    # Seconds an LRO poller is told to wait (Retry-After); the SDK's own default is 5 s.
    lro_retry_after: float = 1.0
    token_lifetime: int = 3600
    # Online endpoints (endpoints.py, serving.py): the scoring router's http port (0 = any free
    # port; scoringUri is computed on read), the least time a provisioning LRO stays `Updating`,
    # and how long a deployment's scoring process may take to answer its liveness check.
    scoring_port: int = 0
    provisioning_delay: float = 1.0
    deployment_start_timeout: float = 60.0

    @property
    def db_path(self) -> Path:
        return self.state_dir / "aml.sqlite"
