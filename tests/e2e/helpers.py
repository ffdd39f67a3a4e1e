"""Polling helpers for the end-to-end tests."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from devstack import polling

T = TypeVar("T")


def wait_for(probe: Callable[[], T | None], what: str, timeout: float = 90) -> T:
    return polling.wait_for(what, probe, timeout)


def versions(ml: Any, name: str) -> list[Any]:
    from azure.core.exceptions import ResourceNotFoundError

    try:
        return list(ml.data.list(name=name))
    except ResourceNotFoundError:
        return []


def with_tag(ml: Any, name: str, tag: str, value: str) -> list[Any]:
    return [d for d in versions(ml, name) if (d.tags or {}).get(tag) == value]
