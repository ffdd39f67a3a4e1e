"""The comparison step (ml/src/compare.py): weighted metrics, the paired bootstrap, slices, both model formats.

Known effects on generated data: a clearly better model's interval is above 0, a model compared with
itself has estimate 0 and interval [0, 0], a noise-level difference has an interval around 0, and a
model better overall but worse on one slice shows that slice's difference as negative.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import (
    accuracy_score,
    f1_score,
    log_loss,
    mean_absolute_error,
    r2_score,
    roc_auc_score,
    root_mean_squared_error,
)

from devstack.aml.runner import Value, render_command
from tests.unit.test_ml_steps import SRC, step_module

ML = SRC.parent
compare = step_module("compare")
steplib = step_module("steplib")
make_data = step_module("make_churn_data")


def settings_for(metric: str = "roc_auc", resamples: int = 400, seed: int = 7) -> Any:
    return compare.Settings(metric, "higher_is_better", 0.95, resamples, seed)


def scores(rng: np.random.Generator, y: np.ndarray, signal: float, noise: float = 1.0) -> np.ndarray:
    """Probabilities whose ranking carries `signal` about y, plus independent noise."""
    logit = signal * (2 * y - 1) + rng.normal(scale=noise, size=len(y))
    return 1 / (1 + np.exp(-logit))


# --- weighted metrics equal scikit-learn's with sample_weight --------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(st.integers(min_value=0, max_value=2**32 - 1), st.integers(min_value=2, max_value=300),
       st.sampled_from([1, 2, 10, 1000]))
def test_weighted_auc_matches_sklearn_with_sample_weight(seed: int, n: int, levels: int) -> None:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    y[:2] = [0, 1]  # both classes
    score = rng.integers(0, levels, n) / levels  # few levels: many ties
    weights = rng.integers(0, 4, (3, n)).astype(float)
    weights[:, :2] = 1.0
    got = compare.weighted_auc(y.astype(float), score, weights)
    for row, value in zip(weights, got, strict=True):
        assert value == pytest.approx(roc_auc_score(y, score, sample_weight=row), abs=1e-12)


def test_weighted_auc_is_undefined_with_one_class() -> None:
    assert np.isnan(compare.weighted_auc(np.zeros(5), np.linspace(0, 1, 5), np.ones((1, 5))))[0]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_every_weighted_metric_matches_sklearn(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = 400
    y = rng.integers(0, 2, n)
    p = scores(rng, y, 1.0)
    target = rng.normal(size=n)
    pred = target + rng.normal(scale=0.5, size=n)
    w = rng.integers(0, 3, (2, n)).astype(float)
    expected = {
        "accuracy": lambda row: accuracy_score(y, p >= 0.5, sample_weight=row),
        "f1": lambda row: f1_score(y, p >= 0.5, sample_weight=row),
        "log_loss": lambda row: log_loss(y, p, sample_weight=row),
        "rmse": lambda row: root_mean_squared_error(target, pred, sample_weight=row),
        "mae": lambda row: mean_absolute_error(target, pred, sample_weight=row),
        "r2": lambda row: r2_score(target, pred, sample_weight=row),
    }
    for metric, reference in expected.items():
        truth, guess = (target, pred) if metric in ("rmse", "mae", "r2") else (y.astype(float), p)
        got = compare.WEIGHTED[metric](truth, guess, w)
        assert got == pytest.approx([reference(row) for row in w], rel=1e-9), metric


def test_resample_weights_are_bootstrap_counts() -> None:
    weights = compare.resample_weights(np.random.default_rng(3), 50, 200)
    assert weights.shape == (50, 200)
    assert (weights.sum(axis=1) == 200).all() and (weights >= 0).all()
    assert 0.3 < (weights == 0).mean() < 0.45  # about 1/e of the rows are left out of each resample


# --- the paired bootstrap: known effects -----------------------------------------------------------------------


def comparison(y: np.ndarray, challenger: np.ndarray, champion: np.ndarray | None,
               slices: dict[str, list[str]] | None = None, **kw: Any) -> dict[str, Any]:
    return dict(compare.build_comparison(settings_for(**kw), y, challenger, champion, slices or {}))


def test_a_clearly_better_model_has_an_interval_above_zero() -> None:
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 3000)
    doc = comparison(y, scores(rng, y, 1.2), scores(rng, y, 0.6))
    diff = doc["difference"]
    assert diff["metric"] == "roc_auc"
    assert 0 < diff["low"] < diff["estimate"] < diff["high"]
    assert diff["estimate"] == pytest.approx(
        doc["challenger"]["metrics"]["roc_auc"] - doc["champion"]["metrics"]["roc_auc"], abs=2e-6)


def test_a_model_compared_with_itself_has_estimate_zero_and_interval_zero() -> None:
    rng = np.random.default_rng(2)
    y = rng.integers(0, 2, 1000)
    p = scores(rng, y, 0.8)
    diff = comparison(y, p, p.copy())["difference"]
    assert diff["estimate"] == 0.0 and diff["low"] == 0.0 and diff["high"] == 0.0


def test_a_noise_level_difference_has_an_interval_around_zero() -> None:
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 2000)
    # two models of the same quality: the same signal, each with its own noise
    diff = comparison(y, scores(rng, y, 0.8), scores(rng, y, 0.8))["difference"]
    assert diff["low"] < 0 < diff["high"]
    assert abs(diff["estimate"]) < 0.02


def test_swapping_the_models_mirrors_the_interval() -> None:
    rng = np.random.default_rng(4)
    y = rng.integers(0, 2, 800)
    a, b = scores(rng, y, 0.9), scores(rng, y, 0.7)
    ab, ba = comparison(y, a, b)["difference"], comparison(y, b, a)["difference"]
    assert ab["estimate"] == pytest.approx(-ba["estimate"], abs=1e-6)
    assert ab["low"] == pytest.approx(-ba["high"], abs=1e-6) and ab["high"] == pytest.approx(-ba["low"], abs=1e-6)


def test_the_same_seed_gives_the_same_comparison_and_another_seed_another() -> None:
    rng = np.random.default_rng(5)
    y = rng.integers(0, 2, 600)
    a, b = scores(rng, y, 0.9), scores(rng, y, 0.7)
    assert comparison(y, a, b, seed=11) == comparison(y, a, b, seed=11)
    assert comparison(y, a, b, seed=11)["difference"] != comparison(y, a, b, seed=12)["difference"]


def test_a_wider_confidence_gives_a_wider_interval() -> None:
    rng = np.random.default_rng(6)
    y = rng.integers(0, 2, 600)
    a, b = scores(rng, y, 0.9), scores(rng, y, 0.7)
    narrow = compare.paired_interval("roc_auc", y, a, b, confidence=0.8, resamples=300, seed=1)
    wide = compare.paired_interval("roc_auc", y, a, b, confidence=0.99, resamples=300, seed=1)
    assert wide.low < narrow.low < narrow.high < wide.high


def test_better_overall_but_worse_on_one_slice_shows_that_slice_negative() -> None:
    rng = np.random.default_rng(7)
    n = 4000
    y = rng.integers(0, 2, n)
    region = rng.choice(["north", "south", "east", "west"], n)
    champion = scores(rng, y, 0.7)
    challenger = np.where(region == "north", scores(rng, y, 0.2), scores(rng, y, 1.5))
    doc = comparison(y, challenger, champion, {"region": list(region)})
    assert doc["difference"]["low"] > 0
    by_value = {s["value"]: s for s in doc["slices"]}
    assert set(by_value) == {"north", "south", "east", "west"}
    assert by_value["north"]["difference"] < -0.05
    assert all(by_value[v]["difference"] > 0 for v in ("south", "east", "west"))
    assert sum(s["rows"] for s in doc["slices"]) == n
    north = by_value["north"]
    assert north["difference"] == pytest.approx(north["challenger"] - north["champion"], abs=2e-6)


def test_a_slice_where_the_metric_is_undefined_has_null_values() -> None:
    y = np.array([0, 1, 0, 1, 1, 1])
    p = np.array([0.1, 0.9, 0.2, 0.7, 0.6, 0.8])
    rows = compare.slice_rows("roc_auc", y, p, p, {"segment": ["a", "a", "a", "a", "b", "b"]})
    assert rows[1] == {"column": "segment", "value": "b", "rows": 2, "challenger": None, "champion": None,
                       "difference": None}


def test_scored_alone_has_no_champion_and_no_difference() -> None:
    rng = np.random.default_rng(8)
    y = rng.integers(0, 2, 300)
    doc = comparison(y, scores(rng, y, 0.9), None, {"g": ["x"] * 300})
    assert doc["champion"] is None and doc["difference"] is None
    assert set(doc["challenger"]["metrics"]) == {"roc_auc", "accuracy", "f1", "log_loss"}
    assert doc["slices"][0]["champion"] is None and doc["slices"][0]["difference"] is None


def test_a_regression_metric_is_compared_in_its_units() -> None:
    rng = np.random.default_rng(9)
    target = rng.normal(size=1500)
    close, far = target + rng.normal(scale=0.3, size=1500), target + rng.normal(scale=0.8, size=1500)
    doc = compare.build_comparison(compare.Settings("rmse", "lower_is_better", 0.95, 300, 1), target, close, far, {})
    assert doc["difference"]["high"] < 0  # challenger − champion: a lower rmse is a negative difference
    assert set(doc["challenger"]["metrics"]) == {"rmse", "mae", "r2"}


# --- the step: data, models in both formats, the component's command --------------------------------------------


@pytest.fixture(scope="module")
def churn(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A trained churn model (the pipeline's format), an MLflow model, and a holdout with slice columns."""
    root = tmp_path_factory.mktemp("compare")
    make_data.write_drop(root / "drop", 1200, 3, extra_columns=True)
    make_data.write_drop(root / "holdout", 800, 4, extra_columns=True)
    step_module("prep").main(["--training_data", str(root / "drop"), "--train_data", str(root / "train"),
                              "--test_data", str(root / "test")])
    step_module("train").main(["--train_data", str(root / "train"), "--model", str(root / "custom")])
    return {"root": root, "custom": root / "custom", "holdout": root / "holdout",
            "mlflow": mlflow_model(root / "drop", root / "mlflow")}


