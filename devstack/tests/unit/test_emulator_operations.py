"""`GET /_emulator/operations`: every long-running operation with its start and end (benchmarks read Azure ML's
own time from it: bench/bench_rollout.py)."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from devstack.aml import lro
from devstack.aml.emulator import Emulator
from devstack.aml.store import Store
from devstack.aml.web import Call


def test_operations_are_listed_oldest_first_with_start_and_end(tmp_path: Path) -> None:
    emu = object.__new__(Emulator)
    emu.store = Store(tmp_path / "aml.sqlite")
    with emu.store.write() as tx:
        first = lro.create_operation(tx, "ws-id", "od", status="Updating")
        second = lro.create_operation(tx, "ws-id", "oe", status="Updating")
        lro.finish_operation(tx, first)
    reply = lro.list_operations(emu, Call("GET", "/_emulator/operations", "/_emulator/operations", {}, {}, None,
                                          "https://127.0.0.1"))
    assert [op["name"] for op in reply.body["value"]] == [first, second]
    listed = {op["name"]: op for op in reply.body["value"]}
    done, running = listed[first], listed[second]
    assert done["status"] == "Succeeded" and running["status"] == "Updating"
    assert datetime.fromisoformat(done["endTime"]) >= datetime.fromisoformat(done["startTime"])
    assert running["endTime"] == lro.NEVER
