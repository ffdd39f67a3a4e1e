"""The chaos harness's fixtures: quiet service logs, and the summary at the end of any run that ran its tests."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import pytest

from tests.chaos.report import TALLY, summary_lines


@pytest.fixture(autouse=True)
def quiet_services() -> Iterator[None]:
    """Thousands of runs, each retrying injected faults: the services' log lines would drown the failure report."""
    logger = logging.getLogger("shared")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    yield
    logger.setLevel(level)


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: Any) -> None:
    if not TALLY:
        return
    terminalreporter.section("chaos: a fault at every port call")
    for line in summary_lines():
        terminalreporter.write_line(line)
