"""Regression pipeline step `evaluate`: score the regressor on the held-out split → `metrics.json`.

Writes the same `metrics.json` shape as the churn `evaluate` step, so the shared `register` step
records the metrics as `evergreen.metric.<name>` with each one's direction: `rmse` and `mae` are
lower-is-better, `r2` higher-is-better. The `metric` input names the primary one the gate uses.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable
from typing import Any

import numpy as np
from evaluate import load_model_and_split, parse_metric_names, write_metrics
from sklearn.metrics import mean_absolute_error, r2_score, root_mean_squared_error
from steplib import (
    MODEL_META_FILE,
    StepInputError,
    run_step,
)

log = logging.getLogger("evergreen.ml.regression_evaluate")

# name → (function of (y_true, y_pred), higher_is_better)
METRICS: dict[str, tuple[Callable[[np.ndarray, np.ndarray], float], bool]] = {
    "rmse": (lambda y, pred: float(root_mean_squared_error(y, pred)), False),
    "mae": (lambda y, pred: float(mean_absolute_error(y, pred)), False),
    "r2": (lambda y, pred: float(r2_score(y, pred)), True),
}


def compute_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, dict[str, Any]]:
    """Every supported metric with its direction; r2 needs at least two held-out rows."""
    if len(y_true) < 2:
        raise StepInputError("test_data: the held-out split needs at least two rows")
    return {
        name: {"value": round(fn(y_true, y_pred), 6), "higher_is_better": higher}
        for name, (fn, higher) in METRICS.items()
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Evaluate the regressor on the held-out split.")
    parser.add_argument("--model", required=True, help="train's model output folder")
    parser.add_argument("--test_data", required=True, help="prep's test output folder")
    parser.add_argument("--metric", default="rmse", help=f"primary metric(s), comma-separated: {', '.join(METRICS)}")
    parser.add_argument("--metrics", required=True, help="output folder for metrics.json")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    primary = parse_metric_names(args.metric, METRICS)
    meta, model, x_test, y_test = load_model_and_split(args.model, args.test_data, float)
    if meta.get("task") != "regression":
        raise StepInputError(f"model: {MODEL_META_FILE} says task {meta.get('task')!r}, expected 'regression'")
    facts = {
        "test_rows": len(y_test),
        "test_target_mean": round(float(y_test.mean()), 6),
        "model_code_sha256": meta.get("code_sha256"),
    }
    write_metrics(args.metrics, primary, compute_metrics(y_test, model.predict(x_test)), facts)


if __name__ == "__main__":
    run_step("evaluate", main)
