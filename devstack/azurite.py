"""Azurite (Blob, Queue, Table) from the project's own npm install."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from devstack.procs import REPO_ROOT, Service, start

DEVSTACK_DIR = REPO_ROOT / "devstack"
AZURITE_BIN = DEVSTACK_DIR / "node_modules" / ".bin" / "azurite"
ACCOUNT = "devstoreaccount1"
# Azurite's well-known development key (public, documented); not a secret.
ACCOUNT_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


def ensure_installed() -> Path:
    """Install Azurite with npm (pinned in devstack/package.json) if it is missing."""
    if not AZURITE_BIN.exists():
        npm = shutil.which("npm")
        if npm is None:
            raise RuntimeError("npm is required to install Azurite (install Node.js 18+ and npm)")
        subprocess.run(
            [npm, "install", "--no-audit", "--no-fund", "--loglevel=error"], cwd=DEVSTACK_DIR, check=True
        )
    return AZURITE_BIN


def connection_string(blob_port: int, queue_port: int, table_port: int) -> str:
    return (
        f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={ACCOUNT_KEY};"
        f"BlobEndpoint=http://127.0.0.1:{blob_port}/{ACCOUNT};"
        f"QueueEndpoint=http://127.0.0.1:{queue_port}/{ACCOUNT};"
        f"TableEndpoint=http://127.0.0.1:{table_port}/{ACCOUNT};"
    )


def start_azurite(state_dir: Path, blob_port: int, queue_port: int, table_port: int) -> Service:
    binary = ensure_installed()
    location = state_dir / "azurite"
    location.mkdir(parents=True, exist_ok=True)
    argv = [
        str(binary),
        "--blobHost", "127.0.0.1", "--blobPort", str(blob_port),
        "--queueHost", "127.0.0.1", "--queuePort", str(queue_port),
        "--tableHost", "127.0.0.1", "--tablePort", str(table_port),
        "--location", str(location),
        "--skipApiVersionCheck", "--disableTelemetry", "--loose",
    ]
    return start(
        "azurite", argv, ports=(blob_port, queue_port, table_port), log_path=state_dir / "logs" / "azurite.log"
    )
