"""Azure ML adapter: the only module that talks to azure-ai-ml.

`azure.ai.ml` costs about 1.3 s to import, so it is imported on first use, never at start-up:
functions that never touch Azure ML (webhook handshakes, ignored blobs) stay fast on a cold start.
"""

from __future__ import annotations

import itertools
import logging
import random
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from azure.core.credentials import TokenCredential

if TYPE_CHECKING:
    from azure.ai.ml import MLClient
    from azure.storage.blob import BlobServiceClient

    from shared.adapters.azure.aml_rest import WorkspaceRest
    from shared.domain.retrain import PipelineSubmission

from shared.domain.lineage import JobInfo, JobStep
from shared.domain.vocabulary import version_order
from shared.domain.workspace import (
    DataVersionInfo,
    DataVersionSpec,
    DeploymentSpec,
    DeploymentView,
    EndpointView,
    ModelInfo,
    RegisteredDataVersion,
    model_ref,
)
from shared.errors import JobRejectedError, OperationFailedError

log = logging.getLogger(__name__)

PATH_CONFLICT = "Asset paths cannot be updated."
DEPLOYMENT_HEADER = "azureml-model-deployment"  # routes a scoring request to one deployment; echoed in replies
SCORE_TIMEOUT_SECONDS = 90.0  # one scoring request (the smoke test's own, shorter limit is the policy's)
AUTOINCREMENT_ATTEMPTS = 8
MAX_STEPS = 200  # child runs read per pipeline job (lineage): a pipeline has a handful
REFUSED_FOR_GOOD = frozenset({400, 413, 422})  # HTTP answers to a job submission that no retry can change
COMPARISON_FILE = "comparison.json"  # what `ml/compare.yml` writes into its `comparison` output
_DATASTORE_PATH = re.compile(r"datastores/(?P<datastore>[^/]+)/paths/(?P<path>.+)$")


