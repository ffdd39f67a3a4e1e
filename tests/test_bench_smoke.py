"""A smoke test of the benchmark code (not a timed test): each benchmark runs at a tiny size, its results
have the shared shape, and `latest.json` is written where it is told.

The stack benchmarks share one local stack (free ports), so the whole test stays near a minute.
What is asserted of Evergreen is behaviour, not speed: the burst makes one version holding every file
and one job, with no failed execution.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import pytest

from bench import bench_burst, bench_overhead, bench_planning
from bench.readme_table import render
from bench.report import BENCHMARKS, BenchResult, write_latest
from bench.stackbench import bench_stack, shared_stacks

pytestmark = pytest.mark.e2e


def _shaped(result: BenchResult) -> None:
    assert result.name and result.title and result.ratio_name
    assert result.ratio is None or isinstance(result.ratio, float)
    assert result.met in (None, True, False)
    assert all(isinstance(v, int | float | str) for v in result.figures.values())


def test_every_listed_benchmark_has_a_run_entry() -> None:
    for name in BENCHMARKS:
        assert callable(importlib.import_module(f"bench.{name}").run), name
    assert {"bench_burst", "bench_overhead"} <= set(BENCHMARKS)


def test_benchmarks_run_at_a_tiny_size_and_write_latest(tmp_path: Path) -> None:
    with shared_stacks():  # as `make bench QUICK=1` runs them: one stack, not stopped between benchmarks
        with bench_stack() as bench:
            burst = bench_burst.burst(bench, 12, budget=6.0)
        with bench_stack() as again:
            assert again is bench and bench.stack.services[-1].process.poll() is None
            overhead = bench_overhead.overhead(again, 3)
    assert bench.stack.services[-1].process.poll() is not None  # stopped at the end of the block
    planning = bench_planning.run(True, scales=(0.01, 0.02), events=200)
    results = [*burst, *overhead, *planning]
    for result in results:
        _shaped(result)
    assert [r.name for r in burst] == ["burst", "burst_failed_executions", "burst_aml_calls", "burst_time_to_job",
                                       "burst_marker_to_job"]
    figures = burst[0].figures
    assert (figures["evergreen_data_versions"], figures["evergreen_jobs"], figures["evergreen_files_in_version"]) \
        == (1, 1, 12)
    assert figures["evergreen_failed_executions"] == 0
    assert figures["deliveries"] == 12 + round(12 * bench_burst.DUPLICATES) + 1  # files, duplicates, the marker
    assert isinstance(figures["naive_aml_calls"], int) and figures["naive_s"] > 0  # the naive side ran (its budget)
    assert [r.name for r in overhead] == ["overhead_known", "overhead_new"]
    assert all(r.figures["events"] == 3 and r.figures["noop_median_ms"] > 0 for r in overhead)

    path = write_latest(results, quick=True, path=tmp_path / "results" / "latest.json")
    doc = json.loads(path.read_text())
    assert doc["quick"] is True and doc["machine"]["cpus"] >= 1
    assert [b["name"] for b in doc["benchmarks"]] == [r.name for r in results]
    table = render(doc)
    assert "| burst |" in table and "overhead_new" in table


def test_the_bench_command_refuses_an_unknown_benchmark(capsys: pytest.CaptureFixture[str]) -> None:
    from devstack.cli import bench

    assert bench(quick=True, only="bench_burst,no_such_bench") == 2
    assert "no_such_bench" in capsys.readouterr().err


def test_the_readme_table_shows_every_benchmark_and_its_figures() -> None:
    doc = {"commit": "abc", "at": "now", "quick": False, "machine": {"cpus": 2},
           "benchmarks": [{"name": "burst", "ratio": 2401.0, "ratio_name": "jobs", "goal": ">= 2000", "met": True,
                           "notes": "a|b", "figures": {"files": 2000}},
                          {"name": "cold", "ratio": None, "ratio_name": "x", "goal": "", "met": None, "notes": "",
                           "figures": {}}]}
    text = render(doc)
    assert "| burst | 2.4e+03 | jobs | >= 2000 | yes | a\\|b |" in text and "| cold | - |" in text
    assert "- **burst**: files 2000" in text and "on 2 CPU(s)" in text
