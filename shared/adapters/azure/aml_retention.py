"""Azure ML side of retention: list the workspace's assets into the planner's inventory, and execute its actions.

Listing follows the rule "page, never GET per asset": one paged listing of containers, then one
paged `listViewType=All` listing of versions per name. The versions are read through the SDK's
generated REST client (`DataVersionsOperations.list`, as `ml_client.data.list` does) but kept as
REST objects, because the SDK's `Data` entity drops `isArchived`; two listings (ActiveOnly, then
ArchivedOnly) could miss a version archived or restored in between, and a missing version would
leave its blobs unprotected. Endpoints come with their traffic, deployments with their model; jobs
with their inputs and outputs. Datastore names are resolved to blob containers once per run
(`datastore_containers`), never per asset.

Idle deployments: Azure ML records no "traffic went to 0% at" time. A deployment's traffic can only
change through an update of its endpoint, so a deployment at 0% now has been at 0% at least since
the later of the endpoint's and the deployment's `systemData.lastModifiedAt`. That bound is
conservative: any other change to the endpoint restarts the clock, which delays a deletion but never
makes one early.

Deletes of data and model versions: the public SDK offers archive/restore only. The ARM REST API
has `DELETE …/data/{name}/versions/{version}` (and the same for models), which the SDK's generated
client (`DataVersionsOperations.delete`) calls; we use that, for rules that ask for `delete`.

Like shared/adapters/azure/azureml.py, this module imports azure.ai.ml lazily (on first call).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

from shared.domain.retention.inventory import (
    BlobPath,
    DataKey,
    DataVersion,
    Deployment,
    DeploymentKey,
    Job,
    JobInput,
    ModelKey,
    ModelVersion,
)
from shared.domain.retention.planner import Action, ActionKind
from shared.domain.vocabulary import FINISHED_JOB_STATUSES, METRIC_TAG_PREFIX, Tag
from shared.domain.workspace import model_ref

if TYPE_CHECKING:
    from azure.ai.ml import MLClient

    from shared.adapters.azure.azureml import AzureML

log = logging.getLogger(__name__)

LIST_WORKERS = 8

_DATASTORE_URI = re.compile(r"^azureml://(?:.*/)?datastores/(?P<ds>[^/]+)/paths/(?P<path>.*)$", re.IGNORECASE)
_BLOB_URL = re.compile(r"^https://[^/]+\.blob\.[^/]+/(?P<container>[^/?]+)/?(?P<path>[^?]*)")
_ASSET_ID = re.compile(r"/(?P<kind>data|models)/(?P<name>[^/]+)/versions/(?P<version>[^/]+)$", re.IGNORECASE)
_SHORT_REF = re.compile(r"^(?:azureml:)?(?P<name>[^:/@]+):(?P<version>[^:/@]+)$")  # the SDK drops 'azureml:'
DEFAULT_DATASTORE = "workspaceblobstore"
_MODEL_TYPES = {"custom_model", "mlflow_model", "triton_model"}


def blob_path(uri: str | None, containers: Mapping[str, str]) -> BlobPath | None:
    """An asset URI as a path in a blob container; None when it points elsewhere (unknown datastore, local)."""
    if not uri:
        return None
    m = _DATASTORE_URI.match(uri)
    if m:  # paths are percent-encoded in URIs (shared.domain.blobnames.azureml_path), blob names are not
        container = containers.get(m.group("ds").lower())
        return BlobPath(container, unquote(m.group("path"))) if container else None
    m = _BLOB_URL.match(uri)
    if m:  # https://<account>.blob.core.windows.net/<container>/<path>: the data account is the one we watch
        return BlobPath(m.group("container"), unquote(m.group("path")))
    return None


def _aware(value: datetime | str | None) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _created(entity: Any) -> datetime:
    context = getattr(entity, "creation_context", None) or getattr(entity, "system_data", None)
    created = _aware(getattr(context, "created_at", None))
    if created is None:
        raise ValueError(f"{type(entity).__name__} {getattr(entity, 'name', '?')} has no creation time")
    return created


def _metrics(values: Mapping[str, str]) -> dict[str, float]:
    out: dict[str, float] = {}
    for key, raw in values.items():
        if key.startswith(METRIC_TAG_PREFIX):
            try:
                out[key.removeprefix(METRIC_TAG_PREFIX)] = float(raw)
            except (TypeError, ValueError):
                continue  # not a number: the metric is absent for top-K, as the gate treats it
    return out


class AmlRetention:
    """Lists Azure ML assets for the planner and executes the Azure ML actions of a plan."""

    def __init__(self, azureml: AzureML) -> None:
        self._azureml = azureml

    @property
    def _client(self) -> MLClient:
        return self._azureml.client

    # -- listing ------------------------------------------------------------------------------
    def datastore_containers(self) -> dict[str, str]:
        """Datastore name (lower case) -> blob container, read once per run."""
        out: dict[str, str] = {}
        for ds in self._client.datastores.list():
            container = getattr(ds, "container_name", None)
            if container:
                out[str(ds.name).lower()] = str(container)
        return out

    def _versions(self, rest: Any, names: Iterable[str], convert: Callable[[str, Any], Any]) -> list[Any]:
        """Every version of every name, archived or not, one paged listing per name (8 names at a time)."""
        from azure.ai.ml.constants import ListViewType

        scope = {"resource_group_name": self._client.resource_group_name,
                 "workspace_name": self._client.workspace_name}

        def one(name: str) -> list[Any]:
            pages = rest.list(name=name, list_view_type=ListViewType.ALL, cls=lambda objs: objs, **scope)
            return [convert(name, v) for v in pages]

        with ThreadPoolExecutor(max_workers=LIST_WORKERS, thread_name_prefix="retention-list") as pool:
            return [v for group in pool.map(one, sorted(names)) for v in group]

    def _names(self, operations: Any) -> list[str]:
        from azure.ai.ml.constants import ListViewType

        return [str(c.name) for c in operations.list(list_view_type=ListViewType.ALL)]

    def data_versions(self, containers: Mapping[str, str]) -> list[DataVersion]:
        def convert(name: str, rest: Any) -> DataVersion:
            props = rest.properties
            path = blob_path(props.data_uri, containers)
            return DataVersion(name=name, version=str(rest.name), created_at=_created(rest),
                               archived=bool(props.is_archived), tags=dict(props.tags or {}),
                               blob_paths=(path,) if path else ())

        rest = self._client.data._operation  # the generated client ml_client.data.list uses
        return list(self._versions(rest, self._names(self._client.data), convert))

    def model_versions(self, containers: Mapping[str, str]) -> list[ModelVersion]:
        def convert(name: str, rest: Any) -> ModelVersion:
            props = rest.properties
            tags = dict(props.tags or {})
            lineage = {**tags, **dict(props.properties or {})}  # properties are immutable: they win
            path = blob_path(props.model_uri, containers)
            return ModelVersion(
                name=name, version=str(rest.name), created_at=_created(rest),
                archived=bool(props.is_archived) or str(props.stage or "").lower() == "archived",
                tags=tags, metrics=_metrics(lineage), data_asset=lineage.get(Tag.DATA_ASSET.value) or None,
                data_version=lineage.get(Tag.DATA_VERSION.value) or None, blob_paths=(path,) if path else (),
                job=props.job_name or lineage.get(Tag.JOB_NAME.value) or None,
            )

        rest = self._client.models._model_versions_operation  # what ml_client.models.list uses
        return list(self._versions(rest, self._names(self._client.models), convert))

    def deployments(self) -> list[Deployment]:
        """Every online deployment with its endpoint's traffic and the time it has been idle since at least."""
        endpoints = list(self._client.online_endpoints.list())

        def of(endpoint: Any) -> list[Deployment]:
            traffic = {k.lower(): int(v) for k, v in (endpoint.traffic or {}).items()}
            mirror = {k.lower(): int(v) for k, v in (getattr(endpoint, "mirror_traffic", None) or {}).items()}
            endpoint_changed = _aware((endpoint.properties or {}).get("lastModifiedAt"))
            out = []
            for d in self._client.online_deployments.list(endpoint.name):
                percent = traffic.get(str(d.name).lower(), 0)
                shadow = mirror.get(str(d.name).lower(), 0)
                system = getattr(d, "creation_context", None)
                changed = [t for t in (endpoint_changed, _aware(getattr(system, "last_modified_at", None))) if t]
                model = model_ref(d.model)
                out.append(Deployment(
                    endpoint=str(endpoint.name), name=str(d.name), traffic_percent=percent,
                    zero_traffic_since=max(changed) if percent == 0 and shadow == 0 and changed else None,
                    model_name=model[0] if model else None,
                    model_version=model[1] if model else None,
                    mirror_traffic_percent=shadow, tags=dict(d.tags or {}),
                ))
            return out

        with ThreadPoolExecutor(max_workers=LIST_WORKERS, thread_name_prefix="retention-list") as pool:
            return [d for group in pool.map(of, endpoints) for d in group]

    def jobs(self, containers: Mapping[str, str]) -> list[Job]:
        """Top-level jobs with the assets they read and write (pipeline inputs are on the pipeline job)."""
        out = []
        for job in self._client.jobs.list():
            inputs: list[JobInput] = []
            for value in (getattr(job, "inputs", None) or {}).values():
                ref = _job_input(value, containers)
                if ref is not None:
                    inputs.append(ref)
            outputs: dict[str, BlobPath] = {}
            for name, value in (getattr(job, "outputs", None) or {}).items():
                # an output without a path goes to Azure ML's default: <default datastore>/azureml/<job>/<output>/
                uri = _uri_of(value) or f"azureml://datastores/{DEFAULT_DATASTORE}/paths/azureml/{job.name}/{name}/"
                path = blob_path(uri, containers)
                if path is not None:
                    outputs[str(name)] = path
            status = str(getattr(job.status, "value", job.status) or "Unknown")
            context = getattr(job, "creation_context", None)
            finished = status.strip().lower() in FINISHED_JOB_STATUSES
            finished_at = _aware(getattr(context, "last_modified_at", None)) if finished else None
            out.append(Job(name=str(job.name), status=status, inputs=tuple(inputs), outputs=outputs,
                           finished_at=finished_at, tags=dict(job.tags or {})))
        return out

    # -- actions ------------------------------------------------------------------------------
    def execute(self, action: Action) -> str:
        """Do one Azure ML action; 'done', or 'already' when the asset was gone or already archived.

        Raises ValueError for an action that is not Azure ML's; any Azure error other than a 404
        propagates (the runner records it as failed and the next run retries).
        """
        from azure.core.exceptions import ResourceNotFoundError

        target = action.target
        try:
            if action.kind in (ActionKind.ARCHIVE_DATA, ActionKind.ARCHIVE_MODEL):
                assert isinstance(target, DataKey | ModelKey)
                return self._archive(action.kind is ActionKind.ARCHIVE_DATA, target)
            if action.kind in (ActionKind.DELETE_DATA, ActionKind.DELETE_MODEL):
                assert isinstance(target, DataKey | ModelKey)
                rest = self._version_rest(action.kind is ActionKind.DELETE_DATA)
                rest.get(name=target.name, version=target.version, **self._scope())  # ARM answers 204 when gone
                rest.delete(name=target.name, version=target.version, **self._scope())
                return "done"
            if action.kind is ActionKind.DELETE_DEPLOYMENT:
                assert isinstance(target, DeploymentKey)
                deployments = self._client.online_deployments
                deployments.get(name=target.name, endpoint_name=target.endpoint)  # ARM answers 204 when gone
                deployments.begin_delete(name=target.name, endpoint_name=target.endpoint).result()
                return "done"
        except ResourceNotFoundError:
            return "already"  # gone already: a re-run after a crash, or someone else did it
        raise ValueError(f"not an Azure ML action: {action.kind.value}")

    def _scope(self) -> dict[str, Any]:
        return {"resource_group_name": self._client._operation_scope.resource_group_name,
                "workspace_name": self._client.workspace_name}

    def _version_rest(self, data: bool) -> Any:
        """The generated REST client of data or model versions (the SDK's entities drop `isArchived`)."""
        return self._client.data._operation if data else self._client.models._model_versions_operation

    def _archive(self, data: bool, target: DataKey | ModelKey) -> str:
        """Archive one version; 'already' if it is archived (the SDK's archive would silently rewrite it)."""
        current = self._version_rest(data).get(name=target.name, version=target.version, **self._scope())
        props = current.properties
        if bool(props.is_archived) or str(getattr(props, "stage", None) or "").lower() == "archived":
            return "already"
        ops: Any = self._client.data if data else self._client.models
        ops.archive(name=target.name, version=target.version)
        return "done"


def _uri_of(value: Any) -> str | None:
    """The path of a job input or output; None for a literal (a number, a plain string) or an unset path.

    Pipeline and node inputs wrap their value in `_data`; reading `.path` on one that wraps a literal
    raises, so the wrapped value is looked at first.
    """
    data = getattr(value, "_data", value) if not isinstance(value, str | int | float | bool) else value
    if data is None or isinstance(data, str | int | float | bool):
        return None  # literal inputs (e.g. target_column: churned) reference no asset
    path = data.get("path") if isinstance(data, Mapping) else getattr(data, "path", None)
    return path if isinstance(path, str) and path else None


def _job_input(value: Any, containers: Mapping[str, str]) -> JobInput | None:
    uri = _uri_of(value)
    if not uri:
        return None
    kind = str(getattr(value, "type", "") or "").lower()
    m = _ASSET_ID.search(uri)
    if m:
        key_cls: Any = ModelKey if m.group("kind").lower() == "models" else DataKey
        return key_cls(m.group("name"), m.group("version"))  # type: ignore[no-any-return]
    m = _SHORT_REF.match(uri)
    if m:
        return (ModelKey if kind in _MODEL_TYPES else DataKey)(m.group("name"), m.group("version"))
    return blob_path(uri, containers)
