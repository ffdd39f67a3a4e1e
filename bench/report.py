"""One shape for every benchmark's result, one table, and `bench/results/latest.json`.

Each `bench/bench_*.py` that takes part in `make bench` exposes `run(quick: bool) -> list[BenchResult]`
and is listed in `BENCHMARKS` below. Every figure is measured side by side in one run, so a result's
`ratio` is what carries meaning on a shared, noisy machine; `goal` says what the ratio (or figure)
should be, and `met` whether this run met it (None when a benchmark has no pass/fail goal).
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = REPO_ROOT / "bench" / "results"

# Module names (under bench/) in the order `make bench` runs them.
BENCHMARKS: tuple[str, ...] = ("bench_compare", "bench_planning", "bench_burst", "bench_overhead", "bench_status",
                               "bench_cold_start", "bench_rollout", "bench_retention_stack")


@dataclass(frozen=True)
class BenchResult:
    """One benchmark's outcome: its figures (name → number or short text), the ratio it is judged by."""

    name: str  # e.g. "burst", "cold_start"
    title: str  # one line for the table
    figures: Mapping[str, float | int | str] = field(default_factory=dict)
    ratio_name: str = ""  # what the ratio is, e.g. "evergreen / no-op handler time"
    ratio: float | None = None
    goal: str = ""  # e.g. "<= 3.0"
    met: bool | None = None
    notes: str = ""  # where the time goes, what was not measured, and why


def commit() -> str:
    """The commit benchmarked (with `+dirty` when the tree has changes); "unknown" outside git."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=REPO_ROOT, capture_output=True,
                              text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=REPO_ROOT, capture_output=True, text=True,
                               check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


def table(results: list[BenchResult]) -> str:
    """The one table `make bench` prints (and the README's Performance section shows)."""
    lines = [f"{'benchmark':<28} {'ratio':>10}  {'goal':<12} {'met':<5} what the ratio is",
             "-" * 100]
    for r in results:
        ratio = "-" if r.ratio is None else f"{r.ratio:,.3g}"
        met = "-" if r.met is None else ("yes" if r.met else "NO")
        lines.append(f"{r.name:<28} {ratio:>10}  {r.goal:<12} {met:<5} {r.ratio_name}")
    return "\n".join(lines)


def details(results: list[BenchResult]) -> str:
    """Each result's title, figures, ratio against its goal and notes: what a standalone run prints under the table."""
    lines: list[str] = []
    for r in results:
        lines.append(f"\n{r.name}: {r.title}")
        lines += [f"  {key:<40} {value}" for key, value in r.figures.items()]
        if r.ratio is not None:
            met = "" if r.met is None else (" met" if r.met else " NOT met")
            lines.append(f"  {r.ratio_name}: {r.ratio:,.3g} (goal {r.goal or '-'}{met})")
        if r.notes:
            lines.append(f"  {r.notes}")
    return "\n".join(lines)


def write_latest(results: list[BenchResult], *, quick: bool, path: Path | None = None) -> Path:
    """Write `bench/results/latest.json`: one object per benchmark, plus the commit and the machine."""
    import os
    import platform

    target = path or RESULTS_DIR / "latest.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    doc = {
        "commit": commit(),
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
        "quick": quick,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "benchmarks": [asdict(r) | {"figures": dict(r.figures)} for r in results],
    }
    target.write_text(json.dumps(doc, indent=2) + "\n")
    return target
