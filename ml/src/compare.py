"""Step `compare`: score the challenger (and the champion) on the same labelled rows → `comparison.json`.

Why: two models trained on different drops were each scored on their own holdout, so the gate compared
numbers measured on different rows. This step scores both on one evaluation data version and measures
the *paired* difference (challenger − champion, in the metric's units) with a percentile bootstrap
interval over rows: each resample re-weights the rows (multinomial counts, the classic bootstrap) and
both models are scored on the same weights, so row-level noise shared by both cancels out.

Every metric is a weighted sum, so a chunk of resamples is one matrix product (O(rows × resamples)):
AUC is the weighted Mann-Whitney statistic from cumulative weighted negatives over the scores sorted
once (equal scores grouped, counted as half). It registers nothing; the gate reads `comparison.json`.

Models load as the pipeline registers them (`model_meta.json` + `model.joblib`, encoded with the
deployment scorer's own `score.encode_records`) or, for a folder with an `MLmodel` file, through
`mlflow.pyfunc.load_model` (probabilities from the underlying model's `predict_proba` when it has one).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import joblib
import numpy as np
from evaluate import METRICS as CLASSIFICATION_METRICS
from evaluate import compute_metrics as classification_metrics
from prep import Table, parse_target, read_drop
from regression_evaluate import METRICS as REGRESSION_METRICS
from regression_evaluate import compute_metrics as regression_metrics
from score import encode_records, find_model_folder
from steplib import MISSING_TOKENS, MODEL_META_FILE, StepInputError, existing_path, read_json, run_step, write_json

log = logging.getLogger("evergreen.ml.compare")

SCHEMA = "evergreen.comparison/1"
COMPARISON_FILE = "comparison.json"
MLMODEL_FILE = "MLmodel"
DIRECTIONS = ("higher_is_better", "lower_is_better")
CELLS_PER_CHUNK = 1_000_000  # resamples × rows of weights held at once (8 MB of float64: stays in cache)
DIGITS = 6
_EPS = float(np.finfo(float).eps)

Predict = Callable[[Table], np.ndarray]


def task_of(metric: str) -> str:
    """`classification` or `regression` for a primary metric name; StepInputError names the supported ones."""
    if metric in CLASSIFICATION_METRICS:
        return "classification"
    if metric in REGRESSION_METRICS:
        return "regression"
    known = ", ".join([*CLASSIFICATION_METRICS, *REGRESSION_METRICS])
    raise StepInputError(f"metric: unknown metric {metric!r}; supported: {known}")


# --- weighted metrics: one row per resample ------------------------------------------------------------------


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


@dataclass(frozen=True)
class Ranked:
    """A model's scores sorted once: positives and negatives each in score order, and for each positive
    how many negatives score strictly lower (`below`) and lower or equal (`up_to`)."""

    positives: np.ndarray  # row indices of the positives, by score
    negatives: np.ndarray  # row indices of the negatives, by score
    below: np.ndarray
    up_to: np.ndarray
    tied: bool  # some positive ties with some negative


def rank(y: np.ndarray, score: np.ndarray) -> Ranked:
    """Sort `score` once, for any number of weighted AUCs over the same rows."""
    order = np.argsort(score, kind="stable")
    positive = y[order] > 0.5
    positives, negatives = order[positive], order[~positive]
    negative_scores = score[negatives]
    below = np.searchsorted(negative_scores, score[positives], side="left")
    up_to = np.searchsorted(negative_scores, score[positives], side="right")
    return Ranked(positives, negatives, below, up_to, bool((up_to != below).any()))


def ranked_auc(ranked: Ranked, weights: np.ndarray) -> np.ndarray:
    """ROC AUC per row of `weights` (R × n) from scores ranked once: the weighted Mann-Whitney statistic.

    Each positive counts the weight of the negatives below it (a tie counts half), read from the cumulative
    weights of the negatives in score order: two gathers, one cumulative sum and one dot product per
    resample, so the cost is linear in rows × resamples.
    """
    count = weights.shape[0]
    cumulative = np.zeros((count, len(ranked.negatives) + 1))
    np.cumsum(np.take(weights, ranked.negatives, axis=1), axis=1, out=cumulative[:, 1:])
    positive = np.take(weights, ranked.positives, axis=1)
    beaten = np.take(cumulative, ranked.below, axis=1)
    if ranked.tied:
        beaten = 0.5 * (beaten + np.take(cumulative, ranked.up_to, axis=1))
    pairs = np.einsum("ij,ij->i", positive, beaten)
    return _ratio(pairs, positive.sum(axis=1) * cumulative[:, -1])


def weighted_auc(y: np.ndarray, score: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """ROC AUC per row of `weights` (R × n), as sklearn's with sample_weight; NaN with one class."""
    return ranked_auc(rank(y, score), weights)


