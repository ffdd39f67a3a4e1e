"""Typed, frozen events: what triggers hand to the domain, and what Evergreen publishes."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from shared.keys import event_id


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
