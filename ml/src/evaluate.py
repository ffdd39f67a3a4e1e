"""Pipeline step `evaluate`: score the trained model on the held-out split → `metrics.json`.

Every supported metric is computed (they are cheap, and a champion registered under another
primary metric stays comparable); the `metric` input names the primary one(s) the gate uses.
Each metric carries `higher_is_better` so the gate never has to know which way a metric points.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import joblib
import numpy as np
from sklearn.metrics import accuracy_score, f1_score, log_loss, roc_auc_score
from steplib import (
    METRICS_FILE,
    MODEL_META_FILE,
    StepInputError,
    align_features,
    existing_dir,
    read_json,
    read_split,
    run_step,
    write_json,
)

log = logging.getLogger("evergreen.ml.evaluate")

Scorer = Callable[[np.ndarray, np.ndarray, np.ndarray], float]

# name → (function of (y_true, y_pred, p_positive), higher_is_better)
METRICS: dict[str, tuple[Scorer, bool]] = {
    "roc_auc": (lambda y, _pred, proba: float(roc_auc_score(y, proba)), True),
    "accuracy": (lambda y, pred, _proba: float(accuracy_score(y, pred)), True),
    "f1": (lambda y, pred, _proba: float(f1_score(y, pred, zero_division=0)), True),
    "log_loss": (lambda y, _pred, proba: float(log_loss(y, proba, labels=[0, 1])), False),
}


def parse_metric_names(value: str, supported: Iterable[str] = METRICS) -> list[str]:
    """Validate the `metric` input: one name or a comma-separated list, each in `supported`."""
    known = list(supported)
    names = [n.strip().lower() for n in value.split(",") if n.strip()]
    if not names:
        raise StepInputError(f"metric: no metric named; choose from {', '.join(known)}")
    unknown = [n for n in names if n not in known]
    if unknown:
        raise StepInputError(f"metric: unknown metric(s) {', '.join(unknown)}; supported: {', '.join(known)}")
    return list(dict.fromkeys(names))


def compute_metrics(y_true: np.ndarray, p_positive: np.ndarray) -> dict[str, dict[str, Any]]:
    """All supported metrics with their direction; predictions use the 0.5 threshold, as score.py."""
    if len(np.unique(y_true)) < 2:
        raise StepInputError("test_data: the held-out split has a single class, so roc_auc is undefined")
    y_pred = (p_positive >= 0.5).astype(int)
    return {
        name: {"value": round(fn(y_true, y_pred, p_positive), 6), "higher_is_better": higher}
        for name, (fn, higher) in METRICS.items()
    }


def load_model_and_split(
    model_arg: str, test_arg: str, target_type: type[int] | type[float] = int
) -> tuple[dict[str, Any], Any, np.ndarray, np.ndarray]:
    """(model_meta.json, the fitted model, X, y of the held-out split in the model's column order).

    Shared by both pipelines' evaluate steps; raises StepInputError naming the input that is unusable.
    """
    model_dir = existing_dir(model_arg, "model")
    meta = read_json(model_dir / MODEL_META_FILE, "model")
    model_path = model_dir / str(meta.get("model_file", "model.joblib"))
    if not model_path.is_file():
        raise StepInputError(f"model: {model_path.name} not found in {model_dir}")
    schema, x_test, y_test = read_split(existing_dir(test_arg, "test_data"), "test_data", target_type)
    x_test = align_features(x_test, schema["feature_columns"], meta["feature_columns"], "test_data")
    return meta, joblib.load(model_path), x_test, y_test


def write_metrics(folder: str, primary: list[str], metrics: dict[str, dict[str, Any]], facts: dict[str, Any]) -> None:
    """Write `metrics.json` in the shape the register step reads, and print the values.

    Shared by both pipelines' evaluate steps; `facts` adds figures of the held-out split (`test_rows`, …).
    """
    doc = {"primary_metric": primary[0], "requested_metrics": primary, "metrics": metrics, **facts}
    write_json(Path(folder) / METRICS_FILE, doc)
    values = {name: entry["value"] for name, entry in metrics.items()}
    log.info("metrics on %s held-out rows: %s", facts.get("test_rows"), values)
    sys.stdout.write(json.dumps(values) + "\n")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Evaluate the model on the held-out split.")
    parser.add_argument("--model", required=True, help="train's model output folder")
    parser.add_argument("--test_data", required=True, help="prep's test output folder")
    parser.add_argument("--metric", default="roc_auc", help=f"primary metric(s), comma-separated: {', '.join(METRICS)}")
    parser.add_argument("--metrics", required=True, help="output folder for metrics.json")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    primary = parse_metric_names(args.metric)
    meta, model, x_test, y_test = load_model_and_split(args.model, args.test_data)
    p_positive = model.predict_proba(x_test)[:, list(model.classes_).index(1)]
    facts = {
        "test_rows": len(y_test),
        "test_positive_rate": round(float(y_test.mean()), 6),
        "model_code_sha256": meta.get("code_sha256"),
    }
    write_metrics(args.metrics, primary, compute_metrics(y_test, p_positive), facts)


if __name__ == "__main__":
    run_step("evaluate", main)
