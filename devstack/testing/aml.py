"""The Azure ML emulator for the test session (free port, temporary state) and an MLClient per test."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from devstack.aml import client_env, start_aml
from devstack.procs import Service, free_port
from devstack.testing.azurite import AzuriteInfo

# Small pages so listing tests cross page boundaries; fast LRO polling.
TEST_PAGE_SIZE = 3
TEST_LRO_RETRY_AFTER = 0.1


@dataclass
class AmlInfo:
    port: int
    base_url: str
    state_dir: Path
    env: dict[str, str]
    storage_connection_string: str
    service: Service = field(repr=False)

    @property
    def subscription_id(self) -> str:
        return self.env["AZURE_SUBSCRIPTION_ID"]

    @property
    def resource_group(self) -> str:
        return self.env["AZURE_RESOURCE_GROUP"]

    @property
    def workspace(self) -> str:
        return self.env["AZUREML_WORKSPACE_NAME"]

    @property
    def workspace_url(self) -> str:
        return (
            f"{self.base_url}/subscriptions/{self.subscription_id}/resourceGroups/{self.resource_group}"
            f"/providers/Microsoft.MachineLearningServices/workspaces/{self.workspace}"
        )


def bearer(aml: AmlInfo) -> dict[str, str]:
    """An Authorization header with a token from the emulator's managed-identity endpoint (admin routes need one)."""
    resp = httpx.get(
        f"{aml.base_url}/msi/token",
        params={"api-version": "2019-08-01", "resource": "https://management.azure.com"},
        headers={"X-IDENTITY-HEADER": aml.env["IDENTITY_HEADER"]},
        verify=aml.env["REQUESTS_CA_BUNDLE"],
    )
    resp.raise_for_status()
    return {"Authorization": f"Bearer {resp.json()['access_token']}"}


def start_emulator(state_dir: Path, storage_connection_string: str, port: int | None = None) -> AmlInfo:
    """Start an emulator and wait until it listens; the caller stops `info.service`."""
    port = port or free_port()
    service = start_aml(
        state_dir,
        port,
        storage_connection_string=storage_connection_string,
        page_size=TEST_PAGE_SIZE,
        lro_retry_after=TEST_LRO_RETRY_AFTER,
    )
    try:
        service.wait_ready()
    except Exception:
        service.stop()
        raise
    return AmlInfo(port, f"https://127.0.0.1:{port}", state_dir, client_env(port, state_dir),
                   storage_connection_string, service)


@pytest.fixture(scope="session")
def aml(azurite: AzuriteInfo, tmp_path_factory: pytest.TempPathFactory) -> Iterator[AmlInfo]:
    info = start_emulator(tmp_path_factory.mktemp("aml"), azurite.connection_string)
    saved = {k: os.environ.get(k) for k in info.env}
    os.environ.update(info.env)
    try:
        yield info
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        info.service.stop()


@pytest.fixture
def ml_client(aml: AmlInfo) -> Any:
    """A real MLClient with the real DefaultAzureCredential (token from the emulator's /msi/token)."""
    from azure.ai.ml import MLClient
    from azure.identity import DefaultAzureCredential

    return MLClient(DefaultAzureCredential(), aml.subscription_id, aml.resource_group, aml.workspace)
