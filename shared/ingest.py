"""Upload → data version.

`plan_blob` decides, purely, what a landed blob means (ignore it, register it as a file version,
or add it to a folder batch). `Ingestor` executes those decisions against storage, the ledger,
Azure ML and Event Grid. Every step is keyed so that a redelivered event, a second instance or a
re-upload of the same content registers nothing new.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from azure.core import MatchConditions
from azure.core.exceptions import ResourceModifiedError, ResourceNotFoundError
from azure.storage.blob import BlobProperties, BlobServiceClient

from shared.aml import DataVersionSpec, RegisteredDataVersion
from shared.audit import AuditRecord
from shared.blobnames import azureml_path, is_system_container, problem_with_name
from shared.errors import ClaimInProgressError, InvalidEventError
from shared.events import BlobCreated, DataVersionRegistered, SealRequest
from shared.keys import clean_etag
from shared.ledger import BatchRecord, ContentRecord, Ledger, utcnow
from shared.policy import AssetType, DatasetPolicy, Policy

log = logging.getLogger(__name__)

MAX_EVENT_FILES = 1000  # keep DataVersionRegistered well under Event Grid's 1 MB event limit
HASH_CHUNK = 4 * 1024 * 1024


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


@dataclass(frozen=True)
class SealCheck:
    """What a seal request should do now."""

    action: str  # "seal" | "wait" | "skip"
    reason: str
    delay_seconds: float = 0.0


def plan_seal(
    request: SealRequest, batch: BatchRecord | None, dataset: DatasetPolicy, last_file_at: datetime | None,
    marker_present: bool, now: datetime,
) -> SealCheck:
    """Decide whether a batch generation is complete. Pure: the caller gathers the facts."""
    if batch is None:
        return SealCheck("skip", "the batch is unknown to the ledger")
    if batch.generation != request.generation:
        return SealCheck("skip", f"stale request for generation {request.generation}; now {batch.generation}")
    if batch.state == "sealed":
        return SealCheck("skip", f"already sealed as version {batch.version}")
    assert dataset.batch is not None
    if marker_present:
        return SealCheck("seal", f"marker {dataset.batch.marker} is present")
    quiet = dataset.batch.quiet_period_seconds
    if quiet is None:
        return SealCheck("skip", f"waiting for the marker {dataset.batch.marker}")
    since = last_file_at or batch.opened_at
    remaining = quiet - (now - since).total_seconds()
    if remaining > 0:
        return SealCheck("wait", f"last file {quiet - remaining:.1f}s ago; quiet period {quiet:g}s", remaining)
    return SealCheck("seal", f"no new file for {quiet:g}s")


# -- execution ------------------------------------------------------------------------------------
class DataRegistry(Protocol):
    def register_data_version(self, spec: DataVersionSpec) -> RegisteredDataVersion: ...
    def find_data_version(self, name: str, tag: str, value: str) -> RegisteredDataVersion | None: ...


class Publisher(Protocol):
    def data_version_registered(self, event: DataVersionRegistered) -> str: ...


class SealQueue(Protocol):
    def send(self, request: SealRequest, delay_seconds: float) -> None: ...


class AuditSink(Protocol):
    def record(self, rec: AuditRecord) -> None: ...


@dataclass(frozen=True)
class FileFacts:
    etag: str
    size: int
    sha256: str
    last_modified: str


@dataclass(frozen=True)
class Outcome:
    """What handling an event did, for logs, tests and the demo."""

    action: str  # registered | duplicate | ignored | batched | sealed | waiting | skipped
    detail: str
    version: str | None = None


class Ingestor:
    def __init__(
        self,
        *,
        policy: Policy,
        blobs: BlobServiceClient,
        ledger: Ledger,
        registry: DataRegistry,
        publisher: Publisher,
        seal_queue: SealQueue,
        audit: AuditSink,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self._policy = policy
        self._blobs = blobs
        self._ledger = ledger
        self._registry = registry
        self._publisher = publisher
        self._seal_queue = seal_queue
        self._audit = audit
        self._clock = clock

    # -- entry points ---------------------------------------------------------------------------
    def on_blob_created(self, blob: BlobCreated) -> Outcome:
        outcome = self._on_blob_created(blob)
        self._record(outcome, event_id=blob.url, assets={"blob": blob.path})
        return outcome

    def on_seal_request(self, request: SealRequest) -> Outcome:
        outcome = self._on_seal_request(request)
        if outcome.action != "waiting":
            self._record(outcome, event_id=f"seal:{request.dataset}:{request.folder}:{request.generation}",
                         assets={"batch": f"{request.dataset}:{request.folder}"})
        return outcome

    def _record(self, outcome: Outcome, *, event_id: str, assets: dict[str, str]) -> None:
        if outcome.version:
            assets = {**assets, "data_version": outcome.version}
        self._audit.record(AuditRecord(kind=f"data.{outcome.action}", decision=outcome.action,
                                       reason=outcome.detail, event_id=event_id, assets=assets))

    def _on_blob_created(self, blob: BlobCreated) -> Outcome:
        decision = plan_blob(blob, self._policy)
        if isinstance(decision, Ignore):
            log.info("ignored blob=%s reason=%s", blob.path, decision.reason)
            return Outcome("ignored", decision.reason)
        client = self._blobs.get_blob_client(blob.container, blob.name)
        props = client.get_blob_properties()
        seen = self._ledger.seen_blob(blob.url, clean_etag(str(props.etag)))
        if seen is not None:
            log.info("duplicate delivery blob=%s etag=%s: already handled (%s)", blob.path, props.etag, seen)
            return Outcome("duplicate", f"blob {blob.path} with eTag {props.etag} was already handled: {seen}")
        is_marker = isinstance(decision, AddToBatch) and decision.is_marker
        facts = self._facts(blob, hash_content=not is_marker, props=props)
        if isinstance(decision, RegisterFileVersion):
            outcome = self._register_file(decision, facts)
        else:
            outcome = self._add_to_batch(decision, facts)
        self._ledger.mark_blob_seen(blob.url, facts.etag, f"{outcome.action}: {outcome.detail}")
        return outcome

    def _on_seal_request(self, request: SealRequest) -> Outcome:
        try:
            dataset = self._policy.dataset(request.dataset)
        except KeyError as exc:
            raise InvalidEventError(f"seal request names unknown dataset {request.dataset!r}") from exc
        batch = self._ledger.get_batch(dataset.name, request.folder)
        files = self._ledger.batch_files(batch) if batch else {}
        last = max((datetime.fromisoformat(f["RecordedAt"]) for f in files.values()), default=None)
        marker_present = batch is not None and self._marker_present(dataset, batch)
        check = plan_seal(request, batch, dataset, last, marker_present, self._clock())
        log.info("seal check dataset=%s folder=%s gen=%s: %s (%s)", dataset.name, request.folder,
                 request.generation, check.action, check.reason)
        if check.action == "skip" or batch is None:
            return Outcome("skipped", check.reason, batch.version if batch else None)
        if check.action == "wait":
            self._seal_queue.send(request, check.delay_seconds)
            return Outcome("waiting", check.reason)
        return self._seal(dataset, batch, files, check.reason)

    # -- steps ----------------------------------------------------------------------------------
    def _marker_present(self, dataset: DatasetPolicy, batch: BatchRecord) -> bool:
        """A marker counts if it was written after the previous generation was sealed (if any)."""
        marker = dataset.batch.marker if dataset.batch else None
        if not marker:
            return False
        try:
            props = self._blobs.get_blob_client(dataset.container, f"{batch.folder}{marker}").get_blob_properties()
        except ResourceNotFoundError:
            return False
        return batch.sealed_at is None or props.last_modified > batch.sealed_at

    def _facts(self, blob: BlobCreated, *, hash_content: bool, props: BlobProperties | None = None) -> FileFacts:
        """Hash the content streamed in chunks: constant memory, any size.

        The download is conditioned on the eTag of the properties read first, so the hash belongs to
        that eTag even if the blob is overwritten meanwhile (the overwrite brings its own event).
        """
        client = self._blobs.get_blob_client(blob.container, blob.name)
        props = props or client.get_blob_properties()
        etag = clean_etag(str(props.etag))
        h = hashlib.sha256()
        if hash_content and props.size:
            stream = client.download_blob(etag=props.etag, match_condition=MatchConditions.IfNotModified)
            for chunk in stream.chunks():
                h.update(chunk)
        return FileFacts(
            etag=etag, size=int(props.size), sha256=h.hexdigest(), last_modified=props.last_modified.isoformat()
        )

    def _register_file(self, decision: RegisterFileVersion, facts: FileFacts) -> Outcome:
        dataset, blob = decision.dataset, decision.blob
        if facts.size == 0:
            return Outcome("ignored", f"{blob.path} is empty (0 bytes): nothing to version")
        spec = DataVersionSpec(
            name=dataset.name,
            asset_type=dataset.type.value,
            uri=f"azureml://datastores/{dataset.datastore}/paths/{azureml_path(blob.name)}",
            description=dataset.description,
            tags={
                **dataset.tags,
                "evergreen.source_url": blob.url,
                "evergreen.etag": facts.etag,
                "evergreen.sha256": facts.sha256,
                "evergreen.size": str(facts.size),
                "evergreen.uploaded_at": facts.last_modified,
            },
        )
        return self._register_once(dataset, facts.sha256, blob.url, spec, files=(blob.name,))

    def _register_once(
        self, dataset: DatasetPolicy, sha256: str, source: str, spec: DataVersionSpec, files: tuple[str, ...]
    ) -> Outcome:
        """Register content at most once per dataset, however many instances or deliveries race."""
        record = self._ledger.claim_content(dataset.name, sha256, source)
        if record is None:
            existing = self._ledger.get_content(dataset.name, sha256)
            assert existing is not None
            if existing.state == "pending":
                if not existing.stale:
                    raise ClaimInProgressError(
                        f"content {sha256[:12]} of {dataset.name} is being registered by another instance"
                    )
                taken = self._ledger.take_over_content(existing)
                if taken is None:
                    raise ClaimInProgressError(f"content {sha256[:12]} of {dataset.name} was taken over meanwhile")
                record = taken
                found = self._registry.find_data_version(dataset.name, "evergreen.sha256", sha256)
                if found is not None:  # the crashed holder registered it; adopt its version
                    record = self._ledger.content_registered(record, found.version)
            elif existing.state == "published":
                log.info("duplicate content dataset=%s sha256=%s: already version %s", dataset.name,
                         sha256[:12], existing.version)
                return Outcome("duplicate", f"same content already registered as {dataset.name}:{existing.version}",
                               existing.version)
            else:
                record = existing  # registered but not yet announced: finish the job below
        if record.state == "pending":
            registered = self._registry.register_data_version(spec)
            log.info("registered data version %s:%s uri=%s sha256=%s", registered.name, registered.version,
                     registered.uri, sha256[:12])
            record = self._ledger.content_registered(record, registered.version)
        assert record.version is not None
        self._announce(dataset, record, spec, files)
        return Outcome("registered", f"{dataset.name}:{record.version} ({len(files)} file(s))", record.version)

    def _announce(self, dataset: DatasetPolicy, record: ContentRecord, spec: DataVersionSpec,
                  files: tuple[str, ...]) -> None:
        assert record.version is not None
        event = DataVersionRegistered(
            dataset=dataset.name,
            asset_name=spec.name,
            version=record.version,
            uri=spec.uri,
            asset_type=spec.asset_type,
            sha256=record.sha256,
            file_count=len(files),
            files=files[:MAX_EVENT_FILES],
            files_truncated=len(files) > MAX_EVENT_FILES,
        )
        self._publisher.data_version_registered(event)
        self._ledger.content_published(record)
        log.info("published %s id=%s for %s:%s", event.EVENT_TYPE, event.event_id, spec.name, record.version)

    def _add_to_batch(self, decision: AddToBatch, facts: FileFacts) -> Outcome:
        dataset, blob = decision.dataset, decision.blob
        assert dataset.batch is not None
        covered = self._ledger.covered_by(dataset.name, decision.folder, blob.name, facts.etag)
        if covered is not None:
            return Outcome("duplicate", f"{blob.path} is already covered by {dataset.name}:{covered}", covered)
        batch, opened = self._ledger.open_batch(dataset.name, decision.folder)
        if batch.state == "sealing":
            # Whether the sealer's listing saw this file is unknowable now; retry once it has finished.
            raise ClaimInProgressError(f"batch {decision.folder} of {dataset.name} is being sealed; retry later")
        if batch.state == "sealed":
            reopened = self._ledger.reopen_batch(batch)
            if reopened is None:  # another instance reopened it first: use its generation
                current = self._ledger.get_batch(dataset.name, decision.folder)
                assert current is not None
                batch, opened = current, False
            else:
                batch, opened = reopened, True
                log.info("late file %s reopened batch %s as generation %d", blob.path, decision.folder,
                         batch.generation)
        if not decision.is_marker:
            if facts.size == 0:
                return Outcome("ignored", f"{blob.path} is empty (0 bytes): not part of the batch")
            self._ledger.add_batch_file(batch, blob.name, facts.etag, facts.size, facts.sha256)
        if opened and dataset.batch.quiet_period_seconds is not None:
            self._seal_queue.send(
                SealRequest(dataset.name, decision.folder, batch.generation, "quiet-period"),
                dataset.batch.quiet_period_seconds,
            )
        if decision.is_marker:
            self._seal_queue.send(SealRequest(dataset.name, decision.folder, batch.generation, "marker"), 0)
            return Outcome(
                "batched", f"marker {blob.path} seals batch {decision.folder} (generation {batch.generation})"
            )
        return Outcome("batched", f"{blob.path} added to batch {decision.folder} (generation {batch.generation})")

    def _seal(self, dataset: DatasetPolicy, batch: BatchRecord, recorded: dict[str, dict[str, object]],
              reason: str) -> Outcome:
        claimed = self._ledger.claim_seal(batch)
        if claimed is None:
            return Outcome("skipped", f"batch {batch.folder} is being sealed by another instance")
        # The storage listing is the truth: events may be late or lost, the folder is what it is.
        manifest: dict[str, FileFacts] = {}
        marker = dataset.batch.marker if dataset.batch else None
        container = self._blobs.get_container_client(dataset.container)
        for item in container.list_blobs(name_starts_with=batch.folder):
            name = str(item.name)
            leaf = name.rsplit("/", 1)[-1]
            if leaf == marker or problem_with_name(name) or not item.size:
                continue
            etag = clean_etag(str(item.etag))
            row = recorded.get(name)
            if row is not None and row.get("ETag") == etag:
                manifest[name] = FileFacts(etag, int(item.size), str(row["Sha256"]), item.last_modified.isoformat())
            else:  # its event has not arrived (yet): hash it now
                manifest[name] = self._facts(BlobCreated(dataset.container, name, ""), hash_content=True)
        if not manifest:
            self._ledger.finish_seal(claimed, "", {})
            return Outcome("skipped", f"batch {batch.folder} holds no non-empty files")
        lines = "\n".join(f"{name}\t{facts.sha256}\t{facts.size}" for name, facts in sorted(manifest.items()))
        manifest_sha = hashlib.sha256(lines.encode("utf-8")).hexdigest()
        total = sum(f.size for f in manifest.values())
        spec = DataVersionSpec(
            name=dataset.name,
            asset_type=dataset.type.value,
            uri=f"azureml://datastores/{dataset.datastore}/paths/{azureml_path(batch.folder)}",
            description=dataset.description,
            tags={
                **dataset.tags,
                "evergreen.source_folder": f"{dataset.container}/{batch.folder}",
                "evergreen.sha256": manifest_sha,
                "evergreen.files": str(len(manifest)),
                "evergreen.size": str(total),
                "evergreen.batch_generation": str(batch.generation),
                "evergreen.sealed_by": reason,
            },
        )
        files = tuple(sorted(manifest))
        outcome = self._register_once(dataset, manifest_sha, f"{dataset.container}/{batch.folder}", spec, files)
        try:
            self._ledger.finish_seal(claimed, outcome.version or "", {n: f.etag for n, f in manifest.items()})
        except ResourceModifiedError as exc:
            raise ClaimInProgressError(f"batch {batch.folder} changed while sealing") from exc
        log.info("sealed batch %s of %s: %d files, %d bytes -> %s", batch.folder, dataset.name, len(manifest),
                 total, outcome.detail)
        return Outcome("sealed" if outcome.action == "registered" else outcome.action, outcome.detail, outcome.version)


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
    return json.dumps({"dataset": request.dataset, "folder": request.folder, "generation": request.generation,
                       "reason": request.reason})

