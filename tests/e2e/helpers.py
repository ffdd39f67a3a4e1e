"""Polling helpers for the end-to-end tests."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


def wait_for(probe: Callable[[], T | None], what: str, timeout: float = 90) -> T:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = probe()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def versions(ml: Any, name: str) -> list[Any]:
    from azure.core.exceptions import ResourceNotFoundError

    try:
        return list(ml.data.list(name=name))
    except ResourceNotFoundError:
        return []


def with_tag(ml: Any, name: str, tag: str, value: str) -> list[Any]:
    return [d for d in versions(ml, name) if (d.tags or {}).get(tag) == value]
