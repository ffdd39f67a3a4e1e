"""The `EventPublisher` contract: the in-memory publisher and Event Grid (the local Event Grid) behave alike.

What a consumer sees is what matters: the event arrives under the id the publisher returned, with
its type and data; publishing it again yields the same id, so the consumer's dedupe keeps it once.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

import pytest

from shared.adapters.memory.eventgrid import MemoryEventPublisher
from shared.domain.events import DataVersionRegistered
from shared.ports import EventPublisher


@dataclass
class Topic:
    publisher: EventPublisher
    # the distinct events a consumer of `dataset` received, keyed by id (after `count` deliveries, where real)
    received: Callable[[str, int], dict[str, dict[str, Any]]]


@pytest.fixture(params=["memory", pytest.param("azure", marks=pytest.mark.integration)])
def topic(request: pytest.FixtureRequest) -> Iterator[Topic]:
    if request.param == "memory":
        memory = MemoryEventPublisher()

        def recorded(dataset: str, count: int) -> dict[str, dict[str, Any]]:
            return {e.event_id: {"id": e.event_id, "eventType": e.EVENT_TYPE,
                                 "data": {**asdict(e), "files": list(e.files)}}
                    for e in memory.events if e.dataset == dataset}

        yield Topic(memory, recorded)
        return
    from azure.core.credentials import AzureKeyCredential

    from shared.adapters.azure.eventgrid import EventGridPublisher

    eventgrid = request.getfixturevalue("eventgrid")

    def delivered(dataset: str, count: int) -> dict[str, dict[str, Any]]:
        requests = eventgrid.receiver.wait_for(f"datasets/{dataset}/", function="on_custom_event", count=count)
        return {r.event["id"]: r.event for r in requests}

    yield Topic(EventGridPublisher(eventgrid.topic_endpoint("evergreen"), AzureKeyCredential(eventgrid.topic_key)),
                delivered)


def registered(dataset: str, version: str = "3") -> DataVersionRegistered:
    return DataVersionRegistered(dataset=dataset, asset_name=dataset, version=version,
                                 uri=f"azureml://datastores/landing/paths/{dataset}/", asset_type="uri_folder",
                                 sha256="ab" * 32, file_count=2, files=("a.csv", "b é.csv"))


def test_the_consumer_receives_the_event_under_the_returned_id_with_its_data(topic: Topic) -> None:
    dataset = f"contract{uuid.uuid4().hex[:10]}"
    event = registered(dataset)
    event_id = topic.publisher.data_version_registered(event)
    assert event_id == event.event_id
    (received,) = topic.received(dataset, 1).values()
    assert received["id"] == event_id
    assert received["eventType"] == DataVersionRegistered.EVENT_TYPE
    data = received["data"]
    assert (data["dataset"], data["version"], data["file_count"]) == (dataset, "3", 2)
    assert data["files"] == ["a.csv", "b é.csv"]


def test_publishing_the_same_event_twice_yields_one_id_so_consumers_keep_it_once(topic: Topic) -> None:
    dataset = f"contract{uuid.uuid4().hex[:10]}"
    first = topic.publisher.data_version_registered(registered(dataset))
    second = topic.publisher.data_version_registered(registered(dataset))
    assert first == second
    assert set(topic.received(dataset, 2)) == {first}  # Event Grid delivers both; the ids dedupe to one


def test_different_versions_are_different_events(topic: Topic) -> None:
    dataset = f"contract{uuid.uuid4().hex[:10]}"
    ids = {topic.publisher.data_version_registered(registered(dataset, v)) for v in ("1", "2")}
    assert len(ids) == 2
    assert set(topic.received(dataset, 2)) == ids


def test_a_champion_degraded_event_is_published_under_its_deterministic_id(topic: Topic) -> None:
    """`Evergreen.ChampionDegraded` (the champion monitor): nothing in Evergreen subscribes to it, so what both
    adapters must agree on is the id — the same for a re-publish of the same degradation, so consumers dedupe."""
    from shared.domain.decay import ChampionDegraded

    event = ChampionDegraded(endpoint=f"ep{uuid.uuid4().hex[:8]}", model="churn-model:3", metric="roc_auc",
                             value="0.65", at_promotion="0.80", threshold="0.7", code="below_threshold",
                             reason="roc_auc 0.65 is below the threshold 0.7", data_asset="churn-holdout",
                             data_version="4", job_name="evergreen-rescore-x")
    first = topic.publisher.champion_degraded(event)
    assert first == topic.publisher.champion_degraded(event) == event.event_id
    assert first != ChampionDegraded(**{**asdict(event), "data_version": "5"}).event_id
