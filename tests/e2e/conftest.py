"""The whole local stack, started exactly as `make up` does, on free ports in a temporary directory."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from devstack.procs import free_port
from devstack.stack import Ports, Stack, applied_env, start_stack, stop_stack


@pytest.fixture(scope="session")
def local_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    ports = Ports(blob=free_port(), queue=free_port(), table=free_port(), aml=free_port(),
                  eventgrid=free_port(), host=free_port())
    stack = start_stack(tmp_path_factory.mktemp("stack"), ports)
    try:
        with applied_env(stack.env):
            yield stack
    finally:
        stop_stack(stack)
