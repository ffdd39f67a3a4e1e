"""Ports: the one Protocol for every dependency of the services.

Services (`shared.services`) take only these. Each has an Azure adapter (`shared.adapters.azure`)
and an in-memory adapter (`shared.adapters.memory`) with the same semantics; one contract suite
(`tests/contract`) runs against both, so an in-memory adapter that drifts from Azure fails it.

Errors: adapters raise `shared.errors.TransientError` subclasses, or let azure-core's
`AzureError` through, for anything worth retrying; a port never swallows an error.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol, TypeVar

from shared.domain.audit import AuditRecord, AuditTail
from shared.domain.decay import ChampionDegraded
from shared.domain.events import DataVersionRegistered
from shared.domain.lineage import JobInfo
from shared.domain.records import Row
from shared.domain.retention.addresses import AddressBook, Datastore
from shared.domain.retention.inventory import Blob, DataVersion, Deployment, Job, ModelVersion
from shared.domain.retention.planner import Action
from shared.domain.retrain import PipelineSubmission
from shared.domain.vocabulary import ApplyStatus
from shared.domain.workspace import (
    DataVersionInfo,
    DataVersionSpec,
    DeploymentSpec,
    EndpointView,
    ModelInfo,
    RegisteredDataVersion,
)

T_contra = TypeVar("T_contra", contravariant=True)

Clock = Callable[[], datetime]
"""Now, timezone-aware (UTC). Services read time only through this, so tests and the harness move it."""

Sleeper = Callable[[float], None]
"""Waits the given seconds (`time.sleep` in production). Services wait only through this, so tests do not."""


# -- the ledger's store: Table Storage semantics --------------------------------------------------------
class TableStore(Protocol):
    """One table of entities keyed by (PartitionKey, RowKey), with optimistic concurrency.

    Every entity read carries the ETag it was read at. `insert` is insert-or-conflict and
    `replace_if` is conditional on that ETag: the two writes that decide ownership between instances.
    """

    def get(self, partition: str, row: str) -> Row | None:
        """The entity, or None if there is none."""
        ...

    def insert(self, entity: Mapping[str, Any]) -> Row | None:
        """Create the entity; None if one with its keys exists already (another instance won)."""
        ...

    def replace_if(self, row: Row, entity: Mapping[str, Any]) -> Row | None:
        """Replace `row` by `entity` only if it is unchanged since read; None if it changed or is gone."""
        ...

    def upsert(self, entity: Mapping[str, Any], *, merge: bool = False) -> Row:
        """Write unconditionally: replace (or, with `merge`, update the given properties) or create."""
        ...

    def upsert_many(self, entities: Iterable[Mapping[str, Any]]) -> None:
        """Upsert entities of ONE partition, atomically in groups of at most 100 (a table transaction)."""
        ...

    def query(self, partition: str, *, start: str = "", end: str = "") -> Iterator[Row]:
        """The entities of one partition with `start` <= RowKey < `end` ("" = unbounded), in RowKey order
        (paged underneath): one range read, so a partition can hold several kinds of rows told apart by key."""
        ...

    def delete(self, partition: str, row: str) -> None:
        """Delete the entity; nothing happens if it is gone."""
        ...


# -- blobs ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BlobFacts:
    """What a blob is right now: the listing or a properties read gives all of it."""

    container: str
    name: str
    etag: str  # without quotes
    size: int
    last_modified: datetime
    tier: str | None = None  # Hot | Cool | Cold | Archive, as the service spells it


class BlobStore(Protocol):
    """The data account's blobs, as ingest reads them."""

    def properties(self, container: str, name: str) -> BlobFacts | None:
        """The blob's facts; None if it does not exist."""
        ...

    def read(self, container: str, name: str, etag: str) -> Iterator[bytes]:
        """Stream the content in chunks, only if the blob still has `etag`.

        Raises `shared.errors.BlobChangedError` if it changed or vanished meanwhile.
        """
        ...

    def list(self, container: str, prefix: str) -> Iterator[BlobFacts]:
        """Every blob under `prefix`, in name order (paged underneath)."""
        ...

    def copy(self, container: str, name: str, etag: str, to_name: str) -> None:
        """Copy the blob's content at `etag` to `to_name` in the same container (server-side), overwriting it.

        Done when this returns. Raises `shared.errors.BlobChangedError` if the source changed or
        vanished (nothing is copied); a `TransientError` if the copy did not finish (a retry copies again).
        """
        ...


# -- queues and events --------------------------------------------------------------------------------
MAX_DELAY_SECONDS = 7 * 24 * 3600  # Azure Queue Storage's maximum visibility timeout


def clamp_delay(delay_seconds: float) -> int:
    """Whole seconds between 0 and 7 days, as every `DelayedQueue` applies them (a longer wait re-schedules)."""
    return min(MAX_DELAY_SECONDS, max(0, round(delay_seconds)))


