"""Blob side of retention: list watched containers into the inventory, and delete or tier blobs.

Listing is `list_blobs` (5,000 blobs a page) with the tier and last-modified time each item already
carries: no per-blob call. Blob index tags come with the listing too (`include=["tags"]`), so the
protection tag works on blobs as it does on versions.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from azure.core.exceptions import ResourceNotFoundError
from azure.storage.blob import BlobServiceClient, StandardBlobTier

from shared.domain.retention.inventory import Blob, BlobKey, BlobTier, JobOutputKey
from shared.domain.retention.planner import Action, ActionKind

log = logging.getLogger(__name__)

_TIERS = {t.value.lower(): t for t in BlobTier}


class BlobRetention:
    """Lists blobs of the watched containers and executes blob actions of a plan."""

    def __init__(self, blobs: BlobServiceClient) -> None:
        self._blobs = blobs

    def list(self, containers: Iterable[str]) -> list[Blob]:
        out: list[Blob] = []
        for name in sorted(set(containers)):
            container = self._blobs.get_container_client(name)
            try:
                for item in container.list_blobs(include=["tags"]):
                    tier = _TIERS.get(str(item.blob_tier or "").lower())
                    out.append(Blob(container=name, name=str(item.name), last_modified=item.last_modified,
                                    tier=tier, tags=dict(item.tags or {})))
            except ResourceNotFoundError:
                continue  # a container named by a rule but not created yet holds nothing to retire
        return out

    def execute(self, action: Action) -> str:
        """Delete or tier one blob; 'already' when it is gone (a re-run after a crash) or already in that tier.

        Raises ValueError for an action that is not a blob's; other Azure errors propagate.
        """
        target = action.target
        if not isinstance(target, BlobKey) or action.kind not in (ActionKind.DELETE_BLOB, ActionKind.TIER_BLOB):
            raise ValueError(f"not a blob action: {action.kind.value}")
        blob = self._blobs.get_blob_client(target.container, target.name)
        try:
            if action.kind is ActionKind.DELETE_BLOB:
                blob.delete_blob(delete_snapshots="include")
                return "done"
            assert action.tier is not None  # a tier_blob action always names its tier
            current = _TIERS.get(str(blob.get_blob_properties().blob_tier or "").lower())
            if current is action.tier:
                return "already"
            blob.set_standard_blob_tier(StandardBlobTier(action.tier.value))
        except ResourceNotFoundError:
            return "already"
        return "done"

    def delete_job_output(self, action: Action) -> str:
        """Delete a finished job's output folder; 'already' when nothing is left under it."""
        target = action.target
        assert isinstance(target, JobOutputKey)
        path = target.path.path
        prefix = path if path == "" or path.endswith("/") else path + "/"
        return "done" if delete_prefix(self._blobs, target.path.container, prefix) else "already"


def delete_prefix(blobs: BlobServiceClient, container: str, prefix: str) -> int:
    """Delete every blob under `prefix` (a finished job's output folder); 0 when it is already empty."""
    client = blobs.get_container_client(container)
    deleted = 0
    try:
        for item in client.list_blobs(name_starts_with=prefix):
            try:
                client.delete_blob(item.name, delete_snapshots="include")
                deleted += 1
            except ResourceNotFoundError:
                continue
    except ResourceNotFoundError:
        return deleted
    return deleted
