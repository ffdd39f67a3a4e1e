"""The retraining pipeline's steps, run as subprocesses exactly as the component YAML commands say.

A tiny executor (below) follows ml/pipeline.yml: it resolves each node's input bindings
(`${{parent.inputs.x}}`, `${{parent.jobs.n.outputs.y}}`, literals, component defaults), substitutes
`${{inputs.x}}` / `${{outputs.y}}` in the component's `command` with local paths and values, and
runs it in the component's code folder with this interpreter. The local Azure ML emulator has
its own executor; this one only proves the YAML and the scripts fit together.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

ML = Path(__file__).resolve().parents[2] / "ml"
SRC = ML / "src"
PIPELINE = ML / "pipeline.yml"
EXPRESSION = re.compile(r"\$\{\{\s*(inputs|outputs)\.(\w+)\s*\}\}")
BINDING = re.compile(r"^\$\{\{\s*parent\.(inputs\.(\w+)|jobs\.(\w+)\.outputs\.(\w+))\s*\}\}$")


# --- a minimal executor for the YAML ------------------------------------------------------------


def load_yaml(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def component_command(component_file: Path, inputs: dict[str, Any], outputs: dict[str, Path]) -> list[str]:
    """The component's command with inputs/outputs substituted (defaults for unbound inputs)."""
    spec = load_yaml(component_file)
    values: dict[str, str] = {}
    for name, decl in spec.get("inputs", {}).items():
        if name in inputs:
            values[name] = str(inputs[name])
        elif "default" in decl:
            values[name] = str(decl["default"])

    def substitute(match: re.Match[str]) -> str:
        kind, name = match.group(1), match.group(2)
        if kind == "inputs":
            assert name in values, f"{component_file.name}: input {name} is not bound and has no default"
            return shlex.quote(values[name])
        assert name in outputs, f"{component_file.name}: output {name} is not bound"
        return shlex.quote(str(outputs[name]))

    argv = shlex.split(EXPRESSION.sub(substitute, spec["command"]))
    assert argv[0] == "python"
    return [sys.executable, *argv[1:]]


def run_component(
    component_file: Path, inputs: dict[str, Any], outputs: dict[str, Path]
) -> subprocess.CompletedProcess[str]:
    """Run the component's command as a subprocess in its code folder (what an executor does)."""
    spec = load_yaml(component_file)
    code_dir = (component_file.parent / spec["code"]).resolve()
    return subprocess.run(
        component_command(component_file, inputs, outputs),
        cwd=code_dir,
        capture_output=True,
        text=True,
        timeout=120,
    )


def step_module(script: str) -> ModuleType:
    """Import a step script under a private name; `steplib` (which the scripts import by that
    name through SRC on sys.path) is imported as itself so its StepInputError is the one raised."""
    if str(SRC) not in sys.path:
        sys.path.append(str(SRC))
    if script == "steplib":
        return importlib.import_module("steplib")
    name = f"ml_step_{script}"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, SRC / f"{script}.py")
        assert spec and spec.loader
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # before exec: dataclasses look their module up
        spec.loader.exec_module(module)
    return sys.modules[name]


def call_component(component_file: Path, inputs: dict[str, Any], outputs: dict[str, Path]) -> None:
    """The same command line, but main(argv) in this process: fast, and errors surface as
    StepInputError so tests can check the message. Subprocess runs cover the real entry point."""
    argv = component_command(component_file, inputs, outputs)
    step_module(Path(argv[1]).stem).main(argv[2:])


def run_pipeline(
    tmp: Path, parent_inputs: dict[str, Any], nodes: list[str], *, in_process: bool = False
) -> dict[str, dict[str, Path]]:
    """Run `nodes` of ml/pipeline.yml in order; returns each node's output folders."""
    pipeline = load_yaml(PIPELINE)
    resolved_parent = {name: value for name, value in pipeline["inputs"].items()}
    resolved_parent.update(parent_inputs)
    produced: dict[str, dict[str, Path]] = {}
    for node_name in nodes:
        node = pipeline["jobs"][node_name]
        inputs: dict[str, Any] = {}
        for name, spec in node.get("inputs", {}).items():
            binding = spec["path"] if isinstance(spec, dict) else spec
            match = BINDING.match(str(binding))
            if match and match.group(2):
                inputs[name] = resolved_parent[match.group(2)]
            elif match:
                inputs[name] = produced[match.group(3)][match.group(4)]
            else:
                inputs[name] = binding
        outputs = {name: tmp / node_name / name for name in node.get("outputs", {})}
        component = PIPELINE.parent / node["component"]
        if in_process:
            call_component(component, inputs, outputs)
        else:
            result = run_component(component, inputs, outputs)
            assert result.returncode == 0, f"{node_name} failed:\n{result.stderr}"
        produced[node_name] = outputs
    return produced