class DelayedQueue(Protocol[T_contra]):
    """Schedules work as a queue message that becomes visible after `delay_seconds` (clamped to 0..7 days)."""

    def send(self, item: T_contra, delay_seconds: float) -> None: ...


class EventPublisher(Protocol):
    """Evergreen's own Event Grid topic."""

    def data_version_registered(self, event: DataVersionRegistered) -> str:
        """Publish; returns the (deterministic) event id, so a re-publish is deduplicated downstream."""
        ...

    def champion_degraded(self, event: ChampionDegraded) -> str:
        """Publish `Evergreen.ChampionDegraded`; returns its (deterministic) event id."""
        ...


class AuditLog(Protocol):
    """Where every automated decision is recorded."""

    def record(self, rec: AuditRecord) -> None:
        """Write one record; writing the same record again (same key) rewrites it, never duplicates."""
        ...

    def query(self, *, days: int = 1, kind_prefix: str = "", now: datetime | None = None) -> Iterator[AuditRecord]:
        """Records of the last `days` UTC days, newest first."""
        ...

    def tail(self, *, limit: int, kind_prefix: str = "", assets: Mapping[str, str] | None = None,
             days: int = 7, now: datetime | None = None, scan_limit: int = 5000) -> AuditTail:
        """The newest `limit` records of the last `days` UTC days with that kind prefix and those assets,
        newest first, reading at most `scan_limit` records (bounded, whatever the log's size). An `assets`
        item matches the asset of that key (any asset for the key "") equal to it or `<it>:<version>`."""
        ...


# -- Azure ML ---------------------------------------------------------------------------------------------
class DataRegistry(Protocol):
    """Data asset versions."""

    def register_data_version(self, spec: DataVersionSpec) -> RegisteredDataVersion:
        """Register the next version (the service numbers it)."""
        ...

    def find_data_version(self, name: str, tag: str, value: str) -> RegisteredDataVersion | None:
        """A version of `name` carrying tag=value (reconciles a registration whose ledger write was lost)."""
        ...

    def get_data_version(self, name: str, version: str | None = None) -> DataVersionInfo | None:
        """Version `version` of `name` (its latest when None); None if there is no such asset or version."""
        ...


class JobRunner(Protocol):
    """Pipeline jobs."""

    def submit_pipeline(self, submission: PipelineSubmission) -> str:
        """Submit under the submission's deterministic name; an existing job is returned, never re-run.

        Raises `shared.errors.JobRejectedError` if Azure ML refuses the job for good (HTTP 400, a YAML
        that does not load); every other failure is worth retrying.
        """
        ...

    def job_status(self, name: str) -> str | None:
        """The job's status as the service spells it (NotStarted, Running, Completed, …); None if there is none."""
        ...

    def read_comparison(self, job_name: str) -> str | None:
        """The `comparison.json` a compare job (`ml/compare.yml`) wrote to its `comparison` output, as text;
        None if the job or the file does not exist."""
        ...


class Endpoints(Protocol):
    """Managed online endpoints and the model registry, as the rollout needs them.

    Every `begin_*` starts one operation and returns at once; the rollout polls on later steps.
    What does not exist reads as None (deleting it is a no-op); every other failure raises
    `shared.errors.OperationFailedError` (the Azure adapter chains the SDK's error to it).
    """

    def get_model(self, name: str, version: str) -> ModelInfo | None: ...
    def set_model_tags(self, name: str, version: str, tags: Mapping[str, str]) -> None:
        """Merge `tags` into the model version's (mutable) tags, so the studio shows Evergreen's decision."""
        ...
    def latest_model(self, name: str) -> ModelInfo | None:
        """The model's newest version (the registry's `latest` label); None if there is no such model."""
        ...
    def endpoint(self, name: str) -> EndpointView | None: ...
    def begin_create_endpoint(self, name: str, tags: dict[str, str]) -> None: ...
    def begin_create_deployment(self, spec: DeploymentSpec) -> None: ...
    def begin_set_traffic(self, endpoint: str, traffic: dict[str, int]) -> None: ...
    def begin_delete_deployment(self, endpoint: str, name: str) -> None: ...
    def deployment_logs(self, endpoint: str, name: str, lines: int = 20) -> str: ...
    def score(self, endpoint: str, deployment: str, request: dict[str, Any]) -> Any: ...


# -- lineage (`python -m shared.cli lineage`): bounded registry queries --------------------------------------
class ModelRegistry(Protocol):
    """The model registry, read by tag (which versions were trained on a data version)."""

    def list_model_versions(self, name: str, *, tags: Mapping[str, str] | None = None,
                            limit: int = 100) -> list[ModelInfo]:
        """Versions of model `name` carrying every tag=value of `tags`, newest first (by `version_order`), at
        most `limit` of them, reading at most `limit` × 10 versions; none if there is no such model."""
        ...


class JobInspector(Protocol):
    """A pipeline job as lineage shows it."""

    def get_job(self, name: str) -> JobInfo | None:
        """The job with its status, tags and child steps (statuses where the service lists them); None if none."""
        ...


