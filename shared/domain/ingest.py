"""Upload → data version, the decisions: pure, no I/O.

`plan_blob` decides what a landed blob means (ignore it, register it as a file version, or add it
to a folder batch); `plan_seal` decides whether a folder batch is complete. `shared.services.ingest`
executes these decisions through the ports.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import Enum

from shared.config.policy import AssetType, DatasetPolicy, Policy
from shared.domain.blobnames import azureml_path, is_system_container, problem_with_name
from shared.domain.events import BlobCreated, DataVersionRegistered, SealRequest
from shared.domain.records import BatchRecord
from shared.domain.vocabulary import BatchState, Tag
from shared.domain.workspace import DataVersionSpec
from shared.errors import InvalidEventError

log = logging.getLogger(__name__)

MAX_EVENT_FILES = 1000  # keep DataVersionRegistered well under Event Grid's 1 MB event limit


# -- decisions (values) -------------------------------------------------------------------------
@dataclass(frozen=True)
class Ignore:
    reason: str


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


def batch_folder(dataset: DatasetPolicy, name: str) -> str:
    """The batch folder of a file: the first folder level under the dataset's prefix."""
    rest = name[len(dataset.prefix) :]
    head, sep, _ = rest.partition("/")
    return f"{dataset.prefix}{head}/" if sep else dataset.prefix


def plan_blob(blob: BlobCreated, policy: Policy) -> BlobDecision:
    """Decide what a landed blob means. Pure: no I/O."""
    if is_system_container(blob.container):
        return Ignore(f"container {blob.container!r} is a system container")
    problem = problem_with_name(blob.name)
    if problem:
        return Ignore(problem)
    for dataset in policy.datasets:
        if dataset.container == blob.container and blob.name.startswith(dataset.prefix):
            if dataset.type is AssetType.URI_FILE:
                return RegisterFileVersion(dataset, blob)
            assert dataset.batch is not None  # guaranteed by the policy's validation
            leaf = blob.name.rsplit("/", 1)[-1]
            return AddToBatch(
                dataset, blob, batch_folder(dataset, blob.name), is_marker=leaf == dataset.batch.marker
            )
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


def seal_request_from_json(body: str) -> SealRequest:
    """Parse a seal-queue message; malformed input is an InvalidEventError naming what is wrong."""
    try:
        data = json.loads(body)
    except json.JSONDecodeError as exc:
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



# -- what a version is made of (values the service gathers; the specs are derived purely) -------------
@dataclass(frozen=True)
class FileFacts:
    """One file as it will be versioned: the eTag its hash belongs to, its size and content hash."""

    etag: str
    size: int
    sha256: str
    last_modified: datetime


def file_version_spec(dataset: DatasetPolicy, blob: BlobCreated, facts: FileFacts) -> DataVersionSpec:
    """The data version of one file of a `uri_file` dataset, tagged with where it came from and its hash."""
    return DataVersionSpec(
        name=dataset.name,
        asset_type=dataset.type.value,
        uri=f"azureml://datastores/{dataset.datastore}/paths/{azureml_path(blob.name)}",
        description=dataset.description,
        tags={
            **dataset.tags,
            Tag.SOURCE_URL.value: blob.url,
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
    """The data version of one sealed batch generation of a `uri_folder` dataset."""
    return DataVersionSpec(
        name=dataset.name,
        asset_type=dataset.type.value,
        uri=f"azureml://datastores/{dataset.datastore}/paths/{azureml_path(batch.folder)}",
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
