"""Regression pipeline step `train`: fit a gradient-boosted regressor and write a deployable model folder.

`HistGradientBoostingRegressor` handles missing values itself, so the model is the estimator alone.
The `model` output has what the register step checks and a deployment needs: `model.joblib`,
`model_meta.json` (with `"task": "regression"`) and the scorer, `score_regression.py`, with `score.py`
beside it (the scorer imports its request parsing, and register requires a `score.py`).
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import shutil
import sys
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import sklearn
from sklearn.ensemble import HistGradientBoostingRegressor
from sklearn.metrics import root_mean_squared_error
from steplib import (
    MODEL_FILE,
    MODEL_META_FILE,
    StepInputError,
    code_sha256,
    existing_dir,
    read_split,
    run_step,
    write_json,
)

log = logging.getLogger("evergreen.ml.regression_train")

CODE_DIR = Path(__file__).resolve().parent
SCORING_FILES = ("score_regression.py", "score.py")


def build_model(args: argparse.Namespace) -> tuple[HistGradientBoostingRegressor, dict[str, Any]]:
    """The estimator and the hyperparameters that define it; StepInputError on values out of range."""
    if args.max_iter < 1 or args.max_leaf_nodes < 2 or not 0 < args.learning_rate <= 1:
        raise StepInputError("max_iter must be >= 1, max_leaf_nodes >= 2 and 0 < learning_rate <= 1")
    params: dict[str, Any] = {
        "max_iter": args.max_iter,
        "learning_rate": args.learning_rate,
        "max_leaf_nodes": args.max_leaf_nodes,
    }
    # No early stopping: it holds out a random part of the training rows, which we do not want to vary.
    model = HistGradientBoostingRegressor(random_state=args.seed, early_stopping=False, **params)
    return model, {**params, "seed": args.seed}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Train the gradient-boosted regressor on prep's train split.")
    parser.add_argument("--train_data", required=True, help="prep's train output folder")
    parser.add_argument("--max_iter", type=int, default=100, help="boosting iterations (trees)")
    parser.add_argument("--learning_rate", type=float, default=0.1, help="shrinkage")
    parser.add_argument("--max_leaf_nodes", type=int, default=15, help="leaves per tree")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--model", required=True, help="output folder for the model")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    schema, x_train, y_train = read_split(existing_dir(args.train_data, "train_data"), "train_data", float)
    model, hyperparameters = build_model(args)
    model.fit(x_train, y_train)
    train_rmse = float(root_mean_squared_error(y_train, model.predict(x_train)))

    out = Path(args.model)
    out.mkdir(parents=True, exist_ok=True)
    joblib.dump(model, out / MODEL_FILE)
    for name in SCORING_FILES:
        shutil.copyfile(CODE_DIR / name, out / name)
    meta: dict[str, Any] = {
        "format": "evergreen-sklearn-v1",
        "task": "regression",
        "model_file": MODEL_FILE,
        "scoring_script": SCORING_FILES[0],
        "target_column": schema["target_column"],
        "feature_columns": schema["feature_columns"],
        "input_columns": schema.get("input_columns", []),
        "numeric_columns": schema.get("numeric_columns", []),
        "categorical_columns": schema.get("categorical_columns", {}),
        "algorithm": "hist_gradient_boosting",
        "hyperparameters": hyperparameters,
        "train_rows": len(y_train),
        "train_rmse": round(train_rmse, 6),
        "code_sha256": code_sha256(CODE_DIR),
        "framework": {
            "scikit-learn": sklearn.__version__,
            "numpy": np.__version__,
            "python": platform.python_version(),
        },
    }
    write_json(out / MODEL_META_FILE, meta)
    log.info("trained hist_gradient_boosting on %d rows (train RMSE %.3f); model in %s", len(y_train), train_rmse, out)
    sys.stdout.write(json.dumps({"train_rows": len(y_train), "train_rmse": meta["train_rmse"]}) + "\n")


if __name__ == "__main__":
    run_step("train", main)
