"""Deterministic synthetic house-price data for the regression pipeline's demos and tests (no downloads).

The price (in thousands, `price_k`) is a fixed function of floor area, rooms, age, distance to the
centre and neighbourhood, plus Gaussian noise of `base_noise` (15 k), so a model can learn it (RMSE
near 15). `--target_noise` adds that many thousands of extra noise: a drop with `--target_noise 150`
gives a model with a far higher RMSE, which loses the champion gate (`lower_is_better`).

    python make_house_price_data.py --out /tmp/houses-1.csv --rows 1500 --seed 1
    python make_house_price_data.py --out /tmp/houses-2.csv --rows 1500 --seed 2 --target_noise 150
"""

from __future__ import annotations

import argparse
import csv
import io
import logging
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger("evergreen.ml.make_house_price_data")

COLUMNS = ["listing_id", "area_m2", "rooms", "age_years", "distance_km", "neighbourhood", "price_k"]
NEIGHBOURHOODS = ("centre", "riverside", "suburb", "industrial")
NEIGHBOURHOOD_P = (0.2, 0.2, 0.45, 0.15)
NEIGHBOURHOOD_EFFECT = {"centre": 80.0, "riverside": 45.0, "suburb": 0.0, "industrial": -40.0}
BASE_NOISE = 15.0


def house_rows(rows: int, seed: int, target_noise: float = 0.0) -> list[dict[str, Any]]:
    """Generate `rows` listings; the same arguments always give the same rows. Raises ValueError on bad sizes."""
    if rows < 1:
        raise ValueError("rows must be at least 1")
    if target_noise < 0:
        raise ValueError("target_noise must be at least 0")
    rng = np.random.default_rng(seed)
    area = np.round(rng.uniform(30.0, 220.0, size=rows), 1)
    rooms = np.clip(np.round(area / 30.0 + rng.normal(0.0, 0.8, size=rows)), 1, 9).astype(int)
    age = rng.integers(0, 90, size=rows)
    distance = np.round(rng.gamma(2.0, 3.0, size=rows), 2)
    hood = rng.choice(len(NEIGHBOURHOODS), size=rows, p=NEIGHBOURHOOD_P)
    price = (
        60.0
        + 2.6 * area
        + 9.0 * rooms
        - 0.9 * age
        - 5.5 * np.minimum(distance, 25.0)
        + np.array([NEIGHBOURHOOD_EFFECT[NEIGHBOURHOODS[h]] for h in hood])
        + rng.normal(0.0, BASE_NOISE, size=rows)
        + target_noise * rng.standard_normal(size=rows)
    )
    return [
        {
            "listing_id": f"H{seed:03d}{i:06d}",
            "area_m2": f"{area[i]:.1f}",
            "rooms": int(rooms[i]),
            "age_years": int(age[i]),
            "distance_km": f"{distance[i]:.2f}",
            "neighbourhood": NEIGHBOURHOODS[hood[i]],
            "price_k": f"{max(price[i], 10.0):.1f}",
        }
        for i in range(rows)
    ]


def house_csv(rows: int, seed: int, target_noise: float = 0.0) -> str:
    """The rows as one CSV document (what a uri_file drop uploads)."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(house_rows(rows, seed, target_noise))
    return out.getvalue()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="CSV file to write")
    parser.add_argument("--rows", type=int, default=1500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--target_noise", type=float, default=0.0, help="extra noise on price_k, in thousands")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(house_csv(args.rows, args.seed, args.target_noise), encoding="utf-8")
    log.info("wrote %d rows to %s", args.rows, args.out)


if __name__ == "__main__":
    main()