def mlflow_model(drop: Path, out: Path) -> Path:
    """A scikit-learn pipeline on raw columns, saved with mlflow.sklearn.save_model (with a signature)."""
    import mlflow.sklearn
    import pandas as pd
    from mlflow.models import infer_signature
    from sklearn.linear_model import LogisticRegression

    frame = pd.concat(pd.read_csv(p) for p in sorted(drop.glob("*.csv")))
    features = frame[["tenure_months", "monthly_charges", "support_calls"]].astype(float)
    model = LogisticRegression(max_iter=500).fit(features, frame["churned"])
    mlflow.sklearn.save_model(model, str(out), signature=infer_signature(features, model.predict(features)),
                              serialization_format=mlflow.sklearn.SERIALIZATION_FORMAT_CLOUDPICKLE)
    return out


def run_main(churn: dict[str, Path], out: Path, *extra: str) -> dict[str, Any]:
    compare.main(["--challenger_model", str(churn["custom"]), "--evaluation_data", str(churn["holdout"]),
                  "--data_asset", "churn-holdout", "--data_version", "3", "--label_column", "churned",
                  "--resamples", "200", "--seed", "7", "--slices", "region,contract", "--comparison", str(out),
                  *extra])
    return dict(json.loads((out / compare.COMPARISON_FILE).read_text()))


