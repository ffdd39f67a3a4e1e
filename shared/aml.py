"""Azure ML adapter: the only module that talks to azure-ai-ml.

`azure.ai.ml` costs about 1.3 s to import, so it is imported on first use, never at start-up:
functions that never touch Azure ML (webhook handshakes, ignored blobs) stay fast on a cold start.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from azure.core.credentials import TokenCredential

if TYPE_CHECKING:
    from azure.ai.ml import MLClient

    from shared.retrain import PipelineSubmission

log = logging.getLogger(__name__)

PATH_CONFLICT = "Asset paths cannot be updated."
AUTOINCREMENT_ATTEMPTS = 8


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


class AzureML:
    """Creates the MLClient once, on first use, and exposes the few operations Evergreen needs."""

    def __init__(self, credential: TokenCredential, subscription_id: str, resource_group: str, workspace: str):
        self._credential = credential
        self._coordinates = (subscription_id, resource_group, workspace)
        self._client: MLClient | None = None
        self._lock = threading.Lock()

    @property
    def client(self) -> MLClient:
        if self._client is None:
            with self._lock:
                if self._client is None:
                    from azure.ai.ml import MLClient

                    sub, rg, ws = self._coordinates
                    self._client = MLClient(self._credential, sub, rg, ws)
        return self._client

    def register_data_version(self, spec: DataVersionSpec) -> RegisteredDataVersion:
        """Register the next version of a data asset (the service assigns the number)."""
        from azure.ai.ml.entities import Data

        data = Data(
            name=spec.name,
            path=spec.uri,
            type=spec.asset_type,
            description=spec.description,
            tags=spec.tags,
        )
        from azure.core.exceptions import HttpResponseError

        # The SDK reads the container's nextVersion, then PUTs that number. Another instance may take
        # the same number first; the service then refuses our PUT ("Asset paths cannot be updated."),
        # with no side effect, and reading nextVersion again gives a free number.
        for attempt in range(1, AUTOINCREMENT_ATTEMPTS + 1):
            try:
                created = self.client.data.create_or_update(data)
                break
            except HttpResponseError as exc:
                if PATH_CONFLICT not in str(exc) or attempt == AUTOINCREMENT_ATTEMPTS:
                    raise
                log.info("data asset %s: version number taken concurrently (attempt %d); retrying", spec.name,
                         attempt)
                data.version = None
                time.sleep(random.uniform(0, 0.05 * attempt))  # jitter: racing instances fall out of step
        return RegisteredDataVersion(name=created.name, version=str(created.version), uri=str(created.path))

    def find_data_version(self, name: str, tag: str, value: str) -> RegisteredDataVersion | None:
        """Find a version carrying tag=value: reconciles a registration whose ledger write was lost."""
        from azure.core.exceptions import ResourceNotFoundError

        try:
            versions: Any = self.client.data.list(name=name)
            for item in versions:
                if (item.tags or {}).get(tag) == value:
                    return RegisteredDataVersion(name=item.name, version=str(item.version), uri=str(item.path))
        except ResourceNotFoundError:
            return None
        return None

    def submit_pipeline(self, submission: PipelineSubmission) -> str:
        """Submit the pipeline job under its deterministic name; an existing job is returned, never re-run."""
        from azure.ai.ml import Input, load_job
        from azure.core.exceptions import ResourceNotFoundError

        try:
            existing = self.client.jobs.get(submission.job_name)
            log.info("job %s already exists (%s): not submitting again", submission.job_name, existing.status)
            return str(existing.status)
        except ResourceNotFoundError:
            pass
        job: Any = load_job(source=submission.yaml_path)
        job.name = submission.job_name
        job.experiment_name = submission.experiment
        job.tags = {**(job.tags or {}), **submission.tags}
        job.inputs.training_data = Input(type=submission.data_type, path=submission.data_input)
        for key, value in submission.inputs.items():
            setattr(job.inputs, key, value)
        created = self.client.jobs.create_or_update(job)
        return str(created.status)


# -- online endpoints (the rollout's side effects) ------------------------------------------------
# Every call below starts or reads one operation and returns at once: provisioning takes minutes in
# Azure, so the rollout polls on later queue messages instead of blocking a function on `.result()`.
IN_PROGRESS_STATES = frozenset({"creating", "updating", "scaling", "deleting", "provisioning", "notstarted"})


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


def _state(value: object) -> str:
    """Provisioning states arrive as plain strings or as the SDK's str-enums; both become 'Succeeded' etc."""
    if value is None:
        return ""
    return str(getattr(value, "value", value))


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


