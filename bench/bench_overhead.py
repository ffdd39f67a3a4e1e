"""Per-event overhead: Evergreen's blob trigger against a no-op blob trigger, same host, same deliveries.

On one local stack (`bench/stackbench.py`), N files (quick 8, full 150) are delivered to Evergreen's
`on_blob_created` twice (the second time each is already known: deduplicated by URL + eTag), N other
files once (each a new file of a folder batch; the batch does not seal during the run), and the same
deliveries to the no-op trigger of `bench/naive_app`. One event at a time (the next is posted once the
previous one ran), so a duration is one event's cost and not a wait for a busy worker. Handler times
are the host's own `Duration` of each execution.

Where Evergreen's time goes is measured in this process on the same stack: the Ingestor built as the
Function App builds it (the Azure adapters), its ports wrapped with timers (blob reads and properties,
hashing, ledger, queues, audit), each event handled once; the remainder is the domain's own work.

    python -m bench.bench_overhead [--quick] [--files N]
"""

from __future__ import annotations

import argparse
import logging
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from typing import Any

from bench.report import BenchResult, details, table
from bench.stackbench import (
    CONTAINER,
    PREFIX,
    BenchStack,
    Execution,
    bench_stack,
    blob_created,
    deliver,
    median,
    upload,
    wait_until,
)

log = logging.getLogger(__name__)
GOAL = 3.0


class Timed:
    """A proxy that adds the time of every method call of `target` to `sink[bucket]`."""

    def __init__(self, target: Any, bucket: str, sink: dict[str, float]) -> None:
        self._target, self._bucket, self._sink = target, bucket, sink

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._target, name)
        if not callable(attr):
            return attr
        return _timed(attr, self._bucket, self._sink)


def _timed(call: Callable[..., Any], bucket: str, sink: dict[str, float]) -> Callable[..., Any]:
    def timed(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return call(*args, **kwargs)
        finally:
            sink[bucket] += time.perf_counter() - started
    return timed


def run(quick: bool, files: int | None = None) -> list[BenchResult]:
    """Overhead on a fresh local stack; `files` overrides the size (the smoke test uses a tiny one)."""
    count = files or (8 if quick else 150)
    with bench_stack() as bench:
        return overhead(bench, count)


def _phase(bench: BenchStack, which: str, function: str, events: list[dict[str, Any]]) -> list[Execution]:
    """Deliver `events` one at a time, each once the previous one ran; the executions of `function` they caused.

    (The webhook answers once the event is queued, so posting alone would run many at once and time
    their wait for a worker thread, not their cost.)
    """
    base = bench.naive_url if which == "naive" else bench.evergreen_url

    def ran() -> int:
        return sum(1 for e in bench.executions(which) if e.function == function)

    before = ran()
    for done, event in enumerate(events, start=1):
        deliver(base, function, [event], senders=1)
        wait_until(lambda done=done: ran() >= before + done, timeout=30, interval=0.02)
    return [e for e in bench.executions(which) if e.function == function][before:]


def overhead(bench: BenchStack, count: int) -> list[BenchResult]:
    known = upload(bench.env, [f"{PREFIX}overhead-known/f-{i:04d}.csv" for i in range(count)])
    new = upload(bench.env, [f"{PREFIX}overhead-new/f-{i:04d}.csv" for i in range(count)])
    known_events = [blob_created(bench.env, n, e) for n, e in known.items()]
    new_events = [blob_created(bench.env, n, e) for n, e in new.items()]
    _phase(bench, "evergreen", "on_blob_created", known_events)  # first sight: these become known
    ever_known = _phase(bench, "evergreen", "on_blob_created", known_events)
    ever_new = _phase(bench, "evergreen", "on_blob_created", new_events)
    bench.start_naive()
    _phase(bench, "naive", "noop_on_blob", known_events[:5])  # warm the no-op's host like Evergreen's
    noop = _phase(bench, "naive", "noop_on_blob", known_events + new_events)
    breakdown_new, breakdown_known = _breakdown(bench, count)
    floor = median([e.duration_ms for e in noop])
    results = []
    for name, runs, split in (("known", ever_known, breakdown_known), ("new", ever_new, breakdown_new)):
        ms = median([e.duration_ms for e in runs])
        ratio = ms / floor if floor else None
        figures: dict[str, float | int | str] = {
            "events": len(runs), "evergreen_median_ms": round(ms, 1), "noop_median_ms": round(floor, 1),
            "failed": sum(1 for e in runs if not e.succeeded),
            **{f"inproc_{k}_ms": round(v, 2) for k, v in split.items()},
        }
        where = ", ".join(f"{k} {v:.1f} ms" for k, v in sorted(split.items(), key=lambda kv: -kv[1]))
        title = ("per-event overhead, file already known (dedup)" if name == "known"
                 else "per-event overhead, new file in a batch")
        results.append(BenchResult(f"overhead_{name}", title, figures, "Evergreen / no-op handler time (median)",
                                   None if ratio is None else round(ratio, 2), f"<= {GOAL:g}",
                                   ratio is not None and ratio <= GOAL, f"in-process per event: {where}"))
    return results


def _breakdown(bench: BenchStack, count: int) -> tuple[dict[str, float], dict[str, float]]:
    """Mean ms per event by where it went, for new files and then for the same files again (known)."""
    from devstack.stack import applied_env
    from shared.composition import build_services
    from shared.config.policy import load_policy
    from shared.config.settings import load_settings
    from shared.domain.events import BlobCreated

    sample = max(5, min(count, 50))
    names = [f"{PREFIX}overhead-inproc/f-{i:04d}.csv" for i in range(sample)]
    upload(bench.env, names)
    with applied_env(bench.host_env):
        settings = load_settings()
        services = build_services(settings, load_policy(settings.policy_path,
                                                        landing_container=settings.landing_container))
    ingestor: Any = services.ingestor
    sink: dict[str, float] = defaultdict(float)
    ingestor._blobs = Timed(ingestor._blobs, "blob storage", sink)
    ingestor._ledger = Timed(ingestor._ledger, "ledger", sink)
    ingestor._audit = Timed(ingestor._audit, "audit", sink)
    ingestor._seal_queue = Timed(ingestor._seal_queue, "queue", sink)
    ingestor._blob_retry = Timed(ingestor._blob_retry, "queue", sink)
    hash_file = ingestor._hash

    def hashing(props: Any) -> Any:  # the read is streamed inside: count it as hashing, not as storage
        started = time.perf_counter()
        before = sink["blob storage"]
        try:
            return hash_file(props)
        finally:
            sink["hashing (read + sha256)"] += time.perf_counter() - started - (sink["blob storage"] - before)
    ingestor._hash = hashing
    account = bench.env["DATA_STORAGE"].split("BlobEndpoint=", 1)[1].split(";", 1)[0].rstrip("/")
    blobs = [BlobCreated(CONTAINER, n, f"{account}/{CONTAINER}/{n}") for n in names]
    return _timed_events(ingestor, blobs, sink), _timed_events(ingestor, blobs, sink)


def _timed_events(ingestor: Any, blobs: Iterable[Any], sink: dict[str, float]) -> dict[str, float]:
    sink.clear()
    total = 0.0
    handled = 0
    for blob in blobs:
        started = time.perf_counter()
        ingestor.on_blob_created(blob)
        total += time.perf_counter() - started
        handled += 1
    split = {k: v * 1000 / handled for k, v in sink.items()}
    split["domain and the rest"] = total * 1000 / handled - sum(split.values())
    split["total"] = total * 1000 / handled
    return split


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
