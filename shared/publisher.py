"""Publishing Evergreen's own events to its Event Grid custom topic."""

from __future__ import annotations

import logging
from dataclasses import asdict
from datetime import UTC, datetime

from azure.core.credentials import AzureKeyCredential, TokenCredential
from azure.eventgrid import EventGridEvent, EventGridPublisherClient

from shared.events import DataVersionRegistered

log = logging.getLogger(__name__)


class EventPublisher:
    """Wraps one EventGridPublisherClient (created once); event ids are deterministic."""

    def __init__(self, endpoint: str, credential: AzureKeyCredential | TokenCredential) -> None:
        self._client = EventGridPublisherClient(endpoint, credential)

    def data_version_registered(self, event: DataVersionRegistered) -> str:
        grid_event = EventGridEvent(
            subject=f"datasets/{event.dataset}/versions/{event.version}",
            event_type=DataVersionRegistered.EVENT_TYPE,
            data={**asdict(event), "files": list(event.files)},  # the SDK serialises tuples as strings
            data_version="1.0",
            id=event.event_id,
            event_time=datetime.now(UTC),
        )
        self._client.send([grid_event])
        return event.event_id
