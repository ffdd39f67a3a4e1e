"""Retention's two ports in memory: a workspace and a data account you fill in a test.

`MemoryRetentionWorkspace` (`RetentionWorkspace`) and `MemoryRetentionBlobs` (`RetentionBlobs`)
hold the inventory values directly (`DataVersion`, `Blob`, ...) and execute actions with Azure's
semantics, as `tests/contract/test_retention_adapters.py` checks against the Azure adapters:
archive marks a version archived, delete removes it, tier moves a blob (never changing its
last-modified time), a job output is deleted by prefix (only blobs written before the job finished:
later ones are kept and it answers 'newer'); doing it again answers 'already'. A
deployment that takes traffic cannot be deleted (Azure ML answers 400). Every upload gives a blob a
new ETag, and a blob action carrying another ETag than the blob's answers 'changed' (as Azure's 412).
A version may be `put_addressed` with raw Azure ML addresses, read through the run's `AddressBook`
when listed, as the Azure adapter reads them.

Every port call goes through `faults.check(operation, target)`, so a test (or the fault-injection
harness) can make the next N calls fail: `faults.throttle(2)` answers 429 twice, `faults.fail(...)`
raises any error. `faults.calls` counts the calls by operation. Thread-safe: the runner applies
actions on a thread pool.
"""

from __future__ import annotations

import dataclasses
import itertools
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import TypeVar

from shared.domain.records import utcnow
from shared.domain.retention.addresses import AddressBook, Datastore
from shared.domain.retention.inventory import (
    Blob,
    BlobKey,
    BlobTier,
    DataKey,
    DataVersion,
    Deployment,
    DeploymentKey,
    Job,
    ModelKey,
    ModelVersion,
)
from shared.domain.retention.planner import Action, ActionKind, job_output_scope
from shared.domain.vocabulary import ApplyStatus
from shared.errors import TransientError
from shared.ports import Clock

K = TypeVar("K", DataKey, ModelKey)
V = TypeVar("V", DataVersion, ModelVersion)

DATA_ACCOUNT = "devstoreaccount1"  # as Azurite's, so the contract suite sees the same names on both sides
DEFAULT_CONTAINERS = {"workspaceblobstore": "azureml-blobstore", "landing": "landing"}
DEFAULT_DATASTORES = tuple(Datastore(name, "AzureBlob", DATA_ACCOUNT, container)
                           for name, container in DEFAULT_CONTAINERS.items())


class ThrottledError(TransientError):
    """What Azure answers a burst with once its own retries are spent: 429 Too Many Requests."""

    status_code = 429


@dataclass
class _Fault:
    remaining: int
    make: Callable[[str], Exception]
    operation: str | None
    target: str | None