def _f1(y: np.ndarray, score: np.ndarray, weights: np.ndarray) -> np.ndarray:
    predicted = score >= 0.5
    actual = y.astype(bool)
    tp = weights @ (predicted & actual).astype(float)
    wrong = weights @ (predicted != actual).astype(float)
    f1 = _ratio(2 * tp, 2 * tp + wrong)
    return np.where(np.isnan(f1), 0.0, f1)  # sklearn's zero_division=0


def _log_loss(y: np.ndarray, score: np.ndarray, weights: np.ndarray) -> np.ndarray:
    p = np.clip(score, _EPS, 1 - _EPS)
    losses = -(y * np.log(p) + (1 - y) * np.log(1 - p))
    return _ratio(weights @ losses, weights.sum(axis=1))


def _mean_of(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    return _ratio(weights @ values, weights.sum(axis=1))


def _r2(y: np.ndarray, pred: np.ndarray, weights: np.ndarray) -> np.ndarray:
    total = weights.sum(axis=1)
    residual = weights @ (y - pred) ** 2
    spread = weights @ (y * y) - _ratio((weights @ y) ** 2, total)
    return 1.0 - _ratio(residual, spread)


WEIGHTED: dict[str, Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]] = {
    "roc_auc": weighted_auc,
    "accuracy": lambda y, s, w: _mean_of(((s >= 0.5).astype(int) == y).astype(float), w),
    "f1": _f1,
    "log_loss": _log_loss,
    "rmse": lambda y, s, w: np.sqrt(_mean_of((y - s) ** 2, w)),
    "mae": lambda y, s, w: _mean_of(np.abs(y - s), w),
    "r2": _r2,
}


def metric_value(metric: str, y: np.ndarray, score: np.ndarray) -> float:
    """The metric on all rows once (unit weights); NaN where it is undefined (AUC with one class)."""
    if len(y) == 0:
        return math.nan
    return float(WEIGHTED[metric](y.astype(float), score.astype(float), np.ones((1, len(y))))[0])


# --- the paired bootstrap -------------------------------------------------------------------------------------


def resample_weights(rng: np.random.Generator, count: int, rows: int) -> np.ndarray:
    """`count` bootstrap resamples as multinomial row counts (count × rows): rows drawn with replacement."""
    drawn = rng.integers(0, rows, size=(count, rows)) + (np.arange(count) * rows)[:, None]
    return np.bincount(drawn.ravel(), minlength=count * rows).reshape(count, rows).astype(float)


