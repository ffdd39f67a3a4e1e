"""The subscription file (`infra/eventgrid-subscriptions.json`), parsed once into frozen objects.

The same file is deployed to Azure by Bicep, so only its documented shape is accepted; every problem
is reported together with its path so a bad edit fails loudly at start, not at delivery time.
"""

from __future__ import annotations

import json
from enum import StrEnum
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

TOPICS = ("storage", "workspace", "evergreen")
DEFAULT_MAX_ATTEMPTS = 30
DEFAULT_TTL_MINUTES = 1440


class DestinationKind(StrEnum):
    EVENT_GRID_TRIGGER = "eventGridTrigger"
    BLOB_TRIGGER = "blobTrigger"


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, populate_by_name=True, extra="ignore")


class Destination(_Model):
    function: str = Field(min_length=1)
    kind: DestinationKind

    def webhook_path(self) -> str:
        """The `func start` route for this destination (see notes/event-grid.md)."""
        if self.kind is DestinationKind.BLOB_TRIGGER:
            return f"/runtime/webhooks/blobs?functionName=Host.Functions.{self.function}"
        return f"/runtime/webhooks/EventGrid?functionName={self.function}"


class AdvancedFilter(_Model):
    operator_type: str = Field(alias="operatorType")
    key: str = Field(min_length=1)
    values: tuple[Any, ...] | None = None
    value: Any = None


class EventFilter(_Model):
    included_event_types: tuple[str, ...] | None = Field(default=None, alias="includedEventTypes")
    subject_begins_with: str = Field(default="", alias="subjectBeginsWith")
    subject_ends_with: str = Field(default="", alias="subjectEndsWith")
    is_subject_case_sensitive: bool = Field(default=False, alias="isSubjectCaseSensitive")
    enable_advanced_filtering_on_arrays: bool = Field(default=False, alias="enableAdvancedFilteringOnArrays")
    advanced_filters: tuple[AdvancedFilter, ...] = Field(default=(), alias="advancedFilters")


class RetryPolicy(_Model):
    max_delivery_attempts: int = Field(default=DEFAULT_MAX_ATTEMPTS, ge=1, le=30, alias="maxDeliveryAttempts")
    event_time_to_live_in_minutes: int = Field(
        default=DEFAULT_TTL_MINUTES, ge=1, le=1440, alias="eventTimeToLiveInMinutes"
    )


class DeadLetter(_Model):
    container: str = Field(min_length=3, max_length=63, pattern=r"^[a-z0-9]+(-[a-z0-9]+)*$")


class Subscription(_Model):
    name: str = Field(min_length=3, max_length=64, pattern=r"^[A-Za-z0-9-]+$")
    topic: str
    destination: Destination
    filter: EventFilter = EventFilter()
    retry_policy: RetryPolicy = Field(default=RetryPolicy(), alias="retryPolicy")
    dead_letter: DeadLetter | None = Field(default=None, alias="deadLetter")


class SubscriptionFile(_Model):
    subscriptions: tuple[Subscription, ...]


class SubscriptionFileError(ValueError):
    """The subscription file is unreadable or invalid; the message lists every problem with its path."""


def parse_subscriptions(document: Any, *, source: str = "<subscriptions>") -> tuple[Subscription, ...]:
    try:
        parsed = SubscriptionFile.model_validate(document)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors())
        raise SubscriptionFileError(f"{source}: {problems}") from exc
    problems_list: list[str] = []
    seen: set[str] = set()
    for index, sub in enumerate(parsed.subscriptions):
        if sub.topic not in TOPICS:
            problems_list.append(
                f"subscriptions.{index}.topic: {sub.topic!r} is not one of {', '.join(TOPICS)}"
            )
        if sub.name.lower() in seen:
            problems_list.append(f"subscriptions.{index}.name: {sub.name!r} is used twice")
        seen.add(sub.name.lower())
        for f_index, adv in enumerate(sub.filter.advanced_filters):
            from devstack.eventgrid.filters import check_advanced_filter

            problem = check_advanced_filter(adv)
            if problem:
                problems_list.append(f"subscriptions.{index}.filter.advancedFilters.{f_index}: {problem}")
    if problems_list:
        raise SubscriptionFileError(f"{source}: " + "; ".join(problems_list))
    return parsed.subscriptions


def load_subscriptions(path: Path) -> tuple[Subscription, ...]:
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise SubscriptionFileError(f"{path}: cannot read the subscription file: {exc}") from exc
    return parse_subscriptions(document, source=str(path))