def make_drop(folder: Path, *, rows: int = 1500, seed: int = 1, label_noise: float = 0.0, **kwargs: Any) -> Path:
    step_module("make_churn_data").write_drop(folder, rows, seed, label_noise, **kwargs)
    return folder


def read_metrics(outputs: dict[str, dict[str, Path]]) -> dict[str, Any]:
    return json.loads((outputs["evaluate"]["metrics"] / "metrics.json").read_text())


@pytest.fixture(scope="module")
def good_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Path]]:
    """prep → train → evaluate on learnable data (3 CSV parts, extra columns, a _SUCCESS marker)."""
    tmp = tmp_path_factory.mktemp("good")
    drop = make_drop(tmp / "drop", files=3, extra_columns=True, success_marker=True)
    return run_pipeline(tmp, {"training_data": drop}, ["prep", "train", "evaluate"])


# --- the happy path -----------------------------------------------------------------------------


def test_good_data_gives_a_useful_model(good_run):
    metrics = read_metrics(good_run)
    assert metrics["primary_metric"] == "roc_auc"
    assert metrics["metrics"]["roc_auc"]["value"] > 0.7
    assert set(metrics["metrics"]) == {"roc_auc", "accuracy", "f1", "log_loss"}
    assert metrics["metrics"]["log_loss"]["higher_is_better"] is False
    assert all(metrics["metrics"][m]["higher_is_better"] for m in ("roc_auc", "accuracy", "f1"))
    assert metrics["test_rows"] == 300


def test_noisy_labels_give_a_worse_model(good_run, tmp_path):
    drop = make_drop(tmp_path / "drop", seed=2, label_noise=0.95)
    noisy = run_pipeline(
        tmp_path, {"training_data": drop, "metric": "accuracy,roc_auc"}, ["prep", "train", "evaluate"], in_process=True
    )
    metrics = read_metrics(noisy)
    assert metrics["primary_metric"] == "accuracy"
    assert metrics["requested_metrics"] == ["accuracy", "roc_auc"]
    assert metrics["metrics"]["roc_auc"]["value"] < 0.62
    assert metrics["metrics"]["roc_auc"]["value"] < read_metrics(good_run)["metrics"]["roc_auc"]["value"] - 0.15


def test_prep_encodes_categoricals_drops_ids_and_keeps_extra_columns(good_run):
    schema = json.loads((good_run["prep"]["train_data"] / "schema.json").read_text())
    assert schema["target_column"] == "churned"
    assert schema["dropped_columns"] == {"customer_id": "id column"}
    assert schema["categorical_columns"]["contract"] == ["month-to-month", "one-year", "two-year"]
    assert "region=north" in schema["feature_columns"]  # undeclared text column: detected and encoded
    assert {"tenure_months", "monthly_charges", "support_calls", "num_products"} <= set(schema["numeric_columns"])
    assert schema["source_files"] == ["part-000.csv", "part-001.csv", "part-002.csv"]
    assert schema["rows"] == {"total": 1500, "train": 1200, "test": 300}
    with (good_run["prep"]["train_data"] / "data.csv").open() as fh:
        header = next(csv.reader(fh))
    assert header == [*schema["feature_columns"], "churned"]


def test_prep_split_is_deterministic(tmp_path):
    drop = make_drop(tmp_path / "drop", rows=300)
    first = run_pipeline(tmp_path / "a", {"training_data": drop}, ["prep"], in_process=True)
    second = run_pipeline(tmp_path / "b", {"training_data": drop}, ["prep"], in_process=True)
    for split in ("train_data", "test_data"):
        assert (first["prep"][split] / "data.csv").read_bytes() == (second["prep"][split] / "data.csv").read_bytes()


def test_model_folder_is_deployable(good_run):
    model_dir = good_run["train"]["model"]
    assert {p.name for p in model_dir.iterdir()} >= {"model.joblib", "score.py", "model_meta.json"}
    meta = json.loads((model_dir / "model_meta.json").read_text())
    assert re.fullmatch(r"[0-9a-f]{64}", meta["code_sha256"])
    assert meta["feature_columns"][0] == "tenure_months"
    assert meta["input_columns"] == [
        "tenure_months",
        "monthly_charges",
        "support_calls",
        "contract",
        "region",
        "num_products",
    ]
    assert meta["algorithm"] == "logistic_regression"
    assert meta["hyperparameters"]["C"] == 1.0


# --- score.py: the online-deployment contract -------------------------------------------------


