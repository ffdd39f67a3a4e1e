"""Upload → data version, the decisions: pure, no I/O.

`plan_blob` decides what a landed blob means (ignore it, register it as a file version, or add it
to a folder batch); `plan_seal` decides whether a folder batch is complete. `shared.services.ingest`
executes these decisions through the ports.

A data version never points at a landing blob: landing blobs can be overwritten in place, and a
folder gets new files. Each version is a snapshot, an immutable copy under `SNAPSHOT_ROOT` in the
same container, content-addressed (`snapshot_path`): a `uri_file` version at
`<root><dataset>/<sha256 of the file>/<file name>`, a folder generation at
`<root><dataset>/<sha256 of its manifest>/` holding exactly the generation's files under their names
relative to the batch folder. The same content always maps to the same path, so copying is
idempotent and a re-run resumes where a crash stopped.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import Enum

from shared.config.policy import AssetType, DatasetPolicy, Policy
from shared.domain.blobnames import azureml_path, is_system_container, problem_with_name
from shared.domain.events import BlobCreated, DataVersionRegistered, SealRequest
from shared.domain.records import BatchRecord
from shared.domain.urls import strip_query
from shared.domain.vocabulary import BatchState, Tag
from shared.domain.workspace import DataVersionSpec
from shared.errors import InvalidEventError

log = logging.getLogger(__name__)

MAX_EVENT_FILES = 1000  # keep DataVersionRegistered well under Event Grid's 1 MB event limit
REDRIVE_GRACE = timedelta(minutes=5)  # how late a seal may be before the reconciler re-drives it
SNAPSHOT_ROOT = "_evergreen/snapshots/"
"""Where registered versions keep their bytes, in the dataset's own container (so, on its datastore).
Evergreen writes here once per content; nothing here is ever an upload to version."""


# -- decisions (values) -------------------------------------------------------------------------
@dataclass(frozen=True)
class Ignore:
    reason: str
    audited: bool = True  # False for Evergreen's own snapshot copies: their events are ours, not uploads


@dataclass(frozen=True)
class RegisterFileVersion:
    dataset: DatasetPolicy
    blob: BlobCreated


@dataclass(frozen=True)
class AddToBatch:
    dataset: DatasetPolicy
    blob: BlobCreated
    folder: str  # blob path of the batch folder inside the container, ending with '/'
    is_marker: bool


BlobDecision = Ignore | RegisterFileVersion | AddToBatch


def batch_folder(dataset: DatasetPolicy, name: str) -> str | None:
    """The batch folder of a file: the first folder level under the dataset's prefix.

    None for a file directly under the prefix: it is in no batch folder (a batch is one folder).
    """
    rest = name[len(dataset.prefix) :]
    head, sep, _ = rest.partition("/")
    return f"{dataset.prefix}{head}/" if sep else None


def is_snapshot(name: str) -> bool:
    """Whether a blob is one of Evergreen's own snapshot copies (under SNAPSHOT_ROOT)."""
    return name.startswith(SNAPSHOT_ROOT)


def plan_blob(blob: BlobCreated, policy: Policy) -> BlobDecision:
    """Decide what a landed blob means. Pure: no I/O."""
    if is_system_container(blob.container):
        return Ignore(f"container {blob.container!r} is a system container")
    problem = problem_with_name(blob.name)
    if problem:
        return Ignore(problem)
    if is_snapshot(blob.name):
        return Ignore(f"{blob.path} is a snapshot Evergreen copied for a data version", audited=False)
    for dataset in policy.datasets:
        if dataset.container == blob.container and blob.name.startswith(dataset.prefix):
            if dataset.type is AssetType.URI_FILE:
                return RegisterFileVersion(dataset, blob)
            assert dataset.batch is not None  # guaranteed by the policy's validation
            folder = batch_folder(dataset, blob.name)
            if folder is None:
                return Ignore(f"{blob.path} is directly under {dataset.name}'s prefix {dataset.prefix!r}: a "
                              f"{dataset.type.value} dataset versions folders; upload it into a folder "
                              f"({dataset.prefix}<batch>/{blob.name[len(dataset.prefix):]})")
            leaf = blob.name.rsplit("/", 1)[-1]
            return AddToBatch(dataset, blob, folder, is_marker=leaf == dataset.batch.marker)
    return Ignore(f"{blob.path} is under no dataset's prefix")


class SealStep(str, Enum):
    """What a seal request should do now."""

    SEAL = "seal"
    WAIT = "wait"  # re-schedule the request for when the quiet period may be over
    SKIP = "skip"


@dataclass(frozen=True)
class SealCheck:
    """What a seal request should do now, and why."""

    action: SealStep
    reason: str
    delay_seconds: float = 0.0


