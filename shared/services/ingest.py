"""Upload → data version, executed through ports.

`shared.domain.ingest` decides what a landed blob means and whether a batch is complete;
`Ingestor` carries the decisions out against the data account (`BlobStore`), the ledger, Azure ML
(`DataRegistry`) and Event Grid (`EventPublisher`). Every step is keyed so that a redelivered event,
a second instance or a re-upload of the same content registers nothing new:

- a delivery by blob URL + eTag (the ledger's blobs-seen rows);
- a registration by content hash (one claim per dataset and hash, insert-or-conflict, under a lease);
- a seal by the batch row's ETag (one instance moves it open → sealing, under a lease).

Versions are immutable: before content is claimed, its bytes are copied (server-side, conditioned
on the eTag that was hashed) into its content-addressed snapshot (`shared.domain.ingest.SNAPSHOT_ROOT`),
and the version is registered on that path, never on the landing blob. A claim therefore always has
a complete snapshot behind it; a copy interrupted by a crash is finished by the re-run (a snapshot
file already there at its size is kept). An upload whose content a version already holds is
recorded as an *alias* of that version (ledger and audit); the version's bytes are its snapshot.

Leases, not locks: a claim has an owner and an expiry. A failed seal gives its claim back; a dead
holder's claim is taken over once it expires, and the work resumes idempotently. "Another instance
is working on it" never fails an execution and never finishes a message while the work is undone:
a duplicate waits briefly for the holder (through the injected `sleep`), then re-schedules itself
(the blob-retry queue for a blob event, the seal queue for a seal request) for the lease's end.
`reconcile` re-drives what is stuck (expired leases, lost seal requests), found through the
ledger's index of open ingest work.

Errors: `InvalidEventError` for a request that can never be handled; `BlobChangedError` when a blob
is overwritten while it is hashed (its own event brings the new content) and the adapters' own
errors propagate, so the platform retries the event or message.
"""

from __future__ import annotations

import contextvars
import dataclasses
import hashlib
import logging
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import unquote

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
    SnapshotCopy,
    announcement,
    file_snapshot,
    file_version_spec,
    folder_snapshot,
    folder_version_spec,
    late_files,
    plan_blob,
    plan_seal,
    snapshot_path,
    stuck_batch,
)
from shared.domain.keys import digest
from shared.domain.records import DEFAULT_LEASES, HOLDER_WAIT, BatchRecord, ContentRecord, Leases, utcnow
from shared.domain.telemetry import Attr
from shared.domain.urls import strip_query
from shared.domain.vocabulary import BatchState, ContentState, IngestAction, Tag
from shared.domain.workspace import DataVersionInfo, DataVersionSpec
from shared.errors import ConcurrentUpdateError, InvalidEventError
from shared.ports import AuditLog, BlobFacts, BlobStore, Clock, DataRegistry, DelayedQueue, EventPublisher, Sleeper
from shared.services.ledger import Ledger
from shared.telemetry import annotate, continued

log = logging.getLogger(__name__)

FLOW = "ingest"  # the ledger's open-work partition of this flow
ARCHIVE_TIER = "Archive"  # a blob in this tier cannot be read until it is rehydrated
HOLDER_POLL_SECONDS = 0.5  # how often a duplicate looks at the holder's claim while it waits (HOLDER_WAIT in all)
SEAL_ATTEMPTS = 3  # claim races lost in a row before a seal request re-schedules itself
JOIN_ATTEMPTS = 3  # generations a file tries to join while they are sealed under it
SNAPSHOT_COPY_WORKERS = 16  # server-side copies in flight while a batch's snapshot is made (the Function App)


@dataclass(frozen=True)
class IngestOutcome:
    """What handling an event did, for the audit log, logs and tests."""

    action: IngestAction
    detail: str
    version: str | None = None
    audited: bool = True  # False only for the events of Evergreen's own snapshot copies


@dataclass(frozen=True)
class Busy:
    """A live instance holds the content's claim: look again when its lease ends."""

    until: datetime
    detail: str


@dataclass(frozen=True)
class Manifest:
    """A batch generation as the listing shows it: the files versioned, those left out, and the covered rows read."""

    files: dict[str, FileFacts]
    left_out: dict[str, str]  # name → eTag of files that cannot be read (Archive tier)
    covered: dict[str, dict[str, Any]]

    def newly_covered(self) -> dict[str, tuple[str, int, str]]:
        """The files no earlier version covers at this eTag: only these get a covered row."""
        return {name: (f.etag, f.size, f.sha256) for name, f in self.files.items()
                if self.covered.get(name, {}).get("ETag") != f.etag or self.covered[name].get("LeftOut")}

    @property
    def note(self) -> str:
        if not self.left_out:
            return ""
        names = ", ".join(sorted(self.left_out)[:5])
        return (f"; {len(self.left_out)} file(s) left out: in the Archive tier, they cannot be read ({names}); "
                "rehydrate them and upload again to version them")