class AzureML:
    """Creates the MLClient once, on first use, and exposes the few operations Evergreen needs."""

    def __init__(self, credential: TokenCredential, subscription_id: str, resource_group: str, workspace: str,
                 *, timeout: float = 60.0, workspace_blobs: Callable[[str, str], BlobServiceClient] | None = None):
        """`workspace_blobs(account, endpoint)`: a blob client for the workspace's datastore account (reads
        job outputs such as `comparison.json`)."""
        self._workspace_blobs = workspace_blobs
        self._credential = credential
        self._coordinates = (subscription_id, resource_group, workspace)
        # Connection and read timeout per HTTP call (azure-core's default is 300 s each): a holder blocked in a
        # call must give up before its lease ends (EVERGREEN_AZUREML_TIMEOUT_SECONDS < EVERGREEN_LEASE_SECONDS).
        self._timeout = timeout
        self._client: MLClient | None = None
        self._lock = threading.Lock()

    @property
    def client(self) -> MLClient:
        if self._client is None:
            with self._lock:
                if self._client is None:
                    from azure.ai.ml import MLClient

                    sub, rg, ws = self._coordinates
                    self._client = MLClient(self._credential, sub, rg, ws, connection_timeout=self._timeout,
                                            read_timeout=self._timeout)
        return self._client

    def workspace_rest(self) -> WorkspaceRest:
        """The workspace's public REST API (retention's listings and deletes), same credential and timeout."""
        from shared.adapters.azure.aml_rest import WorkspaceRest

        sub, rg, ws = self._coordinates
        return WorkspaceRest(self._credential, sub, rg, ws, timeout=self._timeout)

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

    def get_data_version(self, name: str, version: str | None = None) -> DataVersionInfo | None:
        """Version `version` of `name`, or the latest (the service's `latest` label) when None; None if missing.

        Other failures propagate as azure-core errors.
        """
        item: Any = _unless_missing(lambda: self.client.data.get(name, version=version) if version is not None
                                    else self.client.data.get(name, label="latest"))
        if item is None:
            return None
        return DataVersionInfo(name=item.name, version=str(item.version), uri=str(item.path),
                               asset_type=str(item.type), tags=dict(item.tags or {}))

    def submit_pipeline(self, submission: PipelineSubmission) -> str:
        """Submit the pipeline job under its deterministic name; an existing job is returned, never re-run.

        Raises JobRejectedError when the job can never be submitted: its YAML does not load or build
        (the same input fails the same way every time), or Azure ML answers 400/422 or refuses it in
        the SDK's own validation. Every other error propagates as azure-core's, to be retried.
        """
        from azure.ai.ml.exceptions import ValidationException
        from azure.core.exceptions import HttpResponseError, ResourceNotFoundError

        try:
            existing = self.client.jobs.get(submission.job_name)
            log.info("job %s already exists (%s): not submitting again", submission.job_name, existing.status)
            return _state(existing.status)
        except ResourceNotFoundError:
            pass
        job = _pipeline_job(submission)
        try:
            created = self.client.jobs.create_or_update(job)
        except (ValidationException, HttpResponseError) as exc:
            if isinstance(exc, HttpResponseError) and exc.status_code not in REFUSED_FOR_GOOD:
                raise
            # A racing submitter (a holder whose lease ran out mid-submit) may have created the job
            # between our read and our PUT, and the service refuses a second PUT of the name: that
            # job is ours, not a rejection, and must not end the run as failed.
            status = self.job_status(submission.job_name)
            if status is not None:
                log.info("job %s was created meanwhile (%s): not submitting again", submission.job_name, status)
                return status
            code = f"HTTP {exc.status_code}" if isinstance(exc, HttpResponseError) else "invalid"
            raise JobRejectedError(f"Azure ML refused job {submission.job_name} ({code}): {_first_line(exc)}") from exc
        return _state(created.status)

    def job_status(self, name: str) -> str | None:
        """The job's status as the service spells it (NotStarted, Running, Completed, …); None if there is none."""
        from azure.core.exceptions import ResourceNotFoundError

        try:
            return _state(self.client.jobs.get(name).status)
        except ResourceNotFoundError:
            return None

    def read_comparison(self, job_name: str) -> str | None:
        """The `comparison.json` a compare job wrote to its `comparison` output; None if there is none (yet).

        The output's datastore path comes from the job (`outputs.comparison.path`, Azure ML's default
        `azureml/<job>/comparison/` on the default datastore otherwise); the blob is read through
        `workspace_blobs(account, endpoint)` with the app's identity (Storage Blob Data Reader on the
        workspace's storage account). azure-core errors other than a missing job or blob propagate.
        """
        from azure.core.exceptions import ResourceNotFoundError

        if self._workspace_blobs is None:
            raise OperationFailedError("reading a comparison needs the workspace's blob storage (not configured)")
        try:
            job: Any = self.client.jobs.get(job_name)
        except ResourceNotFoundError:
            return None
        datastore_name, folder = _output_location(job, "comparison")
        datastore: Any = (self.client.datastores.get(datastore_name) if datastore_name
                          else self.client.datastores.get_default())
        service = self._workspace_blobs(str(datastore.account_name), str(datastore.endpoint or "core.windows.net"))
        blob = service.get_blob_client(str(datastore.container_name), f"{folder.strip('/')}/{COMPARISON_FILE}")
        try:
            # Not UTF-8 is a broken step's output: replaced characters make it text the gate refuses with a
            # coded reason, where a UnicodeDecodeError would be retried until the event is dead-lettered.
            return bytes(blob.download_blob().readall()).decode("utf-8", errors="replace")
        except ResourceNotFoundError:
            return None

    def get_job(self, name: str) -> JobInfo | None:
        """`JobInspector`: the job's status and tags, and its steps: the names its definition holds, with the
        statuses of the child runs the service lists (`jobs.list(parent_job_name=…)`, served by RunHistory).
        Where the child runs cannot be listed the steps keep "" and `note` says why; None if there is no job."""
        from azure.core.exceptions import AzureError, ResourceNotFoundError

        try:
            job: Any = self.client.jobs.get(name)
        except ResourceNotFoundError:
            return None
        defined = [str(step) for step in (getattr(job, "jobs", None) or {})]
        statuses: dict[str, str] = {}
        note = ""
        if defined:
            try:
                for child in itertools.islice(self.client.jobs.list(parent_job_name=name), MAX_STEPS):
                    step = str(getattr(child, "display_name", None) or child.name)
                    statuses[step] = _state(child.status)
            except AzureError as exc:  # RunHistory is another service: the steps are still shown, without status
                note = f"step statuses unavailable: the service did not list the child runs ({type(exc).__name__})"
                log.info("job %s: %s: %s", name, note, _first_line(exc))
        steps = tuple(JobStep(step, statuses.get(step, "")) for step in defined)
        steps += tuple(JobStep(step, status) for step, status in statuses.items() if step not in defined)
        return JobInfo(name=name, status=_state(job.status), tags=dict(job.tags or {}), steps=steps, note=note)


