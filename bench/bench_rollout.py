"""Rollout overhead: from ModelRegistered to 100 % traffic, what Evergreen adds to Azure ML's own work.

On a local stack (free ports; the repo's `evergreen.yaml` without the fair gate's evaluation block:
churn-model onto churn-endpoint, canary steps 25 → 100 %, canary interval 2 s, poll interval 2 s),
a champion is registered and rolled out first (that rollout creates the endpoint; it is not measured).
Then each measured candidate is registered with the SDK, which emits ModelRegistered through the local
Event Grid to the host, and
the rollout runs as in Azure: `on_model_registered`, then `advance_rollout` steps on the queue.

- **total**: from just before the registration call to the end of the endpoint update that put
  100 % of traffic on the candidate (the emulator's operation record).
- **Azure ML's own work**: the union of the emulator's long-running operations in that window
  (deployment provisioning as the emulator simulates it, traffic updates), from `GET /_emulator/operations`.
- **configured waits**: the delays the rollout scheduled per the policy (canary interval, poll
  interval), read from the rollout row's `due_at` each time its step (`seq`) changes.
- **overhead** = total − |Azure ML ∪ waits| (a wait that overlaps provisioning is counted once).
  Of it, Evergreen's handlers' own time (the host's `ms=` per execution) is reported; the rest is
  delivery: Event Grid to the host, and the host's queue polling (`maxPollingInterval`, host.json).

A steady scoring load (25 req/s, 4 threads) runs against the endpoint's scoring URI throughout: served,
failed, and p99 latency before (3 s), during and after (3 s) each rollout.

    python -m bench.bench_rollout [--quick] [--rollouts N]
"""

from __future__ import annotations

import argparse
import logging
import re
import shutil
import statistics
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import yaml

from bench.report import REPO_ROOT, BenchResult

log = logging.getLogger(__name__)

MODEL, ENDPOINT = "churn-model", "churn-endpoint"
RATE = 25.0  # scoring requests per second
THREADS = 4
WINDOW_S = 3.0  # the "before" and "after" windows
REQUEST = {"input_data": [{"tenure_months": 3, "monthly_charges": 99.5, "support_calls": 7,
                           "contract": "month-to-month"}]}
OVERHEAD_SHARE_GOAL = 0.10
PER_STEP_GOAL_S = 1.0
_LINE = re.compile(r"function=(?P<fn>\w+) event=\S+ subject=(?P<subject>\S+) outcome=\S+ .* ms=(?P<ms>\d+)")


@dataclass
class Load:
    """Scoring requests: (sent at, seconds, ok) per request, from THREADS paced threads."""

    uri: str
    key: str
    verify: Any
    samples: list[tuple[float, float, bool]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def _loop(self, offset: float) -> None:
        period = THREADS / RATE
        next_at = time.monotonic() + offset
        with httpx.Client(verify=self.verify, timeout=10) as http:
            while not self.stop.is_set():
                time.sleep(max(0.0, next_at - time.monotonic()))
                next_at += period
                sent = time.time()
                started = time.perf_counter()
                try:
                    reply = http.post(self.uri, json=REQUEST, headers={"Authorization": f"Bearer {self.key}"})
                    ok = reply.status_code == 200 and "predictions" in reply.json()
                    problem = "" if ok else f"{reply.status_code} {reply.text[:120]}"
                except (httpx.HTTPError, ValueError) as exc:
                    ok, problem = False, repr(exc)
                with self.lock:
                    self.samples.append((sent, time.perf_counter() - started, ok))
                    if problem:
                        self.errors.append(problem)

    @contextmanager
    def running(self) -> Iterator[Load]:
        threads = [threading.Thread(target=self._loop, args=(i / RATE,), daemon=True) for i in range(THREADS)]
        for t in threads:
            t.start()
        try:
            yield self
        finally:
            self.stop.set()
            for t in threads:
                t.join(timeout=15)

    def window(self, start: float, end: float) -> tuple[int, int, float]:
        """Requests sent in [start, end): served, failed, p99 latency (ms)."""
        with self.lock:
            inside = [(s, ok) for at, s, ok in self.samples if start <= at < end]
        served = sum(1 for _, ok in inside if ok)
        latencies = sorted(s for s, _ in inside)
        p99 = latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))] * 1000 if latencies else 0.0
        return served, len(inside) - served, round(p99, 1)


