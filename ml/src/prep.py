"""Pipeline step `prep`: every CSV of a data drop → encoded, split `train` and `test` folders.

Why this shape: drops arrive as a folder of CSV parts (plus markers such as `_SUCCESS`), columns
may be added over time, and the downstream steps need a purely numeric matrix with a stable column
order. Numeric columns stay as they are (missing values left for the model's imputer), text
columns are one-hot encoded, ID columns are dropped, and the split is stratified and seeded so the
same drop always yields the same train/test rows.
"""

from __future__ import annotations

import argparse
import csv
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.model_selection import train_test_split
from steplib import MISSING_TOKENS, SCHEMA_FILE, StepInputError, existing_dir, run_step, write_json, write_matrix

log = logging.getLogger("evergreen.ml.prep")

POSITIVE = frozenset({"1", "1.0", "true", "t", "yes", "y"})
NEGATIVE = frozenset({"0", "0.0", "false", "f", "no", "n"})
MAX_EXAMPLES = 5


@dataclass
class Table:
    """All rows of a drop, as text, with where each row came from (for error messages)."""

    columns: list[str]
    rows: list[dict[str, str]] = field(default_factory=list)
    origins: list[str] = field(default_factory=list)
    files: list[str] = field(default_factory=list)


def split_names(value: str) -> list[str]:
    """Parse a comma-separated list input ("a, b" → ["a", "b"]); empty entries are ignored."""
    return [name.strip() for name in value.split(",") if name.strip()]


def read_drop(source: Path) -> Table:
    """Read every *.csv under a folder (sorted by relative path, so row order is deterministic), or one file.

    A single file is what a `uri_file` data asset mounts as; it is read whatever its extension.
    """
    if source.is_file():
        folder, paths = source.parent, [source]
    else:
        folder = source
        paths = sorted(
            (p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() == ".csv"), key=lambda p: p.as_posix()
        )
    if not paths:
        others = sorted(p.name for p in folder.rglob("*") if p.is_file())[:MAX_EXAMPLES]
        found = f" (found only: {', '.join(others)})" if others else " (the folder is empty)"
        raise StepInputError(f"training_data: no CSV files in {folder}{found}")
    table: Table | None = None
    for path in paths:
        rel = path.relative_to(folder).as_posix()
        with path.open(newline="", encoding="utf-8-sig") as fh:
            reader = csv.reader(fh)
            header = [h.strip() for h in next(reader, [])]
            if not header or not any(header):
                raise StepInputError(f"training_data: {rel} has no header row")
            duplicates = sorted({h for h in header if header.count(h) > 1})
            if duplicates:
                raise StepInputError(f"training_data: {rel} repeats column(s) {', '.join(duplicates)}")
            if table is None:
                table = Table(columns=header)
            elif set(header) != set(table.columns):
                missing = sorted(set(table.columns) - set(header))
                extra = sorted(set(header) - set(table.columns))
                raise StepInputError(
                    f"training_data: {rel} has different columns from {table.files[0]}"
                    f" (missing: {', '.join(missing) or '-'}; extra: {', '.join(extra) or '-'})"
                )
            for line, values in enumerate(reader, start=2):
                if not values or all(not v.strip() for v in values):
                    continue
                if len(values) != len(header):
                    raise StepInputError(
                        f"training_data: {rel} line {line} has {len(values)} fields, the header has {len(header)}"
                    )
                table.rows.append({h: v.strip() for h, v in zip(header, values, strict=True)})
                table.origins.append(f"{rel} line {line}")
            table.files.append(rel)
    assert table is not None
    if not table.rows:
        raise StepInputError(f"training_data: the CSV files in {folder} have a header but no data rows")
    log.info("read %d rows from %d file(s): %s", len(table.rows), len(table.files), ", ".join(table.files))
    return table


def parse_target(table: Table, target_column: str) -> np.ndarray:
    """Map the target to 0/1 (accepts 0/1, true/false, yes/no); list offending rows otherwise."""
    if target_column not in table.columns:
        raise StepInputError(
            f"target_column: column '{target_column}' is missing; the data has: {', '.join(table.columns)}"
        )
    labels: list[int] = []
    bad: list[str] = []
    for row, origin in zip(table.rows, table.origins, strict=True):
        value = row[target_column].lower()
        if value in POSITIVE:
            labels.append(1)
        elif value in NEGATIVE:
            labels.append(0)
        else:
            labels.append(-1)
            bad.append(f"{row[target_column]!r} ({origin})")
    if bad:
        raise StepInputError(
            f"target_column '{target_column}' must be binary (0/1, true/false, yes/no); "
            f"{len(bad)} bad value(s), e.g. {'; '.join(bad[:MAX_EXAMPLES])}"
        )
    y = np.array(labels, dtype=int)
    if len(set(labels)) < 2:
        raise StepInputError(f"target_column '{target_column}' has a single class ({labels[0]}): nothing to learn")
    return y


