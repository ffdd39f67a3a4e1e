"""`python -m shared.cli redrive` on the local stack: a poisoned seal message is listed, replayed onto its queue,
handled by `seal_batch`, audited (`redrive.replayed`), and removed from the poison queue."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from azure.core.exceptions import ResourceExistsError

from devstack.stack import Stack
from shared.composition import SEAL_QUEUE
from tests.e2e.helpers import wait_for
from tests.e2e.test_edge_contract import audit_records, queue

pytestmark = pytest.mark.e2e
REPO = Path(__file__).resolve().parents[2]


def cli(local_stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "shared.cli", "redrive", *args], cwd=REPO,
                          env={**os.environ, **local_stack.env}, capture_output=True, text=True, timeout=120)


def test_a_poisoned_seal_message_is_replayed_onto_its_queue(local_stack: Stack) -> None:
    folder = f"redrive-{uuid.uuid4().hex[:8]}"
    text = json.dumps({"dataset": "churn-training", "folder": folder, "generation": 1, "reason": "quiet-period"})
    poison = queue(local_stack, f"{SEAL_QUEUE}-poison")
    with contextlib.suppress(ResourceExistsError):
        poison.create_queue()
    message = poison.send_message(text)  # what the host does after maxDequeueCount failures
    item = f"poison:{SEAL_QUEUE}-poison:{message.id}"

    listed = cli(local_stack, "list", "--source", "poison", "--json")
    assert listed.returncode == 0, listed.stderr
    assert item in [i["id"] for i in json.loads(listed.stdout)]

    replayed = cli(local_stack, "replay", item, "--json")
    assert replayed.returncode == 0, replayed.stderr
    assert json.loads(replayed.stdout) == [{"id": item, "action": "replayed", "detail": f"queue {SEAL_QUEUE}"}]

    lines = wait_for(lambda: [line for line in _seal_lines(local_stack) if f"churn-training/{folder}#1" in line]
                     or None, "seal_batch handling the replayed message")
    assert len(lines) == 1 and "outcome=failed" not in lines[0], lines
    assert [m.content for m in poison.peek_messages(max_messages=32) if m.id == message.id] == []
    [record] = audit_records(local_stack, message.id, "redrive.replayed")
    assert json.loads(record["Assets"]) == {"item": item, "target": f"queue {SEAL_QUEUE}"}
    again = cli(local_stack, "replay", item)
    assert again.returncode == 1 and "not_found" in again.stdout


def _seal_lines(local_stack: Stack) -> list[str]:
    log = next(s for s in local_stack.services if s.name == "functions-host").log_path
    return [line for line in log.read_text(errors="replace").splitlines() if "function=seal_batch " in line]
