"""App settings, `local.settings.json`, `host.json` and binding expressions, read as the host reads them."""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

_EXPRESSION = re.compile(r"%([^%]+)%")
_TIMESPAN = re.compile(r"^(?:(?P<days>\d+)\.)?(?P<h>\d{1,2}):(?P<m>\d{1,2})(?::(?P<s>\d{1,2}(?:\.\d+)?))?$")

# host.json `logging.logLevel` values (.NET LogLevel names) mapped to Python levels.
_LOG_LEVELS = {
    "trace": logging.DEBUG,
    "debug": logging.DEBUG,
    "information": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
    "none": logging.CRITICAL + 10,
}


class SettingsError(ValueError):
    """A host.json value, local setting or binding expression cannot be used."""


class UnresolvedSettingError(SettingsError):
    """A `%SETTING%` binding expression names a setting that is not defined."""


def load_local_settings(app_dir: Path, environ: MutableMapping[str, str] | None = None) -> dict[str, str]:
    """Copy `local.settings.json` `Values` into the environment without overriding what is set.

    This is what `func start` does, so exported variables (the devstack env file) win over the file.
    Returns the keys that were added.
    """
    target = os.environ if environ is None else environ
    path = app_dir / "local.settings.json"
    if not path.is_file():
        return {}
    try:
        document = json.loads(path.read_text(encoding="utf-8-sig"))
    except json.JSONDecodeError as exc:
        raise SettingsError(f"{path} is not valid JSON: {exc}") from exc
    values = document.get("Values") or {}
    if not isinstance(values, dict):
        raise SettingsError(f"{path}: 'Values' must be an object of strings")
    added: dict[str, str] = {}
    for key, value in values.items():
        if key in target:
            continue
        text = value if isinstance(value, str) else json.dumps(value)
        target[key] = text
        added[key] = text
    return added


def resolve_expression(text: str, settings: Mapping[str, str]) -> str:
    """Replace `%NAME%` with the app setting NAME, failing loudly like the host's indexing does."""

    def substitute(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in settings:
            raise UnresolvedSettingError(f"'%{name}%' does not resolve to a value (no app setting named {name})")
        return settings[name]

    return _EXPRESSION.sub(substitute, text)


def parse_timespan(value: str | float | int | None) -> timedelta | None:
    """Parse a .NET TimeSpan string ("00:05:00", "1.02:00:00", "-1" = unlimited) or seconds."""
    if value is None:
        return None
    if isinstance(value, int | float):
        return timedelta(seconds=float(value))
    text = value.strip()
    if text == "-1":
        return None
    match = _TIMESPAN.match(text)
    if not match:
        raise SettingsError(f"'{value}' is not a TimeSpan (expected hh:mm:ss or d.hh:mm:ss)")
    return timedelta(
        days=int(match["days"] or 0),
        hours=int(match["h"]),
        minutes=int(match["m"]),
        seconds=float(match["s"] or 0),
    )


def parse_log_level(value: str) -> int:
    try:
        return _LOG_LEVELS[value.strip().lower()]
    except KeyError as exc:
        raise SettingsError(f"unknown log level '{value}' (use one of {', '.join(_LOG_LEVELS)})") from exc


@dataclass(frozen=True)
class QueueOptions:
    """`extensions.queues` of host.json, with Azure's defaults."""

    batch_size: int = 16
    new_batch_threshold: int = 8
    max_dequeue_count: int = 5
    visibility_timeout: timedelta = timedelta(0)
    max_polling_interval: timedelta = timedelta(minutes=1)
    message_encoding: str = "base64"


@dataclass(frozen=True)
class HostConfig:
    """The parts of host.json the local host honours."""

    function_timeout: timedelta | None = timedelta(minutes=30)
    queues: QueueOptions = field(default_factory=QueueOptions)
    route_prefix: str = "api"
    log_level: int = logging.INFO
    category_levels: Mapping[str, int] = field(default_factory=dict)

    @classmethod
    def from_file(cls, path: Path) -> HostConfig:
        if not path.is_file():
            return cls()
        try:
            document = json.loads(path.read_text(encoding="utf-8-sig"))
        except json.JSONDecodeError as exc:
            raise SettingsError(f"{path} is not valid JSON: {exc}") from exc
        return cls.from_dict(document)

    @classmethod
    def from_dict(cls, document: Mapping[str, Any]) -> HostConfig:
        extensions = document.get("extensions") or {}
        queues = _queue_options(extensions.get("queues") or {})
        http = extensions.get("http") or {}
        route_prefix = str(http.get("routePrefix", "api")).strip("/")
        timeout = (
            parse_timespan(document["functionTimeout"])
            if "functionTimeout" in document
            else cls.function_timeout
        )
        levels = dict((document.get("logging") or {}).get("logLevel") or {})
        default_level = parse_log_level(levels.pop("default", "Information"))
        categories = {name: parse_log_level(level) for name, level in levels.items()}
        return cls(
            function_timeout=timeout,
            queues=queues,
            route_prefix=route_prefix,
            log_level=default_level,
            category_levels=categories,
        )


def _queue_options(section: Mapping[str, Any]) -> QueueOptions:
    defaults = QueueOptions()
    batch_size = int(section.get("batchSize", defaults.batch_size))
    if not 1 <= batch_size <= 32:
        raise SettingsError(f"extensions.queues.batchSize must be 1..32, got {batch_size}")
    threshold = int(section.get("newBatchThreshold", batch_size // 2))
    max_dequeue = int(section.get("maxDequeueCount", defaults.max_dequeue_count))
    if max_dequeue < 1:
        raise SettingsError("extensions.queues.maxDequeueCount must be at least 1")
    visibility = parse_timespan(section.get("visibilityTimeout")) or defaults.visibility_timeout
    polling = parse_timespan(section.get("maxPollingInterval")) or defaults.max_polling_interval
    encoding = str(section.get("messageEncoding", defaults.message_encoding)).lower()
    if encoding not in {"base64", "none"}:
        raise SettingsError(f"extensions.queues.messageEncoding must be 'base64' or 'none', got '{encoding}'")
    return QueueOptions(
        batch_size=batch_size,
        new_batch_threshold=threshold,
        max_dequeue_count=max_dequeue,
        visibility_timeout=visibility,
        max_polling_interval=polling,
        message_encoding=encoding,
    )