def _output_location(job: Any, output: str) -> tuple[str, str]:
    """(datastore name or "" for the default, folder) of a job's output, from its `azureml://datastores/…` path."""
    found = (getattr(job, "outputs", None) or {}).get(output)
    path = str(getattr(found, "path", "") or "")
    match = _DATASTORE_PATH.search(path)
    if match:
        return match.group("datastore"), match.group("path")
    return "", f"azureml/{job.name}/{output}"


def _set_input(job: Any, key: str, value: Any) -> None:
    """Set a pipeline input, or with "<node>.<input>" an input of one node (an optional input that a pipeline
    job cannot declare as its own). KeyError if there is no such node."""
    node, _, name = key.rpartition(".")
    setattr(job.jobs[node].inputs if node else job.inputs, name, value)


def _pipeline_job(submission: PipelineSubmission) -> Any:
    """The job to create: the YAML with the data version as input and the lineage tags.

    Raises JobRejectedError if the YAML does not load or the job cannot be built from it: nothing but
    a change to the file can help (the failure is deterministic, so any error here counts).
    """
    from azure.ai.ml import Input, load_job

    try:
        job: Any = load_job(source=submission.yaml_path)
        job.name = submission.job_name
        job.experiment_name = submission.experiment
        job.tags = {**(job.tags or {}), **submission.tags}
        setattr(job.inputs, submission.data_input_name, Input(type=submission.data_type, path=submission.data_input))
        for key, model in submission.model_inputs.items():
            _set_input(job, key, Input(type="custom_model", path=model))
        for key, value in submission.inputs.items():
            _set_input(job, key, value)
    except Exception as exc:
        raise JobRejectedError(f"pipeline {submission.yaml_path} cannot be submitted: "
                               f"{type(exc).__name__}: {_first_line(exc)}") from exc
    return job


def _unless_missing(get: Callable[[], Any]) -> Any:
    """`get()`, or None if the service says there is no such asset: a 404, or the SDK's own error wrapping
    one (as it does for the `latest` label of an unknown asset). Every other error propagates."""
    from azure.ai.ml.exceptions import MlException
    from azure.core.exceptions import ResourceNotFoundError

    try:
        return get()
    except ResourceNotFoundError:
        return None
    except MlException as exc:
        if _caused_by(exc, ResourceNotFoundError):
            return None
        raise


def _caused_by(exc: BaseException, kind: type[BaseException]) -> bool:
    """Whether `kind` is in the chain of causes of `exc` (the SDK wraps service errors in its own)."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, kind):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _state(value: object) -> str:
    """Provisioning states arrive as plain strings or as the SDK's str-enums; both become 'Succeeded' etc."""
    if value is None:
        return ""
    return str(getattr(value, "value", value))


