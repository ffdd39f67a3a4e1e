"""How the pure planners' cost grows: retention planning at 1× and 10× the issue's sizes, and the
upload planner's throughput. Prints numbers and ratios measured in one run.

This measures planning only (in memory); listing and applying against the local stack are not
benchmarked yet.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

from bench.report import BenchResult
from shared.config.policy import parse_policy
from shared.config.retention import RetentionRule
from shared.domain.events import BlobCreated
from shared.domain.ingest import plan_blob
from shared.domain.retention.inventory import Blob, BlobPath, DataVersion, Deployment, Inventory, ModelVersion
from shared.domain.retention.planner import plan_retention

NOW = datetime(2026, 11, 27, tzinfo=UTC)
RULES = [
    RetentionRule.model_validate({"name": "data", "type": "data_versions", "actions": {
        "keep_latest": 10, "archive": {"days_after_creation_greater_than": 30}}}),
    RetentionRule.model_validate({"name": "models", "type": "model_versions", "actions": {
        "keep_latest": 5, "keep_top_k": {"k": 3, "metric": "auc"},
        "archive": {"days_after_creation_greater_than": 0}}}),
    RetentionRule.model_validate({"name": "blobs", "type": "blobs", "filters": {"prefixes": ["landing/"]},
                                  "actions": {"delete": {"days_after_modification_greater_than": 30}}}),
]


def inventory(scale: float) -> Inventory:
    """10,000·scale data versions, 2,000·scale models, 20,000·scale blobs."""
    data, blobs = [], []
    for n in range(max(1, int(100 * scale))):
        for v in range(1, 101):
            created = NOW - timedelta(days=200 - v)
            data.append(DataVersion(f"ds{n}", str(v), created, archived=v <= 50,
                                    blob_paths=(BlobPath("landing", f"ds{n}/{v}/"),)))
            blobs += [Blob("landing", f"ds{n}/{v}/part-{i}.parquet", created) for i in range(2)]
    models = [ModelVersion(f"m{n}", str(v), NOW - timedelta(days=100 - v), metrics={"auc": (v * 37 % 100) / 100},
                           data_asset=f"ds{n}", data_version=str(v))
              for n in range(max(1, int(20 * scale))) for v in range(1, 101)]
    deployments = [Deployment(f"e{n}", "blue", 100, None, f"m{n}", "1") for n in range(max(1, int(20 * scale)))]
    return Inventory(NOW, tuple(data), tuple(models), tuple(blobs), tuple(deployments))


def timed(fn: object, *args: object) -> tuple[float, object]:
    start = time.perf_counter()
    result = fn(*args)  # type: ignore[operator]
    return time.perf_counter() - start, result


def run(quick: bool, scales: tuple[float, float] | None = None, events: int | None = None) -> list[BenchResult]:
    """The `make bench` entry: planning growth (1× → 10×; quick 0.1× → 1×) and upload-planner throughput.

    `scales` and `events` override the sizes (the smoke test uses tiny ones).
    """
    small, large = scales or ((0.1, 1.0) if quick else (1.0, 10.0))
    seconds = {scale: timed(plan_retention, inventory(scale), RULES)[0] for scale in (small, large)}
    growth = seconds[large] / seconds[small] if seconds[small] else None
    factor = large / small
    policy = parse_policy({"datasets": [
        {"name": "churn", "container": "landing", "prefix": "churn/", "type": "uri_folder", "datastore": "landing",
         "batch": {"marker": "_SUCCESS"}}]})
    blobs = [BlobCreated("landing", f"churn/drop{i // 500}/part {i:05d}.csv", f"http://x/{i}")
             for i in range(events or (20_000 if quick else 100_000))]
    planning, _ = timed(lambda: [plan_blob(e, policy) for e in blobs])
    figures: dict[str, float | int | str] = {
        f"plan_{small:g}x_s": round(seconds[small], 3), f"plan_{large:g}x_s": round(seconds[large], 3),
        "upload_plans_per_s": round(len(blobs) / planning) if planning else 0,
    }
    return [BenchResult("retention_planning", f"retention planning (pure), {large:g}x / {small:g}x the assets", figures,
                        f"time at {large:g}x / time at {small:g}x", None if growth is None else round(growth, 2),
                        f"<= {factor * 1.05:g}", growth is not None and growth <= factor * 1.05,
                        "in memory, no I/O; linear growth would equal the size factor")]


def main() -> None:
    print("retention planning (pure, in memory)")
    results = {}
    for scale in (1, 10):
        inv = inventory(scale)
        seconds, plan = timed(plan_retention, inv, RULES)
        results[scale] = seconds
        print(f"  {len(inv.data_versions):>7} data versions, {len(inv.model_versions):>6} models, "
              f"{len(inv.blobs):>7} blobs: {seconds:7.2f} s, {len(plan.actions)} actions")  # type: ignore[attr-defined]
    print(f"  10× the assets cost {results[10] / results[1]:.1f}× the time (linear would be 10×)")

    policy = parse_policy({"datasets": [
        {"name": "churn", "container": "landing", "prefix": "churn/", "type": "uri_folder", "datastore": "landing",
         "batch": {"marker": "_SUCCESS"}},
        {"name": "ref", "container": "landing", "prefix": "reference/", "type": "uri_file", "datastore": "landing"},
    ]})
    events = [BlobCreated("landing", f"churn/drop{i // 500}/part {i:05d} é.csv", f"http://x/{i}")
              for i in range(100_000)]
    seconds, _ = timed(lambda: [plan_blob(e, policy) for e in events])
    print(f"upload planning: {len(events) / seconds:,.0f} blob events/s ({seconds * 1e6 / len(events):.1f} µs each)")


if __name__ == "__main__":
    main()
