"""The whole local stack, started as `make up` does, on free ports in a temporary directory.

Its Functions host (and every CLI call given `local_stack.env`) runs on `tags_path_policy`: the repo's
evergreen.yaml without `promotion.evaluation`, through `EVERGREEN_POLICY_PATH`. These tests exercise the
tags-based gate; `test_fair_gate.py` and the demo exercise the comparison path.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from devstack.procs import free_port
from devstack.stack import Ports, Stack, applied_env, start_stack, stop_stack
from tests.e2e.helpers import QUIET_DAILY_TIMERS, tags_path_policy


@pytest.fixture(scope="session")
def local_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    ports = Ports(blob=free_port(), queue=free_port(), table=free_port(), aml=free_port(),
                  eventgrid=free_port(), host=free_port())
    policy = tags_path_policy(tmp_path_factory.mktemp("app"))
    stack = start_stack(tmp_path_factory.mktemp("stack"), ports,
                        env={"EVERGREEN_POLICY_PATH": str(policy), **QUIET_DAILY_TIMERS})
    try:
        with applied_env(stack.env):
            yield stack
    finally:
        stop_stack(stack)


@pytest.fixture(scope="session")
def ml(local_stack: Stack) -> Any:
    from azure.ai.ml import MLClient
    from azure.identity import DefaultAzureCredential

    env = local_stack.env
    return MLClient(DefaultAzureCredential(), env["AZURE_SUBSCRIPTION_ID"], env["AZURE_RESOURCE_GROUP"],
                    env["AZUREML_WORKSPACE_NAME"])


@pytest.fixture(scope="session")
def landing(local_stack: Stack) -> Any:
    from azure.storage.blob import BlobServiceClient

    return BlobServiceClient.from_connection_string(local_stack.env["DATA_STORAGE"]).get_container_client("landing")
