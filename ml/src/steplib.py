"""Helpers shared by the pipeline step scripts (prep, train, evaluate, register).

Kept dependency-free beyond numpy so every step runs in the curated sklearn environment and in the
local executor alike. Compatible with Python 3.10 (the curated AzureML-sklearn-1.5 image).
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import math
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger("evergreen.ml")

SCHEMA_FILE = "schema.json"
DATA_FILE = "data.csv"
MODEL_FILE = "model.joblib"
MODEL_META_FILE = "model_meta.json"
METRICS_FILE = "metrics.json"
REGISTERED_MODEL_FILE = "registered_model.json"

# Values read as "missing" in numeric columns (imputed by the model pipeline).
MISSING_TOKENS = frozenset({"", "na", "n/a", "nan", "null", "none"})


class StepInputError(Exception):
    """An input of a step is unusable; the message says which one and why."""


def setup_logging() -> None:
    """Log to stderr: Azure ML shows it in the step's std_log, the local executor captures it."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)


def run_step(step: str, main: Callable[[], None]) -> None:
    """Run a step's main(); an input error becomes one clear line on stderr and exit code 2."""
    setup_logging()
    try:
        main()
    except StepInputError as exc:
        log.error("%s: invalid input: %s", step, exc)
        sys.exit(2)


def existing_dir(path: str | Path, what: str) -> Path:
    """Return `path` as a folder, or fail naming the input it came from."""
    folder = Path(path)
    if not folder.exists():
        raise StepInputError(f"{what}: folder {folder} does not exist")
    if not folder.is_dir():
        raise StepInputError(f"{what}: {folder} is not a folder")
    return folder


def existing_path(path: str | Path, what: str) -> Path:
    """Return `path` (a file or a folder: a uri_file or uri_folder input), or fail naming the input."""
    found = Path(path)
    if not found.exists():
        raise StepInputError(f"{what}: {found} does not exist")
    return found


def read_json(path: Path, what: str) -> dict[str, Any]:
    """Read a JSON object written by an earlier step, failing clearly when it is absent or broken."""
    if not path.is_file():
        raise StepInputError(f"{what}: {path.name} not found in {path.parent} (was the previous step's output bound?)")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise StepInputError(f"{what}: {path} is not valid JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise StepInputError(f"{what}: {path} must hold a JSON object")
    return doc


def write_json(path: Path, doc: dict[str, Any]) -> None:
    """Write stable, human-readable JSON (sorted keys keep outputs diffable across runs)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def code_sha256(folder: Path) -> str:
    """Deterministic sha256 of the step code: every *.py under `folder`, by relative path.

    Only Python sources count: Azure ML adds folders such as `outputs/` and `logs/` to the working
    directory, and bytecode caches differ per machine. Line endings are normalised so a Windows
    checkout hashes like a Linux one.
    """
    digest = hashlib.sha256()
    files = sorted(
        p
        for p in folder.rglob("*.py")
        if p.is_file() and not any(part.startswith((".", "__pycache__")) for part in p.relative_to(folder).parts)
    )
    for path in files:
        content = path.read_bytes().replace(b"\r\n", b"\n")
        digest.update(path.relative_to(folder).as_posix().encode("utf-8"))
        digest.update(b"\0")
        digest.update(hashlib.sha256(content).digest())
    return digest.hexdigest()


def write_matrix(
    folder: Path, columns: Sequence[str], rows: np.ndarray, target: np.ndarray, target_column: str
) -> None:
    """Write a prepared split as CSV: encoded feature columns then the target; NaN as empty.

    An integer target (a 0/1 label) is written as an integer, a float target (a regression) in full precision.
    """
    folder.mkdir(parents=True, exist_ok=True)
    as_int = np.issubdtype(np.asarray(target).dtype, np.integer)
    with (folder / DATA_FILE).open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow([*columns, target_column])
        for values, label in zip(rows, target, strict=True):
            label_text = str(int(label)) if as_int else repr(float(label))
            writer.writerow([("" if math.isnan(v) else repr(float(v))) for v in values] + [label_text])


def read_split(
    folder: Path, what: str, target_type: type[int] | type[float] = int
) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
    """Read a split written by a prep step: (schema, X, y). Validates the header against schema.json.

    `target_type` is `int` for a 0/1 label (churn), `float` for a regression target.
    """
    schema = read_json(folder / SCHEMA_FILE, what)
    data_path = folder / DATA_FILE
    if not data_path.is_file():
        raise StepInputError(f"{what}: {DATA_FILE} not found in {folder}")
    features: list[str] = list(schema.get("feature_columns", []))
    target_column = str(schema.get("target_column", ""))
    with data_path.open(newline="", encoding="utf-8") as fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        if header != [*features, target_column]:
            raise StepInputError(f"{what}: header of {data_path} does not match {SCHEMA_FILE}")
        rows = [row for row in reader if row]
    if not rows:
        raise StepInputError(f"{what}: {data_path} has no rows")
    try:
        matrix = np.array([[float(v) if v != "" else math.nan for v in row[:-1]] for row in rows], dtype=float)
        target = np.array([target_type(row[-1]) for row in rows], dtype=target_type)
    except ValueError as exc:
        raise StepInputError(f"{what}: {data_path} holds a non-numeric value ({exc})") from exc
    return schema, matrix.reshape(len(rows), len(features)), target


def align_features(matrix: np.ndarray, have: Sequence[str], want: Sequence[str], what: str) -> np.ndarray:
    """Select and reorder columns `have` → `want` (the model's training order), failing on any gap."""
    index = {name: i for i, name in enumerate(have)}
    missing = [c for c in want if c not in index]
    if missing:
        raise StepInputError(f"{what}: missing feature column(s) the model was trained on: {', '.join(missing)}")
    return matrix[:, [index[name] for name in want]]