def _batch_work(dataset: str, folder: str, generation: int) -> str:
    return f"batch-{digest(dataset, folder)}-{generation}"


def _content_work(dataset: str, sha256: str) -> str:
    return f"content-{digest(dataset)}-{sha256}"


class Ingestor:
    """Executes ingest decisions; built once per process (composition root) from ports.

    `blob_retry` takes blob events re-scheduled while another instance held their work; `sleep`
    waits (briefly, HOLDER_WAIT at most) for such a holder; `owner` names this instance in claims;
    `copy_workers` copies a snapshot's files that many at a time (the Function App: SNAPSHOT_COPY_WORKERS;
    the fault-injection harness keeps 1, so its port calls come in one order).
    """

    def __init__(
        self,
        *,
        policy: Policy,
        blobs: BlobStore,
        ledger: Ledger,
        registry: DataRegistry,
        publisher: EventPublisher,
        seal_queue: DelayedQueue[SealRequest],
        blob_retry: DelayedQueue[BlobCreated],
        audit: AuditLog,
        sleep: Sleeper,
        clock: Clock = utcnow,
        owner: str | None = None,
        leases: Leases = DEFAULT_LEASES,
        copy_workers: int = 1,
    ) -> None:
        self._policy = policy
        self._blobs = blobs
        self._ledger = ledger
        self._registry = registry
        self._publisher = publisher
        self._seal_queue = seal_queue
        self._blob_retry = blob_retry
        self._audit = audit
        self._sleep = sleep
        self._clock = clock
        self._owner = owner or f"ingest-{uuid.uuid4().hex[:12]}"
        self._leases = leases  # the seal and content leases (the ledger writes them; EVERGREEN_LEASE_SECONDS)
        self._copy_workers = copy_workers  # concurrent server-side copies into a snapshot (1: one at a time)

    # -- entry points ---------------------------------------------------------------------------
    def on_blob_created(self, blob: BlobCreated) -> IngestOutcome:
        """Handle one BlobCreated delivery (at least once, possibly concurrently with its duplicates).

        While another live instance registers the same content the event is re-scheduled on the
        blob-retry queue (WAITING, not audited). Raises BlobChangedError if the blob is overwritten
        while it is hashed.
        """
        outcome = self._on_blob_created(blob)
        if outcome.action is not IngestAction.WAITING and outcome.audited:
            self._record(outcome, event_id=blob.url, assets={"blob": blob.path})
        return outcome

    def on_seal_request(self, request: SealRequest) -> IngestOutcome:
        """Check one batch generation; seal it into one data version when it is complete, else re-schedule.

        A batch sealed by another live instance re-schedules the request for the end of its lease.
        Raises InvalidEventError for an unknown dataset (the message can never succeed).
        """
        annotate({Attr.DATASET: request.dataset, Attr.BATCH: f"{request.folder}#{request.generation}"})
        outcome = self._on_seal_request(request)
        if outcome.action is not IngestAction.WAITING:
            self._record(outcome, event_id=f"seal:{request.dataset}:{request.folder}:{request.generation}",
                         assets={"batch": f"{request.dataset}:{request.folder}"})
        return outcome

    def reconcile(self, now: datetime) -> list[IngestOutcome]:
        """Re-drive stuck ingest work, found through the ledger's index of open work (never by scanning history).

        Batches sealing past their lease or open with a lost seal request (quiet period long over,
        or marker present) are sealed; sealed batches whose post-seal check was cut off get it;
        content pending past its lease is taken over (adopting a version its holder registered) and
        registered; registered but unannounced content is announced. Each re-drive is audited as
        `data.redriven`. One item's failure does not stop the others; the first is raised at the end.
        """
        outcomes: list[IngestOutcome] = []
        failures: list[Exception] = []
        for item in self._ledger.open_work(FLOW):
            try:
                outcome = self._redrive(item, now)
            except Exception as exc:  # keep going: one stuck item must not hold up the others
                log.warning("reconcile work=%s failed: %s: %s", item.get("RowKey"), type(exc).__name__,
                            strip_query(str(exc)))
                failures.append(exc)
                continue
            if outcome is not None:
                self._audit.record(AuditRecord(
                    kind=f"data.{IngestAction.REDRIVEN.value}", decision=outcome.action.value, reason=outcome.detail,
                    event_id=f"reconcile:{item.get('RowKey')}", at=self._clock(),
                    assets={"work": str(item.get("RowKey")), **({"data_version": outcome.version}
                                                                 if outcome.version else {})}))
                outcomes.append(outcome)
        if failures:
            raise failures[0]
        return outcomes

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
            return IngestOutcome(IngestAction.IGNORED, decision.reason, audited=decision.audited)
        props = self._blobs.properties(blob.container, blob.name)
        if props is None:  # deleted since the event: nothing to version (a re-upload brings its own event)
            return IngestOutcome(IngestAction.IGNORED, f"{blob.path} no longer exists")
        seen = self._ledger.seen_blob(blob.url, props.etag)
        if seen is not None:
            log.info("duplicate delivery blob=%s etag=%s: already handled (%s)", blob.path, props.etag, seen)
            return IngestOutcome(IngestAction.DUPLICATE,
                                 f"blob {blob.path} with eTag {props.etag} was already handled: {seen}")
        if isinstance(decision, RegisterFileVersion):
            outcome = self._register_file(decision, props)
        else:
            outcome = self._add_to_batch(decision, props)
        if outcome.action is not IngestAction.WAITING:  # a re-scheduled event must not read as handled
            self._ledger.mark_blob_seen(blob.url, props.etag, f"{outcome.action.value}: {outcome.detail}")
        return outcome

    def _on_seal_request(self, request: SealRequest) -> IngestOutcome:
        try:
            dataset = self._policy.dataset(request.dataset)
        except KeyError as exc:
            raise InvalidEventError(f"seal request names unknown dataset {request.dataset!r}") from exc
        for _ in range(SEAL_ATTEMPTS):
            batch = self._ledger.get_batch(dataset.name, request.folder)
            recorded = self._ledger.batch_files(batch) if batch else {}
            marker_at = self._marker_at(dataset, batch) if batch and batch.state == BatchState.OPEN else None
            check = plan_seal(request, batch, dataset, _last_recorded(recorded), marker_at is not None,
                              self._clock())
            log.info("seal check dataset=%s folder=%s gen=%s: %s (%s)", dataset.name, request.folder,
                     request.generation, check.action.value, check.reason)
            if check.action is SealStep.SKIP or batch is None:
                return IngestOutcome(IngestAction.SKIPPED, check.reason, batch.version if batch else None)
            if check.action is SealStep.WAIT:
                self._seal_queue.send(request, check.delay_seconds)
                return IngestOutcome(IngestAction.WAITING, check.reason)
            outcome = self._seal(dataset, batch, request, check.reason, recorded)
            if outcome is not None:
                return outcome
        self._seal_queue.send(request, HOLDER_POLL_SECONDS)  # the batch kept moving under us: look again soon
        return IngestOutcome(IngestAction.WAITING, f"batch {request.folder} kept changing; looking again shortly")

    # -- files ----------------------------------------------------------------------------------
    def _hash(self, props: BlobFacts) -> FileFacts:
        """Hash the content streamed in chunks: constant memory, any size.

        The read is conditioned on the eTag of `props`, so the hash belongs to that eTag even if the
        blob is overwritten meanwhile: then BlobChangedError (the overwrite brings its own event).
        """
        h = hashlib.sha256()
        if props.size:
            for chunk in self._blobs.read(props.container, props.name, props.etag):
                h.update(chunk)
        return FileFacts(etag=props.etag, size=props.size, sha256=h.hexdigest(), last_modified=props.last_modified)

    def _register_file(self, decision: RegisterFileVersion, props: BlobFacts) -> IngestOutcome:
        dataset, blob = decision.dataset, decision.blob
        if props.size == 0:
            return IngestOutcome(IngestAction.IGNORED, f"{blob.path} is empty (0 bytes): nothing to version")
        if props.tier == ARCHIVE_TIER:
            return IngestOutcome(IngestAction.IGNORED, f"{blob.path} is in the Archive tier and cannot be read: "
                                 "rehydrate it (copy it to a Hot or Cool blob) to version it")
        facts = self._hash(props)
        spec = file_version_spec(dataset, blob, facts)
        self._snapshot(dataset, facts.sha256, [file_snapshot(dataset, blob, facts)])
        result = self._register_once(dataset, facts.sha256, blob.url, spec, files=(blob.name,))
        if isinstance(result, Busy):
            delay = self._delay(result.until)
            self._blob_retry.send(blob, delay)
            log.info("blob=%s waits for another instance: %s; retry in %.0fs", blob.path, result.detail, delay)
            return IngestOutcome(IngestAction.WAITING, f"{result.detail}; {blob.path} is looked at again in "
                                 f"{delay:.0f}s")
        if result.action is IngestAction.DUPLICATE and result.version:
            self._ledger.record_alias(dataset.name, result.version, url=blob.url, name=blob.name, etag=facts.etag,
                                      sha256=facts.sha256)
            log.info("blob=%s is an alias of %s:%s (same content)", blob.path, dataset.name, result.version)
            return dataclasses.replace(result, detail=f"{result.detail}; {blob.path} recorded as its alias "
                                       "(the version's bytes are its snapshot)")
        return result

    def _snapshot(self, dataset: DatasetPolicy, sha256: str, copies: list[SnapshotCopy]) -> None:
        """Copy a content's files into its snapshot, each unless it is there already.

        Idempotent and resumable: the path is content-addressed, so a file already there at its size
        is that content (a crash mid-way is finished by the re-run). Content whose version is gone
        (retired by retention, its snapshot reclaimed) is copied again: its upload registers it anew.
        Raises BlobChangedError if a landing blob changed since it was hashed (its own event brings
        the new content).
        """
        existing = self._ledger.get_content(dataset.name, sha256)
        if existing is not None and (existing.state == ContentState.PENDING or self._version_exists(existing)):
            return  # claimed or held by a live version: that claim has (or is making) its snapshot
        there = {f.name: f.size for f in self._blobs.list(dataset.container, snapshot_path(dataset.name, sha256))}
        missing = [c for c in copies if there.get(c.to_name) != c.size]  # one listing, not a lookup per file
        if self._copy_workers > 1 and len(missing) > 1:
            # Each copy runs in a copy of this context, so its log lines and spans keep the invocation's ids.
            contexts = [contextvars.copy_context() for _ in missing]
            with ThreadPoolExecutor(min(self._copy_workers, len(missing)), thread_name_prefix="snapshot") as pool:
                list(pool.map(lambda ctx, c: ctx.run(self._blobs.copy, dataset.container, c.name, c.etag, c.to_name),
                              contexts, missing))
        else:
            for copy in missing:
                self._blobs.copy(dataset.container, copy.name, copy.etag, copy.to_name)
        log.info("snapshot of %s content %s: %d file(s) copied, %d already there", dataset.name, sha256[:12],
                 len(missing), len(copies) - len(missing))

    # -- content: one registration per distinct content ------------------------------------------
    def _claim_content(self, dataset: DatasetPolicy, sha256: str, source: str, spec: DataVersionSpec,
                       files: tuple[str, ...]) -> ContentRecord | IngestOutcome | Busy:
        """The content's ledger record, claimed or resumed by us; DUPLICATE if it is announced already; or
        Busy while another instance's claim is alive (after waiting briefly for it).

        Raises ConcurrentUpdateError if the claim vanished from the ledger (never deleted: a retry resolves it).
        """
        key = _content_work(dataset.name, sha256)
        self._ledger.track_work(FLOW, key, {"Kind": "content", "Dataset": dataset.name, "Sha256": sha256})
        record = self._ledger.claim_content(dataset.name, sha256, source, owner=self._owner, spec=spec, files=files)
        if record is not None:
            return record
        for _ in range(2):
            existing = self._wait_for_holder(dataset.name, sha256)
            if existing is None:
                raise ConcurrentUpdateError(f"content {sha256[:12]} of {dataset.name} vanished from the ledger")
            if existing.state == ContentState.PUBLISHED and not self._version_exists(existing):
                reclaimed = self._ledger.reclaim_content(existing, source, owner=self._owner, spec=spec, files=files)
                if reclaimed is not None:
                    log.info("content %s of %s was version %s, which is gone (retired): registering it again",
                             sha256[:12], dataset.name, existing.version)
                    return reclaimed
                continue  # another instance reclaimed it first: look again
            if existing.state == ContentState.PUBLISHED:
                self._ledger.finish_work(FLOW, key)
                log.info("duplicate content dataset=%s sha256=%s: already version %s", dataset.name, sha256[:12],
                         existing.version)
                return IngestOutcome(IngestAction.DUPLICATE,
                                     f"same content already registered as {dataset.name}:{existing.version}",
                                     existing.version)
            # Pending, or registered but not yet announced: its holder is finishing it while its lease lives
            # (finishing it beside the holder would announce it twice); after that, whoever takes it over does.
            if not self._ledger.content_claim_expired(existing):
                return Busy(existing.lease_until or self._clock() + self._leases.content,
                            f"content {sha256[:12]} of {dataset.name} is being registered by "
                            f"{existing.owner or 'another instance'}")
            taken = self._ledger.take_over_content(existing, self._owner)
            if taken is not None:
                log.info("took over the expired claim of content %s of %s (held by %s)", sha256[:12], dataset.name,
                         existing.owner or "?")
                return self._adopt(taken) if taken.state == ContentState.PENDING else taken
        return Busy(self._clock(), f"content {sha256[:12]} of {dataset.name} was taken over meanwhile")

    def _version_exists(self, record: ContentRecord) -> bool:
        """Whether the version that holds this content still holds it: it is registered (retention may have
        deleted it) and its snapshot is all there (retention's blob rule reclaims an archived version's)."""
        if not record.version:
            return False
        info = self._registry.get_data_version(record.dataset, record.version)
        return info is not None and self._snapshot_intact(record, info)

    def _snapshot_intact(self, record: ContentRecord, info: DataVersionInfo) -> bool:
        """Whether the version's snapshot blobs add up to its `evergreen.size` (True for a path that is not a
        snapshot: a version registered before snapshots existed is taken at its word)."""
        folder = snapshot_path(record.dataset, record.sha256)
        uri = unquote(info.uri)
        if folder not in uri:
            return True
        own = uri[uri.index(folder):]  # the snapshot folder (uri_folder) or the one file in it (uri_file)
        held = [f.size for f in self._blobs.list(self._policy.dataset(record.dataset).container, own)
                if own.endswith("/") or f.name == own]
        size = info.tags.get(Tag.SIZE.value, "")
        return bool(held) and (not (size.isascii() and size.isdigit()) or sum(held) == int(size))

    def _wait_for_holder(self, dataset: str, sha256: str) -> ContentRecord | None:
        """The content's record once it is announced or its holder's lease ran out, or after HOLDER_WAIT."""
        existing = self._ledger.get_content(dataset, sha256)
        for _ in range(round(HOLDER_WAIT.total_seconds() / HOLDER_POLL_SECONDS)):
            if existing is None or existing.state == ContentState.PUBLISHED or self._ledger.content_claim_expired(
                    existing):
                return existing
            self._sleep(HOLDER_POLL_SECONDS)
            existing = self._ledger.get_content(dataset, sha256)
        return existing

    def _adopt(self, taken: ContentRecord) -> ContentRecord:
        """A claim taken over: if its dead holder registered the version already, adopt it instead of registering."""
        found = self._registry.find_data_version(taken.dataset, Tag.SHA256.value, taken.sha256)
        if found is not None:
            log.info("content %s of %s was registered as version %s by its previous holder; adopting it",
                     taken.sha256[:12], taken.dataset, found.version)
            return self._ledger.content_registered(taken, found.version)
        return taken

    def _register_once(self, dataset: DatasetPolicy, sha256: str, source: str, spec: DataVersionSpec,
                       files: tuple[str, ...]) -> IngestOutcome | Busy:
        """Register content at most once per dataset, however many instances or deliveries race."""
        record = self._claim_content(dataset, sha256, source, spec, files)
        if isinstance(record, IngestOutcome | Busy):
            return record
        stored = self._ledger.content_spec(record)  # the claimant's spec: an alias must not rename the version
        count: int | None = None
        if stored is not None and stored[1]:
            spec, files, count = stored
        elif stored is not None:  # its file list did not fit in the row: the same content has the same files
            spec = stored[0]
        try:
            return self._finish_content(record, spec, files, count)
        except Exception:
            self._release_content(record)
            raise

    def _release_content(self, record: ContentRecord) -> None:
        """Give our unfinished claim back after a failure, so a retry takes it over at once (and adopts what we
        may have registered); best effort: otherwise the lease expires."""
        try:
            current = self._ledger.get_content(record.dataset, record.sha256)  # it may be registered by now
            if current is not None and current.state != ContentState.PUBLISHED and current.owner == self._owner:
                self._ledger.release_content(current)
        except Exception as exc:  # the original error is the one that matters; the lease expires anyway
            log.warning("could not release the claim of content %s of %s: %s: %s", record.sha256[:12],
                        record.dataset, type(exc).__name__, strip_query(str(exc)))

    def _finish_content(self, record: ContentRecord, spec: DataVersionSpec, files: tuple[str, ...],
                        file_count: int | None = None) -> IngestOutcome:
        """Register (if still pending) and announce claimed content, then close its open-work entry."""
        if record.state == ContentState.PENDING:
            registered = self._registry.register_data_version(spec)
            log.info("registered data version %s:%s uri=%s sha256=%s", registered.name, registered.version,
                     registered.uri, record.sha256[:12])
            record = self._ledger.content_registered(record, registered.version)
        assert record.version is not None
        event = announcement(spec, record.dataset, record.version, record.sha256, files)
        if file_count is not None and file_count > len(files):  # the stored list was cut to fit its row
            event = dataclasses.replace(event, file_count=file_count, files_truncated=True)
        annotate({Attr.DATASET: record.dataset, Attr.DATA_VERSION: record.version})
        self._publisher.data_version_registered(event)
        self._ledger.content_published(record)
        self._ledger.finish_work(FLOW, _content_work(record.dataset, record.sha256))
        log.info("published %s id=%s for %s:%s", event.EVENT_TYPE, event.event_id, spec.name, record.version)
        return IngestOutcome(IngestAction.REGISTERED,
                             f"{record.dataset}:{record.version} ({event.file_count} file(s))", record.version)

    # -- batches ----------------------------------------------------------------------------------
    def _add_to_batch(self, decision: AddToBatch, props: BlobFacts) -> IngestOutcome:
        dataset, blob = decision.dataset, decision.blob
        assert dataset.batch is not None
        covered = self._ledger.covered_by(dataset.name, decision.folder, blob.name, props.etag)
        if covered is not None:
            return IngestOutcome(IngestAction.DUPLICATE, f"{blob.path} is already covered by {dataset.name}:{covered}",
                                 covered)
        if decision.is_marker:
            batch, opened = self._current_batch(decision)
        elif props.size == 0:
            return IngestOutcome(IngestAction.IGNORED, f"{blob.path} is empty (0 bytes): not part of the batch")
        else:  # an archived file cannot be hashed now: the seal leaves it out, saying so
            facts = (FileFacts(props.etag, props.size, "", props.last_modified) if props.tier == ARCHIVE_TIER
                     else self._hash(props))
            batch, opened = self._join_batch(decision, facts)
        if opened:
            self._schedule_quiet_period(dataset, batch)
        if decision.is_marker:
            self._seal_queue.send(SealRequest(dataset.name, decision.folder, batch.generation, "marker"), 0)
            return IngestOutcome(IngestAction.BATCHED,
                                 f"marker {blob.path} seals batch {decision.folder} (generation {batch.generation})")
        return IngestOutcome(IngestAction.BATCHED,
                             f"{blob.path} added to batch {decision.folder} (generation {batch.generation})")

    def _schedule_quiet_period(self, dataset: DatasetPolicy, batch: BatchRecord) -> None:
        quiet = dataset.batch.quiet_period_seconds if dataset.batch else None
        if quiet is not None:
            self._seal_queue.send(SealRequest(dataset.name, batch.folder, batch.generation, "quiet-period"), quiet)

    def _current_batch(self, decision: AddToBatch) -> tuple[BatchRecord, bool]:
        """The generation a file joins (opening or reopening it; a sealing one too); the flag says we opened it.

        Raises ConcurrentUpdateError if the batch row vanished (it is never deleted).
        """
        dataset, folder = decision.dataset.name, decision.folder
        batch = self._ledger.get_batch(dataset, folder)
        opened = False
        if batch is None:
            self._ledger.track_work(FLOW, _batch_work(dataset, folder, 1), _batch_item(dataset, folder, 1))
            batch, opened = self._ledger.open_batch(dataset, folder)
        if batch.state != BatchState.SEALED:
            return batch, opened
        return self._reopen(batch)

    def _reopen(self, batch: BatchRecord) -> tuple[BatchRecord, bool]:
        """Start the next generation of a sealed batch, or join the one another instance started."""
        following = batch.generation + 1
        self._ledger.track_work(FLOW, _batch_work(batch.dataset, batch.folder, following),
                                _batch_item(batch.dataset, batch.folder, following))
        reopened = self._ledger.reopen_batch(batch)
        if reopened is not None:
            log.info("batch %s of %s reopened as generation %d", batch.folder, batch.dataset, reopened.generation)
            return reopened, True
        current = self._ledger.get_batch(batch.dataset, batch.folder)
        if current is None:
            raise ConcurrentUpdateError(f"batch {batch.folder} of {batch.dataset} vanished; retry")
        return current, False

    def _join_batch(self, decision: AddToBatch, facts: FileFacts) -> tuple[BatchRecord, bool]:
        """Record a file in its batch's current generation, even while that is being sealed.

        A file recorded while its generation is sealing is found by the sealer when it finishes (and
        goes to the next generation). If the generation got sealed between our read and our write,
        and its version does not cover the file, the file joins the next generation itself.
        Raises ConcurrentUpdateError if generations keep being sealed under it (JOIN_ATTEMPTS times).
        """
        dataset, blob = decision.dataset.name, decision.blob
        opened_any = False
        for _ in range(JOIN_ATTEMPTS):
            batch, opened = self._current_batch(decision)
            opened_any = opened_any or opened
            self._ledger.add_batch_file(batch, blob.name, facts.etag, facts.size, facts.sha256)
            now = self._ledger.get_batch(dataset, decision.folder)
            if now is not None and now.generation == batch.generation and now.state != BatchState.SEALED:
                return batch, opened_any
            if self._ledger.covered_by(dataset, decision.folder, blob.name, facts.etag) is not None:
                return batch, opened_any
            log.info("file %s was recorded while generation %d of %s was sealed without it; joining the next",
                     blob.path, batch.generation, decision.folder)
        raise ConcurrentUpdateError(f"batch {decision.folder} of {dataset} kept being sealed under {blob.path}")

    def _marker_at(self, dataset: DatasetPolicy, batch: BatchRecord) -> datetime | None:
        """When the marker was written, if it counts: written after the previous generation was sealed (if any)."""
        marker = dataset.batch.marker if dataset.batch else None
        if not marker:
            return None
        props = self._blobs.properties(dataset.container, f"{batch.folder}{marker}")
        if props is None or (batch.sealed_at is not None and props.last_modified <= batch.sealed_at):
            return None
        return props.last_modified

    def _manifest(self, dataset: DatasetPolicy, batch: BatchRecord, recorded: dict[str, dict[str, Any]]) -> Manifest:
        """The batch's files as the storage listing shows them (the truth: events may be late or lost).

        A file already known at the listed eTag (recorded on arrival in this or the previous
        generation, or covered by an earlier version) keeps its hash: listing only, no download.
        Any other is hashed now, except one in the Archive tier, which is left out (it cannot be read).
        """
        covered = self._ledger.covered_files(dataset.name, batch.folder)
        known: dict[str, dict[str, Any]] = {n: r for n, r in covered.items() if not r.get("LeftOut")}
        if batch.generation > 1:
            known.update(self._ledger.batch_files(batch, batch.generation - 1))
        known.update(recorded)
        files: dict[str, FileFacts] = {}
        left_out: dict[str, str] = {}
        marker = dataset.batch.marker if dataset.batch else None
        for item in self._blobs.list(dataset.container, batch.folder):
            if item.name.rsplit("/", 1)[-1] == marker or problem_with_name(item.name) or not item.size:
                continue
            row = known.get(item.name)
            if row is not None and row.get("ETag") == item.etag and row.get("Sha256"):
                files[item.name] = FileFacts(item.etag, item.size, str(row["Sha256"]), item.last_modified)
            elif item.tier == ARCHIVE_TIER:
                left_out[item.name] = item.etag
            else:  # its event has not arrived (yet): hash it now
                files[item.name] = self._hash(item)
        return Manifest(files, left_out, covered)

    def _seal(self, dataset: DatasetPolicy, batch: BatchRecord, request: SealRequest, reason: str,
              recorded: dict[str, dict[str, Any]]) -> IngestOutcome | None:
        """Seal one generation under a lease; None if another instance took the claim first.

        On any failure the claim is given back (best effort) and the error propagates, so the
        platform's retry seals at once instead of waiting for the lease.
        """
        claimed = self._ledger.claim_seal(batch, owner=self._owner, reason=reason)
        if claimed is None:
            return None
        try:
            return self._sealed(dataset, claimed, request, recorded)
        except Exception:
            self._release(claimed)
            raise

    def _release(self, claimed: BatchRecord) -> None:
        """Give the seal back after a failure; if that fails too, the lease expires and a retry takes it over."""
        try:
            if self._ledger.release_seal(claimed):
                log.info("released the seal of batch %s of %s (generation %d)", claimed.folder, claimed.dataset,
                         claimed.generation)
        except Exception as exc:  # best effort: the original error is the one that matters
            log.warning("could not release the seal of batch %s of %s: %s: %s; its lease expires at %s",
                        claimed.folder, claimed.dataset, type(exc).__name__, strip_query(str(exc)),
                        claimed.lease_until)

    def _sealed(self, dataset: DatasetPolicy, claimed: BatchRecord, request: SealRequest,
                recorded: dict[str, dict[str, Any]]) -> IngestOutcome:
        """Seal a claimed generation into one data version. Raises ConcurrentUpdateError if the batch moved."""
        manifest = self._manifest(dataset, claimed, recorded)
        if not manifest.files:
            sealed = self._ledger.finish_seal(claimed, "", {}, manifest.left_out)
            self._after_seal(dataset, sealed)
            return IngestOutcome(IngestAction.SKIPPED, f"batch {claimed.folder} holds no non-empty files"
                                 + manifest.note)
        spec = folder_version_spec(dataset, claimed, manifest.files, claimed.seal_reason)
        files = tuple(sorted(manifest.files))
        self._snapshot(dataset, spec.tags[Tag.SHA256.value], folder_snapshot(dataset, claimed, manifest.files))
        result = self._register_once(dataset, spec.tags[Tag.SHA256.value], f"{dataset.container}/{claimed.folder}",
                                     spec, files)
        if isinstance(result, Busy):  # the same content is being registered by a live instance: look again later
            self._release(claimed)
            self._seal_queue.send(request, self._delay(result.until))
            return IngestOutcome(IngestAction.WAITING, result.detail)
        sealed = self._ledger.finish_seal(claimed, result.version or "", manifest.newly_covered(), manifest.left_out)
        self._after_seal(dataset, sealed)
        log.info("sealed batch %s of %s: %d files, %s bytes -> %s", claimed.folder, dataset.name,
                 len(manifest.files), spec.tags[Tag.SIZE.value], result.detail)
        action = IngestAction.SEALED if result.action is IngestAction.REGISTERED else result.action
        return IngestOutcome(action, result.detail + manifest.note, result.version)

    def _after_seal(self, dataset: DatasetPolicy, sealed: BatchRecord) -> list[str]:
        """Files recorded while the generation was sealed, not covered by its version, go to the next one.

        Then the generation's open-work entry is closed (last, so a crash before re-runs this check).
        """
        late = late_files(self._ledger.batch_files(sealed), self._ledger.covered_files(dataset.name, sealed.folder))
        if late:
            reopened, opened = self._reopen(sealed)
            log.info("%d file(s) of batch %s arrived while generation %d was sealed (%s, …): generation %d",
                     len(late), sealed.folder, sealed.generation, late[0], reopened.generation)
            if opened:
                self._schedule_quiet_period(dataset, reopened)
        self._ledger.finish_work(FLOW, _batch_work(dataset.name, sealed.folder, sealed.generation))
        return late

    def _delay(self, until: datetime) -> float:
        """Seconds until just after `until` (at least one)."""
        return max(1.0, (until - self._clock()).total_seconds() + 1)

    # -- reconciling ------------------------------------------------------------------------------
    def _redrive(self, item: dict[str, Any], now: datetime) -> IngestOutcome | None:
        kind = item.get("Kind")
        if kind == "batch":
            return self._redrive_batch(item, now)
        if kind == "content":
            return self._redrive_content(item, now)
        log.warning("reconcile work=%s: unknown kind %r; dropped", item.get("RowKey"), kind)
        self._ledger.finish_work(FLOW, str(item["RowKey"]))
        return None

    def _abandoned(self, item: dict[str, Any], now: datetime) -> bool:
        """An entry whose item never appeared (its writer died before writing it), older than any lease."""
        since = datetime.fromisoformat(str(item["Since"])) if item.get("Since") else None
        return since is None or now - since > max(self._leases.seal, self._leases.content)

    def _redrive_batch(self, item: dict[str, Any], now: datetime) -> IngestOutcome | None:
        key, folder, generation = str(item["RowKey"]), str(item["Folder"]), int(item["Generation"])
        dataset = self._policy_dataset(str(item["Dataset"]))
        if dataset is None:
            self._ledger.finish_work(FLOW, key)
            return None
        batch = self._ledger.get_batch(dataset.name, folder)
        if batch is None or batch.generation != generation:
            if (batch is not None and batch.generation > generation) or self._abandoned(item, now):
                self._ledger.finish_work(FLOW, key)  # superseded (its successor has its own entry) or never begun
            return None
        if batch.state == BatchState.SEALED:  # sealed, but the check for files that arrived meanwhile was cut off
            late = self._after_seal(dataset, batch)
            return IngestOutcome(IngestAction.REDRIVEN, f"{len(late)} file(s) of batch {folder} recorded while "
                                 f"generation {generation} was sealed go to the next generation") if late else None
        recorded = self._ledger.batch_files(batch)
        marker_at = self._marker_at(dataset, batch) if batch.state == BatchState.OPEN else None
        why = stuck_batch(batch, dataset, _last_recorded(recorded), marker_at, now)
        if why is None:
            return None
        log.info("reconcile: batch %s of %s generation %d is stuck (%s); re-driving its seal", folder, dataset.name,
                 generation, why)
        with continued(batch.traceparent):  # the seal goes on in the trace the batch was opened in
            outcome = self._on_seal_request(SealRequest(dataset.name, folder, generation, "reconcile"))
        return IngestOutcome(outcome.action, f"re-driven ({why}): {outcome.detail}", outcome.version)

    def _redrive_content(self, item: dict[str, Any], now: datetime) -> IngestOutcome | None:
        key, dataset, sha256 = str(item["RowKey"]), str(item["Dataset"]), str(item["Sha256"])
        record = self._ledger.get_content(dataset, sha256)
        if record is None or record.state == ContentState.PUBLISHED:
            if record is not None or self._abandoned(item, now):
                self._ledger.finish_work(FLOW, key)
            return None
        if not record.lease_expired(now, self._leases.content):
            return None  # its holder is alive (and may be publishing right now)
        stored = self._ledger.content_spec(record)
        if stored is None:
            self._ledger.finish_work(FLOW, key)
            return IngestOutcome(IngestAction.SKIPPED, f"content {sha256[:12]} of {dataset} was claimed without "
                                 "its spec; its next upload or delivery finishes it")
        spec, files, count = stored
        stuck = record.state
        if record.state == ContentState.PENDING:
            taken = self._ledger.take_over_content(record, self._owner)
            if taken is None:
                return None  # someone moved it meanwhile: the next pass looks again
            record = self._adopt(taken)
        with continued(record.traceparent):  # the announcement goes on in the upload's own trace
            outcome = self._finish_content(record, spec, files, count)
        return IngestOutcome(outcome.action, f"re-driven (content {sha256[:12]} was {stuck} past its lease): "
                             f"{outcome.detail}", outcome.version)

    def _policy_dataset(self, name: str) -> DatasetPolicy | None:
        try:
            return self._policy.dataset(name)
        except KeyError:
            log.warning("reconcile: dataset %s is no longer in the policy; its open work is dropped", name)
            return None


def _batch_item(dataset: str, folder: str, generation: int) -> dict[str, Any]:
    return {"Kind": "batch", "Dataset": dataset, "Folder": folder, "Generation": generation}


def _last_recorded(recorded: dict[str, dict[str, Any]]) -> datetime | None:
    return max((datetime.fromisoformat(f["RecordedAt"]) for f in recorded.values()), default=None)
