"""Regression pipeline step `prep`: a CSV file (uri_file) or a folder of CSVs → encoded, split folders.

The same reading and encoding as the churn `prep` step (`prep.read_drop`, `prep.encode_features`: ID
columns dropped, text columns one-hot encoded, missing numbers left for the model), but the target is
a number, and the split is a seeded random one (a continuous target cannot be stratified).
"""

from __future__ import annotations

import argparse
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import prep
from prep import MAX_EXAMPLES, Table, as_number, encode_features, read_drop, split_names
from sklearn.model_selection import train_test_split
from steplib import SCHEMA_FILE, StepInputError, existing_path, run_step, write_json, write_matrix

log = logging.getLogger("evergreen.ml.regression_prep")

MIN_ROWS_PER_SPLIT = 5


def parse_numeric_target(table: Table, target_column: str) -> np.ndarray:
    """The target as floats; a missing or non-numeric value is a data error naming its rows."""
    if target_column not in table.columns:
        raise StepInputError(
            f"target_column: column '{target_column}' is missing; the data has: {', '.join(table.columns)}"
        )
    values: list[float] = []
    bad: list[str] = []
    for row, origin in zip(table.rows, table.origins, strict=True):
        number = as_number(row[target_column])
        if number is None or math.isnan(number):
            bad.append(f"{row[target_column]!r} ({origin})")
            number = math.nan
        values.append(number)
    if bad:
        raise StepInputError(
            f"target_column '{target_column}' must be a number in every row; "
            f"{len(bad)} bad value(s), e.g. {'; '.join(bad[:MAX_EXAMPLES])}"
        )
    y = np.array(values, dtype=float)
    if float(np.ptp(y)) == 0.0:
        raise StepInputError(f"target_column '{target_column}' has a single value ({y[0]}): nothing to learn")
    return y


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The churn prep's command line, with this dataset's defaults."""
    return prep.parse_args(
        argv,
        description="Read, validate, encode and split a regression data drop.",
        target="price_k",
        categorical="neighbourhood",
        ids="listing_id",
    )


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if not 0.0 < args.test_fraction < 1.0:
        raise StepInputError(f"test_fraction must be between 0 and 1 (exclusive), got {args.test_fraction}")
    table = read_drop(existing_path(args.training_data, "training_data"))
    y = parse_numeric_target(table, args.target_column)
    names, matrix, facts = encode_features(
        table, args.target_column, split_names(args.categorical_columns), split_names(args.id_columns),
        args.max_categories,
    )
    n_test = math.ceil(len(y) * args.test_fraction)
    if n_test < MIN_ROWS_PER_SPLIT or len(y) - n_test < MIN_ROWS_PER_SPLIT:
        raise StepInputError(
            f"training_data: {len(y)} rows are too few for a split with test_fraction={args.test_fraction} "
            f"(each side needs at least {MIN_ROWS_PER_SPLIT})"
        )
    x_train, x_test, y_train, y_test = train_test_split(
        matrix, y, test_size=args.test_fraction, random_state=args.seed
    )
    schema: dict[str, Any] = {
        "task": "regression",
        "target_column": args.target_column,
        "feature_columns": names,
        **facts,
        "source_files": table.files,
        "rows": {"total": len(y), "train": len(y_train), "test": len(y_test)},
        "target_mean": round(float(y.mean()), 6),
        "split": {"test_fraction": args.test_fraction, "seed": args.seed, "stratified": False},
    }
    for folder, x_part, y_part in ((args.train_data, x_train, y_train), (args.test_data, x_test, y_test)):
        out = Path(folder)
        write_matrix(out, names, x_part, y_part, args.target_column)
        write_json(out / SCHEMA_FILE, schema)
    log.info("features (%d): %s", len(names), ", ".join(names))
    log.info("split: %d train / %d test rows, target mean %.3f", len(y_train), len(y_test), y.mean())


if __name__ == "__main__":
    run_step("prep", main)