class Faults:
    """Scripted failures of the next port calls, matched by operation name and a substring of the target."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: list[_Fault] = []
        self.calls: Counter[str] = Counter()

    def fail(self, make: Callable[[str], Exception], *, times: int = 1, operation: str | None = None,
             target: str | None = None) -> None:
        """The next `times` matching calls raise `make(description)` instead of doing anything."""
        with self._lock:
            self._pending.append(_Fault(times, make, operation, target))

    def throttle(self, times: int = 1, *, operation: str | None = None, target: str | None = None) -> None:
        """The next `times` matching calls answer 429 (`ThrottledError`, a TransientError)."""
        self.fail(lambda what: ThrottledError(f"(429) TooManyRequests: {what} throttled"), times=times,
                  operation=operation, target=target)

    def clear(self) -> None:
        with self._lock:
            self._pending.clear()

    def check(self, operation: str, target: str = "") -> None:
        """Count the call; raise the first pending fault that matches it."""
        with self._lock:
            self.calls[operation] += 1
            for fault in self._pending:
                if fault.remaining <= 0:
                    continue
                if fault.operation not in (None, operation) or (fault.target and fault.target not in target):
                    continue
                fault.remaining -= 1
                error = fault.make(f"{operation} {target}".strip())
                break
            else:
                return
        raise error


class MemoryRetentionWorkspace:
    """Azure ML's versions, deployments and jobs as retention sees them; fill it with `put`."""

    def __init__(self, *, datastores: Iterable[Datastore] | None = None) -> None:
        self._lock = threading.Lock()
        self._datastores = list(DEFAULT_DATASTORES if datastores is None else datastores)
        self._data: dict[DataKey, DataVersion] = {}
        self._models: dict[ModelKey, ModelVersion] = {}
        self._addresses: dict[DataKey | ModelKey, tuple[str, ...]] = {}
        self._deployments: dict[DeploymentKey, Deployment] = {}
        self._jobs: dict[str, Job] = {}
        self.faults = Faults()

    # -- what people and pipelines do (not part of the port) -----------------------------------
    def put(self, *assets: DataVersion | ModelVersion | Deployment | Job) -> None:
        """Create or replace assets, as a registration, a deployment or a job submission would."""
        with self._lock:
            for asset in assets:
                if isinstance(asset, DataVersion):
                    self._data[asset.key] = asset
                elif isinstance(asset, ModelVersion):
                    self._models[asset.key] = asset
                elif isinstance(asset, Deployment):
                    self._deployments[asset.key] = asset
                else:
                    self._jobs[asset.name] = asset

    def put_addressed(self, asset: DataVersion | ModelVersion, *addresses: str) -> None:
        """Register a version at raw Azure ML addresses (`abfss://…`, `azureml://…`), read when listed."""
        with self._lock:
            self._addresses[asset.key] = addresses
        self.put(asset)

    def add_datastore(self, datastore: Datastore) -> None:
        with self._lock:
            self._datastores.append(datastore)

    def _read(self, item: V, book: AddressBook) -> V:
        raw = self._addresses.get(item.key)
        if raw is None:
            return item
        located = tuple(where for where in (book.locate(a) for a in raw) if where is not None)
        return dataclasses.replace(item, blob_paths=located)

    def data_version(self, key: DataKey) -> DataVersion | None:
        with self._lock:
            return self._data.get(key)

    def model_version(self, key: ModelKey) -> ModelVersion | None:
        with self._lock:
            return self._models.get(key)

    def deployment(self, key: DeploymentKey) -> Deployment | None:
        with self._lock:
            return self._deployments.get(key)

    # -- the port -------------------------------------------------------------------------------
    def datastores(self) -> list[Datastore]:
        self.faults.check("datastores")
        with self._lock:
            return list(self._datastores)

    def data_versions(self, book: AddressBook) -> list[DataVersion]:
        """Every version, archived or not; raw addresses (`put_addressed`) are read through `book`."""
        self.faults.check("data_versions")
        with self._lock:
            return [self._read(self._data[k], book) for k in sorted(self._data, key=DataKey.sort_key)]

    def model_versions(self, book: AddressBook) -> list[ModelVersion]:
        self.faults.check("model_versions")
        with self._lock:
            return [self._read(self._models[k], book) for k in sorted(self._models, key=ModelKey.sort_key)]

    def deployments(self) -> list[Deployment]:
        self.faults.check("deployments")
        with self._lock:
            return [self._deployments[k] for k in sorted(self._deployments, key=DeploymentKey.sort_key)]

    def jobs(self, book: AddressBook) -> list[Job]:
        self.faults.check("jobs")
        with self._lock:
            return [self._jobs[name] for name in sorted(self._jobs)]

    def execute(self, action: Action) -> ApplyStatus:
        """Archive or delete a version, or delete a deployment; 'already' when nothing was left to do.

        Raises ValueError for a blob action, or for deleting a deployment that takes traffic (as
        Azure ML refuses it); a scripted fault raises what it was told to.
        """
        self.faults.check("execute", str(action.target))
        target = action.target
        with self._lock:
            if action.kind in (ActionKind.ARCHIVE_DATA, ActionKind.DELETE_DATA) and isinstance(target, DataKey):
                return _version_action(self._data, target, delete=action.kind is ActionKind.DELETE_DATA)
            if action.kind in (ActionKind.ARCHIVE_MODEL, ActionKind.DELETE_MODEL) and isinstance(target, ModelKey):
                return _version_action(self._models, target, delete=action.kind is ActionKind.DELETE_MODEL)
            if action.kind is ActionKind.DELETE_DEPLOYMENT and isinstance(target, DeploymentKey):
                return self._delete_deployment(target)
        raise ValueError(f"not an Azure ML action: {action.kind.value}")

    def _delete_deployment(self, key: DeploymentKey) -> ApplyStatus:
        current = self._deployments.get(key)
        if current is None:
            return ApplyStatus.ALREADY
        if current.takes_traffic:
            raise ValueError(f"Deployment {key.name} cannot be deleted because it receives traffic "
                             f"({current.traffic_percent}%); set its traffic to 0 first")
        del self._deployments[key]
        return ApplyStatus.DONE


