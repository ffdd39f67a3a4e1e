"""The CLI's settings: only what a command needs is required, and `local.settings.json` fills what the
environment lacks (as `func start` does)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from shared.cli.operate import NEEDS
from shared.config.settings import environment_with_local_settings, load_settings, local_settings_values
from shared.errors import ConfigurationError

STORAGE = {"AzureWebJobsStorage": "UseDevelopmentStorage=true"}


def test_audit_needs_only_the_apps_storage() -> None:
    settings = load_settings(STORAGE, only=NEEDS["audit"])
    assert settings.app_storage.connection_string == "UseDevelopmentStorage=true"
    assert settings.workspace_name == ""


def test_what_is_asked_for_is_reported_all_at_once() -> None:
    with pytest.raises(ConfigurationError) as error:
        load_settings({}, only=NEEDS["retention"])
    names = {p.split(":", 1)[0] for p in error.value.problems}
    assert names == {"AzureWebJobsStorage", "DATA_STORAGE", "AZURE_SUBSCRIPTION_ID", "AZURE_RESOURCE_GROUP",
                     "AZUREML_WORKSPACE_NAME"}


def test_a_bad_setting_that_was_asked_for_is_still_checked() -> None:
    with pytest.raises(ConfigurationError, match="EVERGREEN_LANDING_CONTAINER"):
        load_settings({**STORAGE, "EVERGREEN_LANDING_CONTAINER": "Not_Valid"}, only=NEEDS["status"])


def test_an_unknown_setting_name_in_only_is_a_bug() -> None:
    with pytest.raises(ValueError, match="unknown setting"):
        load_settings(STORAGE, only={"AzureWebJobStorage"})


def test_without_only_every_setting_is_required() -> None:
    with pytest.raises(ConfigurationError, match="AZURE_SUBSCRIPTION_ID: missing"):
        load_settings(STORAGE)


def test_local_settings_fill_what_the_environment_lacks(tmp_path: Path) -> None:
    path = tmp_path / "local.settings.json"
    path.write_text(json.dumps({"IsEncrypted": False, "Values": {"AzureWebJobsStorage": "from-file",
                                                                 "AZUREML_WORKSPACE_NAME": "ws"}}))
    env = environment_with_local_settings({"AzureWebJobsStorage": "from-env"}, path)
    assert env == {"AzureWebJobsStorage": "from-env", "AZUREML_WORKSPACE_NAME": "ws"}


def test_no_local_settings_file_is_no_values(tmp_path: Path) -> None:
    assert local_settings_values(tmp_path / "missing.json") == {}


@pytest.mark.parametrize("text", ["{not json", '{"Values": ["a"]}', "[]"])
def test_a_broken_local_settings_file_is_named(tmp_path: Path, text: str) -> None:
    path = tmp_path / "local.settings.json"
    path.write_text(text)
    with pytest.raises(ConfigurationError, match=r"local\.settings\.json"):
        local_settings_values(path)
