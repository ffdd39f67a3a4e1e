"""`models[].promotion.evaluation` in evergreen.yaml: every problem at once, each with its path, and the
cross-check that the evaluation data is a declared dataset."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from shared.config.policy import parse_policy
from shared.errors import ConfigurationError

REPO = Path(__file__).resolve().parents[2]
HOLDOUT = {"name": "churn-holdout", "container": "landing", "prefix": "holdout/", "type": "uri_file",
           "datastore": "landing"}
GOOD = {"data": "churn-holdout@latest", "label_column": "churned", "slices": ["region", "contract"]}


def document(evaluation: Any, *, declare: bool = True) -> dict[str, Any]:
    doc = copy.deepcopy(yaml.safe_load((REPO / "evergreen.yaml").read_text(encoding="utf-8")))
    if declare and not any(d["name"] == "churn-holdout" for d in doc["datasets"]):
        doc["datasets"].append(HOLDOUT)
    doc["models"][0]["promotion"]["evaluation"] = evaluation
    return doc


def problems(evaluation: Any, *, declare: bool = True) -> list[str]:
    with pytest.raises(ConfigurationError) as raised:
        parse_policy(document(evaluation, declare=declare), landing_container="landing")
    return list(raised.value.problems)


def test_a_valid_evaluation_parses_with_defaults() -> None:
    policy = parse_policy(document(GOOD), landing_container="landing")
    evaluation = policy.models[0].promotion.evaluation
    assert evaluation is not None
    assert (evaluation.data_name, evaluation.data_version) == ("churn-holdout", None)
    assert evaluation.slices == ("region", "contract") and evaluation.confidence == 0.95
    assert evaluation.resamples == 1000 and evaluation.rule().min_rows == evaluation.min_rows
    pinned = parse_policy(document({**GOOD, "data": "churn-holdout:7"}), landing_container="landing")
    assert pinned.models[0].promotion.evaluation is not None
    assert pinned.models[0].promotion.evaluation.data_version == "7"


def test_every_problem_of_the_block_is_reported_with_its_path() -> None:
    found = problems({"data": "churn-holdout", "label_column": " churned", "min_rows": 0, "confidence": 0.3,
                      "resamples": 10, "seed": -1, "slices": ["region", "region"], "min_slice_rows": 0,
                      "max_slice_regression": -0.1, "surprise": 1})
    path = "models[0].promotion.evaluation"
    for field, fragment in [("data", "name@latest or name:version"), ("label_column", "column name"),
                            ("min_rows", "greater than or equal to 1"), ("confidence", "0.5"),
                            ("resamples", "100"), ("seed", "0"), ("slices", "unique"),
                            ("min_slice_rows", "1"), ("max_slice_regression", "0"), ("surprise", "")]:
        assert any(p.startswith(f"{path}.{field}") and fragment in p for p in found), (field, found)


@pytest.mark.parametrize(("evaluation", "fragment"), [
    ({"label_column": "churned"}, "models[0].promotion.evaluation.data"),
    ({"data": "churn-holdout@latest"}, "models[0].promotion.evaluation.label_column"),
    ({**GOOD, "confidence": 1.0}, "less than or equal to 0.999"),
    ({**GOOD, "data": "churn-holdout@newest"}, "name@latest or name:version"),
    ({**GOOD, "slices": ["a,b"]}, "slice columns"),
    ({**GOOD, "max_slice_regression": float("nan")}, "max_slice_regression"),
    ("yes", "models[0].promotion.evaluation"),
])
def test_bad_values(evaluation: Any, fragment: str) -> None:
    assert any(fragment in p for p in problems(evaluation)), problems(evaluation)


def test_the_evaluation_data_must_be_a_declared_dataset() -> None:
    found = problems({**GOOD, "data": "churn-holdot@latest"})
    assert any(p.startswith("models[0].promotion.evaluation.data: 'churn-holdot' is not a declared dataset")
               and "churn-holdout" in p for p in found), found  # with the close name


def test_validate_checks_the_comparison_pipeline_declares_what_evergreen_sets(tmp_path: Path) -> None:
    from shared.config.validate import check_document

    ok = check_document(document(GOOD), root=REPO, landing_container="landing")
    assert not [p for p in ok.errors if "compare.yml" in p.describe()], ok.lines()
    (tmp_path / "ml").mkdir()
    (tmp_path / "ml" / "compare.yml").write_text("type: pipeline\ninputs: {challenger_model: {type: custom_model}}\n")
    report = check_document(document(GOOD), root=tmp_path, landing_container="landing")
    missing = [p.describe() for p in report.errors if "ml/compare.yml does not declare" in p.describe()]
    assert any("'evaluation_data'" in line for line in missing) and len(missing) == 12, missing


def test_the_comparison_job_declares_exactly_the_metrics_its_step_computes() -> None:
    from shared.config.validate import YamlPipelineReader
    from tests.unit.test_ml_steps import step_module

    compare = step_module("compare")
    declared = YamlPipelineReader().read(REPO / "ml" / "compare.yml").metrics
    assert declared == {*compare.CLASSIFICATION_METRICS, *compare.REGRESSION_METRICS}
    for metric in declared:  # each one is a primary metric the step accepts
        assert compare.task_of(metric) in ("classification", "regression")


def test_validate_refuses_a_promotion_metric_the_comparison_job_cannot_compute() -> None:
    from shared.config.validate import check_document

    doc = document(GOOD)
    doc["retraining"][0]["metrics"].append("pr_auc")  # the training pipeline writes it; the comparison cannot
    doc["models"][0]["promotion"]["metric"] = "pr_auc"
    report = check_document(doc, root=REPO, landing_container="landing")
    assert [p.describe() for p in report.errors] == [
        "models[0].promotion.metric: 'pr_auc' is not a metric the comparison job computes (accuracy, f1, log_loss, "
        "mae, r2, rmse, roc_auc); every candidate would be skipped as comparison_failed (did you mean 'roc_auc'?)"]
    without = copy.deepcopy(doc)
    del without["models"][0]["promotion"]["evaluation"]  # no fair gate: no comparison job to check against
    assert not check_document(without, root=REPO, landing_container="landing").errors