# -- online endpoints (the rollout's side effects) ------------------------------------------------
# Every call below starts or reads one operation and returns at once: provisioning takes minutes in
# Azure, so the rollout polls on later queue messages instead of blocking a function on `.result()`.
@contextmanager
def _operation(what: str) -> Iterator[None]:
    """Translate azure-core's errors at the adapter boundary: services see `OperationFailedError` only."""
    from azure.core.exceptions import AzureError

    try:
        yield
    except AzureError as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise OperationFailedError(f"{what}: {first}") from exc


class OnlineEndpoints:
    """The managed online endpoint operations the rollout needs, on the shared MLClient (`shared.ports.Endpoints`).

    A resource that does not exist reads as None; every other failure of a call raises
    `shared.errors.OperationFailedError` (chained to the SDK's error).
    """

    def __init__(self, azureml: AzureML, *, score_timeout_seconds: float = SCORE_TIMEOUT_SECONDS) -> None:
        self._aml = azureml
        self._score_timeout = score_timeout_seconds

    def get_model(self, name: str, version: str) -> ModelInfo | None:
        """The registered model version, or None if the registry has no such version."""
        from azure.core.exceptions import ResourceNotFoundError

        with _operation(f"reading model {name}:{version}"):
            try:
                model = self._aml.client.models.get(name=name, version=version)
            except ResourceNotFoundError:
                return None
        return ModelInfo(name=str(model.name), version=str(model.version), tags=dict(model.tags or {}),
                         properties={str(k): str(v) for k, v in (model.properties or {}).items()})

    def latest_model(self, name: str) -> ModelInfo | None:
        """The model's newest version (the registry's `latest` label), or None if there is no such model."""
        with _operation(f"reading the latest version of model {name}"):
            model: Any = _unless_missing(lambda: self._aml.client.models.get(name=name, label="latest"))
        if model is None:
            return None
        return ModelInfo(name=str(model.name), version=str(model.version), tags=dict(model.tags or {}),
                         properties={str(k): str(v) for k, v in (model.properties or {}).items()})

    def list_model_versions(self, name: str, *, tags: Mapping[str, str] | None = None,
                            limit: int = 100) -> list[ModelInfo]:
        """`ModelRegistry`: versions of `name` with every tag=value of `tags`, newest first, at most `limit`.

        Reads `models.list(name)` (paged by the service) for at most `limit` × 10 versions, then filters
        by tag: the registry has no server-side tag filter for versions. None for an unknown model.
        """
        from azure.core.exceptions import ResourceNotFoundError

        wanted = dict(tags or {})
        with _operation(f"listing the versions of model {name}"):
            try:
                read = list(itertools.islice(self._aml.client.models.list(name=name), limit * 10))
            except ResourceNotFoundError:
                return []
        infos = [ModelInfo(name=str(m.name), version=str(m.version), tags=dict(m.tags or {}),
                           properties={str(k): str(v) for k, v in (m.properties or {}).items()}) for m in read]
        infos.sort(key=lambda i: version_order(i.version), reverse=True)
        return [i for i in infos if all(i.tags.get(k) == v for k, v in wanted.items())][:limit]

    def set_model_tags(self, name: str, version: str, tags: Mapping[str, str]) -> None:
        """Merge `tags` into the model version's tags (tags are mutable; properties are not): read it, then PUT it
        back through `models.create_or_update`, which updates an existing version in place. Raises
        OperationFailedError if the version does not exist or the update fails."""
        with _operation(f"tagging model {name}:{version}"):
            model = self._aml.client.models.get(name=name, version=version)
            model.tags = {**(model.tags or {}), **tags}
            self._aml.client.models.create_or_update(model)

    def endpoint(self, name: str) -> EndpointView | None:
        """The endpoint, its traffic and its deployments (one list call), or None if it does not exist."""
        from azure.core.exceptions import ResourceNotFoundError

        client = self._aml.client
        with _operation(f"reading endpoint {name}"):
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

        with _operation(f"creating endpoint {name}"):
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
        with _operation(f"creating deployment {spec.name} on {spec.endpoint}"):
            self._aml.client.online_deployments.begin_create_or_update(deployment)

    def begin_set_traffic(self, endpoint: str, traffic: dict[str, int]) -> None:
        """Replace the endpoint's traffic split (deployments not named get 0)."""
        client = self._aml.client
        with _operation(f"setting the traffic of {endpoint} to {traffic}"):
            current = client.online_endpoints.get(name=endpoint)
            current.traffic = dict(traffic)
            client.online_endpoints.begin_create_or_update(current)

    def begin_delete_deployment(self, endpoint: str, name: str) -> None:
        """Start deleting a deployment; a deployment that is already gone counts as deleted."""
        from azure.core.exceptions import ResourceNotFoundError

        with _operation(f"deleting deployment {name} of {endpoint}"):
            try:
                self._aml.client.online_deployments.begin_delete(name=name, endpoint_name=endpoint)
            except ResourceNotFoundError:
                log.info("deployment %s/%s is already gone", endpoint, name)

    def deployment_logs(self, endpoint: str, name: str, lines: int = 20) -> str:
        with _operation(f"reading the logs of deployment {name} of {endpoint}"):
            return str(self._aml.client.online_deployments.get_logs(name=name, endpoint_name=endpoint, lines=lines))

    def score(self, endpoint: str, deployment: str, request: dict[str, Any]) -> Any:
        """Send `request` to one deployment of `endpoint`, bypassing traffic routing; returns the decoded reply.

        The request is built here, per call: the scoring URI and key come from the public SDK
        (`online_endpoints.get`, `get_keys`) and the POST carries its own `azureml-model-deployment`
        and `Authorization` headers. `online_endpoints.invoke` is not used: azure-ai-ml keeps those
        headers in a class-level dict (`EndpointInvokeFields.DEFAULT_HEADER`), so two smoke tests in one
        process would race and a request could reach another deployment (the champion) or endpoint.
        Raises OperationFailedError if the call fails, times out, is answered by another deployment,
        or the reply is not JSON.
        """
        import requests

        what = f"scoring deployment {deployment} of {endpoint}"
        uri, key = self._scoring_target(endpoint)
        headers = {DEPLOYMENT_HEADER: deployment, "Content-Type": "application/json"}
        if key:
            headers["Authorization"] = f"Bearer {key}"
        try:
            response = requests.post(uri, json=request, headers=headers, timeout=self._score_timeout)
        except requests.RequestException as exc:
            raise OperationFailedError(f"{what}: {type(exc).__name__}: {exc}") from exc
        answered = response.headers.get(DEPLOYMENT_HEADER)
        if answered and answered != deployment:
            raise OperationFailedError(f"{what}: answered by deployment {answered}, not {deployment}")
        if response.status_code >= 400:
            raise OperationFailedError(f"{what}: ({response.status_code}) {response.text[:300]}")
        try:
            return response.json()
        except ValueError as exc:
            raise OperationFailedError(f"deployment {deployment} of {endpoint} replied with no JSON: "
                                       f"{response.text[:200]}") from exc

    def _scoring_target(self, endpoint: str) -> tuple[str, str]:
        """The endpoint's scoring URI and a credential for it (key, or token for token auth modes)."""
        client = self._aml.client
        with _operation(f"reading the scoring URI and keys of {endpoint}"):
            found = client.online_endpoints.get(name=endpoint)
            keys = client.online_endpoints.get_keys(name=endpoint)
        uri = str(found.scoring_uri or "")
        if not uri:
            raise OperationFailedError(f"endpoint {endpoint} has no scoring URI yet "
                                       f"({_state(found.provisioning_state)})")
        key = getattr(keys, "primary_key", None) or getattr(keys, "access_token", None) or ""
        return uri, str(key)
