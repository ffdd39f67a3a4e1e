"""Upload → data version, executed through ports.

`shared.domain.ingest` decides what a landed blob means and whether a batch is complete;
`Ingestor` carries the decisions out against the data account (`BlobStore`), the ledger, Azure ML
(`DataRegistry`) and Event Grid (`EventPublisher`). Every step is keyed so that a redelivered event,
a second instance or a re-upload of the same content registers nothing new:

- a delivery by blob URL + eTag (the ledger's blobs-seen rows);
- a registration by content hash (one claim per dataset and hash, insert-or-conflict);
- a seal by the batch row's ETag (one instance moves it open → sealing).

Errors: `InvalidEventError` for a request that can never be handled; `TransientError` subclasses
(`ClaimInProgressError`, `ConcurrentUpdateError`, `BlobChangedError`) and the adapters' own errors
propagate, so the platform retries the event or message.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from shared.config.policy import DatasetPolicy, Policy
from shared.domain.audit import AuditRecord
from shared.domain.blobnames import problem_with_name
from shared.domain.events import BlobCreated, SealRequest
from shared.domain.ingest import (
    AddToBatch,
    FileFacts,
    Ignore,
    RegisterFileVersion,
    SealStep,
    announcement,
    file_version_spec,
    folder_version_spec,
    plan_blob,
    plan_seal,
)
from shared.domain.records import BatchRecord, ContentRecord, utcnow
from shared.domain.vocabulary import BatchState, ContentState, IngestAction, Tag
from shared.domain.workspace import DataVersionSpec
from shared.errors import ClaimInProgressError, ConcurrentUpdateError, InvalidEventError
from shared.ports import AuditLog, BlobFacts, BlobStore, Clock, DataRegistry, DelayedQueue, EventPublisher
from shared.services.ledger import Ledger

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class IngestOutcome:
    """What handling an event did, for the audit log, logs and tests."""

    action: IngestAction
    detail: str
    version: str | None = None


class Ingestor:
    """Executes ingest decisions; built once per process (composition root) from ports."""

    def __init__(
        self,
        *,
        policy: Policy,
        blobs: BlobStore,
        ledger: Ledger,
        registry: DataRegistry,
        publisher: EventPublisher,
        seal_queue: DelayedQueue[SealRequest],
        audit: AuditLog,
        clock: Clock = utcnow,
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
    def on_blob_created(self, blob: BlobCreated) -> IngestOutcome:
        """Handle one BlobCreated delivery (at least once, possibly concurrently with its duplicates).

        Raises ClaimInProgressError while another instance registers the same content or seals the
        file's batch, BlobChangedError if the blob is overwritten while it is hashed.
        """
        outcome = self._on_blob_created(blob)
        self._record(outcome, event_id=blob.url, assets={"blob": blob.path})
        return outcome

    def on_seal_request(self, request: SealRequest) -> IngestOutcome:
        """Check one batch generation; seal it into one data version when it is complete, else re-schedule.

        Raises InvalidEventError for an unknown dataset (the message can never succeed).
        """
        outcome = self._on_seal_request(request)
        if outcome.action is not IngestAction.WAITING:
            self._record(outcome, event_id=f"seal:{request.dataset}:{request.folder}:{request.generation}",
                         assets={"batch": f"{request.dataset}:{request.folder}"})
        return outcome

    def _record(self, outcome: IngestOutcome, *, event_id: str, assets: dict[str, str]) -> None:
        if outcome.version:
            assets = {**assets, "data_version": outcome.version}
        action = outcome.action.value
        self._audit.record(AuditRecord(kind=f"data.{action}", decision=action, reason=outcome.detail,
                                       event_id=event_id, assets=assets, at=self._clock()))

    def _on_blob_created(self, blob: BlobCreated) -> IngestOutcome:
        decision = plan_blob(blob, self._policy)
        if isinstance(decision, Ignore):
            log.info("ignored blob=%s reason=%s", blob.path, decision.reason)
            return IngestOutcome(IngestAction.IGNORED, decision.reason)
        props = self._blobs.properties(blob.container, blob.name)
        if props is None:  # deleted since the event: nothing to version (a re-upload brings its own event)
            return IngestOutcome(IngestAction.IGNORED, f"{blob.path} no longer exists")
        seen = self._ledger.seen_blob(blob.url, props.etag)
        if seen is not None:
            log.info("duplicate delivery blob=%s etag=%s: already handled (%s)", blob.path, props.etag, seen)
            return IngestOutcome(IngestAction.DUPLICATE,
                                 f"blob {blob.path} with eTag {props.etag} was already handled: {seen}")
        is_marker = isinstance(decision, AddToBatch) and decision.is_marker
        facts = self._facts(props, hash_content=not is_marker)
        if isinstance(decision, RegisterFileVersion):
            outcome = self._register_file(decision, facts)
        else:
            outcome = self._add_to_batch(decision, facts)
        self._ledger.mark_blob_seen(blob.url, facts.etag, f"{outcome.action.value}: {outcome.detail}")
        return outcome

    def _on_seal_request(self, request: SealRequest) -> IngestOutcome:
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
                 request.generation, check.action.value, check.reason)
        if check.action is SealStep.SKIP or batch is None:
            return IngestOutcome(IngestAction.SKIPPED, check.reason, batch.version if batch else None)
        if check.action is SealStep.WAIT:
            self._seal_queue.send(request, check.delay_seconds)
            return IngestOutcome(IngestAction.WAITING, check.reason)
        return self._seal(dataset, batch, files, check.reason)

    # -- steps ----------------------------------------------------------------------------------
    def _marker_present(self, dataset: DatasetPolicy, batch: BatchRecord) -> bool:
        """A marker counts if it was written after the previous generation was sealed (if any)."""
        marker = dataset.batch.marker if dataset.batch else None
        if not marker:
            return False
        props = self._blobs.properties(dataset.container, f"{batch.folder}{marker}")
        if props is None:
            return False
        return batch.sealed_at is None or props.last_modified > batch.sealed_at

    def _facts(self, props: BlobFacts, *, hash_content: bool) -> FileFacts:
        """Hash the content streamed in chunks: constant memory, any size.

        The read is conditioned on the eTag of `props`, so the hash belongs to that eTag even if the
        blob is overwritten meanwhile: then BlobChangedError (the overwrite brings its own event).
        """
        h = hashlib.sha256()
        if hash_content and props.size:
            for chunk in self._blobs.read(props.container, props.name, props.etag):
                h.update(chunk)
        return FileFacts(etag=props.etag, size=props.size, sha256=h.hexdigest(), last_modified=props.last_modified)

    def _register_file(self, decision: RegisterFileVersion, facts: FileFacts) -> IngestOutcome:
        dataset, blob = decision.dataset, decision.blob
        if facts.size == 0:
            return IngestOutcome(IngestAction.IGNORED, f"{blob.path} is empty (0 bytes): nothing to version")
        spec = file_version_spec(dataset, blob, facts)
        return self._register_once(dataset, facts.sha256, blob.url, spec, files=(blob.name,))

    def _claim_content(self, dataset: DatasetPolicy, sha256: str, source: str) -> ContentRecord | IngestOutcome:
        """The content's ledger record, claimed or resumed by us; or DUPLICATE if it is announced already.

        Raises ClaimInProgressError while another instance's claim is alive.
        """
        record = self._ledger.claim_content(dataset.name, sha256, source)
        if record is not None:
            return record
        existing = self._ledger.get_content(dataset.name, sha256)
        if existing is None:
            raise ConcurrentUpdateError(f"content {sha256[:12]} of {dataset.name} vanished from the ledger; retry")
        if existing.state == ContentState.PUBLISHED:
            log.info("duplicate content dataset=%s sha256=%s: already version %s", dataset.name, sha256[:12],
                     existing.version)
            return IngestOutcome(IngestAction.DUPLICATE,
                                 f"same content already registered as {dataset.name}:{existing.version}",
                                 existing.version)
        if existing.state != ContentState.PENDING:
            return existing  # registered but not yet announced: finish the job
        if not self._ledger.content_claim_expired(existing):
            raise ClaimInProgressError(f"content {sha256[:12]} of {dataset.name} is being registered by another "
                                       "instance")
        taken = self._ledger.take_over_content(existing)
        if taken is None:
            raise ClaimInProgressError(f"content {sha256[:12]} of {dataset.name} was taken over meanwhile")
        found = self._registry.find_data_version(dataset.name, Tag.SHA256.value, sha256)
        if found is not None:  # the crashed holder registered it; adopt its version
            return self._ledger.content_registered(taken, found.version)
        return taken

    def _register_once(self, dataset: DatasetPolicy, sha256: str, source: str, spec: DataVersionSpec,
                       files: tuple[str, ...]) -> IngestOutcome:
        """Register content at most once per dataset, however many instances or deliveries race."""
        record = self._claim_content(dataset, sha256, source)
        if isinstance(record, IngestOutcome):
            return record
        if record.state == ContentState.PENDING:
            registered = self._registry.register_data_version(spec)
            log.info("registered data version %s:%s uri=%s sha256=%s", registered.name, registered.version,
                     registered.uri, sha256[:12])
            record = self._ledger.content_registered(record, registered.version)
        assert record.version is not None
        event = announcement(spec, dataset.name, record.version, record.sha256, files)
        self._publisher.data_version_registered(event)
        self._ledger.content_published(record)
        log.info("published %s id=%s for %s:%s", event.EVENT_TYPE, event.event_id, spec.name, record.version)
        return IngestOutcome(IngestAction.REGISTERED, f"{dataset.name}:{record.version} ({len(files)} file(s))",
                             record.version)

    def _current_batch(self, decision: AddToBatch) -> tuple[BatchRecord, bool]:
        """The open generation a file joins (opening or reopening it); the flag says we opened it.

        Raises ClaimInProgressError while the batch is being sealed.
        """
        dataset = decision.dataset
        batch, opened = self._ledger.open_batch(dataset.name, decision.folder)
        if batch.state == BatchState.SEALING:
            # Whether the sealer's listing saw this file is unknowable now; retry once it has finished.
            raise ClaimInProgressError(f"batch {decision.folder} of {dataset.name} is being sealed; retry later")
        if batch.state != BatchState.SEALED:
            return batch, opened
        reopened = self._ledger.reopen_batch(batch)
        if reopened is None:  # another instance reopened it first: use its generation
            current = self._ledger.get_batch(dataset.name, decision.folder)
            if current is None:
                raise ConcurrentUpdateError(f"batch {decision.folder} of {dataset.name} vanished; retry")
            return current, False
        log.info("late file %s reopened batch %s as generation %d", decision.blob.path, decision.folder,
                 reopened.generation)
        return reopened, True

    def _add_to_batch(self, decision: AddToBatch, facts: FileFacts) -> IngestOutcome:
        dataset, blob = decision.dataset, decision.blob
        assert dataset.batch is not None
        covered = self._ledger.covered_by(dataset.name, decision.folder, blob.name, facts.etag)
        if covered is not None:
            return IngestOutcome(IngestAction.DUPLICATE, f"{blob.path} is already covered by {dataset.name}:{covered}",
                                 covered)
        batch, opened = self._current_batch(decision)
        if not decision.is_marker:
            if facts.size == 0:
                return IngestOutcome(IngestAction.IGNORED, f"{blob.path} is empty (0 bytes): not part of the batch")
            self._ledger.add_batch_file(batch, blob.name, facts.etag, facts.size, facts.sha256)
        if opened and dataset.batch.quiet_period_seconds is not None:
            self._seal_queue.send(SealRequest(dataset.name, decision.folder, batch.generation, "quiet-period"),
                                  dataset.batch.quiet_period_seconds)
        if decision.is_marker:
            self._seal_queue.send(SealRequest(dataset.name, decision.folder, batch.generation, "marker"), 0)
            return IngestOutcome(IngestAction.BATCHED,
                                 f"marker {blob.path} seals batch {decision.folder} (generation {batch.generation})")
        return IngestOutcome(IngestAction.BATCHED,
                             f"{blob.path} added to batch {decision.folder} (generation {batch.generation})")

    def _manifest(self, dataset: DatasetPolicy, batch: BatchRecord,
                  recorded: dict[str, dict[str, Any]]) -> dict[str, FileFacts]:
        """The batch's files as the storage listing shows them (the truth: events may be late or lost).

        A file recorded at the listed eTag keeps its recorded hash; any other is hashed now.
        """
        manifest: dict[str, FileFacts] = {}
        marker = dataset.batch.marker if dataset.batch else None
        for item in self._blobs.list(dataset.container, batch.folder):
            leaf = item.name.rsplit("/", 1)[-1]
            if leaf == marker or problem_with_name(item.name) or not item.size:
                continue
            row = recorded.get(item.name)
            if row is not None and row.get("ETag") == item.etag:
                manifest[item.name] = FileFacts(item.etag, item.size, str(row["Sha256"]), item.last_modified)
            else:  # its event has not arrived (yet): hash it now
                manifest[item.name] = self._facts(item, hash_content=True)
        return manifest

    def _seal(self, dataset: DatasetPolicy, batch: BatchRecord, recorded: dict[str, dict[str, Any]],
              reason: str) -> IngestOutcome:
        """Seal one generation into one data version. Raises ConcurrentUpdateError if the batch moved meanwhile."""
        claimed = self._ledger.claim_seal(batch)
        if claimed is None:
            return IngestOutcome(IngestAction.SKIPPED, f"batch {batch.folder} is being sealed by another instance")
        manifest = self._manifest(dataset, batch, recorded)
        if not manifest:
            self._ledger.finish_seal(claimed, "", {})
            return IngestOutcome(IngestAction.SKIPPED, f"batch {batch.folder} holds no non-empty files")
        spec = folder_version_spec(dataset, batch, manifest, reason)
        files = tuple(sorted(manifest))
        outcome = self._register_once(dataset, spec.tags[Tag.SHA256.value], f"{dataset.container}/{batch.folder}",
                                      spec, files)
        self._ledger.finish_seal(claimed, outcome.version or "", {n: f.etag for n, f in manifest.items()})
        log.info("sealed batch %s of %s: %d files, %s bytes -> %s", batch.folder, dataset.name, len(manifest),
                 spec.tags[Tag.SIZE.value], outcome.detail)
        action = IngestAction.SEALED if outcome.action is IngestAction.REGISTERED else outcome.action
        return IngestOutcome(action, outcome.detail, outcome.version)
