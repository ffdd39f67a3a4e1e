"""`EventPublisher` on Evergreen's Event Grid custom topic (azure-eventgrid)."""

from __future__ import annotations

import logging
from dataclasses import asdict
from datetime import UTC, datetime

from azure.core.credentials import AzureKeyCredential, TokenCredential
from azure.eventgrid import EventGridEvent, EventGridPublisherClient

from shared.domain.events import DataVersionRegistered

log = logging.getLogger(__name__)


class EventGridPublisher:
    """Wraps one EventGridPublisherClient (created once); event ids are deterministic, so consumers dedupe."""

    def __init__(self, endpoint: str, credential: AzureKeyCredential | TokenCredential) -> None:
        self._client = EventGridPublisherClient(endpoint, credential)

    def data_version_registered(self, event: DataVersionRegistered) -> str:
        """Publish one `Evergreen.DataVersionRegistered`; returns its id. Azure errors propagate (retry)."""
        grid_event = EventGridEvent(
            subject=f"datasets/{event.dataset}/versions/{event.version}",
            event_type=DataVersionRegistered.EVENT_TYPE,
            data={**asdict(event), "files": list(event.files)},  # the SDK serialises tuples as strings
            data_version="1.0",
            id=event.event_id,
            event_time=datetime.now(UTC),
        )
        self._client.send([grid_event])
        log.debug("published %s id=%s", DataVersionRegistered.EVENT_TYPE, event.event_id)
        return event.event_id
