"""Typed, frozen events: what triggers hand to the domain, and what Evergreen publishes."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, ClassVar, Literal

from shared.domain.keys import event_id
from shared.domain.urls import strip_query
from shared.errors import InvalidEventError

MAX_JSON_DEPTH = 64
"""How deeply an input's JSON may nest. Every real event is under 10 levels; a deeper document is refused
with a clear error instead of exhausting the parser's recursion (a `RecursionError` would be retried)."""


def load_json(raw: bytes | str, what: str, *, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """Parse an input's JSON, bounding its nesting.

    Raises InvalidEventError naming `what` when the text is not UTF-8, not JSON, or nests deeper than
    `max_depth` (checked while parsing: Python's parser stops at its recursion limit, which is caught too).
    """
    try:
        document = json.loads(raw)
    except RecursionError as exc:
        raise InvalidEventError(f"{what} is not valid JSON here: it nests deeper than {max_depth} levels") from exc
    except (UnicodeDecodeError, ValueError) as exc:
        raise InvalidEventError(f"{what} is not valid JSON: {exc}") from exc
    if json_depth(document) > max_depth:
        raise InvalidEventError(f"{what} is not valid JSON here: it nests deeper than {max_depth} levels")
    return document


def json_depth(document: object) -> int:
    """How deeply a parsed JSON value nests (a scalar is 0, `[]` is 1); iterative, so any depth is safe."""
    deepest = 0
    stack: list[tuple[object, int]] = [(document, 0)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, dict):
            children: list[object] = list(value.values())
        elif isinstance(value, list):
            children = value
        else:
            continue
        deepest = max(deepest, depth + 1)
        stack.extend((child, depth + 1) for child in children)
    return deepest


@dataclass(frozen=True)
class BlobCreated:
    """A blob landed (from the Event Grid–sourced blob trigger).

    `url` never carries a query string: a SAS token in it would reach the ledger, tags, the audit log
    and logs, so it is stripped here, however the event was built (the edge, a retry message, a test).
    """

    container: str
    name: str
    url: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "url", strip_query(self.url))

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
    # The W3C trace context of the work that registered the version ("" = none). Evergreen's topic uses the
    # Event Grid schema, which has no extension attributes, so it rides in `data` (a CloudEvents topic would
    # carry it as the `traceparent` extension); not part of the event's identity.
    traceparent: str = field(default="", compare=False)

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