def as_number(value: str) -> float | None:
    """Parse a numeric cell; NaN for missing tokens, None when the text is not a finite number."""
    if value.lower() in MISSING_TOKENS:
        return math.nan
    try:
        number = float(value)
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def encode_features(
    table: Table, target_column: str, categorical: list[str], id_columns: list[str], max_categories: int
) -> tuple[list[str], np.ndarray, dict[str, Any]]:
    """Turn the text table into a numeric matrix; returns (feature names, matrix, schema facts).

    Declared categorical columns are one-hot encoded. Other columns are numeric when every
    non-missing value parses, categorical when none does; a mix is a data error (a typo in a
    numeric column would otherwise silently become a category).
    """
    absent = [c for c in categorical if c not in table.columns]
    if absent:
        raise StepInputError(
            f"categorical_columns: column(s) {', '.join(absent)} missing; the data has: {', '.join(table.columns)}"
        )
    if target_column in categorical:
        raise StepInputError(f"categorical_columns: '{target_column}' is the target column")
    names: list[str] = []
    blocks: list[np.ndarray] = []
    numeric_columns: list[str] = []
    categories: dict[str, list[str]] = {}
    dropped: dict[str, str] = {}
    for column in table.columns:
        if column == target_column:
            continue
        if column in id_columns:
            dropped[column] = "id column"
            continue
        values = [row[column] for row in table.rows]
        if column not in categorical:
            parsed = [as_number(v) for v in values]
            bad = [(v, o) for v, p, o in zip(values, parsed, table.origins, strict=True) if p is None]
            if not bad:
                if all(math.isnan(p) for p in parsed if p is not None):
                    dropped[column] = "no values"
                    log.warning("dropping column %s: every value is missing", column)
                    continue
                names.append(column)
                numeric_columns.append(column)
                blocks.append(np.array(parsed, dtype=float).reshape(-1, 1))
                continue
            if len(bad) < sum(1 for v in values if v.lower() not in MISSING_TOKENS):
                examples = "; ".join(f"{v!r} ({o})" for v, o in bad[:MAX_EXAMPLES])
                raise StepInputError(
                    f"column '{column}' is numeric but has {len(bad)} non-numeric value(s), e.g. {examples}. "
                    "Fix the data, or list the column in categorical_columns."
                )
        levels = sorted({v for v in values if v.lower() not in MISSING_TOKENS})
        if column not in categorical and len(levels) > max_categories:
            dropped[column] = f"text with {len(levels)} distinct values (> max_categories={max_categories})"
            log.warning("dropping column %s: %s", column, dropped[column])
            continue
        categories[column] = levels
        for level in levels:
            names.append(f"{column}={level}")
            blocks.append(np.array([1.0 if v == level else 0.0 for v in values]).reshape(-1, 1))
    if not names:
        raise StepInputError(f"training_data: no feature columns left besides '{target_column}' ({dropped or 'none'})")
    # The raw columns a scoring request may send by name, in the drop's column order.
    input_columns = [c for c in table.columns if c in numeric_columns or c in categories]
    facts = {
        "input_columns": input_columns,
        "numeric_columns": numeric_columns,
        "categorical_columns": categories,
        "dropped_columns": dropped,
    }
    return names, np.hstack(blocks), facts


def parse_args(
    argv: list[str] | None = None,
    *,
    description: str = "Read, validate, encode and split a churn data drop.",
    target: str = "churned",
    categorical: str = "contract",
    ids: str = "customer_id",
) -> argparse.Namespace:
    """The prep command line; another pipeline's prep step passes its own description and defaults."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--training_data", required=True, help="folder with one or more CSV files, or one CSV file")
    parser.add_argument("--target_column", default=target)
    parser.add_argument("--categorical_columns", default=categorical, help="comma-separated; one-hot encoded")
    parser.add_argument("--id_columns", default=ids, help="comma-separated; dropped when present")
    parser.add_argument("--max_categories", type=int, default=50, help="undeclared text columns above this are dropped")
    parser.add_argument("--test_fraction", type=float, default=0.2)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--train_data", required=True, help="output folder for the training split")
    parser.add_argument("--test_data", required=True, help="output folder for the held-out split")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if not 0.0 < args.test_fraction < 1.0:
        raise StepInputError(f"test_fraction must be between 0 and 1 (exclusive), got {args.test_fraction}")
    source = existing_dir(args.training_data, "training_data")
    table = read_drop(source)
    y = parse_target(table, args.target_column)
    names, matrix, facts = encode_features(
        table,
        args.target_column,
        split_names(args.categorical_columns),
        split_names(args.id_columns),
        args.max_categories,
    )
    minority = int(min(np.bincount(y)))
    n_test = math.ceil(len(y) * args.test_fraction)
    if minority < 2 or n_test < 2 or len(y) - n_test < 2:
        raise StepInputError(
            f"training_data: {len(y)} rows ({minority} in the smaller class) are too few for a "
            f"stratified split with test_fraction={args.test_fraction}"
        )
    x_train, x_test, y_train, y_test = train_test_split(
        matrix, y, test_size=args.test_fraction, random_state=args.seed, stratify=y
    )
    schema: dict[str, Any] = {
        "target_column": args.target_column,
        "feature_columns": names,
        **facts,
        "source_files": table.files,
        "rows": {"total": len(y), "train": len(y_train), "test": len(y_test)},
        "positive_rate": round(float(y.mean()), 6),
        "split": {"test_fraction": args.test_fraction, "seed": args.seed, "stratified": True},
    }
    for folder, x_part, y_part in ((args.train_data, x_train, y_train), (args.test_data, x_test, y_test)):
        out = Path(folder)
        write_matrix(out, names, x_part, y_part, args.target_column)
        write_json(out / SCHEMA_FILE, schema)
    log.info("features (%d): %s", len(names), ", ".join(names))
    log.info("split: %d train / %d test rows, positive rate %.3f", len(y_train), len(y_test), y.mean())


if __name__ == "__main__":
    run_step("prep", main)