class OnlineEndpoints:
    """The managed online endpoint operations the rollout needs, on the shared MLClient."""

    def __init__(self, azureml: AzureML) -> None:
        self._aml = azureml

    def get_model(self, name: str, version: str) -> ModelInfo | None:
        from azure.core.exceptions import ResourceNotFoundError

        try:
            model = self._aml.client.models.get(name=name, version=version)
        except ResourceNotFoundError:
            return None
        return ModelInfo(name=str(model.name), version=str(model.version), tags=dict(model.tags or {}),
                         properties={str(k): str(v) for k, v in (model.properties or {}).items()})

    def endpoint(self, name: str) -> EndpointView | None:
        """The endpoint, its traffic and its deployments (one list call), or None if it does not exist."""
        from azure.core.exceptions import ResourceNotFoundError

        client = self._aml.client
        try:
            endpoint = client.online_endpoints.get(name=name)
        except ResourceNotFoundError:
            return None
        deployments = tuple(
            DeploymentView(name=str(d.name), state=_state(d.provisioning_state), model=model_ref(d.model),
                           tags=dict(d.tags or {}))
            for d in client.online_deployments.list(endpoint_name=name)
        )
        traffic = {str(k): int(v) for k, v in (endpoint.traffic or {}).items()}
        return EndpointView(name=name, state=_state(endpoint.provisioning_state), traffic=traffic,
                            deployments=deployments)

    def begin_create_endpoint(self, name: str, tags: dict[str, str]) -> None:
        from azure.ai.ml.entities import ManagedOnlineEndpoint

        self._aml.client.online_endpoints.begin_create_or_update(
            ManagedOnlineEndpoint(name=name, auth_mode="key", tags=tags))

    def begin_create_deployment(self, spec: DeploymentSpec) -> None:
        from azure.ai.ml.entities import CodeConfiguration, ManagedOnlineDeployment

        code = (CodeConfiguration(code=spec.code_path, scoring_script=spec.scoring_script)
                if spec.code_path and spec.scoring_script else None)
        deployment = ManagedOnlineDeployment(
            name=spec.name, endpoint_name=spec.endpoint, model=f"azureml:{spec.model_name}:{spec.model_version}",
            instance_type=spec.instance_type, instance_count=spec.instance_count, environment=spec.environment,
            code_configuration=code, tags=spec.tags,
        )
        self._aml.client.online_deployments.begin_create_or_update(deployment)

    def begin_set_traffic(self, endpoint: str, traffic: dict[str, int]) -> None:
        """Replace the endpoint's traffic split (deployments not named get 0)."""
        client = self._aml.client
        current = client.online_endpoints.get(name=endpoint)
        current.traffic = dict(traffic)
        client.online_endpoints.begin_create_or_update(current)

    def begin_delete_deployment(self, endpoint: str, name: str) -> None:
        """Start deleting a deployment; a deployment that is already gone counts as deleted."""
        from azure.core.exceptions import ResourceNotFoundError

        try:
            self._aml.client.online_deployments.begin_delete(name=name, endpoint_name=endpoint)
        except ResourceNotFoundError:
            log.info("deployment %s/%s is already gone", endpoint, name)

    def deployment_logs(self, endpoint: str, name: str, lines: int = 20) -> str:
        return str(self._aml.client.online_deployments.get_logs(name=name, endpoint_name=endpoint, lines=lines))

    def score(self, endpoint: str, deployment: str, request: dict[str, Any]) -> Any:
        """Send `request` to one deployment (header `azureml-model-deployment`); returns the decoded reply.

        azure-ai-ml 1.35.2 stores that header in a class-level dict, so every later invoke in the
        process would stick to this deployment; it is removed again before and after the call.
        """
        import json
        import tempfile

        from azure.ai.ml.constants._endpoint import EndpointInvokeFields

        with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False, encoding="utf-8") as handle:
            json.dump(request, handle)
        try:
            EndpointInvokeFields.DEFAULT_HEADER.pop(EndpointInvokeFields.MODEL_DEPLOYMENT, None)
            raw = self._aml.client.online_endpoints.invoke(
                endpoint_name=endpoint, deployment_name=deployment, request_file=handle.name)
        finally:
            EndpointInvokeFields.DEFAULT_HEADER.pop(EndpointInvokeFields.MODEL_DEPLOYMENT, None)
            Path(handle.name).unlink(missing_ok=True)
        return json.loads(raw) if isinstance(raw, str | bytes) else raw
