"""Typed, frozen events: what triggers hand to the domain, and what Evergreen publishes."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import ClassVar, Literal

from shared.domain.keys import event_id


@dataclass(frozen=True)
class BlobCreated:
    """A blob landed (from the Event Grid–sourced blob trigger)."""

    container: str
    name: str
    url: str

    @property
    def path(self) -> str:
        return f"{self.container}/{self.name}"


@dataclass(frozen=True)
class SealRequest:
    """A queue message asking to check (and maybe seal) one generation of a folder batch."""

    dataset: str
    folder: str
    generation: int
    reason: str  # "quiet-period" | "marker"


@dataclass(frozen=True)
class DataVersionRegistered:
    """Published to the custom topic when a data asset version is registered (Evergreen.DataVersionRegistered)."""

    EVENT_TYPE: ClassVar[str] = "Evergreen.DataVersionRegistered"

    dataset: str
    asset_name: str
    version: str
    uri: str
    asset_type: str
    sha256: str
    file_count: int
    files: tuple[str, ...] = field(default_factory=tuple)
    files_truncated: bool = False

    @property
    def event_id(self) -> str:
        return event_id(self.EVENT_TYPE, self.asset_name, self.version, self.sha256)


Source = Literal["eventgrid", "cloudevents", "mlflow", "databricks"]


@dataclass(frozen=True)
class ModelVersionEvent:
    """A model version was registered (or given an alias or stage) in some registry.

    `tags`/`properties` are what the event carried (Azure ML sends both; MLflow sends tags;
    Databricks sends neither), so treat them as hints and read the registry for the truth.
    """

    model_name: str
    version: str
    source: Source
    event_id: str
    event_type: str
    tags: Mapping[str, str] = field(default_factory=dict, hash=False)
    properties: Mapping[str, str] = field(default_factory=dict, hash=False)
    occurred_at: datetime | None = None
    origin: str = ""  # Event Grid topic, CloudEvents source, or Databricks webhook id
    stage: str | None = None  # Databricks to_stage
    alias: str | None = None  # MLflow alias

    @property
    def model(self) -> str:
        return f"{self.model_name}:{self.version}"

    @property
    def key(self) -> str:
        """Idempotency key: the same registration fact yields the same key however often it is delivered."""
        return event_id("model-version", self.source, self.event_type, self.model_name, self.version,
                        self.stage or "", self.alias or "")
