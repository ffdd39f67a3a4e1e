"""`BlobStore` on Azure Blob Storage (azure-storage-blob): the data account, as ingest reads it.

Every azure-core error that means "this blob is not what you read a moment ago" becomes
`shared.errors.BlobChangedError`, so the services never see an Azure exception type.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from datetime import datetime

from azure.core import MatchConditions
from azure.core.exceptions import HttpResponseError, ResourceModifiedError, ResourceNotFoundError
from azure.storage.blob import BlobProperties, BlobServiceClient

from shared.domain.keys import clean_etag
from shared.errors import BlobChangedError, TransientError
from shared.ports import BlobFacts

log = logging.getLogger(__name__)

COPY_WAIT_SECONDS = 30.0  # how long `copy` waits for an asynchronous (pending) copy before a retry takes over
COPY_POLL_SECONDS = 0.5


def _tier(value: object) -> str | None:
    """The SDK gives the access tier as a plain string or as its `StandardBlobTier` str-enum."""
    if value is None:
        return None
    return str(getattr(value, "value", value))


def _facts(container: str, props: BlobProperties) -> BlobFacts:
    last_modified = props.last_modified
    assert isinstance(last_modified, datetime)
    return BlobFacts(container=container, name=str(props.name), etag=clean_etag(str(props.etag)),
                     size=int(props.size or 0), last_modified=last_modified, tier=_tier(props.blob_tier))


class AzureBlobStore:
    """One storage account's blobs; the `BlobServiceClient` is built once (composition root) and passed in."""

    def __init__(self, service: BlobServiceClient) -> None:
        self._service = service

    def properties(self, container: str, name: str) -> BlobFacts | None:
        """The blob's facts; None if the blob (or its container) does not exist."""
        try:
            props = self._service.get_blob_client(container, name).get_blob_properties()
        except ResourceNotFoundError:
            return None
        return _facts(container, props)

    def read(self, container: str, name: str, etag: str) -> Iterator[bytes]:
        """Stream the content, conditioned on `etag` (If-Match) for the first and every later range request.

        Raises BlobChangedError if the blob was overwritten (412) or deleted (404) before or during the read.
        """
        client = self._service.get_blob_client(container, name)
        try:
            stream = client.download_blob(etag=f'"{clean_etag(etag)}"', match_condition=MatchConditions.IfNotModified)
            yield from stream.chunks()
        except (ResourceModifiedError, ResourceNotFoundError) as exc:
            raise _changed(container, name, etag) from exc

    def list(self, container: str, prefix: str) -> Iterator[BlobFacts]:
        """Every blob under `prefix`, in name order (the service lists in name order, paged); none if no container."""
        try:
            for item in self._service.get_container_client(container).list_blobs(name_starts_with=prefix):
                yield _facts(container, item)
        except ResourceNotFoundError:
            log.info("container %s does not exist: nothing under %r", container, prefix)

    def copy(self, container: str, name: str, etag: str, to_name: str) -> None:
        """Server-side Copy Blob of `name` at `etag` (If-Match on the source) to `to_name`, waited for.

        A copy inside one account usually completes at once; a pending one is polled for up to
        COPY_WAIT_SECONDS. Raises BlobChangedError if the source changed or vanished (412/404),
        TransientError if the copy failed, was aborted or is still pending (a retry copies again).
        """
        source = self._service.get_blob_client(container, name)
        target = self._service.get_blob_client(container, to_name)
        try:  # a SAS client's url carries its token: that authorizes the source read, and is never logged
            started = target.start_copy_from_url(source.url, source_etag=f'"{clean_etag(etag)}"',
                                                 source_match_condition=MatchConditions.IfNotModified)
        except (ResourceModifiedError, ResourceNotFoundError) as exc:
            raise _changed(container, name, etag) from exc
        except HttpResponseError as exc:
            if exc.status_code in (404, 412):  # SourceConditionNotMet is not mapped by the SDK
                raise _changed(container, name, etag) from exc
            raise
        status = str(started.get("copy_status") or "success")
        deadline = time.monotonic() + COPY_WAIT_SECONDS
        while status == "pending" and time.monotonic() < deadline:
            time.sleep(COPY_POLL_SECONDS)
            status = str(target.get_blob_properties().copy.status or "success")
        if status != "success":
            raise TransientError(f"copy of {container}/{name} to {to_name} is {status}; a retry copies again")
        log.info("copied %s/%s (eTag %s) to %s", container, name, etag, to_name)


def _changed(container: str, name: str, etag: str) -> BlobChangedError:
    return BlobChangedError(f"blob {container}/{name} changed or vanished since it was read at eTag {etag}; "
                            "its own event brings the new content")
