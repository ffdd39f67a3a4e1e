"""Scoring script for an Azure ML managed online deployment (the init()/run() contract).

Copied by the train step into the model folder, so a registered model carries its own scorer.
Self-contained (numpy, joblib, scikit-learn only): the deployment image has no step code.

Request bodies (JSON):
- ``{"data": [[...], ...]}``: rows in the model's encoded ``feature_columns`` order, or rows of
  raw values in ``input_columns`` order (categorical values as text, e.g. "two-year");
- ``{"input_data": {"columns": [...], "data": [[...], ...]}}`` (split orient, as Azure ML's
  MLflow deployments) or ``{"input_data": [{"column": value, ...}, ...]}`` (records), with either
  raw or encoded column names; unknown columns (such as ``customer_id``) are ignored.

Response: ``{"predictions": [0|1, ...], "probabilities": [P(class 1), ...]}``.
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Any

import joblib
import numpy as np

log = logging.getLogger("evergreen.score")

META_FILE = "model_meta.json"
MISSING = frozenset({"", "na", "n/a", "nan", "null", "none"})

_model: Any = None
_meta: dict[str, Any] = {}


def find_model_folder(root: Path) -> Path:
    """The folder holding model_meta.json: AZUREML_MODEL_DIR itself or (as Azure ML mounts a
    registered folder under its own name) a subfolder of it."""
    if (root / META_FILE).is_file():
        return root
    found = sorted(root.rglob(META_FILE))
    if not found:
        raise FileNotFoundError(f"{META_FILE} not found under {root}")
    return found[0].parent


def init() -> None:
    """Load the model once per worker; Azure ML sets AZUREML_MODEL_DIR to the registered model."""
    global _model, _meta  # noqa: PLW0603 -- the init()/run() contract keeps state in module globals
    root = Path(os.environ.get("AZUREML_MODEL_DIR", Path(__file__).resolve().parent))
    folder = find_model_folder(root)
    _meta = json.loads((folder / META_FILE).read_text(encoding="utf-8"))
    _model = joblib.load(folder / _meta.get("model_file", "model.joblib"))
    log.info("loaded %s model with %d features from %s", _meta.get("algorithm"), len(_meta["feature_columns"]), folder)


def _number(value: Any, column: str) -> float:
    if value is None or (isinstance(value, str) and value.strip().lower() in MISSING):
        return math.nan
    if isinstance(value, bool):
        return float(value)
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"column '{column}': {value!r} is not a number") from None


def encode_records(records: list[dict[str, Any]], meta: dict[str, Any]) -> np.ndarray:
    """Build the encoded matrix from named values: encoded names as is, else raw columns encoded."""
    features: list[str] = meta["feature_columns"]
    if records and all(name in records[0] for name in features):
        return np.array([[_number(r.get(f), f) for f in features] for r in records], dtype=float)
    categorical: dict[str, list[str]] = meta.get("categorical_columns", {})
    needed = list(meta.get("input_columns", [])) or [f for f in features if "=" not in f]
    missing = sorted({c for r in records for c in needed if c not in r})
    if missing:
        raise ValueError(f"missing column(s): {', '.join(missing)}; expected {', '.join(needed)}")
    rows: list[list[float]] = []
    for record in records:
        row: list[float] = []
        for feature in features:
            column, sep, level = feature.partition("=")
            if sep and column in categorical:
                value = record.get(column)
                row.append(1.0 if value is not None and str(value).strip() == level else 0.0)
            else:
                row.append(_number(record.get(feature), feature))
        rows.append(row)
    return np.array(rows, dtype=float)


def request_matrix(payload: Any, meta: dict[str, Any]) -> np.ndarray:
    """Turn a request payload into the encoded feature matrix `meta` (model_meta.json) describes.

    Shared with score_regression.py (same request shapes). Raises ValueError saying what to send.
    """
    if not isinstance(payload, dict):
        raise ValueError('request must be a JSON object with "data" or "input_data"')
    features: list[str] = meta["feature_columns"]
    if "data" in payload:
        rows = payload["data"]
        if not isinstance(rows, list) or not all(isinstance(r, list) for r in rows):
            raise ValueError('"data" must be a list of rows (lists of values)')
        raw = list(meta.get("input_columns", []))
        if all(len(r) == len(features) and all(not isinstance(v, str) for v in r) for r in rows):
            return np.array(
                [[_number(v, f) for v, f in zip(r, features, strict=True)] for r in rows], dtype=float
            ).reshape(len(rows), len(features))
        if raw and all(len(r) == len(raw) for r in rows):
            return encode_records([dict(zip(raw, r, strict=True)) for r in rows], meta)
        raise ValueError(
            f'each row of "data" must have {len(features)} numbers ({", ".join(features)})'
            + (f" or {len(raw)} raw values ({', '.join(raw)})" if raw else "")
        )
    if "input_data" in payload:
        data = payload["input_data"]
        if isinstance(data, dict) and "columns" in data and "data" in data:
            records = [dict(zip(data["columns"], row, strict=True)) for row in data["data"]]
        elif isinstance(data, list) and all(isinstance(r, dict) for r in data):
            records = data
        else:
            raise ValueError('"input_data" must be {"columns": [...], "data": [[...]]} or a list of records')
        return encode_records(records, meta)
    raise ValueError('request must have "data" or "input_data"')


def run(raw_data: str | bytes | dict[str, Any]) -> dict[str, Any]:
    """Score a request; invalid requests raise ValueError with a message saying what to send."""
    if _model is None:
        raise RuntimeError("init() was not called")
    payload = json.loads(raw_data) if isinstance(raw_data, (str, bytes)) else raw_data
    matrix = request_matrix(payload, _meta)
    if matrix.shape[0] == 0:
        return {"predictions": [], "probabilities": []}
    probabilities = _model.predict_proba(matrix)[:, list(_model.classes_).index(1)]
    predictions = (probabilities >= 0.5).astype(int)
    return {
        "predictions": [int(p) for p in predictions],
        "probabilities": [round(float(p), 6) for p in probabilities],
    }
