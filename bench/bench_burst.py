"""The burst: one drop folder of N files (2,000; quick 60) and its marker, delivered under pressure.

Evergreen against the naive per-blob recipe, side by side on one local stack (`bench/stackbench.py`):
the files are uploaded once, then the same deliveries (20 % duplicate deliveries, shuffled, 8
concurrent senders; the marker's event once the files' deliveries are handled) are posted to
Evergreen's blob trigger and then to the naive recipe's (`bench/naive_app`), each on the same local
Functions host code.

Evergreen should make exactly one data version (holding every file) and one retraining job, with no
failed execution. The naive recipe makes one version and one job per delivery; it gets a time budget
(quick 10 s, full 90 s) and, when it has not handled every delivery by then, its counts are scaled to
all deliveries (said in its figures: `naive_handled`, `*_projected`).

    python -m bench.bench_burst [--quick] [--files N]
"""

from __future__ import annotations

import argparse
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

from bench.report import BenchResult, details, table
from bench.stackbench import (
    CONTAINER,
    DATASET,
    PREFIX,
    SENDERS,
    BenchStack,
    bench_stack,
    blob_created,
    deliver,
    percentile,
    under_pressure,
    upload,
    wait_until,
)

log = logging.getLogger(__name__)

DUPLICATES = 0.2
MARKER = "_SUCCESS"
SNAPSHOTS = "_evergreen/snapshots/"


@dataclass(frozen=True)
class Side:
    """What one side (Evergreen or the naive recipe) did with the deliveries."""

    handled: int
    failed: int
    versions: int
    jobs: int
    aml_calls: int
    seconds_to_job: float | None
    seconds: float
    latencies: list[float]


def run(quick: bool, files: int | None = None, naive_budget: float | None = None) -> list[BenchResult]:
    """The burst on a fresh local stack; `files`/`naive_budget` override the sizes (the smoke test uses tiny ones)."""
    count = files or (60 if quick else 2000)
    budget = naive_budget or (10.0 if quick else 90.0)
    with bench_stack() as bench:
        return burst(bench, count, budget)


def burst(bench: BenchStack, count: int, budget: float) -> list[BenchResult]:
    folder = f"{PREFIX}drop-{count}/"
    names = [f"{folder}part-{i:05d}.csv" for i in range(count)]
    etags = upload(bench.env, names)
    marker = upload(bench.env, [f"{folder}{MARKER}"], size=0)
    events = [blob_created(bench.env, name, etag) for name, etag in etags.items()]
    deliveries = [*under_pressure(events, DUPLICATES, seed=count),
                  *(blob_created(bench.env, n, e) for n, e in marker.items())]
    evergreen, marker_to_job, manifest = _evergreen(bench, deliveries, folder, count)
    naive = _naive(bench, deliveries, budget)
    return _results(count, len(deliveries), evergreen, naive, marker_to_job, manifest)


def _jobs_of(bench: BenchStack, experiment: str) -> int:
    return sum(1 for j in bench.jobs() if (j.get("properties") or {}).get("experimentName") == experiment)


def _evergreen(bench: BenchStack, deliveries: list[dict[str, Any]], folder: str,
               count: int) -> tuple[Side, float | None, int]:
    bench.reset_aml_calls()
    before = bench.executions("evergreen")
    started = time.monotonic()
    deliver(bench.evergreen_url, "on_blob_created", deliveries[:-1])
    job_at: list[float] = []

    def job_submitted() -> bool:
        if not job_at and _jobs_of(bench, "bench-burst"):
            job_at.append(time.monotonic())
        return bool(job_at)

    def handled(n: int) -> bool:
        return sum(1 for e in bench.executions("evergreen")[len(before):] if e.function == "on_blob_created") >= n

    wait_until(lambda: handled(len(deliveries) - 1), timeout=120 + count * 0.2)
    marker_at = time.monotonic()  # the files are in: now the marker (the "within 10 s of the marker")
    deliver(bench.evergreen_url, "on_blob_created", deliveries[-1:])
    wait_until(lambda: handled(len(deliveries)), timeout=60)
    handled_at = time.monotonic()
    wait_until(job_submitted, timeout=120, interval=0.5)
    time.sleep(2)  # let anything still in flight (a follow-up seal check) finish before counting
    calls = bench.aml_calls()["total"]
    runs = bench.executions("evergreen")[len(before):]
    versions = bench.data_versions(DATASET)
    manifest = _snapshot_files(bench, versions)
    side = Side(
        handled=sum(1 for e in runs if e.function == "on_blob_created"),
        failed=sum(1 for e in runs if not e.succeeded),
        versions=len(versions), jobs=_jobs_of(bench, "bench-burst"), aml_calls=calls,
        seconds_to_job=(job_at[0] - started) if job_at else None, seconds=handled_at - started,
        latencies=[e.duration_ms for e in runs if e.function == "on_blob_created"],
    )
    return side, (job_at[0] - marker_at) if job_at else None, manifest


def _snapshot_files(bench: BenchStack, versions: list[dict[str, Any]]) -> int:
    """Files in the (single) version's snapshot folder: what the version really holds."""
    from azure.storage.blob import BlobServiceClient

    if len(versions) != 1:
        return 0
    sha = ((versions[0].get("properties") or {}).get("tags") or {}).get("evergreen.sha256", "")
    container = BlobServiceClient.from_connection_string(bench.env["DATA_STORAGE"]).get_container_client(CONTAINER)
    return sum(1 for _ in container.list_blobs(name_starts_with=f"{SNAPSHOTS}{DATASET}/{sha}/"))


