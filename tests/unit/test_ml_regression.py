"""The second example pipeline (ml/regression/): its steps, its scorer, its YAML and its evergreen.yaml entries.

The steps run from their component command lines, as in test_ml_steps.py (whose small executor helpers
are reused); the pipeline must honour the bring-your-own-pipeline contract: the inputs Evergreen sets,
a compute named in the YAML, metrics with a direction in `metrics.json`, and the shared register step.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml
from azure.ai.ml import Input, load_job

from shared.config.policy import load_policy
from shared.domain.vocabulary import Direction
from tests.unit.test_ml_steps import call_component, run_component, step_module

REPO = Path(__file__).resolve().parents[2]
ML = REPO / "ml"
PIPELINE = ML / "regression" / "pipeline.yml"
COMPONENTS = ML / "regression" / "components"
EVERGREEN_SETS = {"training_data", "model_name", "data_asset", "data_version"}
HOUSE = {"area_m2": 85.0, "rooms": 3, "age_years": 12, "distance_km": 2.5, "neighbourhood": "centre"}
FAR = {"area_m2": 60.0, "rooms": 2, "age_years": 70, "distance_km": 14.0, "neighbourhood": "industrial"}


def generator() -> ModuleType:
    return step_module("make_house_price_data")


def write_csv(path: Path, rows: int = 600, seed: int = 1, target_noise: float = 0.0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(generator().house_csv(rows, seed, target_noise), encoding="utf-8")
    return path


def run_steps(tmp: Path, data: Path, *, in_process: bool = True) -> dict[str, Path]:
    """prep → train → evaluate of the regression components on `data`; returns the output folders."""
    out = {name: tmp / name for name in ("train_data", "test_data", "model", "metrics")}
    steps: list[tuple[str, dict[str, Any], dict[str, Path]]] = [
        ("prep", {"training_data": data}, {"train_data": out["train_data"], "test_data": out["test_data"]}),
        ("train", {"train_data": out["train_data"]}, {"model": out["model"]}),
        ("evaluate", {"model": out["model"], "test_data": out["test_data"], "metric": "rmse"},
         {"metrics": out["metrics"]}),
    ]
    for name, inputs, outputs in steps:
        component = COMPONENTS / f"{name}.yml"
        if in_process:
            call_component(component, inputs, outputs)
        else:
            result = run_component(component, inputs, outputs)
            assert result.returncode == 0, result.stderr
    return out


@pytest.fixture(scope="module")
def good(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("regression")
    return run_steps(tmp, write_csv(tmp / "drop" / "houses.csv", rows=800, seed=1), in_process=False)


def metrics_of(folder: Path) -> dict[str, Any]:
    return json.loads((folder / "metrics.json").read_text(encoding="utf-8"))


# --- the data generator ------------------------------------------------------------------------


def test_the_generator_is_deterministic_and_its_noise_only_touches_the_target():
    gen = generator()
    assert gen.house_csv(50, seed=3) == gen.house_csv(50, seed=3)
    assert gen.house_csv(50, seed=3) != gen.house_csv(50, seed=4)
    clean, noisy = gen.house_rows(50, seed=3), gen.house_rows(50, seed=3, target_noise=100.0)
    assert [{k: v for k, v in r.items() if k != "price_k"} for r in clean] == [
        {k: v for k, v in r.items() if k != "price_k"} for r in noisy]
    assert [r["price_k"] for r in clean] != [r["price_k"] for r in noisy]
    assert list(clean[0]) == gen.COLUMNS
    with pytest.raises(ValueError, match="rows"):
        gen.house_rows(0, seed=1)
    with pytest.raises(ValueError, match="target_noise"):
        gen.house_rows(10, seed=1, target_noise=-1)


# --- the steps ---------------------------------------------------------------------------------


def test_the_steps_run_from_their_component_commands_and_write_the_metrics_register_reads(good):
    doc = metrics_of(good["metrics"])
    assert doc["primary_metric"] == "rmse"
    assert doc["metrics"]["rmse"]["higher_is_better"] is False
    assert doc["metrics"]["mae"]["higher_is_better"] is False
    assert doc["metrics"]["r2"]["higher_is_better"] is True
    assert 5 < doc["metrics"]["rmse"]["value"] < 40  # the generator's own noise is 15
    assert doc["metrics"]["r2"]["value"] > 0.9
    meta = json.loads((good["model"] / "model_meta.json").read_text(encoding="utf-8"))
    assert meta["task"] == "regression" and meta["algorithm"] == "hist_gradient_boosting"
    assert "listing_id" not in meta["feature_columns"]
    assert "neighbourhood=centre" in meta["feature_columns"]
    assert meta["input_columns"] == ["area_m2", "rooms", "age_years", "distance_km", "neighbourhood"]
    assert len(meta["code_sha256"]) == 64
    register = step_module("register")
    register.validate_model_dir(good["model"])  # what the shared register step demands of a model folder
    tags, properties = register.build_lineage(doc, data_asset="house-prices", data_version="3", job_name="j",
                                              code_hash=meta["code_sha256"])
    assert tags["evergreen.metric.rmse"] == repr(doc["metrics"]["rmse"]["value"])
    assert properties["evergreen.metric.rmse.higher_is_better"] == "false"


def test_a_noisy_target_gives_a_higher_rmse(tmp_path, good):
    noisy = run_steps(tmp_path, write_csv(tmp_path / "noisy.csv", rows=800, seed=2, target_noise=150.0))
    assert metrics_of(noisy["metrics"])["metrics"]["rmse"]["value"] > metrics_of(good["metrics"])["metrics"]["rmse"][
        "value"] + 50


def test_prep_reads_a_folder_of_csv_parts_as_well_as_one_file(tmp_path):
    lines = generator().house_csv(200, seed=5).splitlines()
    folder = tmp_path / "drop"
    folder.mkdir()
    (folder / "a.csv").write_text("\n".join(lines[:101]) + "\n")
    (folder / "b.csv").write_text("\n".join([lines[0], *lines[101:]]) + "\n")
    (folder / "_SUCCESS").write_text("")
    out = run_steps(tmp_path / "run", folder)
    schema = json.loads((out["train_data"] / "schema.json").read_text())
    assert schema["source_files"] == ["a.csv", "b.csv"]
    assert schema["rows"] == {"total": 200, "train": 160, "test": 40}
    assert schema["split"]["stratified"] is False


@pytest.mark.parametrize(("content", "message"), [
    ("area_m2,price_k\n50,100\n60,abc\n70,\n", r"target_column 'price_k' must be a number in every row; 2 bad"),
    ("area_m2,rooms\n50,1\n60,2\n", r"column 'price_k' is missing; the data has: area_m2, rooms"),
    ("area_m2,price_k\n" + "".join(f"{i},100\n" for i in range(30)), r"has a single value"),
    ("area_m2,neighbourhood,price_k\n" + "".join(f"{i},centre,{i}\n" for i in range(8)), r"too few for a split"),
])
def test_prep_refuses_unusable_data_naming_the_input(tmp_path, content, message):
    data = tmp_path / "bad.csv"
    data.write_text(content)
    with pytest.raises(step_module("steplib").StepInputError, match=message):
        run_steps(tmp_path / "run", data)


def test_an_input_error_is_one_line_and_exit_code_2(tmp_path):
    result = run_component(COMPONENTS / "evaluate.yml", {"model": tmp_path, "test_data": tmp_path, "metric": "auc"},
                           {"metrics": tmp_path / "m"})
    assert result.returncode == 2
    assert "evaluate: invalid input: metric: unknown metric(s) auc; supported: rmse, mae, r2" in result.stderr
    missing = run_component(COMPONENTS / "prep.yml", {"training_data": tmp_path / "nope.csv"},
                            {"train_data": tmp_path / "a", "test_data": tmp_path / "b"})
    assert missing.returncode == 2 and "training_data:" in missing.stderr and "does not exist" in missing.stderr


def test_evaluate_refuses_a_classification_model(tmp_path, good):
    model = tmp_path / "model"
    model.mkdir()
    meta = json.loads((good["model"] / "model_meta.json").read_text())
    (model / "model_meta.json").write_text(json.dumps({**meta, "task": "classification"}))
    (model / "model.joblib").write_bytes((good["model"] / "model.joblib").read_bytes())
    with pytest.raises(step_module("steplib").StepInputError, match="expected 'regression'"):
        call_component(COMPONENTS / "evaluate.yml", {"model": model, "test_data": good["test_data"]},
                       {"metrics": tmp_path / "m"})


# --- score_regression.py: the deployment contract ----------------------------------------------


def load_regression_scorer(model_dir: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> ModuleType:
    """Import score_regression.py from the model folder as a deployment does: the folder first on sys.path
    (its `score.py` beside it), AZUREML_MODEL_DIR above the registered folder."""
    mounted = tmp_path / "azureml-models" / "house-price-model" / "1" / "model"
    mounted.mkdir(parents=True)
    for item in model_dir.iterdir():
        (mounted / item.name).write_bytes(item.read_bytes())
    monkeypatch.setenv("AZUREML_MODEL_DIR", str(mounted.parent))
    monkeypatch.syspath_prepend(str(mounted))
    monkeypatch.delitem(sys.modules, "score", raising=False)
    spec = importlib.util.spec_from_file_location(f"score_regression_{tmp_path.name}", mounted / "score_regression.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.init()
    return module


def test_the_scorer_answers_predictions_for_every_request_shape(good, monkeypatch, tmp_path):
    scorer = load_regression_scorer(good["model"], monkeypatch, tmp_path)
    named = scorer.run(json.dumps({"input_data": [HOUSE, FAR]}))
    json.dumps(named)
    assert set(named) == {"predictions"}
    central, remote = named["predictions"]
    assert central > remote > 0
    columns = ["listing_id", *HOUSE]
    split = scorer.run({"input_data": {"columns": columns, "data": [["H1", *HOUSE.values()], ["H2", *FAR.values()]]}})
    raw_rows = scorer.run({"data": [list(HOUSE.values()), list(FAR.values())]})
    assert split == raw_rows == named
    assert scorer.run({"input_data": []}) == {"predictions": []}
    missing_number = scorer.run({"input_data": [{**HOUSE, "age_years": None}]})["predictions"][0]
    assert isinstance(missing_number, float)  # the booster routes missing values itself


def test_the_scorer_says_what_to_send_and_refuses_a_classifier(good, monkeypatch, tmp_path):
    scorer = load_regression_scorer(good["model"], monkeypatch, tmp_path)
    with pytest.raises(ValueError, match="missing column"):
        scorer.run({"input_data": [{"area_m2": 50}]})
    with pytest.raises(ValueError, match='"data" or "input_data"'):
        scorer.run({"rows": []})
    meta_path = tmp_path / "azureml-models" / "house-price-model" / "1" / "model" / "model_meta.json"
    meta_path.write_text(json.dumps({**json.loads(meta_path.read_text()), "task": "classification"}))
    with pytest.raises(ValueError, match=r"deploy it with score\.py"):
        scorer.init()


# --- the pipeline YAML and its evergreen.yaml entries --------------------------------------------


def test_the_pipeline_validates_and_declares_what_evergreen_sets():
    job = load_job(PIPELINE)
    assert job._validate().passed
    assert list(job.jobs) == ["prep", "train", "evaluate", "register"]
    assert set(job.inputs) >= EVERGREEN_SETS
    assert job.settings.default_compute == "cpu-cluster"  # the compute is named by the pipeline, not the policy
    assert job.inputs.training_data.result()["type"] == "uri_file"
    assert job.jobs["register"].inputs["model_uri"].mode == "direct"
    register = yaml.safe_load(PIPELINE.read_text())["jobs"]["register"]["component"]
    assert (PIPELINE.parent / register).resolve() == ML / "components" / "register.yml"  # the churn step, reused


def test_evergreen_can_set_its_inputs_on_the_pipeline():
    job = load_job(PIPELINE)
    job.inputs.training_data = Input(type="uri_file", path="azureml:house-prices:4")
    job.inputs.data_asset = "house-prices"
    job.inputs.data_version = "4"
    job.inputs.model_name = "house-price-model"
    job.inputs.metric = "rmse"
    assert job._validate().passed
    rest = job._to_rest_object().as_dict()["properties"]
    assert rest["inputs"]["training_data"] == {"uri": "azureml:house-prices:4", "jobInputType": "uri_file"}


def test_the_policy_wires_the_second_pipeline_to_its_own_gate_and_endpoint():
    policy = load_policy(REPO / "evergreen.yaml", landing_container="landing")
    dataset = policy.dataset("house-prices")
    retraining = policy.retraining_for("house-prices")
    assert retraining is not None and (REPO / retraining.pipeline) == PIPELINE
    declared = set(yaml.safe_load(PIPELINE.read_text())["inputs"])
    assert set(retraining.inputs) <= declared
    model = policy.model(retraining.model_name)
    assert model is not None
    rule = model.promotion.rule()
    assert rule.direction is Direction.LOWER_IS_BETTER
    assert rule.metric == retraining.inputs["metric"] == "rmse"
    assert rule.metric in step_module("regression_evaluate").METRICS
    assert rule.endpoint == "house-price-endpoint" != policy.model("churn-model").promotion.endpoint
    deployment = model.promotion.deployment
    assert (REPO / (deployment.code or "") / (deployment.scoring_script or "")).is_file()
    assert deployment.scoring_script == "score_regression.py"
    assert dataset.type.value == job_input_type(PIPELINE)


def job_input_type(pipeline: Path) -> str:
    return str(yaml.safe_load(pipeline.read_text())["inputs"]["training_data"]["type"])