def test_both_model_formats_load_and_score(churn: dict[str, Path], tmp_path: Path) -> None:
    doc = run_main(churn, tmp_path, "--champion_model", str(churn["mlflow"]), "--challenger_name", "churn-model:4",
                   "--champion_name", "churn-model:3")
    assert doc["schema"] == "evergreen.comparison/1"
    assert doc["evaluation"] == {"data_asset": "churn-holdout", "data_version": "3", "rows": 800,
                                 "label_column": "churned"}
    assert doc["challenger"]["model"] == "churn-model:4" and doc["champion"]["model"] == "churn-model:3"
    for side in ("challenger", "champion"):
        assert 0.6 < doc[side]["metrics"]["roc_auc"] < 1.0, side  # both score the churn signal
    assert doc["difference"]["low"] <= doc["difference"]["estimate"] <= doc["difference"]["high"]
    assert {(s["column"], s["value"]) for s in doc["slices"]} == {
        *(("region", r) for r in make_data.REGIONS), *(("contract", c) for c in make_data.CONTRACTS)}
    assert (doc["seed"], doc["resamples"], doc["confidence"], doc["direction"]) == (7, 200, 0.95, "higher_is_better")


def test_the_custom_model_scores_as_its_registered_scorer(churn: dict[str, Path]) -> None:
    """compare.py scores exactly what the deployed score.py answers for the same raw rows."""
    import csv

    holdout = next(churn["holdout"].glob("*.csv"))
    with holdout.open(newline="") as fh:
        rows = list(csv.DictReader(fh))[:20]
    table = compare.Table(columns=list(rows[0]), rows=rows)
    ours = compare.load_predictor(str(churn["custom"]), "challenger_model", "classification")(table)
    scorer = step_module("score")
    scorer._model = __import__("joblib").load(churn["custom"] / "model.joblib")
    scorer._meta = json.loads((churn["custom"] / "model_meta.json").read_text())
    served = scorer.run({"input_data": rows})["probabilities"]
    assert ours == pytest.approx(served, abs=1e-6)