def _version_action(store: dict[K, V], key: K, *, delete: bool) -> ApplyStatus:
    """Archive (mark) or delete (remove) one version in `store`; 'already' if gone or archived already."""
    current = store.get(key)
    if current is None:
        return ApplyStatus.ALREADY
    if delete:
        del store[key]
        return ApplyStatus.DONE
    if current.archived:
        return ApplyStatus.ALREADY
    store[key] = dataclasses.replace(current, archived=True)
    return ApplyStatus.DONE


class MemoryRetentionBlobs:
    """The data account's blobs as retention sees them; fill it with `put`."""

    def __init__(self, *, clock: Clock = utcnow, account: str = DATA_ACCOUNT) -> None:
        self._lock = threading.Lock()
        self._blobs: dict[tuple[str, str], Blob] = {}
        self._clock = clock
        self._account = account
        self._etags = itertools.count(1)
        self.faults = Faults()

    # -- what people and pipelines do (not part of the port) -----------------------------------
    def put(self, container: str, name: str, *, last_modified: datetime | None = None,
            tier: BlobTier | None = BlobTier.HOT, tags: Mapping[str, str] | None = None) -> Blob:
        """Upload (or overwrite) a blob, with a new ETag; `last_modified` defaults to the clock (tests may backdate)."""
        blob = Blob(container, name, last_modified or self._clock(), tier, dict(tags or {}),
                    etag=f'"0x{next(self._etags):08X}"')
        with self._lock:
            self._blobs[(container, name)] = blob
        return blob

    def blob(self, container: str, name: str) -> Blob | None:
        with self._lock:
            return self._blobs.get((container, name))

    def names(self, container: str, prefix: str = "") -> list[str]:
        with self._lock:
            return sorted(n for c, n in self._blobs if c == container and n.startswith(prefix))

    # -- the port -------------------------------------------------------------------------------
    def account_names(self) -> frozenset[str]:
        return frozenset({self._account.lower()})

    def list(self, containers: Iterable[str]) -> list[Blob]:
        """Blobs of the containers, by container then name (a container that does not exist holds none)."""
        self.faults.check("list")
        wanted = set(containers)
        with self._lock:
            return [self._blobs[k] for k in sorted(self._blobs) if k[0] in wanted]

    def execute(self, action: Action) -> ApplyStatus:
        """Delete or tier one blob if it has the action's ETag; 'already' when it is gone or already in that
        tier, 'changed' when its ETag differs (nothing done). Raises ValueError for another action."""
        self.faults.check("execute", str(action.target))
        target = action.target
        if not isinstance(target, BlobKey) or action.kind not in (ActionKind.DELETE_BLOB, ActionKind.TIER_BLOB):
            raise ValueError(f"not a blob action: {action.kind.value}")
        with self._lock:
            current = self._blobs.get((target.container, target.name))
            if current is None:
                return ApplyStatus.ALREADY
            if action.etag and current.etag != action.etag:
                return ApplyStatus.CHANGED
            if action.kind is ActionKind.DELETE_BLOB:
                del self._blobs[(target.container, target.name)]
                return ApplyStatus.DONE
            if (current.tier or BlobTier.HOT) is action.tier:
                return ApplyStatus.ALREADY
            self._blobs[(target.container, target.name)] = dataclasses.replace(current, tier=action.tier)
            return ApplyStatus.DONE

    def delete_job_output(self, action: Action) -> ApplyStatus:
        """Delete the blobs under a job output's folder written before the job finished; 'already' when none is
        left, 'newer' when some were written after it (kept). Raises ValueError as `job_output_scope`."""
        self.faults.check("delete_job_output", str(action.target))
        container, prefix, cutoff = job_output_scope(action)
        with self._lock:
            under = [k for k in self._blobs if k[0] == container and k[1].startswith(prefix)]
            doomed = [k for k in under if self._blobs[k].last_modified.replace(microsecond=0) < cutoff]
            for key in doomed:
                del self._blobs[key]
        if len(doomed) < len(under):
            return ApplyStatus.NEWER
        return ApplyStatus.DONE if doomed else ApplyStatus.ALREADY
