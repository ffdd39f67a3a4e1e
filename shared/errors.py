"""Evergreen's exceptions: each says what was wrong and, where it helps, what to do."""

from __future__ import annotations


class EvergreenError(Exception):
    """Base class of Evergreen's own errors."""


class ConfigurationError(EvergreenError):
    """Settings or the policy file are invalid; raised at start-up with every problem listed."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = tuple(problems)
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"{source} is invalid ({len(problems)} problem(s)):\n{lines}")


class InvalidEventError(EvergreenError):
    """An incoming event or request is malformed; it must be rejected (400) or dead-lettered, never retried."""


class ClaimInProgressError(EvergreenError):
    """Another instance holds the work right now; raising lets the platform retry later."""
