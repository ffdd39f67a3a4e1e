"""`/_emulator/stats` counts the Azure ML calls answered; `/_emulator/compute` holds jobs (benchmarks read/set them)."""

from __future__ import annotations

import pytest

from devstack.aml import stats
from devstack.aml.emulator import Emulator
from devstack.aml.errors import ArmError
from devstack.aml.web import Call

WS = "/subscriptions/s/resourceGroups/rg/providers/Microsoft.MachineLearningServices/workspaces/ws"


def call(method: str, body: object = None) -> Call:
    return Call(method, "/_emulator/stats", "/_emulator/stats", {}, {}, body, "https://127.0.0.1")


def test_counts_calls_by_method_and_kind_and_resets() -> None:
    emu = object.__new__(Emulator)  # the counters key on the instance only
    stats.count(emu, "PUT", f"{WS}/data/churn/versions/1")
    stats.count(emu, "get", f"{WS}/jobs/j1")
    stats.count(emu, "GET", f"{WS}/jobs")
    stats.count(emu, "GET", "/_emulator/stats")  # emulator-only routes are not Azure ML calls
    stats.count(emu, "POST", "/msi/token")
    assert stats.get_stats(emu, call("GET")).body == {
        "total": 3, "byMethod": {"PUT": 1, "GET": 2}, "byKind": {"data": 1, "jobs": 2}}
    stats.reset_stats(emu, call("DELETE"))
    assert stats.get_stats(emu, call("GET")).body["total"] == 0
    assert stats.get_stats(object.__new__(Emulator), call("GET")).body["total"] == 0  # per emulator


def test_compute_hold_is_a_flag_with_a_checked_body() -> None:
    emu = object.__new__(Emulator)
    assert not stats.held(emu)
    assert stats.set_compute(emu, call("POST", {"hold": True})).body == {"hold": True}
    assert stats.held(emu)
    with pytest.raises(ArmError):
        stats.set_compute(emu, call("POST", {"hold": "yes"}))
    assert stats.get_compute(emu, call("GET")).body == {"hold": True}


def test_kind_of_names_the_segment_after_the_workspace() -> None:
    assert stats.kind_of(f"{WS}/codes/x/versions/1") == "codes"
    assert stats.kind_of("/subscriptions/s/providers/Microsoft.MachineLearningServices/locations/l") == "locations"
    assert stats.kind_of("/whatever") == "other"