def plan_seal(
    request: SealRequest, batch: BatchRecord | None, dataset: DatasetPolicy, last_file_at: datetime | None,
    marker_present: bool, now: datetime,
) -> SealCheck:
    """Decide whether a batch generation is complete. Pure: the caller gathers the facts."""
    if batch is None:
        return SealCheck(SealStep.SKIP, "the batch is unknown to the ledger")
    if batch.generation != request.generation:
        return SealCheck(SealStep.SKIP, f"stale request for generation {request.generation}; now {batch.generation}")
    if batch.state == BatchState.SEALED:
        return SealCheck(SealStep.SKIP, f"already sealed as version {batch.version}")
    if batch.state == BatchState.SEALING:
        return _sealing(batch, now)
    assert dataset.batch is not None
    if marker_present:
        return SealCheck(SealStep.SEAL, f"marker {dataset.batch.marker} is present")
    quiet = dataset.batch.quiet_period_seconds
    if quiet is None:
        return SealCheck(SealStep.SKIP, f"waiting for the marker {dataset.batch.marker}")
    since = last_file_at or batch.opened_at
    remaining = quiet - (now - since).total_seconds()
    if remaining > 0:
        return SealCheck(SealStep.WAIT, f"last file {quiet - remaining:.1f}s ago; quiet period {quiet:g}s",
                         remaining)
    return SealCheck(SealStep.SEAL, f"no new file for {quiet:g}s")


def _sealing(batch: BatchRecord, now: datetime) -> SealCheck:
    """A batch being sealed: wait for its holder's lease (never finish the request meanwhile), or take it over."""
    if batch.seal_held(now):
        until = batch.lease_until or now
        return SealCheck(SealStep.WAIT, f"being sealed by {batch.owner or 'another instance'} (lease until "
                         f"{until.isoformat()}); looking again then", (until - now).total_seconds() + 1)
    return SealCheck(SealStep.SEAL, batch.seal_reason or "the sealer's lease expired; taking the seal over")


def stuck_batch(batch: BatchRecord, dataset: DatasetPolicy, last_file_at: datetime | None,
                marker_at: datetime | None, now: datetime, grace: timedelta = REDRIVE_GRACE) -> str | None:
    """Why an unsealed batch looks stuck (its sealer died, or its seal request was lost); None if it is not.

    Only what a seal would do now counts: a batch still inside its quiet period, or waiting for its
    marker, is not stuck. `grace` leaves time for the seal request that should be in flight.
    """
    if batch.state == BatchState.SEALED:
        return None
    if batch.state == BatchState.SEALING:
        return None if batch.seal_held(now) else f"sealing since {batch.sealing_since}, lease expired"
    if marker_at is not None and now - marker_at > grace:
        return f"marker present since {marker_at.isoformat()} and the batch is still open"
    quiet = dataset.batch.quiet_period_seconds if dataset.batch else None
    since = last_file_at or batch.opened_at
    if quiet is not None and now - since > timedelta(seconds=quiet) + grace:
        return f"no new file since {since.isoformat()} (quiet period {quiet:g}s) and the batch is still open"
    return None


def late_files(recorded: Mapping[str, Mapping[str, object]], covered: Mapping[str, Mapping[str, object]]) -> list[str]:
    """Files recorded for a sealed generation that its version does not cover at their eTag (they arrived
    while it was being sealed): they need the next generation."""
    return sorted(name for name, row in recorded.items()
                  if name not in covered or covered[name].get("ETag") != row.get("ETag"))


