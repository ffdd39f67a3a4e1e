"""Local Azure Functions host: serves the `func start` HTTP surface for a Python v2 app.

Importing this package is cheap; the server and the Azure SDKs load only in the host process.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from devstack.procs import Service, python_module, start

__all__ = ["start_host"]


def start_host(
    app_dir: Path,
    port: int,
    *,
    state_dir: Path,
    env: Mapping[str, str] | None = None,
    threads: int | None = None,
    drain_timeout: float | None = None,
) -> Service:
    """Start `python -m devstack.host` for `app_dir`; call `.wait_ready()` on the result.

    The log goes to `state_dir/logs/host.log`; `env` is added to this process's environment.
    """
    argv = python_module(
        "devstack.host", "--app-dir", str(Path(app_dir).resolve()), "--port", str(port),
        "--state-dir", str(Path(state_dir).resolve()),
    )
    if threads is not None:
        argv += ["--threads", str(threads)]
    if drain_timeout is not None:
        argv += ["--drain-timeout", str(drain_timeout)]
    return start("functions-host", argv, ports=(port,), log_path=Path(state_dir) / "logs" / "host.log", env=env)
