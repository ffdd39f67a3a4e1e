"""The reconciler pass: every flow's `reconcile(now)` is called once; one failing flow does not stop the others."""

from __future__ import annotations

from datetime import datetime

import pytest

from shared.services.reconcile import ReconcileIncomplete, Reconciler
from tests.services.conftest import FakeClock


class Flow:
    def __init__(self, redriven: int = 0, fail: bool = False) -> None:
        self.calls: list[datetime] = []
        self.redriven = redriven
        self.fail = fail

    def reconcile(self, now: datetime) -> list[str]:
        self.calls.append(now)
        if self.fail:
            raise ConnectionError("table unreachable")
        return [f"redriven-{i}" for i in range(self.redriven)]


class NotYet:
    """A service whose flow has no reconcile yet."""


def test_every_flow_is_reconciled_at_the_same_now_and_summed_up(clock: FakeClock) -> None:
    ingest, promotion = Flow(2), Flow(1)
    summary = Reconciler(flows={"ingest": ingest, "retrain": NotYet(), "promotion": promotion},
                         clock=clock).run(run_id="r-1")

    assert ingest.calls == promotion.calls == [clock()]
    assert summary.total == 3
    assert summary.detail == "ingest=2 promotion=1; no reconcile: retrain"


def test_a_failing_flow_does_not_stop_the_others_and_fails_the_run(clock: FakeClock) -> None:
    ingest, retrain = Flow(fail=True), Flow(1)
    with pytest.raises(ReconcileIncomplete) as raised:
        Reconciler(flows={"ingest": ingest, "retrain": retrain}, clock=clock).run(run_id="r-2")

    assert retrain.calls == [clock()]
    assert raised.value.summary.redriven == {"retrain": 1}
    assert "failed: ingest (ConnectionError: table unreachable)" in raised.value.summary.detail


def test_the_timer_runs_one_pass_and_logs_one_summary_line(monkeypatch: pytest.MonkeyPatch,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    import functions.reconcile as module

    flow = Flow(1)
    monkeypatch.setattr(module, "get_reconciler", lambda: Reconciler(flows={"ingest": flow}))

    class Fired:
        past_due = False

    with caplog.at_level("INFO", logger="functions.edge"):
        module.reconcile(timer=Fired())

    assert len(flow.calls) == 1
    [line] = [r.getMessage() for r in caplog.records if "function=reconcile" in r.getMessage()]
    assert "outcome=reconciled detail=ingest=1" in line
