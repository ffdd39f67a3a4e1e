"""Scoring script of the regression model for an Azure ML managed online deployment (init()/run()).

The regression train step copies it into the model folder, next to `score.py`, whose request parsing
it uses: the same request bodies as the churn scorer (`{"data": [[...]]}`, `{"input_data": {"columns":
[...], "data": [[...]]}}` or `{"input_data": [{"area_m2": 80, ...}]}`, raw or encoded columns).

Response: ``{"predictions": [number, ...]}`` (the target's units, e.g. thousands for `price_k`).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import joblib
from score import META_FILE, find_model_folder, request_matrix

log = logging.getLogger("evergreen.score_regression")

_model: Any = None
_meta: dict[str, Any] = {}


def init() -> None:
    """Load the model once per worker from AZUREML_MODEL_DIR; fails if it is not a regression model."""
    global _model, _meta  # noqa: PLW0603 -- the init()/run() contract keeps state in module globals
    root = Path(os.environ.get("AZUREML_MODEL_DIR", Path(__file__).resolve().parent))
    folder = find_model_folder(root)
    meta = json.loads((folder / META_FILE).read_text(encoding="utf-8"))
    if meta.get("task") != "regression":
        raise ValueError(f"{folder / META_FILE} describes a {meta.get('task', 'classification')!r} model, "
                         "not a regression one; deploy it with score.py")
    _meta = meta
    _model = joblib.load(folder / _meta.get("model_file", "model.joblib"))
    log.info("loaded %s regressor with %d features from %s", _meta.get("algorithm"), len(_meta["feature_columns"]),
             folder)


def run(raw_data: str | bytes | dict[str, Any]) -> dict[str, Any]:
    """Predict for a request; invalid requests raise ValueError with a message saying what to send."""
    if _model is None:
        raise RuntimeError("init() was not called")
    payload = json.loads(raw_data) if isinstance(raw_data, (str, bytes)) else raw_data
    matrix = request_matrix(payload, _meta)
    if matrix.shape[0] == 0:
        return {"predictions": []}
    return {"predictions": [round(float(p), 4) for p in _model.predict(matrix)]}