def _ts(value: str) -> float:
    return datetime.fromisoformat(value).timestamp()


def union_within(intervals: list[tuple[float, float]], start: float, end: float) -> float:
    """Seconds of [start, end] covered by at least one interval."""
    clipped = sorted((max(a, start), min(b, end)) for a, b in intervals if b > start and a < end)
    covered, reach = 0.0, start
    for a, b in clipped:
        if b > reach:
            covered += b - max(a, reach)
            reach = b
    return covered


@dataclass
class Rollout:
    """One measured rollout's figures."""

    total_s: float
    aml_s: float
    waits_s: float
    covered_s: float
    steps: int
    handler_s: float
    before: tuple[int, int, float]
    during: tuple[int, int, float]
    after: tuple[int, int, float]

    @property
    def overhead_s(self) -> float:
        return max(0.0, self.total_s - self.covered_s)


class Bench:
    """The stack, the SDK client, the ledger and the host log of one benchmark run."""

    def __init__(self, stack: Any) -> None:
        from azure.ai.ml import MLClient
        from azure.data.tables import TableServiceClient
        from azure.identity import DefaultAzureCredential

        from shared.adapters.azure.tables import AzureTable
        from shared.services.ledger import LEDGER_TABLE, Ledger

        self.stack = stack
        env = stack.env
        self.ml = MLClient(DefaultAzureCredential(), env["AZURE_SUBSCRIPTION_ID"], env["AZURE_RESOURCE_GROUP"],
                           env["AZUREML_WORKSPACE_NAME"])
        tables = TableServiceClient.from_connection_string(env["AzureWebJobsStorage"])
        self.ledger = Ledger(AzureTable(tables.create_table_if_not_exists(LEDGER_TABLE)))
        self.aml_url = f"https://127.0.0.1:{stack.ports.aml}"
        self.verify: Any = env.get("REQUESTS_CA_BUNDLE") or True
        self.host_log = next(s for s in stack.services if s.name == "functions-host").log_path

    def operations(self) -> list[tuple[float, float]]:
        """Every emulator operation that has ended: (start, end) epoch seconds."""
        reply = httpx.get(f"{self.aml_url}/_emulator/operations", verify=self.verify, timeout=30,
                          headers={"Authorization": "Bearer bench"})  # any token: emulator routes need one
        reply.raise_for_status()
        return [(_ts(op["startTime"]), _ts(op["endTime"])) for op in reply.json()["value"]
                if op["status"] in ("Succeeded", "Failed", "Canceled")]

    def register(self, uri: str, metric: str) -> Any:
        from tests.fixtures.models import register

        return register(self.ml, MODEL, uri, metric)

    def follow(self, wanted: str, timeout: float) -> tuple[dict[int, tuple[float, float]], Any]:
        """Poll the rollout row until 100 % traffic (grace or later); each seq's (seen at, due at) and the row."""
        from shared.domain.vocabulary import Phase

        seen: dict[int, tuple[float, float]] = {}
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            record = self.ledger.get_rollout(ENDPOINT)
            if record is not None and record.candidate == wanted:
                if record.seq not in seen:
                    now = time.time()
                    due = record.due_at.timestamp() if record.due_at else now
                    seen[record.seq] = (now, max(now, due))
                if record.phase in (Phase.GRACE, Phase.SUCCEEDED):
                    return seen, record
                if record.phase in (Phase.ROLLBACK, Phase.CLEANUP, Phase.ROLLED_BACK):
                    raise RuntimeError(f"the rollout of {wanted} failed: {record.failure}")
            time.sleep(0.05)
        lines = [line for line in self.host_log.read_text(errors="replace").splitlines()
                 if "on_model_registered" in line or "advance_rollout" in line or "Error" in line]
        raise TimeoutError(f"the rollout of {wanted} did not reach 100 % in {timeout:.0f} s; the host's last "
                           "lines:\n" + "\n".join(lines[-25:]))

    def handler_seconds(self, offset: int, rollout_id: str, last_seq: int, wanted: str) -> float:
        """Evergreen's own handler time for this rollout up to 100 %: the host's `ms=` per execution."""
        with self.host_log.open("rb") as f:
            f.seek(offset)
            text = f.read().decode(errors="replace")
        total_ms = 0
        for m in _LINE.finditer(text):
            fn, subject = m["fn"], m["subject"]
            tick = re.fullmatch(rf"{re.escape(rollout_id)}#(\d+)", subject)
            if (fn == "on_model_registered" and subject == wanted) or (
                    fn == "advance_rollout" and tick and int(tick[1]) <= last_seq):
                total_ms += int(m["ms"])
        return total_ms / 1000

    def measure(self, uri: str, metric: str, load: Load) -> Rollout:
        """Register a better candidate and measure its rollout to 100 % under the scoring load."""
        time.sleep(WINDOW_S)
        offset = self.host_log.stat().st_size
        t0 = time.time()
        model = self.register(uri, metric)
        wanted = f"{MODEL}:{model.version}"
        seen, record = self.follow(wanted, timeout=240)
        done_seen = time.time()
        ops = self.operations()
        ended = [end for start, end in ops if t0 <= end <= done_seen]
        t100 = max(ended) if ended else done_seen  # the traffic update that reached 100 %
        waits = [(at, due) for at, due in seen.values()]
        total = t100 - t0
        time.sleep(WINDOW_S)
        return Rollout(
            total_s=total, aml_s=union_within(ops, t0, t100), waits_s=union_within(waits, t0, t100),
            covered_s=union_within([*ops, *waits], t0, t100), steps=len(seen),
            handler_s=self.handler_seconds(offset, record.rollout_id, record.seq, wanted),
            before=load.window(t0 - WINDOW_S, t0), during=load.window(t0, t100),
            after=load.window(t100, t100 + WINDOW_S),
        )