def _naive(bench: BenchStack, deliveries: list[dict[str, Any]], budget: float) -> Side:
    bench.start_naive()
    bench.reset_aml_calls()
    started = time.monotonic()
    deadline = started + budget
    sender = threading.Thread(target=deliver, args=(bench.naive_url, "naive_on_blob", deliveries),
                              kwargs={"stop_at": deadline}, daemon=True)
    sender.start()
    first_job: list[float] = []
    while time.monotonic() < deadline and not first_job:
        if _jobs_of(bench, "naive-burst"):
            first_job.append(time.monotonic())
        else:
            time.sleep(0.5)

    def all_handled() -> bool:
        return sum(1 for e in bench.executions("naive") if e.function == "naive_on_blob") >= len(deliveries)

    wait_until(all_handled, timeout=max(0.0, deadline - time.monotonic()), interval=0.5)
    ended = time.monotonic()
    calls = bench.aml_calls()["total"]  # read before the host stops: what it did inside the budget
    runs = [e for e in bench.executions("naive") if e.function == "naive_on_blob"]
    bench.stop_naive()
    sender.join(timeout=5)
    return Side(
        handled=sum(1 for e in runs if e.succeeded), failed=sum(1 for e in runs if not e.succeeded),
        versions=len(bench.data_versions("naive-burst")), jobs=_jobs_of(bench, "naive-burst"), aml_calls=calls,
        seconds_to_job=(first_job[0] - started) if first_job else None, seconds=ended - started,
        latencies=[e.duration_ms for e in runs],
    )


def _results(count: int, delivered: int, ever: Side, naive: Side, marker_to_job: float | None,
             manifest: int) -> list[BenchResult]:
    # Deliveries the naive recipe got through in its budget: those it finished, or at least submitted a job for
    # (a job is its handler's last call, so a submitted job is a delivery whose Azure ML work is done).
    reached = max(naive.handled, naive.jobs)
    scale = delivered / reached if reached else 0.0
    naive_jobs = naive.jobs * scale if reached < delivered else float(naive.jobs)
    naive_calls = naive.aml_calls * scale if reached < delivered else float(naive.aml_calls)
    scaled = "" if reached >= delivered else (
        f"; the naive recipe got through {reached} of {delivered} deliveries in its budget ({naive.handled} "
        f"finished), its jobs and calls are scaled by {scale:.1f}")
    one_each = ever.versions == 1 and ever.jobs == 1 and manifest == count
    jobs_ratio = naive_jobs / ever.jobs if ever.jobs else None
    figures: dict[str, float | int | str] = {
        "files": count, "deliveries": delivered, "senders": SENDERS, "duplicate_share": DUPLICATES,
        "evergreen_data_versions": ever.versions, "evergreen_jobs": ever.jobs, "evergreen_files_in_version": manifest,
        "evergreen_failed_executions": ever.failed, "evergreen_aml_calls": ever.aml_calls,
        "evergreen_events_per_s": round(ever.handled / ever.seconds, 1) if ever.seconds else 0,
        "evergreen_p50_ms": round(percentile(ever.latencies, 50), 1),
        "evergreen_p99_ms": round(percentile(ever.latencies, 99), 1),
        "evergreen_s_to_job": _figure(ever.seconds_to_job), "evergreen_marker_to_job_s": _figure(marker_to_job),
        "naive_handled": naive.handled, "naive_failed_executions": naive.failed, "naive_jobs": naive.jobs,
        "naive_data_versions": naive.versions, "naive_aml_calls": naive.aml_calls,
        "naive_jobs_projected": round(naive_jobs), "naive_aml_calls_projected": round(naive_calls),
        "naive_s": round(naive.seconds, 1), "naive_s_to_job": _figure(naive.seconds_to_job),
        "naive_events_per_s": round(naive.handled / naive.seconds, 1) if naive.seconds else 0,
        "naive_p50_ms": round(percentile(naive.latencies, 50), 1),
        "naive_p99_ms": round(percentile(naive.latencies, 99), 1),
    }
    time_ratio = (ever.seconds_to_job / naive.seconds_to_job
                  if ever.seconds_to_job and naive.seconds_to_job else None)
    return [
        BenchResult("burst", f"burst of {count} files: jobs, naive recipe : Evergreen", figures,
                    "naive jobs : Evergreen jobs", _round(jobs_ratio), f">= {count}",
                    bool(jobs_ratio and jobs_ratio >= count and one_each),
                    f"Evergreen: {ever.versions} version(s), {ever.jobs} job(s), {manifest}/{count} files in the "
                    f"version{scaled}"),
        BenchResult("burst_failed_executions", "burst: failed executions on Evergreen's host", {},
                    "failed executions (count)", float(ever.failed), "== 0", ever.failed == 0,
                    "every Failed execution in the host's log, any function"),
        BenchResult("burst_aml_calls", "burst: Azure ML calls, naive recipe : Evergreen", {},
                    "naive calls : Evergreen calls", _round(naive_calls / ever.aml_calls if ever.aml_calls else None),
                    "", None, f"counted at the emulator (/_emulator/stats){scaled}"),
        BenchResult("burst_time_to_job", "burst: wall time to one job, Evergreen / naive", {},
                    "Evergreen s / naive s to the first job", _round(time_ratio), "", None,
                    "the naive recipe submits a job on its first event; Evergreen waits for the marker"),
        BenchResult("burst_marker_to_job", "burst: marker delivered -> job submitted (s)", {},
                    "seconds", _round(marker_to_job), "<= 10", marker_to_job is not None and marker_to_job <= 10,
                    "the marker's event is posted once every file delivery was handled"),
    ]


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


def _figure(value: float | None) -> float | str:
    """A figure that may be missing (no job within the wait): "none" then, never a made-up number."""
    return "none" if value is None else round(value, 2)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--files", type=int)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    results = run(args.quick, files=args.files)
    print(table(results))
    print(details(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
