"""The commands behind `python -m devstack` (run inside .venv)."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import shlex
import subprocess
import sys
from pathlib import Path

from devstack.azurite import ensure_installed
from devstack.procs import REPO_ROOT, port_open
from devstack.stack import Ports, read_env, start_stack, stop_recorded


def up(state_dir: Path) -> int:
    ensure_installed()
    stack = start_stack(state_dir, Ports())
    print("local stack is up:")
    for service in stack.services:
        print(f"  {service.name:<10} pid {service.process.pid:<7} log {service.log_path.relative_to(REPO_ROOT)}")
    print(f"connection settings: {stack.env_file.relative_to(REPO_ROOT)}  (stop with `make down`)")
    return 0


def down(state_dir: Path) -> int:
    stopped = stop_recorded(state_dir)
    print("stopped: " + (", ".join(stopped) if stopped else "nothing was running"))
    return 0


def status(state_dir: Path) -> int:
    for name, port in Ports().all().items():
        print(f"  {name:<18} 127.0.0.1:{port:<6} {'up' if port_open(port) else 'down'}")
    return 0


def env(state_dir: Path) -> int:
    for key, value in read_env(state_dir).items():
        print(f"export {key}={shlex.quote(value)}")
    return 0


def test(pytest_args: list[str]) -> int:
    from devstack.browser import ensure_chromium

    ensure_installed()
    ensure_chromium()  # the status page's browser test drives it; missing, that test fails saying how to install
    args = [a for a in pytest_args if a != "--"]
    return subprocess.call([sys.executable, "-m", "pytest", *args], cwd=REPO_ROOT)


def bench(*, quick: bool, only: str | None = None, results: Path | None = None) -> int:
    """Run each module of `bench.report.BENCHMARKS` (`run(quick)`), print one table, write `latest.json`.

    `only` is a comma-separated subset of module names. A module that fails is reported and the
    others still run; the exit status is 1 if any failed (and `latest.json` is written without it).
    """
    import importlib
    import time

    from bench.report import BENCHMARKS, BenchResult, details, table, write_latest
    from bench.stackbench import shared_stacks

    wanted = [name.strip() for name in only.split(",")] if only else list(BENCHMARKS)
    unknown = [name for name in wanted if name not in BENCHMARKS]
    if unknown:
        print(f"unknown benchmark(s): {', '.join(unknown)}; known: {', '.join(BENCHMARKS)}", file=sys.stderr)
        return 2
    collected: list[BenchResult] = []
    failed: list[str] = []
    begun = time.monotonic()
    with shared_stacks() if quick else contextlib.nullcontext():  # quick: one stack for burst and overhead
        for name in wanted:
            started = time.monotonic()
            print(f"== {name} ({'quick' if quick else 'full'})", flush=True)
            try:
                collected.extend(importlib.import_module(f"bench.{name}").run(quick))
            except Exception as exc:  # one broken benchmark must not hide the others' numbers
                logging.getLogger(__name__).exception("benchmark %s failed", name)
                failed.append(f"{name}: {type(exc).__name__}: {exc}")
            print(f"   {name} took {time.monotonic() - started:.0f}s", flush=True)
    print(f"all benchmarks took {time.monotonic() - begun:.0f}s", flush=True)
    print(table(collected))
    print(details(collected))
    path = write_latest(collected, quick=quick, path=results)
    print(f"wrote {path}")
    for line in failed:
        print(f"FAILED {line}", file=sys.stderr)
    return 1 if failed else 0


def chaos(examples: int) -> int:
    """tests/chaos with `examples` random schedules per flow; pytest prints the summary (`chaos: … converged`)."""
    env = {**os.environ, "CHAOS_EXAMPLES": str(examples)}
    return subprocess.call([sys.executable, "-m", "pytest", "tests/chaos", "-q"], cwd=REPO_ROOT, env=env)


def run(args: argparse.Namespace, state_dir: Path) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.command == "up":
        return up(state_dir)
    if args.command == "down":
        return down(state_dir)
    if args.command == "status":
        return status(state_dir)
    if args.command == "env":
        return env(state_dir)
    if args.command == "test":
        return test(args.pytest_args)
    if args.command == "bench":
        return bench(quick=args.quick, only=args.only, results=args.results)
    if args.command == "chaos":
        return chaos(args.examples)
    if args.command == "demo":
        from devstack.demo import run_demo

        return run_demo(state_dir, keep=args.keep)
    raise AssertionError(args.command)