def bootstrap_differences(
    metric: str, y: np.ndarray, challenger: np.ndarray, champion: np.ndarray, resamples: int, seed: int
) -> np.ndarray:
    """The metric's difference (challenger − champion) on each of `resamples` paired resamples of the rows.

    Resamples are drawn in chunks of about CELLS_PER_CHUNK weights (memory stays flat, the arrays stay in
    cache); AUC sorts each model's scores once. The same seed gives the same differences.
    """
    rng = np.random.default_rng(seed)
    y = y.astype(float)
    if metric == "roc_auc":
        ranks = rank(y, challenger), rank(y, champion)

        def score(w: np.ndarray) -> np.ndarray:
            return np.asarray(ranked_auc(ranks[0], w) - ranked_auc(ranks[1], w))
    else:
        fn = WEIGHTED[metric]

        def score(w: np.ndarray) -> np.ndarray:
            return np.asarray(fn(y, challenger, w) - fn(y, champion, w))
    chunk = max(1, CELLS_PER_CHUNK // max(1, len(y)))
    out = [score(resample_weights(rng, min(chunk, resamples - start), len(y)))
           for start in range(0, resamples, chunk)]
    return np.concatenate(out) if out else np.empty(0)


@dataclass(frozen=True)
class Interval:
    """The paired difference on all rows and its two-sided percentile interval (None when undefined)."""

    estimate: float | None
    low: float | None
    high: float | None


def paired_interval(
    metric: str, y: np.ndarray, challenger: np.ndarray, champion: np.ndarray,
    *, confidence: float, resamples: int, seed: int,
) -> Interval:
    """Estimate and percentile interval of challenger − champion; resamples where the metric is undefined
    (e.g. one class drawn) are left out."""
    estimate = metric_value(metric, y, challenger) - metric_value(metric, y, champion)
    diffs = bootstrap_differences(metric, y, challenger, champion, resamples, seed)
    diffs = diffs[~np.isnan(diffs)]
    if math.isnan(estimate) or diffs.size == 0:
        return Interval(_num(estimate), None, None)
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(diffs, [tail, 1.0 - tail])
    return Interval(_num(estimate), _num(float(low)), _num(float(high)))


def _num(value: float | None) -> float | None:
    """A JSON number rounded for reading, or None for NaN/undefined; -0.0 becomes 0.0."""
    if value is None or math.isnan(value):
        return None
    return round(value, DIGITS) + 0.0


# --- slices -----------------------------------------------------------------------------------------------------


def slice_rows(
    metric: str, y: np.ndarray, challenger: np.ndarray, champion: np.ndarray | None,
    columns: dict[str, list[str]],
) -> list[dict[str, Any]]:
    """Every value of every slice column: rows, the primary metric for each model, and their difference."""
    out: list[dict[str, Any]] = []
    for column, values in columns.items():
        cells = np.asarray(values, dtype=object)
        for value in sorted(set(values)):
            mask = cells == value
            chal = _num(metric_value(metric, y[mask], challenger[mask]))
            champ = None if champion is None else _num(metric_value(metric, y[mask], champion[mask]))
            diff = None if chal is None or champ is None else _num(chal - champ)
            out.append({"column": column, "value": value, "rows": int(mask.sum()),
                        "challenger": chal, "champion": champ, "difference": diff})
    return out


# --- the whole comparison (pure: arrays in, document out) -----------------------------------------------------


@dataclass(frozen=True)
class Settings:
    """The statistical inputs of the step."""

    metric: str
    direction: str
    confidence: float
    resamples: int
    seed: int


def all_metrics(task: str, y: np.ndarray, scores: np.ndarray) -> dict[str, float]:
    """Every metric of the task, computed as the pipeline's evaluate step computes them."""
    found = classification_metrics(y, scores) if task == "classification" else regression_metrics(y, scores)
    return {name: entry["value"] for name, entry in found.items()}


def build_comparison(
    settings: Settings, y: np.ndarray, challenger: np.ndarray, champion: np.ndarray | None,
    slices: dict[str, list[str]],
) -> dict[str, Any]:
    """The statistical part of comparison.json: metrics of both models, the interval, the slice table."""
    task = task_of(settings.metric)
    doc: dict[str, Any] = {
        "schema": SCHEMA, "seed": settings.seed, "resamples": settings.resamples,
        "confidence": settings.confidence, "metric": settings.metric, "direction": settings.direction,
        "challenger": {"model": None, "metrics": all_metrics(task, y, challenger)},
        "champion": None, "difference": None,
        "slices": slice_rows(settings.metric, y, challenger, champion, slices),
    }
    if champion is not None:
        doc["champion"] = {"model": None, "metrics": all_metrics(task, y, champion)}
        found = paired_interval(settings.metric, y, challenger, champion, confidence=settings.confidence,
                                resamples=settings.resamples, seed=settings.seed)
        doc["difference"] = {"metric": settings.metric, "estimate": found.estimate, "low": found.low,
                             "high": found.high}
    return doc


# --- loading models and data ---------------------------------------------------------------------------------


def load_predictor(path: str, what: str, task: str) -> Predict:
    """A function from the evaluation table to scores: P(class 1) for classification, predictions otherwise.

    Raises StepInputError when the folder holds neither an MLflow model nor the pipeline's model format.
    """
    root = existing_path(path, what)
    mlmodel = [root / MLMODEL_FILE] if (root / MLMODEL_FILE).is_file() else sorted(root.rglob(MLMODEL_FILE))
    if mlmodel:
        return _mlflow_predictor(mlmodel[0].parent, task)
    try:
        folder = find_model_folder(root)
    except FileNotFoundError as exc:
        raise StepInputError(f"{what}: neither {MLMODEL_FILE} nor {MODEL_META_FILE} found under {root}") from exc
    meta = read_json(folder / MODEL_META_FILE, what)
    if (meta.get("task") == "regression") != (task == "regression"):
        raise StepInputError(f"{what}: a {meta.get('task', 'classification')} model cannot be scored on a "
                             f"{task} metric")
    model = joblib.load(folder / str(meta.get("model_file", "model.joblib")))

    def predict(table: Table) -> np.ndarray:
        try:
            matrix = encode_records(table.rows, meta)
        except ValueError as exc:
            raise StepInputError(f"evaluation_data: {exc}") from exc
        if task == "regression":
            return np.asarray(model.predict(matrix), dtype=float)
        return np.asarray(model.predict_proba(matrix)[:, list(model.classes_).index(1)], dtype=float)

    return predict


def _frame(table: Table) -> Any:
    """The table as a pandas DataFrame: numeric columns as numbers (missing tokens → NaN), text as text."""
    import pandas as pd  # type: ignore[import-untyped]

    frame = pd.DataFrame(table.rows, columns=table.columns)
    for column in frame.columns:
        cleaned = frame[column].where(~frame[column].str.lower().isin(MISSING_TOKENS))
        numbers = pd.to_numeric(cleaned, errors="coerce")
        if numbers.notna().sum() == cleaned.notna().sum():
            frame[column] = numbers
    return frame


def _mlflow_predictor(folder: Path, task: str) -> Predict:
    import mlflow.pyfunc

    model = mlflow.pyfunc.load_model(str(folder))
    raw = model.get_raw_model() if hasattr(model, "get_raw_model") else None
    schema = model.metadata.get_input_schema()
    wanted = schema.input_names() if schema is not None and schema.has_input_names() else None

    def predict(table: Table) -> np.ndarray:
        frame = _frame(table)
        if wanted is not None:
            missing = [c for c in wanted if c not in frame.columns]
            if missing:
                raise StepInputError(f"evaluation_data: missing column(s) the model needs: {', '.join(missing)}")
            frame = frame[list(wanted)]
        if task == "classification" and raw is not None and hasattr(raw, "predict_proba"):
            columns = getattr(raw, "feature_names_in_", None)
            probabilities = raw.predict_proba(frame[list(columns)] if columns is not None else frame)
            return np.asarray(probabilities[:, list(raw.classes_).index(1)], dtype=float)
        out = np.asarray(model.predict(frame), dtype=float)
        return out[:, -1] if out.ndim == 2 else out

    return predict


def read_evaluation(path: str, label_column: str, task: str) -> tuple[Table, np.ndarray]:
    """The evaluation rows (every CSV of a folder, or one file) and their labels."""
    source = existing_path(path, "evaluation_data")
    try:
        table = read_drop(source)
        if task == "classification":
            return table, parse_target(table, label_column)
    except StepInputError as exc:  # prep's messages name its own inputs
        text = str(exc).replace("training_data", "evaluation_data").replace("target_column", "label_column")
        raise StepInputError(text) from exc
    if label_column not in table.columns:
        raise StepInputError(f"label_column: column '{label_column}' is missing; the data has: "
                             f"{', '.join(table.columns)}")
    try:
        return table, np.array([float(row[label_column]) for row in table.rows])
    except ValueError as exc:
        raise StepInputError(f"label_column '{label_column}' must be numeric ({exc})") from exc


def slice_columns(table: Table, names: list[str]) -> dict[str, list[str]]:
    """The values of each slice column, row by row; StepInputError names a column the data lacks."""
    missing = [n for n in names if n not in table.columns]
    if missing:
        raise StepInputError(f"slices: column(s) {', '.join(missing)} missing; the data has: "
                             f"{', '.join(table.columns)}")
    return {name: [row[name] for row in table.rows] for name in names}


# --- the step ---------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Score challenger and champion on the same rows.")
    parser.add_argument("--challenger_model", required=True, help="model folder (custom or MLflow)")
    parser.add_argument("--champion_model", default=None, help="model folder; absent: the challenger alone")
    parser.add_argument("--challenger_name", default=None, help="<name>:<version>, for the record")
    parser.add_argument("--champion_name", default=None, help="<name>:<version>, for the record")
    parser.add_argument("--evaluation_data", required=True, help="folder of CSV files, or one CSV file")
    parser.add_argument("--data_asset", default="")
    parser.add_argument("--data_version", default="")
    parser.add_argument("--label_column", default="churned")
    parser.add_argument("--metric", default="roc_auc")
    parser.add_argument("--direction", default="higher_is_better", help=" | ".join(DIRECTIONS))
    parser.add_argument("--confidence", type=float, default=0.95)
    parser.add_argument("--resamples", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--slices", default="", help="comma-separated columns; may be empty")
    parser.add_argument("--min_slice_rows", type=int, default=0, help="recorded; the gate ignores smaller slices")
    parser.add_argument("--comparison", required=True, help="output folder for comparison.json")
    return parser.parse_args(argv)


def check_args(args: argparse.Namespace) -> Settings:
    """The statistical settings, or StepInputError naming the input that is out of range."""
    metric = args.metric.strip().lower()
    task_of(metric)
    if args.direction not in DIRECTIONS:
        raise StepInputError(f"direction must be one of {', '.join(DIRECTIONS)}, got {args.direction!r}")
    if not 0.0 < args.confidence < 1.0:
        raise StepInputError(f"confidence must be between 0 and 1 (exclusive), got {args.confidence}")
    if args.resamples < 1:
        raise StepInputError(f"resamples must be at least 1, got {args.resamples}")
    if args.min_slice_rows < 0:
        raise StepInputError(f"min_slice_rows must not be negative, got {args.min_slice_rows}")
    return Settings(metric, args.direction, args.confidence, args.resamples, args.seed)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    run_id = os.environ.get("AZUREML_RUN_ID", "local")
    settings = check_args(args)
    task = task_of(settings.metric)
    table, y = read_evaluation(args.evaluation_data, args.label_column, task)
    slices = slice_columns(table, [c.strip() for c in args.slices.split(",") if c.strip()])
    challenger = load_predictor(args.challenger_model, "challenger_model", task)(table)
    champion = load_predictor(args.champion_model, "champion_model", task)(table) if args.champion_model else None
    doc = build_comparison(settings, y, challenger, champion, slices)
    doc["challenger"]["model"] = args.challenger_name
    if doc["champion"] is not None:
        doc["champion"]["model"] = args.champion_name
    doc["evaluation"] = {"data_asset": args.data_asset, "data_version": args.data_version, "rows": len(y),
                         "label_column": args.label_column}
    doc["min_slice_rows"] = args.min_slice_rows
    write_json(Path(args.comparison) / COMPARISON_FILE, doc)
    log.info("compare %s: %d rows of %s:%s, %s difference %s", run_id, len(y), args.data_asset,
             args.data_version, settings.metric, doc["difference"])
    sys.stdout.write(json.dumps({"rows": len(y), "difference": doc["difference"]}) + "\n")


if __name__ == "__main__":
    run_step("compare", main)