def seal_request_from_json(body: str) -> SealRequest:
    """Parse a seal-queue message; malformed input is an InvalidEventError naming what is wrong."""
    try:
        data = json.loads(body)
    except (ValueError, RecursionError) as exc:  # RecursionError: nested too deeply (issue 11, defect 5)
        raise InvalidEventError(f"seal request is not JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise InvalidEventError("seal request must be a JSON object")
    missing = [k for k in ("dataset", "folder", "generation") if k not in data]
    if missing:
        raise InvalidEventError(f"seal request lacks {', '.join(missing)}")
    if not isinstance(data["generation"], int):
        raise InvalidEventError("seal request: generation must be an integer")
    return SealRequest(str(data["dataset"]), str(data["folder"]), data["generation"], str(data.get("reason", "")))


def seal_request_to_json(request: SealRequest) -> str:
    """The seal-queue message text (the inverse of `seal_request_from_json`)."""
    return json.dumps({"dataset": request.dataset, "folder": request.folder, "generation": request.generation,
                       "reason": request.reason})


def blob_created_from_json(body: str) -> BlobCreated:
    """Parse a blob-retry message (a BlobCreated re-scheduled while another instance held its work).

    Raises InvalidEventError naming what is wrong.
    """
    try:
        data = json.loads(body)
    except (ValueError, RecursionError) as exc:  # RecursionError: nested too deeply (issue 11, defect 5)
        raise InvalidEventError(f"blob retry is not JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise InvalidEventError("blob retry must be a JSON object")
    missing = [k for k in ("container", "name", "url") if not isinstance(data.get(k), str) or not data[k]]
    if missing:
        raise InvalidEventError(f"blob retry lacks {', '.join(missing)} (non-empty strings)")
    return BlobCreated(data["container"], data["name"], data["url"])


def blob_created_to_json(blob: BlobCreated) -> str:
    """The blob-retry message text (the inverse of `blob_created_from_json`)."""
    return json.dumps({"container": blob.container, "name": blob.name, "url": blob.url})



# -- what a version is made of (values the service gathers; the specs are derived purely) -------------
@dataclass(frozen=True)
class FileFacts:
    """One file as it will be versioned: the eTag its hash belongs to, its size and content hash."""

    etag: str
    size: int
    sha256: str
    last_modified: datetime


@dataclass(frozen=True)
class SnapshotCopy:
    """One file to copy into a version's snapshot: the landing blob at the eTag that was hashed, and where to."""

    name: str
    etag: str
    size: int
    to_name: str


def snapshot_path(dataset: str, sha256: str) -> str:
    """The snapshot folder of a content (a file's or a folder manifest's sha256), ending with '/'."""
    return f"{SNAPSHOT_ROOT}{dataset}/{sha256}/"


def file_snapshot(dataset: DatasetPolicy, blob: BlobCreated, facts: FileFacts) -> SnapshotCopy:
    """Where a `uri_file` version keeps its bytes: its content's folder, under the uploaded file's name."""
    leaf = blob.name.rsplit("/", 1)[-1]
    return SnapshotCopy(blob.name, facts.etag, facts.size, f"{snapshot_path(dataset.name, facts.sha256)}{leaf}")


def folder_snapshot(dataset: DatasetPolicy, batch: BatchRecord,
                    manifest: Mapping[str, FileFacts]) -> list[SnapshotCopy]:
    """Where a folder generation keeps its bytes: its manifest's folder, each file under its name in the batch."""
    root = snapshot_path(dataset.name, manifest_sha256(manifest))
    return [SnapshotCopy(name, facts.etag, facts.size, f"{root}{name[len(batch.folder):]}")
            for name, facts in sorted(manifest.items())]


def _datastore_uri(dataset: DatasetPolicy, path: str) -> str:
    return f"azureml://datastores/{dataset.datastore}/paths/{azureml_path(path)}"


def file_version_spec(dataset: DatasetPolicy, blob: BlobCreated, facts: FileFacts) -> DataVersionSpec:
    """The data version of one file of a `uri_file` dataset: its snapshot, tagged with its source and hash."""
    return DataVersionSpec(
        name=dataset.name,
        asset_type=dataset.type.value,
        uri=_datastore_uri(dataset, file_snapshot(dataset, blob, facts).to_name),
        description=dataset.description,
        tags={
            **dataset.tags,
            Tag.SOURCE_URL.value: strip_query(blob.url),
            Tag.ETAG.value: facts.etag,
            Tag.SHA256.value: facts.sha256,
            Tag.SIZE.value: str(facts.size),
            Tag.UPLOADED_AT.value: facts.last_modified.isoformat(),
        },
    )


def manifest_sha256(manifest: Mapping[str, FileFacts]) -> str:
    """The content hash of a folder: one line per file (name, hash, size) in name order, hashed."""
    lines = "\n".join(f"{name}\t{facts.sha256}\t{facts.size}" for name, facts in sorted(manifest.items()))
    return hashlib.sha256(lines.encode("utf-8")).hexdigest()


def folder_version_spec(dataset: DatasetPolicy, batch: BatchRecord, manifest: Mapping[str, FileFacts],
                        sealed_by: str) -> DataVersionSpec:
    """The data version of one sealed batch generation of a `uri_folder` dataset: its snapshot folder."""
    return DataVersionSpec(
        name=dataset.name,
        asset_type=dataset.type.value,
        uri=_datastore_uri(dataset, snapshot_path(dataset.name, manifest_sha256(manifest))),
        description=dataset.description,
        tags={
            **dataset.tags,
            Tag.SOURCE_FOLDER.value: f"{dataset.container}/{batch.folder}",
            Tag.SHA256.value: manifest_sha256(manifest),
            Tag.FILES.value: str(len(manifest)),
            Tag.SIZE.value: str(sum(f.size for f in manifest.values())),
            Tag.BATCH_GENERATION.value: str(batch.generation),
            Tag.SEALED_BY.value: sealed_by,
        },
    )


def announcement(spec: DataVersionSpec, dataset: str, version: str, sha256: str,
                 files: tuple[str, ...]) -> DataVersionRegistered:
    """The event announcing a registered version; the file list is cut at MAX_EVENT_FILES (Event Grid's 1 MB)."""
    return DataVersionRegistered(
        dataset=dataset,
        asset_name=spec.name,
        version=version,
        uri=spec.uri,
        asset_type=spec.asset_type,
        sha256=sha256,
        file_count=len(files),
        files=files[:MAX_EVENT_FILES],
        files_truncated=len(files) > MAX_EVENT_FILES,
    )
