"""Deterministic synthetic churn data for demos and tests (no downloads).

Churn probability is a logistic function of tenure, charges, support calls and contract type, so a
model can learn it. `--label_noise` replaces that fraction of labels with coin flips drawn at the
base rate: 0.0 gives a learnable drop (ROC AUC around 0.8), 0.9+ a drop whose labels are mostly
noise, so a model trained on it loses the champion gate.

    python make_churn_data.py --out_dir /tmp/drop1 --rows 2000 --seed 1
    python make_churn_data.py --out_dir /tmp/drop2 --rows 2000 --seed 2 --label_noise 0.95
    python make_churn_data.py --out_dir /tmp/holdout --rows 5000 --seed 21 --holdout --odd_region north

`--holdout` writes an evaluation drop (one CSV with the `region` and `contract` slice columns, no label
noise); `--drift`, `--odd_region` and `--region_effects` change the world the rows come from (see
`churn_rows`), which is how the fair-gate demo gets models with known differences (devstack/demo_data.py).
"""

from __future__ import annotations

import argparse
import csv
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger("evergreen.ml.make_churn_data")

COLUMNS = ["customer_id", "tenure_months", "monthly_charges", "support_calls", "contract", "churned"]
EXTRA_COLUMNS = ["region", "num_products"]
CONTRACTS = ("month-to-month", "one-year", "two-year")
CONTRACT_P = (0.55, 0.25, 0.20)
CONTRACT_EFFECT = {"month-to-month": 1.2, "one-year": -0.3, "two-year": -1.5}
REGIONS = ("north", "south", "east", "west")
REGION_EFFECT = {"north": 0.0, "south": 1.0, "east": -1.0, "west": 0.0}
ODD_CALLS_EFFECT = -1.2  # support calls in the odd region: more calls, much less churn


def churn_rows(
    rows: int,
    seed: int,
    label_noise: float = 0.0,
    extra_columns: bool = False,
    *,
    drift: float = 0.0,
    odd_region: str | None = None,
    region_effects: bool = False,
) -> list[dict[str, Any]]:
    """Generate `rows` customers; the same arguments always give the same rows.

    `drift` (0-1) moves the relationship toward a changed world (long-tenure customers now churn, high
    charges no longer do), so a model trained before the drift ranks customers worse after it.
    `odd_region` names a region whose customers react the other way to support calls (more calls, less
    churn): a model that learns it only from a drop where that region looks like the others is worse there.
    `region_effects` gives regions different base churn rates (a signal only a model that sees `region` uses).
    None of the three changes a row when left at its default (the random draws keep their order).
    """
    if rows < 1:
        raise ValueError("rows must be at least 1")
    if not 0.0 <= label_noise <= 1.0:
        raise ValueError("label_noise must be between 0 and 1")
    if not 0.0 <= drift <= 1.0:
        raise ValueError("drift must be between 0 and 1")
    if odd_region is not None and odd_region not in REGIONS:
        raise ValueError(f"odd_region must be one of {', '.join(REGIONS)}")
    rng = np.random.default_rng(seed)
    tenure = rng.integers(1, 73, size=rows)
    charges = np.round(rng.uniform(20.0, 120.0, size=rows), 2)
    calls = rng.poisson(1.5, size=rows)
    contract = rng.choice(len(CONTRACTS), size=rows, p=CONTRACT_P)
    draw_label, draw_noisy, draw_noise = (rng.uniform(size=rows) for _ in range(3))
    region = rng.choice(len(REGIONS), size=rows)
    products = rng.integers(1, 5, size=rows)
    calls_effect = np.where(region == REGIONS.index(odd_region), ODD_CALLS_EFFECT, 0.55) if odd_region else 0.55
    contract_effect = np.array([CONTRACT_EFFECT[CONTRACTS[c]] for c in contract])
    before = -0.05 * (tenure - 24) + 0.025 * (charges - 70.0) + contract_effect
    after = 0.04 * (tenure - 24) - 0.02 * (charges - 70.0) + 0.5 * contract_effect
    logit = -0.8 + (1.0 - drift) * before + drift * after + calls_effect * (calls - 1.5)
    if region_effects:
        logit = logit + np.array([REGION_EFFECT[r] for r in REGIONS])[region]
    p_churn = 1.0 / (1.0 + np.exp(-logit))
    churned = (draw_label < p_churn).astype(int)
    # Noise: replace a fraction of labels with draws that ignore the features entirely.
    noisy = draw_noisy < label_noise
    base_rate = float(p_churn.mean())
    churned = np.where(noisy, (draw_noise < base_rate).astype(int), churned)

    out: list[dict[str, Any]] = []
    for i in range(rows):
        row: dict[str, Any] = {
            "customer_id": f"C{seed:03d}{i:06d}",
            "tenure_months": int(tenure[i]),
            "monthly_charges": f"{charges[i]:.2f}",
            "support_calls": int(calls[i]),
            "contract": CONTRACTS[contract[i]],
            "churned": int(churned[i]),
        }
        if extra_columns:
            row["region"] = REGIONS[region[i]]
            row["num_products"] = int(products[i])
        out.append(row)
    return out


