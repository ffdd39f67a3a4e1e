"""The demo's scenarios (devstack/demo_data.py) give the intended comparisons, with the real steps and no stack.

Each training drop goes through the pipeline's own prep and train steps in a temp dir; compare.py then
scores the challenger against the champion on the scenario's holdout. Each scenario must give the sign
the demo shows: scored alone, an interval above 0, an interval around 0, a regressed slice, a decay.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from devstack import demo_data
from tests.unit.test_ml_steps import step_module

compare = step_module("compare")
RESAMPLES = 400


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """drop name → the model the retraining pipeline's prep + train steps fit on it; holdouts as folders."""
    root = tmp_path_factory.mktemp("scenarios")
    folders = demo_data.write_all(root)
    out: dict[str, Path] = {}
    for drop in demo_data.UPLOAD_ORDER:
        if drop.dataset == demo_data.HOLDOUT_DATASET:
            out[drop.name] = folders[drop.name]
            continue
        work = root / "work" / drop.name
        step_module("prep").main(["--training_data", str(folders[drop.name]), "--train_data",
                                  str(work / "train"), "--test_data", str(work / "test")])
        step_module("train").main(["--train_data", str(work / "train"), "--model", str(work / "model")])
        out[drop.name] = work / "model"
    return out


def run(models: dict[str, Path], scenario: Any, tmp: Path) -> dict[str, Any]:
    argv = ["--challenger_model", str(models[scenario.challenger.name]),
            "--evaluation_data", str(models[scenario.holdout.name]), "--data_asset", demo_data.HOLDOUT_DATASET,
            "--data_version", scenario.holdout.name, "--resamples", str(RESAMPLES), "--seed", "7",
            "--slices", ",".join(demo_data.SLICE_COLUMNS), "--comparison", str(tmp),
            "--challenger_name", scenario.challenger.name]
    if scenario.champion is not None:
        argv += ["--champion_model", str(models[scenario.champion.name]), "--champion_name", scenario.champion.name]
    compare.main(argv)
    return dict(compare.read_json(tmp / compare.COMPARISON_FILE, "comparison"))


def by_outcome(outcome: str) -> list[Any]:
    return [s for s in demo_data.SCENARIOS if s.outcome == outcome]


def test_the_first_model_is_scored_alone(models: dict[str, Path], tmp_path: Path) -> None:
    (scenario,) = by_outcome("first_model")
    doc = run(models, scenario, tmp_path)
    assert doc["champion"] is None and doc["difference"] is None
    assert 0.6 < doc["challenger"]["metrics"]["roc_auc"] < 0.8  # a weak but real model


@pytest.mark.parametrize("scenario", by_outcome("promoted"), ids=lambda s: s.challenger.name)
def test_a_clearly_better_model_has_its_interval_above_zero(models: dict[str, Path], tmp_path: Path,
                                                              scenario: Any) -> None:
    diff = run(models, scenario, tmp_path)["difference"]
    assert diff["low"] > 0.02, diff


def test_the_noisy_model_differs_at_noise_level(models: dict[str, Path], tmp_path: Path) -> None:
    (scenario,) = by_outcome("not_significant")
    diff = run(models, scenario, tmp_path)["difference"]
    assert diff["low"] < 0 < diff["high"], diff
    assert abs(diff["estimate"]) < 0.005


def test_the_slice_model_is_better_overall_and_worse_in_north(models: dict[str, Path], tmp_path: Path) -> None:
    (scenario,) = by_outcome("slice_regressed")
    doc = run(models, scenario, tmp_path)
    assert doc["difference"]["low"] > 0, doc["difference"]
    column, value = demo_data.REGRESSED_SLICE
    regressed = [s for s in doc["slices"] if (s["column"], s["value"]) == (column, value)]
    assert regressed[0]["difference"] < -0.03 and regressed[0]["rows"] > 1000
    others = [s for s in doc["slices"] if s["column"] == column and s["value"] != value]
    assert all(s["difference"] > 0 for s in others)


def test_the_champion_decays_on_the_drifted_holdout(models: dict[str, Path], tmp_path: Path) -> None:
    champion = demo_data.BETTER
    before = run(models, demo_data.Scenario(champion, None, demo_data.HOLDOUT_1, "first_model"), tmp_path / "1")
    after = run(models, demo_data.Scenario(champion, None, demo_data.HOLDOUT_2, "first_model"), tmp_path / "2")
    assert after["challenger"]["metrics"]["roc_auc"] < before["challenger"]["metrics"]["roc_auc"] - 0.2