# -- retention's two sides ------------------------------------------------------------------------------------
class RetentionWorkspace(Protocol):
    """Azure ML as retention lists and changes it.

    Listings page through everything (archived versions included) and raise on any failure: a
    partial listing would leave assets unprotected, so nothing is planned from it.
    """

    def datastores(self) -> list[Datastore]:
        """Every datastore with its kind, account and container (or filesystem), read once per run."""
        ...

    def data_versions(self, book: AddressBook) -> list[DataVersion]:
        """Every data version, archived or not, with its address read through `book` (fail closed)."""
        ...

    def model_versions(self, book: AddressBook) -> list[ModelVersion]:
        """Every model version, archived or not, with metrics, lineage and artifact paths."""
        ...

    def deployments(self) -> list[Deployment]:
        """Every online deployment with its traffic, its model, and since when it has been at 0%."""
        ...

    def jobs(self, book: AddressBook) -> list[Job]:
        """Every job with its status, the assets it reads and the paths it writes."""
        ...

    def execute(self, action: Action) -> ApplyStatus:
        """Carry out one archive/delete of a version or deployment: 'done', or 'already' when there was
        nothing left to do (gone, or already archived). Raises for any other failure; ValueError for an
        action that is not Azure ML's."""
        ...


class RetentionBlobs(Protocol):
    """The data account as retention lists and changes it."""

    def account_names(self) -> frozenset[str]:
        """The storage account(s) this lists and changes: the only ones retention ever deletes in."""
        ...

    def list(self, containers: Iterable[str]) -> list[Blob]:
        """Every blob of the given containers, with tier, index tags and ETag; a missing container holds none."""
        ...

    def execute(self, action: Action) -> ApplyStatus:
        """Delete or tier one blob if it still has the listed ETag: 'done', 'already' when it is gone or
        already in that tier, 'changed' when it was changed since it was listed (nothing done)."""
        ...

    def delete_job_output(self, action: Action) -> ApplyStatus:
        """Delete every blob under a finished job's output folder written before the job finished
        (`action.written_before`): 'done'; 'already' when none was left; 'newer' when some were written after
        the job finished (those are kept, the rest deleted). Raises ValueError without `written_before`."""
        ...


# -- recovery: the reconciler and the redrive command (issue 11) ------------------------------------------
class Reconcilable(Protocol):
    """A flow's service that re-drives its own stuck work: expired leases, lost messages, lost events."""

    def reconcile(self, now: datetime) -> Sequence[object]:
        """Re-drive what is stuck at `now`, idempotently, auditing each re-drive; returns one outcome per re-drive."""
        ...


@dataclass(frozen=True)
class DeadLetter:
    """One blob Event Grid wrote to the dead-letter container: the event(s) it gave up delivering."""

    name: str  # `<TOPIC>/<SUBSCRIPTION>/yyyy/MM/dd/HH/<id>.json`
    events: tuple[Mapping[str, Any], ...]  # each event with Event Grid's deadLetterReason, deliveryAttempts, …
    etag: str
    last_modified: datetime


class DeadLetters(Protocol):
    """Event Grid's dead-letter container (in the app's storage account)."""

    def list(self) -> Iterator[DeadLetter]:
        """Every dead letter, in name order (per subscription, oldest first). A blob that is not JSON reads as
        a dead letter with no events (it is shown, never replayed)."""
        ...

    def get(self, name: str) -> DeadLetter | None:
        """One dead letter; None if there is none by that name."""
        ...

    def delete(self, letter: DeadLetter) -> bool:
        """Delete it only if unchanged since read (its ETag); False if it changed or is gone."""
        ...


@dataclass(frozen=True)
class PoisonMessage:
    """A message a queue trigger gave up on, as it sits in `<queue>-poison`."""

    queue: str  # the poison queue's name
    id: str
    text: str
    inserted_at: datetime | None
    receipt: str | None = None  # set when taken for replay: what `delete`/`release` need


class PoisonQueue(Protocol):
    """One poison queue. Messages are read without hiding them (`peek`), or taken (hidden) for replay."""

    @property
    def name(self) -> str: ...

    def peek(self, limit: int = 32) -> list[PoisonMessage]:
        """Up to `limit` messages (Queue Storage peeks at most 32), oldest first; none if the queue does not exist."""
        ...

    def take(self, message_id: str | None = None) -> PoisonMessage | None:
        """Hide one message for a while and return it with a receipt: the one with `message_id`, or the oldest.
        None if there is none (a message taken by someone else is invisible)."""
        ...

    def delete(self, message: PoisonMessage) -> None:
        """Delete a taken message (after its replay succeeded); LookupError if it is gone or was taken again."""
        ...

    def release(self, message: PoisonMessage) -> None:
        """Make a taken message visible again at once (its replay failed, or it was not the one wanted);
        LookupError if it is gone or was taken again."""
        ...