def write_drop(
    out_dir: Path,
    rows: int,
    seed: int,
    label_noise: float = 0.0,
    files: int = 1,
    extra_columns: bool = False,
    success_marker: bool = False,
    *,
    drift: float = 0.0,
    odd_region: str | None = None,
    region_effects: bool = False,
) -> list[Path]:
    """Write a drop folder of `files` CSV parts (plus an optional `_SUCCESS` marker); returns the CSVs."""
    if files < 1:
        raise ValueError("files must be at least 1")
    data = churn_rows(rows, seed, label_noise, extra_columns, drift=drift, odd_region=odd_region,
                      region_effects=region_effects)
    header = COLUMNS + (EXTRA_COLUMNS if extra_columns else [])
    out_dir.mkdir(parents=True, exist_ok=True)
    per_file = math.ceil(len(data) / files)
    written: list[Path] = []
    for part in range(files):
        chunk = data[part * per_file : (part + 1) * per_file]
        if not chunk:
            break
        path = out_dir / f"part-{part:03d}.csv"
        with path.open("w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=header)
            writer.writeheader()
            writer.writerows(chunk)
        written.append(path)
    if success_marker:
        (out_dir / "_SUCCESS").write_bytes(b"")
    return written


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out_dir", type=Path, required=True)
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--label_noise", type=float, default=0.0, help="fraction of labels replaced by noise (0-1)")
    parser.add_argument("--files", type=int, default=1, help="split the rows over this many CSV files")
    parser.add_argument("--extra_columns", action="store_true", help="add region and num_products columns")
    parser.add_argument("--success_marker", action="store_true", help="also write an empty _SUCCESS file")
    parser.add_argument("--drift", type=float, default=0.0, help="0-1: how far the relationship has changed")
    parser.add_argument("--odd_region", choices=REGIONS, default=None,
                        help="a region whose customers react the other way to support calls")
    parser.add_argument("--region_effects", action="store_true", help="regions churn at different base rates")
    parser.add_argument("--holdout", action="store_true",
                        help="an evaluation drop: one CSV with the region and contract slice columns, no noise")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    extra = args.extra_columns or args.holdout
    noise = 0.0 if args.holdout else args.label_noise
    files = 1 if args.holdout else args.files
    paths = write_drop(
        args.out_dir, args.rows, args.seed, noise, files, extra, args.success_marker,
        drift=args.drift, odd_region=args.odd_region, region_effects=args.region_effects,
    )
    log.info("wrote %d rows to %d file(s) in %s", args.rows, len(paths), args.out_dir)


if __name__ == "__main__":
    main()