def load_scorer(model_dir: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> ModuleType:
    """Import the score.py *copied into the model folder*, with the model mounted the way Azure ML
    mounts a registered folder: AZUREML_MODEL_DIR/<folder name>/..."""
    mounted = tmp_path / "azureml-models" / "churn-model" / "1"
    (mounted / "model").mkdir(parents=True)
    for item in model_dir.iterdir():
        (mounted / "model" / item.name).write_bytes(item.read_bytes())
    monkeypatch.setenv("AZUREML_MODEL_DIR", str(mounted))
    spec = importlib.util.spec_from_file_location(f"score_{tmp_path.name}", mounted / "model" / "score.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.init()
    return module


RAW = {
    "tenure_months": 2,
    "monthly_charges": 110.5,
    "support_calls": 5,
    "contract": "month-to-month",
    "region": "north",
    "num_products": 1,
}
LOYAL = {
    "tenure_months": 70,
    "monthly_charges": 25.0,
    "support_calls": 0,
    "contract": "two-year",
    "region": "west",
    "num_products": 3,
}


def test_score_accepts_named_raw_columns(good_run, monkeypatch, tmp_path):
    score = load_scorer(good_run["train"]["model"], monkeypatch, tmp_path)
    columns = ["customer_id", *RAW]
    body = {"input_data": {"columns": columns, "data": [["C1", *RAW.values()], ["C2", *LOYAL.values()]]}}
    result = score.run(json.dumps(body))
    json.dumps(result)  # JSON-serialisable as the inference server needs
    assert result["predictions"] == [1, 0]
    assert result["probabilities"][0] > 0.5 > result["probabilities"][1]
    records = score.run({"input_data": [RAW, LOYAL]})
    assert records == result


def test_score_accepts_positional_rows_raw_or_encoded(good_run, monkeypatch, tmp_path):
    score = load_scorer(good_run["train"]["model"], monkeypatch, tmp_path)
    named = score.run({"input_data": [RAW, LOYAL]})
    raw_rows = score.run({"data": [list(RAW.values()), list(LOYAL.values())]})
    assert raw_rows == named
    features = json.loads((good_run["train"]["model"] / "model_meta.json").read_text())["feature_columns"]
    encoded = [
        [
            1.0 if f == f"contract={RAW['contract']}" or f == f"region={RAW['region']}" else RAW.get(f, 0.0)
            for f in features
        ]
    ]
    assert score.run(json.dumps({"data": encoded}))["probabilities"][0] == named["probabilities"][0]


def test_score_rejects_bad_requests_clearly(good_run, monkeypatch, tmp_path):
    score = load_scorer(good_run["train"]["model"], monkeypatch, tmp_path)
    missing = {k: v for k, v in RAW.items() if k != "tenure_months"}
    with pytest.raises(ValueError, match=r"missing column.*tenure_months"):
        score.run({"input_data": [missing]})
    with pytest.raises(ValueError, match="not a number"):
        score.run({"input_data": [{**RAW, "monthly_charges": "lots"}]})
    with pytest.raises(ValueError, match='"data" or "input_data"'):
        score.run({"rows": []})
    with pytest.raises(ValueError, match="each row"):
        score.run({"data": [[1, 2]]})


def test_score_missing_numeric_value_is_imputed(good_run, monkeypatch, tmp_path):
    score = load_scorer(good_run["train"]["model"], monkeypatch, tmp_path)
    result = score.run({"input_data": [{**RAW, "support_calls": None}]})
    assert 0.0 <= result["probabilities"][0] <= 1.0


# --- invalid inputs fail with a clear message ---------------------------------------------------


def write_csv(path: Path, header: list[str], rows: list[list[Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)
    return path.parent


def prep_error(tmp_path: Path, drop: Path, **inputs: Any) -> str:
    outputs = {"train_data": tmp_path / "train", "test_data": tmp_path / "test"}
    steplib = step_module("steplib")
    with pytest.raises(steplib.StepInputError) as caught:
        call_component(ML / "components" / "prep.yml", {"training_data": drop, **inputs}, outputs)
    return str(caught.value)


def good_rows(n: int = 40) -> list[list[Any]]:
    return [[f"C{i}", i % 50 + 1, 50.0 + i, i % 4, "one-year" if i % 3 else "two-year", i % 2] for i in range(n)]


HEADER = ["customer_id", "tenure_months", "monthly_charges", "support_calls", "contract", "churned"]


def test_prep_rejects_a_folder_without_csv(tmp_path):
    drop = tmp_path / "drop"
    drop.mkdir()
    (drop / "_SUCCESS").write_text("")
    assert "no CSV files" in prep_error(tmp_path, drop)
    assert "does not exist" in prep_error(tmp_path, tmp_path / "nowhere")


def test_prep_names_a_missing_target_column(tmp_path):
    drop = write_csv(tmp_path / "drop" / "a.csv", HEADER[:-1], [r[:-1] for r in good_rows()])
    message = prep_error(tmp_path, drop)
    assert "column 'churned' is missing" in message
    assert "tenure_months" in message  # lists what the data has


def test_prep_names_non_numeric_values(tmp_path):
    rows = good_rows()
    rows[7][1] = "seven"
    message = prep_error(tmp_path, write_csv(tmp_path / "drop" / "a.csv", HEADER, rows))
    assert "column 'tenure_months' is numeric but has 1 non-numeric value" in message
    assert "'seven' (a.csv line 9)" in message


def test_prep_rejects_a_non_binary_target_and_mismatched_files(tmp_path):
    rows = good_rows()
    rows[3][-1] = "maybe"
    assert "must be binary" in prep_error(tmp_path, write_csv(tmp_path / "bad" / "a.csv", HEADER, rows))
    drop = write_csv(tmp_path / "mixed" / "a.csv", HEADER, good_rows())
    write_csv(drop / "b.csv", [*HEADER, "extra"], [[*r, 1] for r in good_rows()])
    assert "b.csv has different columns from a.csv (missing: -; extra: extra)" in prep_error(tmp_path, drop)


def test_prep_rejects_header_only_files_and_bad_fraction(tmp_path):
    drop = write_csv(tmp_path / "drop" / "a.csv", HEADER, [])
    assert "no data rows" in prep_error(tmp_path, drop)
    full = write_csv(tmp_path / "full" / "a.csv", HEADER, good_rows())
    assert "test_fraction" in prep_error(tmp_path, full, test_fraction=1.5)


def test_an_invalid_input_exits_2_with_one_clear_line(tmp_path):
    drop = tmp_path / "empty"
    drop.mkdir()
    result = run_component(
        ML / "components" / "prep.yml",
        {"training_data": drop},
        {"train_data": tmp_path / "train", "test_data": tmp_path / "test"},
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert f"prep: invalid input: training_data: no CSV files in {drop} (the folder is empty)" in result.stderr


def test_evaluate_rejects_unknown_metric_and_train_unknown_algorithm(good_run, tmp_path):
    steplib = step_module("steplib")
    with pytest.raises(
        steplib.StepInputError, match=r"unknown metric\(s\) auc; supported: roc_auc, accuracy, f1, log_loss"
    ):
        call_component(
            ML / "components" / "evaluate.yml",
            {"model": good_run["train"]["model"], "test_data": good_run["prep"]["test_data"], "metric": "auc"},
            {"metrics": tmp_path / "metrics"},
        )
    with pytest.raises(steplib.StepInputError, match="algorithm must be one of logistic_regression, gradient_boosting"):
        call_component(
            ML / "components" / "train.yml",
            {"train_data": good_run["prep"]["train_data"], "algorithm": "svm"},
            {"model": tmp_path / "model"},
        )


def test_evaluate_rejects_a_folder_that_is_not_a_model(good_run, tmp_path):
    (tmp_path / "not-a-model").mkdir()
    with pytest.raises(step_module("steplib").StepInputError, match=r"model_meta\.json not found"):
        call_component(
            ML / "components" / "evaluate.yml",
            {"model": tmp_path / "not-a-model", "test_data": good_run["prep"]["test_data"]},
            {"metrics": tmp_path / "metrics"},
        )


def test_gradient_boosting_trains_too(good_run, tmp_path):
    call_component(
        ML / "components" / "train.yml",
        {"train_data": good_run["prep"]["train_data"], "algorithm": "gradient_boosting", "n_estimators": 20},
        {"model": tmp_path / "model"},
    )
    meta = json.loads((tmp_path / "model" / "model_meta.json").read_text())
    assert meta["algorithm"] == "gradient_boosting"
    assert meta["hyperparameters"]["n_estimators"] == 20
    assert 0.5 < meta["train_accuracy"] <= 1.0


# --- the data generator -------------------------------------------------------------------------


def test_generator_is_deterministic_and_matches_the_schema(tmp_path):
    a = make_drop(tmp_path / "a", rows=50, seed=7, files=2)
    b = make_drop(tmp_path / "b", rows=50, seed=7, files=2)
    assert sorted(p.name for p in a.iterdir()) == ["part-000.csv", "part-001.csv"]
    for name in ("part-000.csv", "part-001.csv"):
        assert (a / name).read_bytes() == (b / name).read_bytes()
    with (a / "part-000.csv").open() as fh:
        assert next(csv.reader(fh)) == HEADER