def test_a_mlflow_model_in_a_subfolder_is_found(churn: dict[str, Path], tmp_path: Path) -> None:
    import shutil

    shutil.copytree(churn["mlflow"], tmp_path / "mounted" / "model")
    table, _ = compare.read_evaluation(str(churn["holdout"]), "churned", "classification")
    out = compare.load_predictor(str(tmp_path / "mounted"), "champion_model", "classification")(table)
    assert out.shape == (800,) and ((out > 0) & (out < 1)).all()


@pytest.mark.parametrize(("args", "message"), [
    (("--slices", "region,planet"), "slices: column(s) planet missing"),
    (("--direction", "up"), "direction must be one of"),
    (("--label_column", "left"), "label_column: column 'left' is missing"),
    (("--metric", "auc"), "metric: unknown metric 'auc'"),
    (("--confidence", "1.5"), "confidence must be between 0 and 1"),
])
def test_an_unusable_input_is_named(churn: dict[str, Path], tmp_path: Path, args: tuple[str, ...],
                                    message: str) -> None:
    with pytest.raises(steplib.StepInputError, match=re.escape(message)):
        run_main(churn, tmp_path, *args)


def test_a_folder_without_a_model_is_named(churn: dict[str, Path], tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(steplib.StepInputError, match=r"champion_model: neither MLmodel nor model_meta\.json"):
        run_main(churn, tmp_path / "out", "--champion_model", str(tmp_path / "empty"))


def component_run(churn: dict[str, Path], out: Path, champion: Path | None) -> subprocess.CompletedProcess[str]:
    """The component's command rendered as the emulator renders it (optional blocks, quoting) and run by bash."""
    spec = yaml.safe_load((ML / "components" / "compare.yml").read_text())
    values = {name: Value(str(decl["default"])) for name, decl in spec["inputs"].items() if "default" in decl}
    values.update({"challenger_model": Value(str(churn["custom"]), local=churn["custom"]),
                   "evaluation_data": Value(str(churn["holdout"]), local=churn["holdout"]),
                   "data_asset": Value("churn-holdout"), "data_version": Value("1"), "resamples": Value("100"),
                   "challenger_name": Value("churn-model:2"), "slices": Value("region")})
    if champion is not None:
        values["champion_model"] = Value(str(champion), local=champion)
    command = render_command(spec["command"], values, {"comparison": Value(str(out), local=out)})
    out.mkdir(parents=True, exist_ok=True)
    return subprocess.run(["/bin/bash", "-c", command], cwd=SRC, capture_output=True, text=True, timeout=120,
                          env={"PATH": str(Path(__import__("sys").executable).parent) + ":/usr/bin:/bin"})


def test_the_component_command_runs_without_a_champion(churn: dict[str, Path], tmp_path: Path) -> None:
    """The unset optional champion renders as absent; the step scores the challenger alone."""
    alone = component_run(churn, tmp_path / "alone", None)
    assert alone.returncode == 0, alone.stderr
    doc = json.loads((tmp_path / "alone" / "comparison.json").read_text())
    assert doc["champion"] is None and doc["difference"] is None and doc["challenger"]["model"] == "churn-model:2"
    assert [s["value"] for s in doc["slices"]] == sorted(make_data.REGIONS)
    assert json.loads(alone.stdout.strip().splitlines()[-1]) == {"rows": 800, "difference": None}


def test_a_champion_binding_renders_into_the_command(churn: dict[str, Path], tmp_path: Path) -> None:
    spec = yaml.safe_load((ML / "components" / "compare.yml").read_text())
    base = {name: Value("x") for name in spec["inputs"]}
    without = {k: v for k, v in base.items() if k not in ("champion_model", "champion_name", "slices")}
    outputs = {"comparison": Value("/out", local=Path("/out"))}
    assert "--champion_model x" in render_command(spec["command"], base, outputs)
    rendered = render_command(spec["command"], without, outputs)
    assert "champion" not in rendered and "--slices" not in rendered


def test_the_comparison_pipeline_validates_with_azure_ai_ml() -> None:
    from azure.ai.ml import Input, load_job

    job: Any = load_job(ML / "compare.yml")
    assert job.experiment_name == "evergreen-compare" and job.tags["evergreen.pipeline"] == "compare"
    assert set(job.outputs) == {"comparison"}
    job.jobs["compare"].inputs.champion_model = Input(type="custom_model", path="azureml:churn-model:3")
    validation = job._validate()
    assert validation.passed, validation.error_messages


def test_a_regression_model_of_the_house_price_pipeline_is_compared(tmp_path: Path) -> None:
    """The regression pipeline's model format, on a lower-is-better metric, end to end through main()."""
    step_module("make_house_price_data").main(["--out", str(tmp_path / "train.csv"), "--rows", "600", "--seed", "1"])
    step_module("make_house_price_data").main(["--out", str(tmp_path / "eval" / "eval.csv"), "--rows", "300",
                                               "--seed", "2"])
    step_module("regression_prep").main(["--training_data", str(tmp_path / "train.csv"), "--train_data",
                                         str(tmp_path / "tr"), "--test_data", str(tmp_path / "te")])
    for name, iterations in (("weak", "3"), ("strong", "100")):
        step_module("regression_train").main(["--train_data", str(tmp_path / "tr"), "--max_iter", iterations,
                                              "--model", str(tmp_path / name)])
    compare.main(["--challenger_model", str(tmp_path / "strong"), "--champion_model", str(tmp_path / "weak"),
                  "--evaluation_data", str(tmp_path / "eval"), "--label_column", "price_k", "--metric", "rmse",
                  "--direction", "lower_is_better", "--resamples", "200", "--comparison", str(tmp_path / "out")])
    doc = json.loads((tmp_path / "out" / "comparison.json").read_text())
    assert set(doc["champion"]["metrics"]) == {"rmse", "mae", "r2"}
    assert doc["difference"]["high"] < 0  # the stronger regressor's rmse is lower, beyond the noise
    with pytest.raises(steplib.StepInputError, match="a regression model cannot be scored on a classification"):
        compare.load_predictor(str(tmp_path / "strong"), "challenger_model", "classification")


def test_make_churn_data_writes_a_holdout_with_slice_columns(tmp_path: Path) -> None:
    make_data.main(["--out_dir", str(tmp_path), "--rows", "40", "--seed", "3", "--holdout", "--drift", "0.5",
                    "--odd_region", "north", "--region_effects", "--label_noise", "0.9"])
    (csv_file,) = sorted(tmp_path.glob("*.csv"))
    header = csv_file.read_text().splitlines()[0].split(",")
    assert {"region", "contract", "churned"} <= set(header)
    # a holdout ignores --label_noise: its labels are those of the noise-free rows
    expected = make_data.churn_rows(40, 3, 0.0, True, drift=0.5, odd_region="north", region_effects=True)
    noisy = make_data.churn_rows(40, 3, 0.9, True, drift=0.5, odd_region="north", region_effects=True)
    written = [line.split(",")[header.index("churned")] for line in csv_file.read_text().splitlines()[1:]]
    assert written == [str(row["churned"]) for row in expected] != [str(row["churned"]) for row in noisy]
    with pytest.raises(ValueError, match="drift must be between 0 and 1"):
        make_data.churn_rows(10, 1, drift=1.5)
    with pytest.raises(ValueError, match="odd_region must be one of"):
        make_data.churn_rows(10, 1, odd_region="mars")
