"""The comparison step's compute time (ml/src/compare.py): rows × resamples of the paired bootstrap.

Measures `build_comparison` on generated scores (every metric of both models, the paired-bootstrap
interval on roc_auc, a 4-value slice table), the part of the step that grows with rows × resamples;
reading the CSV and scoring the models is linear in rows alone and not included. Full: 10k and 100k
rows × 1000 resamples; quick: 10k and 50k × 200. The goal is linear growth: time(large) / time(small)
at most 1.05 × the ratio of rows. CPU time of this process, best of 3 (small) and 2 (large) runs, so
other work on a shared machine counts less.

    python -m bench.bench_compare [--quick]
"""

from __future__ import annotations

import argparse
import sys
import time
from types import ModuleType
from typing import Any

import numpy as np

from bench.report import REPO_ROOT, BenchResult

ML_SRC = REPO_ROOT / "ml" / "src"
SLOP = 1.05  # 5 % over strictly linear


def step() -> ModuleType:
    """ml/src/compare.py, imported as the step imports its siblings (ml/src on sys.path)."""
    if str(ML_SRC) not in sys.path:
        sys.path.append(str(ML_SRC))
    import compare

    return compare


def inputs(rows: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, list[str]]]:
    """Labels, two models' probabilities (the challenger slightly better) and a region column."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, rows)
    champion = 1 / (1 + np.exp(-(0.8 * (2 * y - 1) + rng.normal(size=rows))))
    challenger = 1 / (1 + np.exp(-(0.9 * (2 * y - 1) + rng.normal(size=rows))))
    region = [("north", "south", "east", "west")[i] for i in rng.integers(0, 4, rows)]
    return y, challenger, champion, {"region": region}


def seconds(rows: int, resamples: int, repeats: int) -> tuple[float, dict[str, Any]]:
    """Best CPU seconds of `repeats` comparisons at this size, and the last comparison's difference."""
    compare = step()
    y, challenger, champion, slices = inputs(rows)
    settings = compare.Settings("roc_auc", "higher_is_better", 0.95, resamples, 7)
    best, doc = float("inf"), {}
    for _ in range(repeats):
        started = time.process_time()
        doc = compare.build_comparison(settings, y, challenger, champion, slices)
        best = min(best, time.process_time() - started)
    return best, doc["difference"]


def run(quick: bool) -> list[BenchResult]:
    """One result: the large size's time over the small size's, against the ratio of their rows."""
    resamples = 200 if quick else 1000
    small, large = (10_000, 50_000) if quick else (10_000, 100_000)
    t_small, _ = seconds(small, resamples, 3)
    t_large, difference = seconds(large, resamples, 2)
    ratio = t_large / t_small
    limit = SLOP * large / small

    def k(n: int) -> str:
        return f"{n // 1000}k"

    return [BenchResult(
        name="compare_step",
        title=f"comparison step: {k(small)} and {k(large)} rows × {resamples} paired resamples",
        figures={
            f"seconds_{k(small)}": round(t_small, 3),
            f"seconds_{k(large)}": round(t_large, 3),
            f"cells_per_second_{k(small)}": round(small * resamples / t_small),
            f"cells_per_second_{k(large)}": round(large * resamples / t_large),
            "interval_large": f"[{difference['low']}, {difference['high']}]",
        },
        ratio_name=f"time({k(large)}) / time({k(small)}) rows (linear = {large // small})",
        ratio=round(ratio, 3),
        goal=f"<= {limit:g}",
        met=ratio <= limit,
        notes="CPU time of build_comparison (metrics, roc_auc paired bootstrap, one 4-value slice column) on "
              "generated scores; loading the data and scoring the models are not included. Weights are "
              "drawn in chunks of about 1M cells, so memory stays flat as rows grow.",
    )]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="10k and 50k rows × 200 resamples")
    args = parser.parse_args(argv)
    from bench.report import details

    print(details(run(args.quick)))


if __name__ == "__main__":
    main()
