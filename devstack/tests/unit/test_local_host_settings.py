"""host.json, local.settings.json and %SETTING% expressions."""

from __future__ import annotations

import json
import logging
from datetime import timedelta
from pathlib import Path

import pytest

from devstack.host.settings import (
    HostConfig,
    SettingsError,
    UnresolvedSettingError,
    load_local_settings,
    parse_timespan,
    resolve_expression,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("00:05:00", timedelta(minutes=5)),
        ("00:00:01", timedelta(seconds=1)),
        ("1.02:03:04", timedelta(days=1, hours=2, minutes=3, seconds=4)),
        ("00:00:00.500", timedelta(milliseconds=500)),
        ("10:30", timedelta(hours=10, minutes=30)),
        (2, timedelta(seconds=2)),
        ("-1", None),
        (None, None),
    ],
)
def test_parse_timespan(text: str | int | None, expected: timedelta | None) -> None:
    assert parse_timespan(text) == expected


@pytest.mark.parametrize("text", ["5 minutes", "1:2:3:4", "", "abc"])
def test_parse_timespan_rejects_garbage(text: str) -> None:
    with pytest.raises(SettingsError):
        parse_timespan(text)


def test_host_config_defaults_match_azure() -> None:
    config = HostConfig.from_dict({"version": "2.0"})
    assert config.queues.batch_size == 16
    assert config.queues.new_batch_threshold == 8
    assert config.queues.max_dequeue_count == 5
    assert config.queues.visibility_timeout == timedelta(0)
    assert config.queues.max_polling_interval == timedelta(minutes=1)
    assert config.queues.message_encoding == "base64"
    assert config.route_prefix == "api"
    assert config.log_level == logging.INFO


def test_host_config_reads_queues_timeout_logging_and_route_prefix() -> None:
    config = HostConfig.from_dict({
        "functionTimeout": "00:10:00",
        "logging": {"logLevel": {"default": "Warning", "evergreen": "Debug"}},
        "extensions": {
            "queues": {"batchSize": 4, "maxDequeueCount": 2, "visibilityTimeout": "00:00:30",
                       "maxPollingInterval": "00:00:02", "messageEncoding": "none"},
            "http": {"routePrefix": "/v1/"},
        },
    })
    assert config.function_timeout == timedelta(minutes=10)
    assert config.log_level == logging.WARNING
    assert config.category_levels == {"evergreen": logging.DEBUG}
    assert config.queues.batch_size == 4
    assert config.queues.new_batch_threshold == 2
    assert config.queues.max_dequeue_count == 2
    assert config.queues.visibility_timeout == timedelta(seconds=30)
    assert config.queues.max_polling_interval == timedelta(seconds=2)
    assert config.queues.message_encoding == "none"
    assert config.route_prefix == "v1"


def test_unlimited_function_timeout() -> None:
    assert HostConfig.from_dict({"functionTimeout": "-1"}).function_timeout is None


@pytest.mark.parametrize(
    "document",
    [
        {"extensions": {"queues": {"batchSize": 64}}},
        {"extensions": {"queues": {"messageEncoding": "utf7"}}},
        {"extensions": {"queues": {"maxDequeueCount": 0}}},
        {"logging": {"logLevel": {"default": "Loud"}}},
        {"functionTimeout": "soon"},
    ],
)
def test_host_config_rejects_bad_values(document: dict[str, object]) -> None:
    with pytest.raises(SettingsError):
        HostConfig.from_dict(document)


def test_missing_host_json_gives_defaults(tmp_path: Path) -> None:
    assert HostConfig.from_file(tmp_path / "host.json") == HostConfig()


def test_local_settings_fill_but_never_override(tmp_path: Path) -> None:
    (tmp_path / "local.settings.json").write_text(
        json.dumps({"IsEncrypted": False, "Values": {"A": "from-file", "B": "from-file", "N": 3}})
    )
    environ = {"A": "exported"}
    added = load_local_settings(tmp_path, environ)
    assert environ == {"A": "exported", "B": "from-file", "N": "3"}
    assert added == {"B": "from-file", "N": "3"}


def test_no_local_settings_file_is_fine(tmp_path: Path) -> None:
    environ: dict[str, str] = {}
    assert load_local_settings(tmp_path, environ) == {}
    assert environ == {}


def test_broken_local_settings_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "local.settings.json").write_text("{not json")
    with pytest.raises(SettingsError, match=r"local\.settings\.json"):
        load_local_settings(tmp_path, {})


def test_resolve_expression() -> None:
    settings = {"CONTAINER": "landing", "Q": "work"}
    assert resolve_expression("%CONTAINER%/{name}", settings) == "landing/{name}"
    assert resolve_expression("%Q%-%Q%", settings) == "work-work"
    assert resolve_expression("no expressions", settings) == "no expressions"
    with pytest.raises(UnresolvedSettingError, match="'%MISSING%' does not resolve"):
        resolve_expression("%MISSING%/x", settings)
