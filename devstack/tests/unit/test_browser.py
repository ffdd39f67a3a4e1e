"""`make test` finds or installs the browser the status page's test drives, and says how when it cannot."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from devstack import browser


def executable(folder: Path, name: str) -> Path:
    path = folder / name
    path.write_text("#!/bin/sh\nexit 0\n")
    path.chmod(0o755)
    return path


def test_chromium_on_path_is_found_and_nothing_is_installed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    found = executable(tmp_path, "chromium")
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(browser, "_apt", lambda *args: pytest.fail(f"nothing to install, yet ran apt-get {args}"))
    assert browser.ensure_chromium() == str(found)


def test_missing_chromium_without_root_or_apt_says_how_to_install_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # neither chromium nor apt-get
    monkeypatch.setattr(browser, "DEFAULT_PATH", str(tmp_path / "no-chromium"))
    assert browser.find_chromium() is None
    assert browser.ensure_chromium() is None
    assert "apt-get install -y chromium" in capsys.readouterr().out


def test_missing_chromium_as_root_with_apt_installs_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    executable(tmp_path, "apt-get")
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(browser, "DEFAULT_PATH", str(tmp_path / "no-chromium"))
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    ran: list[tuple[str, ...]] = []

    def apt(_apt: str, *args: str) -> object:
        ran.append(args)
        if "install" in args:
            executable(tmp_path, "chromium")  # what the package puts on PATH
        return type("Done", (), {"returncode": 0, "stderr": ""})()

    monkeypatch.setattr(browser, "_apt", apt)
    assert browser.ensure_chromium() == str(tmp_path / "chromium")
    assert ran == [("install", "-y", "-qq", "chromium")]
