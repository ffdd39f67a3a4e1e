"""Local Event Grid: topics, subscription routing, at-least-once delivery, dead letters, and the
storage watcher that makes Azurite emit blob events. See devstack/README.md for the contract.

Importing this package is cheap (stdlib only); the server lives in `devstack.eventgrid.app`.
"""

from __future__ import annotations

from pathlib import Path

from devstack.procs import Service, python_module, start

__all__ = ["start_eventgrid"]


def start_eventgrid(
    state_dir: Path,
    port: int,
    *,
    host_url: str,
    storage_connection_string: str,
    subscriptions_path: Path,
    topic_key: str,
    max_attempts: int | None = None,
    watch_interval: float = 0.5,
    retry_initial_delay: float | None = None,
    retry_max_delay: float | None = None,
    response_timeout: float | None = None,
    extra_args: tuple[str, ...] = (),
) -> Service:
    """Start `python -m devstack.eventgrid serve` in its own process; call `.wait_ready()` on the result.

    The port opens only after the storage watcher's first scan, so once it is open every later blob
    write produces an event.
    """
    args = [
        "serve",
        "--port",
        str(port),
        "--state-dir",
        str(state_dir),
        "--host-url",
        host_url,
        "--subscriptions",
        str(subscriptions_path),
        "--topic-key",
        topic_key,
        "--storage-connection-string",
        storage_connection_string,
        "--watch-interval",
        str(watch_interval),
    ]
    if max_attempts is not None:
        args += ["--max-attempts", str(max_attempts)]
    if retry_initial_delay is not None:
        args += ["--retry-initial-delay", str(retry_initial_delay)]
    if retry_max_delay is not None:
        args += ["--retry-max-delay", str(retry_max_delay)]
    if response_timeout is not None:
        args += ["--response-timeout", str(response_timeout)]
    return start(
        "eventgrid",
        python_module("devstack.eventgrid", *args, *extra_args),
        ports=(port,),
        log_path=state_dir / "logs" / "eventgrid.log",
    )
