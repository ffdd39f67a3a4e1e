"""The local Functions host for tests: a factory for any app, and the host over the sample app."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

from devstack.host import start_host
from devstack.procs import Service, free_port
from devstack.testing.azurite import AzuriteInfo

SAMPLE_APP = Path(__file__).parent / "sample_app"


@dataclass(frozen=True)
class HostInfo:
    """A running host: base URL, its process and log."""

    url: str
    port: int
    app_dir: Path
    state_dir: Path
    service: Service

    @property
    def log_path(self) -> Path:
        return self.service.log_path

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")


StartFunctionHost = Callable[..., HostInfo]


@pytest.fixture(scope="session")
def start_function_host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StartFunctionHost]:
    """Factory: `start_function_host(app_dir, env) -> HostInfo`, ready to serve; stopped at session end."""
    services: list[Service] = []

    def start(app_dir: Path, env: Mapping[str, str] | None = None, *, wait: bool = True,
              timeout: float = 60.0) -> HostInfo:
        state = tmp_path_factory.mktemp("host")
        port = free_port()
        service = start_host(Path(app_dir), port, state_dir=state, env=dict(env or {}))
        services.append(service)
        if wait:
            service.wait_ready(timeout=timeout)
        return HostInfo(f"http://127.0.0.1:{port}", port, Path(app_dir), state, service)

    try:
        yield start
    finally:
        for service in services:
            service.stop()


@dataclass(frozen=True)
class SampleHost:
    """The host over tests/fixtures/sample_app, with the names of its per-session resources."""

    url: str
    info: HostInfo
    connection_string: str
    results_container: str
    landing_container: str
    work_queue: str
    env: Mapping[str, str]


def sample_app_env(azurite: AzuriteInfo, suffix: str) -> dict[str, str]:
    """Settings for the sample app; unique names so tests sharing one Azurite never collide."""
    return {
        "AzureWebJobsStorage": azurite.connection_string,
        "DATA_STORAGE": azurite.connection_string,
        "RESULTS_CONTAINER": f"hostresults{suffix}",
        "LANDING_CONTAINER": f"hostlanding{suffix}",
        "WORK_QUEUE": f"hostwork{suffix}",
        "TICK_SCHEDULE": "*/2 * * * * *",
    }


@pytest.fixture(scope="session")
def sample_host(azurite: AzuriteInfo, start_function_host: StartFunctionHost) -> SampleHost:
    from azure.storage.blob import BlobServiceClient

    env = sample_app_env(azurite, uuid.uuid4().hex[:8])
    blobs = BlobServiceClient.from_connection_string(azurite.connection_string)
    blobs.create_container(env["RESULTS_CONTAINER"])
    blobs.create_container(env["LANDING_CONTAINER"])
    info = start_function_host(SAMPLE_APP, env)
    return SampleHost(
        url=info.url,
        info=info,
        connection_string=azurite.connection_string,
        results_container=env["RESULTS_CONTAINER"],
        landing_container=env["LANDING_CONTAINER"],
        work_queue=env["WORK_QUEUE"],
        env=env,
    )


def wait_for(condition: Callable[[], object], *, timeout: float = 15.0, interval: float = 0.1,
             message: str = "condition") -> object:
    """Poll `condition` until it returns something truthy; fail with `message` after `timeout`."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message}")
        time.sleep(interval)


def read_results(sample: SampleHost, function: str) -> dict[str, dict[str, object]]:
    """What the sample app's `function` recorded, keyed by record key."""
    import json

    from azure.storage.blob import ContainerClient

    container = ContainerClient.from_connection_string(sample.connection_string, sample.results_container)
    results: dict[str, dict[str, object]] = {}
    for blob in container.list_blobs(name_starts_with=f"{function}/"):
        key = blob.name[len(function) + 1 : -len(".json")]
        results[key] = json.loads(container.download_blob(blob.name).readall())
    return results
