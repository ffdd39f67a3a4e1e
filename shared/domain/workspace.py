"""What Evergreen knows of an Azure ML workspace, as values: data versions, models, endpoints.

The ports (`shared.ports`) speak these types; the Azure adapter builds them from azure-ai-ml
entities and the in-memory adapter keeps them directly.
"""

from __future__ import annotations

from dataclasses import dataclass

from shared.domain.vocabulary import IN_PROGRESS_STATES


@dataclass(frozen=True)
class DataVersionSpec:
    name: str
    asset_type: str  # uri_file | uri_folder
    uri: str
    description: str
    tags: dict[str, str]


@dataclass(frozen=True)
class RegisteredDataVersion:
    name: str
    version: str
    uri: str


@dataclass(frozen=True)
class DataVersionInfo:
    """A registered data version as the registry reads it back (the operator's `retrain` builds its event on it)."""

    name: str
    version: str
    uri: str
    asset_type: str  # uri_file | uri_folder
    tags: dict[str, str]


# -- online endpoints (the rollout's side effects) ------------------------------------------------
# Every call below starts or reads one operation and returns at once: provisioning takes minutes in
# Azure, so the rollout polls on later queue messages instead of blocking a function on `.result()`.


@dataclass(frozen=True)
class ModelInfo:
    name: str
    version: str
    tags: dict[str, str]
    properties: dict[str, str]


@dataclass(frozen=True)
class DeploymentView:
    name: str
    state: str  # provisioning state as the service spells it, e.g. Succeeded, Updating, Failed
    model: tuple[str, str] | None  # (name, version) of the model it serves
    tags: dict[str, str]


@dataclass(frozen=True)
class EndpointView:
    name: str
    state: str
    traffic: dict[str, int]
    deployments: tuple[DeploymentView, ...]

    @property
    def busy(self) -> bool:
        return self.state.lower() in IN_PROGRESS_STATES

    def deployment(self, name: str) -> DeploymentView | None:
        return next((d for d in self.deployments if d.name == name), None)

    def serving(self) -> DeploymentView | None:
        """The deployment taking the most traffic (the champion); None if nothing takes traffic."""
        live = [(weight, name) for name, weight in self.traffic.items() if weight > 0]
        return self.deployment(max(live)[1]) if live else None


@dataclass(frozen=True)
class DeploymentSpec:
    endpoint: str
    name: str
    model_name: str
    model_version: str
    instance_type: str
    instance_count: int
    environment: str | None
    code_path: str | None  # local folder with the scoring script (uploaded as a code asset)
    scoring_script: str | None
    tags: dict[str, str]


def model_ref(model_id: str | None) -> tuple[str, str] | None:
    """(name, version) from an ARM model id or an `azureml:name:version` reference."""
    if not model_id:
        return None
    text = str(model_id)
    if "/models/" in text:
        tail = text.split("/models/", 1)[1].split("/")
        if len(tail) >= 3 and tail[1] == "versions":
            return tail[0], tail[2]
    parts = text.removeprefix("azureml:").split(":")
    return (parts[0], parts[1]) if len(parts) == 2 else None


