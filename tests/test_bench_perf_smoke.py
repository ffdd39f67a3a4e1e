"""A smoke test of the cold-start, rollout and retention benchmark code (not a timed test).

Cold start and retention run end to end at a tiny size; the rollout benchmark needs a whole stack and
two rollouts (minutes), so its arithmetic (overhead = total − |Azure ML ∪ waits|, the summary row) is
checked here on hand-made figures and the stack part runs in `make bench`.
"""

from __future__ import annotations

import pytest

from bench import bench_cold_start, bench_retention_stack
from bench.bench_rollout import Rollout, summarize, union_within
from bench.report import BenchResult

pytestmark = pytest.mark.e2e


def _shaped(result: BenchResult) -> None:
    assert result.name and result.title and result.ratio_name and result.goal
    assert result.ratio is None or isinstance(result.ratio, float)
    assert result.met in (True, False)
    assert all(isinstance(v, int | float | str) for v in result.figures.values())


def test_cold_start_runs_once_each_and_reports_nothing_leaked() -> None:
    [result] = bench_cold_start.run(True, runs=1, first_event=False)
    _shaped(result)
    assert result.figures["deferred_but_imported"] == "none"
    assert result.figures["function_app_median_s"] > 0 and result.figures["azure_ai_ml_median_s"] > 0


def test_retention_runs_two_tiny_sizes_and_applies_under_429s_with_nothing_twice() -> None:
    dry, applied = bench_retention_stack.run(True, scales=(0.1, 0.12), apply=True)
    _shaped(dry)
    _shaped(applied)
    assert dry.figures["0.1x_data_versions"] == 1000 and dry.figures["0.12x_data_versions"] == 1200
    assert dry.figures["0.1x_blobs"] == 2000 and dry.figures["0.12x_blobs"] == 2400  # Azurite read its seeded store
    fig = applied.figures
    assert fig["0.12x_deletes_planned"] > 0  # the apply rules delete the oldest data versions at this size
    assert fig["0.12x_deletes_processed"] == fig["0.12x_deletes_planned"]
    assert fig["0.12x_failed"] == 0 and applied.met is True


def test_union_counts_overlapping_time_once_and_clips_to_the_window() -> None:
    assert union_within([(0, 4), (2, 6), (8, 9)], 1, 10) == pytest.approx(6.0)
    assert union_within([(-5, -1), (11, 12)], 0, 10) == 0.0


def test_the_rollout_row_judges_the_worst_rollout() -> None:
    fast = Rollout(total_s=20, aml_s=15, waits_s=4, covered_s=19.5, steps=10, handler_s=0.2,
                   before=(75, 0, 30.0), during=(500, 0, 40.0), after=(75, 0, 31.0))
    slow = Rollout(total_s=20, aml_s=10, waits_s=4, covered_s=14, steps=10, handler_s=0.3,
                   before=(75, 0, 30.0), during=(500, 1, 90.0), after=(75, 0, 31.0))
    good, bad = summarize([fast]), summarize([fast, slow])
    _shaped(good)
    _shaped(bad)
    assert good.ratio == pytest.approx(0.025) and good.met is True
    assert bad.ratio == pytest.approx(0.3) and bad.met is False
    assert bad.figures["requests_failed"] == 1 and bad.figures["p99_ms_during"] == 90.0
