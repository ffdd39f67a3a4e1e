"""Pipeline step `train`: fit a scikit-learn classifier and write a deployable model folder.

The `model` output is everything a managed online deployment needs, so Evergreen can register
and deploy it as is: `model.joblib` (imputer + scaler + classifier in one Pipeline, so scoring
applies the same preprocessing), `score.py` (the init()/run() scoring contract) and
`model_meta.json` (feature order, categorical levels, hyperparameters, training-code hash).
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
from sklearn.ensemble import GradientBoostingClassifier
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
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

log = logging.getLogger("evergreen.ml.train")

ALGORITHMS = ("logistic_regression", "gradient_boosting")
CODE_DIR = Path(__file__).resolve().parent
SCORING_SCRIPT = CODE_DIR / "score.py"


def build_model(args: argparse.Namespace) -> tuple[Pipeline, dict[str, Any]]:
    """The estimator for `args.algorithm` and the hyperparameters that define it."""
    if args.algorithm == "logistic_regression":
        if args.inverse_regularization <= 0:
            raise StepInputError(f"inverse_regularization must be positive, got {args.inverse_regularization}")
        params: dict[str, Any] = {"C": args.inverse_regularization, "max_iter": args.max_iter}
        classifier: Any = LogisticRegression(
            C=args.inverse_regularization, max_iter=args.max_iter, random_state=args.seed
        )
    elif args.algorithm == "gradient_boosting":
        if args.n_estimators < 1 or args.max_depth < 1 or not 0 < args.learning_rate <= 1:
            raise StepInputError("gradient_boosting needs n_estimators >= 1, max_depth >= 1, 0 < learning_rate <= 1")
        params = {"n_estimators": args.n_estimators, "learning_rate": args.learning_rate, "max_depth": args.max_depth}
        classifier = GradientBoostingClassifier(random_state=args.seed, **params)
    else:
        raise StepInputError(f"algorithm must be one of {', '.join(ALGORITHMS)}, got '{args.algorithm}'")
    pipeline = Pipeline(
        [("impute", SimpleImputer(strategy="median")), ("scale", StandardScaler()), ("classifier", classifier)]
    )
    return pipeline, {**params, "seed": args.seed}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Train the churn classifier on the prep step's train split.")
    parser.add_argument("--train_data", required=True, help="prep's train output folder")
    parser.add_argument("--algorithm", default="logistic_regression", help=" | ".join(ALGORITHMS))
    parser.add_argument("--inverse_regularization", type=float, default=1.0, help="logistic_regression: C")
    parser.add_argument("--max_iter", type=int, default=1000, help="logistic_regression: solver iterations")
    parser.add_argument("--n_estimators", type=int, default=100, help="gradient_boosting: trees")
    parser.add_argument("--learning_rate", type=float, default=0.1, help="gradient_boosting: shrinkage")
    parser.add_argument("--max_depth", type=int, default=3, help="gradient_boosting: tree depth")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--model", required=True, help="output folder for the model")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    schema, x_train, y_train = read_split(existing_dir(args.train_data, "train_data"), "train_data")
    if len(np.unique(y_train)) < 2:
        raise StepInputError("train_data: the training split has a single class")
    model, hyperparameters = build_model(args)
    model.fit(x_train, y_train)
    train_accuracy = float(model.score(x_train, y_train))

    out = Path(args.model)
    out.mkdir(parents=True, exist_ok=True)
    joblib.dump(model, out / MODEL_FILE)
    shutil.copyfile(SCORING_SCRIPT, out / "score.py")
    meta: dict[str, Any] = {
        "format": "evergreen-sklearn-v1",
        "model_file": MODEL_FILE,
        "target_column": schema["target_column"],
        "feature_columns": schema["feature_columns"],
        "input_columns": schema.get("input_columns", []),
        "numeric_columns": schema.get("numeric_columns", []),
        "categorical_columns": schema.get("categorical_columns", {}),
        "classes": [int(c) for c in model.classes_],
        "algorithm": args.algorithm,
        "hyperparameters": hyperparameters,
        "train_rows": len(y_train),
        "train_accuracy": round(train_accuracy, 6),
        "code_sha256": code_sha256(CODE_DIR),
        "framework": {
            "scikit-learn": sklearn.__version__,
            "numpy": np.__version__,
            "python": platform.python_version(),
        },
    }
    write_json(out / MODEL_META_FILE, meta)
    log.info("trained %s on %d rows; model written to %s", args.algorithm, len(y_train), out)
    summary = {"algorithm": args.algorithm, "train_rows": len(y_train), "train_accuracy": meta["train_accuracy"]}
    sys.stdout.write(json.dumps(summary) + "\n")


if __name__ == "__main__":
    run_step("train", main)
