"""Azure ML side of retention: list the workspace's assets into the planner's inventory, and execute its actions.

Listing follows the rule "page, never GET per asset": one paged listing of containers, then one
paged `listViewType=All` listing of versions per name, names listed concurrently. Versions and jobs
are read over Azure ML's public REST API (`aml_rest.WorkspaceRest`, azure-core's ARM pipeline) and
parsed from the JSON: building azure-ai-ml entities was most of a 10× run's CPU, the SDK's `Data`
entity drops `isArchived`, and its own REST client is private (`ml_client.data._operation`). Two
listings (ActiveOnly, then ArchivedOnly) could miss a version archived or restored in between, and a
missing version would leave its blobs unprotected, hence one `All` listing. Endpoints come with
their traffic, deployments with their model; jobs with their inputs and outputs. Datastores are
read once per run (`datastores`: blob and ADLS Gen2 alike, with account and container or
filesystem) and every address is read through the pure `shared.domain.retention.addresses.AddressBook`,
which fails closed on what it cannot read.

Idle deployments: Azure ML records no "traffic went to 0% at" time. A deployment's traffic can only
change through an update of its endpoint, so a deployment at 0% now has been at 0% at least since
the later of the endpoint's and the deployment's `systemData.lastModifiedAt`. That bound is
conservative: any other change to the endpoint restarts the clock, which delays a deletion but never
makes one early.

Deletes of data and model versions: the public SDK offers archive/restore only. The ARM REST API
has `DELETE …/data/{name}/versions/{version}` (and the same for models); `WorkspaceRest` sends it,
for rules that ask for `delete`. Archive is the SDK's public `archive`; datastores and endpoints
come from the SDK's public listings.

Like shared/adapters/azure/azureml.py, this module imports azure.ai.ml lazily (on first call).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from shared.domain.retention.addresses import AddressBook, Datastore, read_job_input
from shared.domain.retention.inventory import (
    DataKey,
    DataVersion,
    Deployment,
    DeploymentKey,
    Job,
    JobInput,
    Location,
    ModelKey,
    ModelVersion,
)
from shared.domain.retention.planner import Action, ActionKind
from shared.domain.vocabulary import FINISHED_JOB_STATUSES, METRIC_TAG_PREFIX, ApplyStatus, Tag
from shared.domain.workspace import model_ref

if TYPE_CHECKING:
    from azure.ai.ml import MLClient

    from shared.adapters.azure.aml_rest import WorkspaceRest
    from shared.adapters.azure.azureml import AzureML

log = logging.getLogger(__name__)

LIST_WORKERS = 8
DEFAULT_DATASTORE = "workspaceblobstore"


def _located(where: Location | None) -> tuple[Location, ...]:
    return (where,) if where is not None else ()


def _aware(value: datetime | str | None) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _created(item: Mapping[str, Any]) -> datetime:
    """A REST item's `systemData.createdAt`; raises ValueError when it has none (age rules need it)."""
    created = _aware((item.get("systemData") or {}).get("createdAt"))
    if created is None:
        raise ValueError(f"{item.get('type', 'item')} {item.get('name', '?')} has no creation time")
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

    def __init__(self, azureml: AzureML, rest: WorkspaceRest | None = None) -> None:
        """`rest`: the workspace's REST API for listings and deletes (default: `azureml.workspace_rest()`)."""
        self._azureml = azureml
        self._rest = rest or azureml.workspace_rest()

    @property
    def _client(self) -> MLClient:
        return self._azureml.client

    # -- listing ------------------------------------------------------------------------------
    def datastores(self) -> list[Datastore]:
        """Every datastore with its kind, account and container (blob) or filesystem (ADLS Gen2), once per run."""
        out = []
        for ds in self._client.datastores.list():
            kind = getattr(ds, "type", None)
            out.append(Datastore(
                name=str(ds.name), kind=str(getattr(kind, "value", kind) or ""),
                account=str(getattr(ds, "account_name", None) or ""),
                container=str(getattr(ds, "container_name", None) or getattr(ds, "filesystem", None) or ""),
            ))
        return out

    def _versions(self, kind: str, convert: Callable[[str, Mapping[str, Any]], Any]) -> list[Any]:
        """Every version of every name of `kind`, archived or not: one paged listing per name, 8 at a time."""
        def one(name: str) -> list[Any]:
            return [convert(name, item) for item in self._rest.versions(kind, name)]

        names = sorted(self._rest.asset_names(kind))
        with ThreadPoolExecutor(max_workers=LIST_WORKERS, thread_name_prefix="retention-list") as pool:
            return [v for group in pool.map(one, names) for v in group]

    def data_versions(self, book: AddressBook) -> list[DataVersion]:
        def convert(name: str, item: Mapping[str, Any]) -> DataVersion:
            props = item.get("properties") or {}
            return DataVersion(name=name, version=str(item["name"]), created_at=_created(item),
                               archived=bool(props.get("isArchived")), tags=dict(props.get("tags") or {}),
                               blob_paths=_located(book.locate(props.get("dataUri"))))

        return list(self._versions("data", convert))

    def model_versions(self, book: AddressBook) -> list[ModelVersion]:
        def convert(name: str, item: Mapping[str, Any]) -> ModelVersion:
            props = item.get("properties") or {}
            tags = dict(props.get("tags") or {})
            lineage = {**tags, **dict(props.get("properties") or {})}  # properties are immutable: they win
            return ModelVersion(
                name=name, version=str(item["name"]), created_at=_created(item),
                archived=_archived(props), tags=tags, metrics=_metrics(lineage),
                data_asset=lineage.get(Tag.DATA_ASSET.value) or None,
                data_version=lineage.get(Tag.DATA_VERSION.value) or None,
                blob_paths=_located(book.locate(props.get("modelUri"))),
                job=props.get("jobName") or lineage.get(Tag.JOB_NAME.value) or None,
            )

        return list(self._versions("models", convert))

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

    def jobs(self, book: AddressBook) -> list[Job]:
        """Top-level jobs with the assets they read and write (pipeline inputs are on the pipeline job)."""
        return [_job(item, book) for item in self._rest.jobs()]

    # -- actions ------------------------------------------------------------------------------
    def execute(self, action: Action) -> ApplyStatus:
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
                kind = "data" if action.kind is ActionKind.DELETE_DATA else "models"
                self._rest.version(kind, target.name, target.version)  # ARM answers 204 when gone
                self._rest.delete_version(kind, target.name, target.version)
                return ApplyStatus.DONE
            if action.kind is ActionKind.DELETE_DEPLOYMENT:
                assert isinstance(target, DeploymentKey)
                deployments = self._client.online_deployments
                deployments.get(name=target.name, endpoint_name=target.endpoint)  # ARM answers 204 when gone
                deployments.begin_delete(name=target.name, endpoint_name=target.endpoint).result()
                return ApplyStatus.DONE
        except ResourceNotFoundError:
            return ApplyStatus.ALREADY  # gone already: a re-run after a crash, or someone else did it
        raise ValueError(f"not an Azure ML action: {action.kind.value}")

    def _archive(self, data: bool, target: DataKey | ModelKey) -> ApplyStatus:
        """Archive one version; 'already' if it is archived (the SDK's archive would silently rewrite it)."""
        current = self._rest.version("data" if data else "models", target.name, target.version)
        if _archived(current.get("properties") or {}):
            return ApplyStatus.ALREADY
        ops: Any = self._client.data if data else self._client.models
        ops.archive(name=target.name, version=target.version)
        return ApplyStatus.DONE


