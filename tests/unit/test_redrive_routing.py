"""A replayed dead-lettered run event reaches the service its trigger would have called (issue 11, redrive).

`functions/retrain.py:on_run_event` sends a challenger's comparison run to the promoter and a champion's
re-score to the monitor; `python -m shared.cli redrive replay` once sent every run event to the retrainer,
which does not know those jobs: the replay was reported `replayed` and the dead letter removed, with the
decision it carried never made.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, cast

import pytest

from shared.composition import Services, redrive_handlers
from shared.domain.retrain import RUN_COMPLETED, RUN_STATUS_CHANGED, RunFinished
from shared.domain.vocabulary import ComparisonPurpose, Tag


def recording_services(calls: list[tuple[str, str, str]]) -> Services:
    def record(service: str) -> Any:
        return lambda finished, event_id: calls.append((service, cast(RunFinished, finished).run_id, event_id))

    return cast(Services, SimpleNamespace(promoter=SimpleNamespace(on_comparison_finished=record("promoter")),
                                          monitor=SimpleNamespace(on_rescore_finished=record("monitor")),
                                          retrainer=SimpleNamespace(on_run_finished=record("retrainer"))))


@pytest.mark.parametrize("event_type", [RUN_COMPLETED, RUN_STATUS_CHANGED])
@pytest.mark.parametrize(("purpose", "service"), [(ComparisonPurpose.CHALLENGER.value, "promoter"),
                                                  (ComparisonPurpose.RESCORE.value, "monitor"),
                                                  (None, "retrainer")])
def test_a_replayed_run_event_goes_where_its_trigger_sends_it(event_type: str, purpose: str | None,
                                                               service: str) -> None:
    calls: list[tuple[str, str, str]] = []
    tags = {Tag.COMPARISON.value: purpose} if purpose else {Tag.DATASET.value: "churn"}
    document = {"id": "ev-1", "eventType": event_type,
                "data": {"runId": "job-1", "experimentName": "e", "runStatus": "Completed", "runTags": tags}}
    redrive_handlers(recording_services(calls))[event_type](document)
    assert calls == [(service, "job-1", "ev-1")]