def bench_policy(root: Path) -> Path:
    """The repo's `evergreen.yaml` without `promotion.evaluation` (the gate compares the registered metric).

    The fair gate's comparison job is benchmarked on its own (`bench/bench_compare.py`); here the gate must
    not wait for evaluation data. Written beside a link to the repo's `ml/` (paths are relative to it).
    """
    policy = yaml.safe_load((REPO_ROOT / "evergreen.yaml").read_text())
    for model in policy.get("models") or []:
        (model.get("promotion") or {}).pop("evaluation", None)
    (root / "ml").symlink_to(REPO_ROOT / "ml", target_is_directory=True)
    path = root / "evergreen.yaml"
    path.write_text(yaml.safe_dump(policy, sort_keys=False))
    return path


def _start_stack() -> tuple[Any, Path]:
    """A stack on free ports whose host runs the benchmark policy; returns it and its directory."""
    from devstack.host import start_host
    from devstack.procs import free_port
    from devstack.stack import Ports, start_stack, stop_stack

    state = Path(tempfile.mkdtemp(prefix="evergreen-bench-rollout-"))
    ports = Ports(blob=free_port(), queue=free_port(), table=free_port(), aml=free_port(), eventgrid=free_port(),
                  host=free_port())
    stack = start_stack(state / "stack", ports, with_host=False)
    try:
        stack.env["EVERGREEN_POLICY_PATH"] = str(bench_policy(state))
        host = start_host(REPO_ROOT, ports.host, state_dir=state / "stack", env=stack.env)
        stack.services.append(host)
        host.wait_ready(timeout=90)
    except BaseException:
        stop_stack(stack)
        raise
    return stack, state


