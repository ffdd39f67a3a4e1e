"""Where a DataVersionRegistered goes: `shared.composition.on_data_version_registered`, the routing the trigger
(`functions/retrain.py`) and the chaos harness share.

Training data goes to the retrainer; evaluation data nobody trains on to the champion monitor alone; a dataset
both trained on and evaluated on to both (the retrainer's outcome is the trigger's answer). Every version then
goes to the promoter, which gates the candidates that waited for it (if any).
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, cast

import pytest

from shared.composition import Services, on_data_version_registered
from shared.domain.events import DataVersionRegistered

TRAINED, EVALUATED, BOTH = "churn", "holdout", "shared"


def services(calls: list[tuple[str, str]], *, monitor: bool = True) -> Services:
    def record(service: str) -> Any:
        def handle(event: DataVersionRegistered, event_id: str, **_: object) -> str:
            calls.append((service, event.dataset))
            return service
        return handle

    retraining = {TRAINED, BOTH}
    policy = SimpleNamespace(retraining_for=lambda dataset: dataset if dataset in retraining else None)
    champion_monitor = SimpleNamespace(evaluates=lambda event: event.dataset in {EVALUATED, BOTH},
                                       on_data_version=record("monitor"))
    def regate(event: DataVersionRegistered, event_id: str) -> list[object]:
        calls.append(("promoter", event.dataset))
        return []

    return cast(Services, SimpleNamespace(policy=policy, monitor=champion_monitor if monitor else None,
                                          retrainer=SimpleNamespace(on_data_version_registered=record("retrainer")),
                                          promoter=SimpleNamespace(on_evaluation_data=regate)))


def registered(dataset: str) -> DataVersionRegistered:
    return DataVersionRegistered(dataset=dataset, asset_name=dataset, version="1", uri="azureml://x",
                                 asset_type="uri_folder", sha256="a" * 64, file_count=1)


@pytest.mark.parametrize(("dataset", "answer", "called"), [
    (TRAINED, "retrainer", [("retrainer", TRAINED), ("promoter", TRAINED)]),
    (EVALUATED, "monitor", [("monitor", EVALUATED), ("promoter", EVALUATED)]),
    (BOTH, "retrainer", [("retrainer", BOTH), ("monitor", BOTH), ("promoter", BOTH)]),
])
def test_a_data_version_goes_to_retraining_the_champion_monitor_or_both(dataset: str, answer: str,
                                                                        called: list[tuple[str, str]]) -> None:
    calls: list[tuple[str, str]] = []
    assert on_data_version_registered(services(calls), registered(dataset), "ev-1") == answer
    assert calls == called


def test_services_without_the_monitor_refuse_rather_than_skip_a_re_score() -> None:
    with pytest.raises(RuntimeError, match="champion monitor"):
        on_data_version_registered(services([], monitor=False), registered(TRAINED), "ev-1")
