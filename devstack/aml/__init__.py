"""Azure ML control-plane emulator: the MFE routes azure-ai-ml uses, over https, state in SQLite.

Importing this package is cheap (no azure.ai.ml, no server libraries); `start_aml` runs the
server as a separate process (`python -m devstack.aml`) and `client_env` is what a client needs
to reach it with the unmodified SDKs.
"""

from __future__ import annotations

from pathlib import Path

from devstack.aml.config import (
    DEFAULT_IDENTITY_HEADER,
    DEFAULT_RESOURCE_GROUP,
    DEFAULT_SUBSCRIPTION_ID,
    DEFAULT_WORKSPACE,
)
from devstack.procs import Service, python_module, start

__all__ = ["client_env", "start_aml"]


def start_aml(
    state_dir: Path,
    port: int,
    *,
    storage_connection_string: str,
    eventgrid_url: str | None = None,
    eventgrid_key: str | None = None,
    page_size: int | None = None,
    lro_retry_after: float | None = None,
) -> Service:
    """Start the emulator on 127.0.0.1:`port` (https); call `wait_ready()` on the result."""
    from devstack.certs import ensure_certs

    state_dir = state_dir.resolve()
    ensure_certs(state_dir / "certs")  # before the client reads client_env()'s CA path
    args = [
        "--port", str(port),
        "--state-dir", str(state_dir),
        "--storage-connection-string", storage_connection_string,
    ]
    if eventgrid_url:
        args += ["--eventgrid-url", eventgrid_url]
    if eventgrid_key:
        args += ["--eventgrid-key", eventgrid_key]
    if page_size is not None:
        args += ["--page-size", str(page_size)]
    if lro_retry_after is not None:
        args += ["--lro-retry-after", str(lro_retry_after)]
    return start(
        "aml",
        python_module("devstack.aml", *args),
        ports=(port,),
        log_path=state_dir / "logs" / "aml.log",
    )


def client_env(port: int, state_dir: Path) -> dict[str, str]:
    """Environment for a client process (MLClient + DefaultAzureCredential) to use the emulator."""
    ca = str((state_dir / "certs" / "ca.pem").resolve())
    base = f"https://127.0.0.1:{port}"
    return {
        "AZUREML_DEV_URL_MFE": f"{base}/",
        "REQUESTS_CA_BUNDLE": ca,
        "SSL_CERT_FILE": ca,
        "IDENTITY_ENDPOINT": f"{base}/msi/token",
        "IDENTITY_HEADER": DEFAULT_IDENTITY_HEADER,
        "AZURE_SUBSCRIPTION_ID": DEFAULT_SUBSCRIPTION_ID,
        "AZURE_RESOURCE_GROUP": DEFAULT_RESOURCE_GROUP,
        "AZUREML_WORKSPACE_NAME": DEFAULT_WORKSPACE,
    }