def _archived(props: Mapping[str, Any]) -> bool:
    """A version's REST properties say it is archived (`isArchived`, or a model's `stage: Archived`)."""
    return bool(props.get("isArchived")) or str(props.get("stage") or "").lower() == "archived"


def _job(item: Mapping[str, Any], book: AddressBook) -> Job:
    """A job from its REST JSON: what it reads (inputs), where it writes (outputs), its status and end."""
    name = str(item["name"])
    props = item.get("properties") or {}
    inputs = tuple(ref for value in (props.get("inputs") or {}).values()
                   if isinstance(value, Mapping) and (ref := rest_job_input(value, book)) is not None)
    outputs: dict[str, Location] = {}
    for output, value in (props.get("outputs") or {}).items():
        uri = value.get("uri") if isinstance(value, Mapping) else None
        # an output without a path goes to Azure ML's default: <default datastore>/azureml/<job>/<output>/
        path = book.locate(uri or f"azureml://datastores/{DEFAULT_DATASTORE}/paths/azureml/{name}/{output}/")
        if path is not None:
            outputs[str(output)] = path
    status = str(props.get("status") or "Unknown")
    finished = status.strip().lower() in FINISHED_JOB_STATUSES
    finished_at = _aware((item.get("systemData") or {}).get("lastModifiedAt")) if finished else None
    return Job(name=name, status=status, inputs=inputs, outputs=outputs, finished_at=finished_at,
               tags=dict(props.get("tags") or {}))


def rest_job_input(value: Mapping[str, Any], book: AddressBook) -> JobInput | None:
    """What a job input in REST form (`{jobInputType, uri}`) reads; None for a literal (`{value}`)."""
    uri = value.get("uri")
    return read_job_input(uri if isinstance(uri, str) else None, str(value.get("jobInputType") or ""), book)


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


def job_input(value: Any, book: AddressBook) -> JobInput | None:
    """What a job input (an SDK input, a pipeline input wrapping one, or a literal) reads; None for a literal."""
    return read_job_input(_uri_of(value), str(getattr(value, "type", "") or ""), book)
