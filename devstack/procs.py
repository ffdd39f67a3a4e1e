"""Start, wait for and stop the local stack's processes.

Used by `python -m devstack up` (fixed ports, detached) and by the test fixtures (free ports,
temporary state), so both run the services exactly the same way.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


class ServiceStartError(RuntimeError):
    """A service did not become ready; the message carries the tail of its log."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.2)
        return sock.connect_ex((host, port)) == 0


@dataclass
class Service:
    """A started service: its process, the ports it must open and where it logs."""

    name: str
    process: subprocess.Popen[bytes]
    ports: tuple[int, ...]
    log_path: Path

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ServiceStartError(
                    f"{self.name} exited with code {self.process.returncode} before it was ready:\n"
                    f"{self.log_tail()}"
                )
            if all(port_open(p) for p in self.ports):
                return
            time.sleep(0.05)
        raise ServiceStartError(f"{self.name} did not open ports {self.ports} in {timeout}s:\n{self.log_tail()}")

    def stop(self, timeout: float = 10.0) -> None:
        stop_pid(self.process.pid, timeout)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=1)


def start(
    name: str,
    argv: Sequence[str],
    *,
    ports: Sequence[int],
    log_path: Path,
    env: Mapping[str, str] | None = None,
    cwd: Path = REPO_ROOT,
    detach: bool = False,
) -> Service:
    """Start `argv` with its output in `log_path`; with `detach`, in its own session (survives us)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log = log_path.open("ab")
    full_env = dict(os.environ)
    if env:
        full_env.update(env)
    process = subprocess.Popen(
        list(argv),
        cwd=cwd,
        env=full_env,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    log.close()
    del detach  # every service gets its own session; `detach` only documents the caller's intent
    return Service(name=name, process=process, ports=tuple(ports), log_path=log_path)


def python_module(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]


def stop_pid(pid: int, timeout: float = 10.0) -> None:
    """SIGTERM the process group, then SIGKILL what is left after `timeout`."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
            with contextlib.suppress(ChildProcessError):
                if os.waitpid(pid, os.WNOHANG)[0] == pid:
                    return
            time.sleep(0.05)
