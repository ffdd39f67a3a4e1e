"""Blob side of retention: list watched containers into the inventory, and delete or tier blobs.

Listing is `list_blobs` (5,000 blobs a page) with the tier and last-modified time each item already
carries: no per-blob call. Blob index tags come with the listing too (`include=["tags"]`), so the
protection tag works on blobs as it does on versions. A container is listed by its top-level folders,
up to 8 folders at a time (one `/`-delimited listing names them), so a large landing container's pages
are fetched concurrently; the blobs are then returned in name order, as one listing would give them.

Deletes are conditional on the ETag listed (`If-Match`): a blob overwritten between the listing and
the apply answers 412 and is reported as 'changed', untouched. Set Blob Tier takes no ETag
condition, so a tier reads the blob's properties first and skips a changed blob; the window left is
milliseconds, and a tier move loses no data. A job output's blobs are each deleted on the ETag of the
listing that found them, and only those last modified before the job finished: a blob written later
(a job started after the plan's listing, writing under the same prefix) is kept and reported ('newer').
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any

from azure.core import MatchConditions
from azure.core.exceptions import ResourceModifiedError, ResourceNotFoundError
from azure.storage.blob import BlobPrefix, BlobServiceClient, ContainerClient, StandardBlobTier

from shared.domain.retention.inventory import Blob, BlobKey, BlobTier
from shared.domain.retention.planner import Action, ActionKind, job_output_scope
from shared.domain.vocabulary import ApplyStatus

log = logging.getLogger(__name__)

_TIERS = {t.value.lower(): t for t in BlobTier}
LIST_WORKERS = 8  # top-level folders listed at a time


def _quoted(etag: str) -> str:
    """An ETag as HTTP sends it: listings give it bare (0x8D…), properties and headers quoted ("0x8D…")."""
    return f'"{etag.strip(chr(34))}"'


class BlobRetention:
    """Lists blobs of the watched containers and executes blob actions of a plan."""

    def __init__(self, blobs: BlobServiceClient) -> None:
        self._blobs = blobs

    def account_names(self) -> frozenset[str]:
        """The data account: the only one retention deletes in."""
        return frozenset({str(self._blobs.account_name or "").lower()} - {""})

    def list(self, containers: Iterable[str]) -> list[Blob]:
        """Every blob of the containers, by container then name; raises azure-core errors but a 404 (no container)."""
        out: list[Blob] = []
        for name in sorted(set(containers)):
            try:
                out.extend(_list_container(self._blobs.get_container_client(name)))
            except ResourceNotFoundError:
                continue  # a container named by a rule but not created yet holds nothing to retire
        return out

    def execute(self, action: Action) -> ApplyStatus:
        """Delete or tier one blob if it still has the listed ETag.

        Returns 'done'; 'already' when it is gone (a re-run after a crash) or already in that tier;
        'changed' when it was changed since it was listed (nothing is done). Raises ValueError for an
        action that is not a blob's; other Azure errors propagate.
        """
        target = action.target
        if not isinstance(target, BlobKey) or action.kind not in (ActionKind.DELETE_BLOB, ActionKind.TIER_BLOB):
            raise ValueError(f"not a blob action: {action.kind.value}")
        blob = self._blobs.get_blob_client(target.container, target.name)
        try:
            if action.kind is ActionKind.DELETE_BLOB:
                if action.etag:
                    blob.delete_blob(delete_snapshots="include", etag=_quoted(action.etag),
                                     match_condition=MatchConditions.IfNotModified)
                else:
                    blob.delete_blob(delete_snapshots="include")
                return ApplyStatus.DONE
            assert action.tier is not None  # a tier_blob action always names its tier
            props = blob.get_blob_properties()
            if _TIERS.get(str(props.blob_tier or "").lower()) is action.tier:
                return ApplyStatus.ALREADY
            if action.etag and _quoted(str(props.etag)) != _quoted(action.etag):
                return ApplyStatus.CHANGED
            blob.set_standard_blob_tier(StandardBlobTier(action.tier.value))
        except ResourceNotFoundError:
            return ApplyStatus.ALREADY
        except ResourceModifiedError:  # 412: changed since listed, or gone (If-Match on a missing blob)
            if not blob.exists():
                return ApplyStatus.ALREADY
            log.info("retention: %s changed since it was listed (ETag %s); left as it is", target, action.etag)
            return ApplyStatus.CHANGED
        return ApplyStatus.DONE

    def delete_job_output(self, action: Action) -> ApplyStatus:
        """Delete a finished job's output folder, only blobs written before the job finished; 'already' when none
        is left, 'newer' when some were written after it (kept). Raises ValueError as `job_output_scope`."""
        container, prefix, cutoff = job_output_scope(action)
        deleted, kept = delete_prefix(self._blobs, container, prefix, before=cutoff)
        if kept:
            log.warning("retention: %s: kept %d blob(s) written after the job finished at %s, e.g. %s",
                        action.target, len(kept), cutoff.isoformat(), kept[0])
            return ApplyStatus.NEWER
        return ApplyStatus.DONE if deleted else ApplyStatus.ALREADY


def _blob(container: str, item: Any) -> Blob:
    tier = _TIERS.get(str(item.blob_tier or "").lower())
    return Blob(container=container, name=str(item.name), last_modified=item.last_modified, tier=tier,
                tags=dict(item.tags or {}), etag=str(item.etag or ""))


def _list_container(container: ContainerClient) -> list[Blob]:
    """The blobs at the top level, then each top-level folder's blobs, folders listed concurrently; name order."""
    name = str(container.container_name)
    top: list[Blob] = []
    folders: list[str] = []
    for item in container.walk_blobs(include=["tags"], delimiter="/"):
        if isinstance(item, BlobPrefix):
            folders.append(str(item.name))
        else:
            top.append(_blob(name, item))

    def folder(prefix: str) -> list[Blob]:
        return [_blob(name, item) for item in container.list_blobs(name_starts_with=prefix, include=["tags"])]

    with ThreadPoolExecutor(max_workers=LIST_WORKERS, thread_name_prefix="retention-blobs") as pool:
        listed = [b for group in pool.map(folder, folders) for b in group]
    return sorted([*top, *listed], key=lambda b: b.name)


def delete_prefix(blobs: BlobServiceClient, container: str, prefix: str, *,
                  before: datetime) -> tuple[int, list[str]]:
    """Delete the blobs under `prefix` (a finished job's output folder) last modified before `before`:
    (how many were deleted, names of those kept because they were written at or after `before`).

    Each blob is deleted on the ETag its listing showed: one rewritten meanwhile is left alone.
    """
    client = blobs.get_container_client(container)
    deleted, kept = 0, []
    try:
        for item in client.list_blobs(name_starts_with=prefix):
            if item.last_modified is None or item.last_modified >= before:
                kept.append(str(item.name))  # another writer's (a job started after the listing): never ours
                continue
            try:
                client.delete_blob(item.name, delete_snapshots="include", etag=_quoted(str(item.etag)),
                                   match_condition=MatchConditions.IfNotModified)
                deleted += 1
            except (ResourceNotFoundError, ResourceModifiedError):
                continue
    except ResourceNotFoundError:
        return deleted, kept
    return deleted, kept