def measure_rollouts(rollouts: int) -> list[Rollout]:
    """Start a stack, roll out a champion, then `rollouts` better candidates under the scoring load."""
    from devstack.stack import applied_env, stop_stack
    from tests.fixtures.models import train_model_folder, upload_model_folder

    trained = Path(tempfile.mkdtemp(prefix="evergreen-bench-model-"))
    with ThreadPoolExecutor(1) as pool:  # train the model while the stack starts (that is mostly waiting)
        folder = pool.submit(train_model_folder, trained / "train")
        stack, state = _start_stack()
    try:
        with applied_env(stack.env):
            bench = Bench(stack)
            uri = upload_model_folder(stack.env["AzureWebJobsStorage"], folder.result())
            champion = bench.register(uri, "0.900")
            bench.follow(f"{MODEL}:{champion.version}", timeout=300)
            time.sleep(1)
            endpoint = bench.ml.online_endpoints.get(ENDPOINT)
            key = bench.ml.online_endpoints.get_keys(ENDPOINT).primary_key
            uri_scoring = str(endpoint.scoring_uri)
            load = Load(uri_scoring, key, bench.verify if uri_scoring.startswith("https") else True)
            with load.running():
                return [bench.measure(uri, f"{0.910 + 0.01 * i:.3f}", load) for i in range(rollouts)]
    finally:
        stop_stack(stack)
        shutil.rmtree(trained, ignore_errors=True)
        shutil.rmtree(state, ignore_errors=True)


def _median(values: list[float]) -> float:
    return round(statistics.median(values), 3)


def summarize(measured: list[Rollout]) -> BenchResult:
    """One row: median figures over the measured rollouts; goals on the worst of them."""
    share = [r.overhead_s / r.total_s for r in measured]
    per_step = [r.overhead_s / max(1, r.steps) for r in measured]
    failed = sum(r.before[1] + r.during[1] + r.after[1] for r in measured)
    served = sum(r.before[0] + r.during[0] + r.after[0] for r in measured)
    met = max(share) <= OVERHEAD_SHARE_GOAL and max(per_step) < PER_STEP_GOAL_S and failed == 0
    figures: dict[str, float | int | str] = {
        "rollouts": len(measured), "total_s": _median([r.total_s for r in measured]),
        "azureml_s": _median([r.aml_s for r in measured]), "configured_waits_s": _median([r.waits_s for r in measured]),
        "overhead_s": _median([r.overhead_s for r in measured]), "steps": int(_median([r.steps for r in measured])),
        "overhead_per_step_s": _median(per_step), "evergreen_handlers_s": _median([r.handler_s for r in measured]),
        "delivery_s": _median([max(0.0, r.overhead_s - r.handler_s) for r in measured]),
        "evergreen_handlers_share": _median([r.handler_s / r.total_s for r in measured]),
        "requests_served": served, "requests_failed": failed, "scoring_rate_per_s": RATE,
        "p99_ms_before": max(r.before[2] for r in measured), "p99_ms_during": max(r.during[2] for r in measured),
        "p99_ms_after": max(r.after[2] for r in measured),
    }
    return BenchResult(
        name="rollout", title="ModelRegistered to 100 % traffic under 25 req/s scoring: Evergreen's overhead",
        figures=figures, ratio_name="overhead / total (worst rollout)", ratio=round(max(share), 3),
        goal=f"<= {OVERHEAD_SHARE_GOAL}, <{PER_STEP_GOAL_S:g}s/step, 0 failed", met=met,
        notes="overhead = total - |Azure ML operations U scheduled waits|; evergreen_handlers_s is the host's "
              "execution time of on_model_registered + advance_rollout; the rest of the overhead is delivery "
              "(local Event Grid, the host's queue polling up to maxPollingInterval=2s).",
    )


def run(quick: bool, *, rollouts: int | None = None) -> list[BenchResult]:
    """The rollout row: `rollouts` measured rollouts (default 3, quick 1)."""
    return [summarize(measure_rollouts(rollouts or (1 if quick else 3)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rollouts", type=int, default=None)
    args = parser.parse_args()
    from bench.report import details, table

    results = run(args.quick, rollouts=args.rollouts)
    print(table(results))
    print(details(results))


if __name__ == "__main__":
    main()
