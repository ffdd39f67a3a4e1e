"""Helpers for the end-to-end tests: polling, reading the workspace, a stack of one's own, chaos switches."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import httpx

from devstack import polling
from devstack.host import start_host
from devstack.procs import REPO_ROOT, Service, free_port
from devstack.stack import Ports, Stack, applied_env, start_stack, stop_stack

T = TypeVar("T")

# The stack's daily timers (retention at 03:00 UTC, champion re-score at 04:30 UTC) moved to 29 February
# at midnight for the test stacks: a run that spans 03:00 must not have retention or a re-score act on the
# shared workspace under another test. The tests that need them invoke them (`/admin/functions/<name>`).
QUIET_DAILY_TIMERS = {"EVERGREEN_RETENTION_SCHEDULE": "0 0 0 29 2 *", "EVERGREEN_RESCORE_SCHEDULE": "0 0 0 29 2 *"}


def wait_for(probe: Callable[[], T | None], what: str, timeout: float = 90) -> T:
    return polling.wait_for(what, probe, timeout)


def versions(ml: Any, name: str) -> list[Any]:
    from azure.core.exceptions import ResourceNotFoundError

    try:
        return list(ml.data.list(name=name))
    except ResourceNotFoundError:
        return []


def with_tag(ml: Any, name: str, tag: str, value: str) -> list[Any]:
    return [d for d in versions(ml, name) if (d.tags or {}).get(tag) == value]


# -- the policy the end-to-end stacks run on -------------------------------------------------------------------
def tags_path_policy(directory: Path, source: Path = REPO_ROOT / "evergreen.yaml") -> Path:
    """Write the repo's policy with every model's `promotion.evaluation` removed to `directory/evergreen.yaml`,
    next to a link to the repo's `ml/` (pipeline, comparison and scoring paths resolve against the policy's
    folder); its path, for `EVERGREEN_POLICY_PATH`.

    These tests exercise the tags-based gate (each run's metric on its own holdout, no evaluation drop
    uploaded); `test_fair_gate.py` and the demo exercise the comparison path that the shipped policy turns on.
    Raises OSError if the folder cannot be written, yaml.YAMLError if the repo's policy is not YAML.
    """
    import yaml

    policy = yaml.safe_load(source.read_text(encoding="utf-8"))
    for model in policy.get("models") or []:
        model.get("promotion", {}).pop("evaluation", None)
    directory.mkdir(parents=True, exist_ok=True)
    if not (directory / "ml").exists():
        (directory / "ml").symlink_to(REPO_ROOT / "ml", target_is_directory=True)
    path = directory / "evergreen.yaml"
    path.write_text(yaml.safe_dump(policy, sort_keys=False), encoding="utf-8")
    return path


# -- a whole stack of its own, the host killed and restarted, the emulators' admin routes (chaos runs) ----
@contextmanager
def own_stack(state_dir: Path) -> Iterator[Stack]:
    """A fresh local stack on free ports in `state_dir` (on `tags_path_policy`), its environment applied;
    stopped at the end.

    For a test that must compare two runs from the same empty start (the session's `local_stack` is shared).
    """
    ports = Ports(blob=free_port(), queue=free_port(), table=free_port(), aml=free_port(),
                  eventgrid=free_port(), host=free_port())
    policy = tags_path_policy(state_dir / "app")
    stack = start_stack(state_dir, ports, env={"EVERGREEN_POLICY_PATH": str(policy), **QUIET_DAILY_TIMERS})
    try:
        with applied_env(stack.env):
            yield stack
    finally:
        stop_stack(stack)


def kill_and_restart_host(stack: Stack, *, down_seconds: float = 0.0, env: Mapping[str, str] | None = None,
                          kill: bool = True) -> Service:
    """SIGKILL the stack's Functions host (no drain: a function may die between any two I/O calls; with
    `kill=False` a graceful stop instead), wait `down_seconds`, start it again on the same port and state with
    `env` (default: the stack's settings), and wait until it serves.

    Raises `devstack.procs.ServiceStartError` if the new host does not come up.
    """
    index, host = next((i, s) for i, s in enumerate(stack.services) if s.name == "functions-host")
    if kill:
        host.process.kill()
        host.process.wait(timeout=10)
    else:
        host.stop()
    if down_seconds:
        time.sleep(down_seconds)
    restarted = start_host(REPO_ROOT, stack.ports.host, state_dir=stack.state_dir,
                           env=stack.env if env is None else env)
    stack.services[index] = restarted
    restarted.wait_ready(timeout=60)
    return restarted


def emulator_admin(env: Mapping[str, str], method: str, path: str, body: Any = None) -> Any:
    """Call an Azure ML emulator admin route (`/_emulator/...`, Bearer token required); the JSON answer."""
    from azure.identity import DefaultAzureCredential

    token = DefaultAzureCredential().get_token("https://management.azure.com/.default").token
    reply = httpx.request(method, f"{env['AZUREML_DEV_URL_MFE'].rstrip('/')}{path}", json=body,
                          headers={"Authorization": f"Bearer {token}"}, verify=env["REQUESTS_CA_BUNDLE"], timeout=30)
    reply.raise_for_status()
    return reply.json()


def eventgrid_admin(env: Mapping[str, str], method: str, path: str, body: Any = None) -> Any:
    """Call a local Event Grid admin/inspection route (`/faults`, `/deliveries`, `/deadletters`, …)."""
    reply = httpx.request(method, f"{env['EVERGREEN_EVENTGRID_URL']}{path}", json=body, timeout=30)
    reply.raise_for_status()
    return reply.json()
