"""`EventPublisher` on Evergreen's Event Grid custom topic (azure-eventgrid)."""

from __future__ import annotations

import logging
from dataclasses import asdict, replace
from datetime import UTC, datetime

from azure.core.credentials import AzureKeyCredential, TokenCredential
from azure.eventgrid import EventGridEvent, EventGridPublisherClient

from shared.domain.decay import ChampionDegraded
from shared.domain.events import DataVersionRegistered
from shared.telemetry import current_traceparent

log = logging.getLogger(__name__)


class EventGridPublisher:
    """Wraps one EventGridPublisherClient (created once); event ids are deterministic, so consumers dedupe."""

    def __init__(self, endpoint: str, credential: AzureKeyCredential | TokenCredential) -> None:
        self._client = EventGridPublisherClient(endpoint, credential)

    def data_version_registered(self, event: DataVersionRegistered) -> str:
        """Publish one `Evergreen.DataVersionRegistered`; returns its id. Azure errors propagate (retry).

        The event carries the current trace context (`data.traceparent`) unless it already has one.
        """
        event = replace(event, traceparent=event.traceparent or current_traceparent())
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

    def champion_degraded(self, event: ChampionDegraded) -> str:
        """Publish one `Evergreen.ChampionDegraded`; returns its id. Azure errors propagate (retry)."""
        self._client.send([EventGridEvent(subject=event.subject, event_type=ChampionDegraded.EVENT_TYPE,
                                          data={**asdict(event), "traceparent": current_traceparent()},
                                          data_version="1.0", id=event.event_id, event_time=datetime.now(UTC))])
        log.debug("published %s id=%s", ChampionDegraded.EVENT_TYPE, event.event_id)
        return event.event_id
