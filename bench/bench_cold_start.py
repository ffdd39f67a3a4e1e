"""Cold start: what `import function_app` costs against `import azure.ai.ml`, and the first event after it.

1. **Import.** `python -c "import function_app"` with the sample settings (`local.settings.sample.json`'s
   `Values` in the environment, as the host copies them) against `python -c "import azure.ai.ml"`,
   alternating, each in a fresh interpreter; the ratio of the medians (goal ≤ 0.3). The start-up path
   validates settings and policy (pydantic) and indexes the functions; the blob trigger's SDK binding
   (`azurefunctions.extensions.bindings.blob.BlobClient`, a subclass of azure-storage-blob's client) must
   be importable at indexing, so azure.storage.blob is part of the floor. Everything else (adapters,
   services, azure-data-tables, azure-ai-ml, azure-monitor) is imported on first use.
2. **First event.** On Azurite (free ports), a fresh interpreter imports the app, then runs the first
   `on_blob_created` through the trigger (a new file of a folder dataset: blob read, hash, ledger, seal
   queue), against the same with the deferred modules imported eagerly before the app (what the
   composition root did before it deferred them). Deferring moves cost to the first event; this shows
   how much of it, and what the total is.

    python -m bench.bench_cold_start [--quick] [--runs N]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from bench.report import REPO_ROOT, BenchResult

log = logging.getLogger(__name__)

GOAL = 0.3
APP = "import function_app"
AML = "import azure.ai.ml"
# What indexing cannot do without: the worker's azure.functions and the blob trigger's SDK binding type
# (a subclass of azure-storage-blob's BlobClient). No app that binds a BlobClient starts faster than this.
FLOOR = "import azure.functions, azurefunctions.extensions.bindings.blob"
# Loaded by `import function_app` only when someone breaks the deferral (checked in every run).
MUST_BE_DEFERRED = ("azure.ai.ml", "azure.monitor", "azure.data.tables", "shared.services.ingest",
                    "shared.adapters.azure.azureml")
# What the composition root imported at the top before it deferred them: the eager variant's imports.
EAGER = ("azure.data.tables", "azure.storage.blob", "azure.identity", "shared.adapters.azure.aml_retention",
         "shared.adapters.azure.azureml", "shared.adapters.azure.blob_retention", "shared.adapters.azure.blobs",
         "shared.adapters.azure.eventgrid", "shared.adapters.azure.queues", "shared.adapters.azure.tables",
         "shared.services.audit", "shared.services.ingest", "shared.services.ledger", "shared.services.operator",
         "shared.services.promotion", "shared.services.reconcile", "shared.services.redrive",
         "shared.services.retention", "shared.services.retrain")
FOLDER_PREFIX = "churn/"  # the sample policy's folder dataset (evergreen.yaml: churn-training)

_SETTINGS_PREFIXES = ("AZURE", "EVERGREEN", "DATA_STORAGE", "AzureWeb", "FUNCTIONS_", "IDENTITY_", "MSI_")


def sample_env(**overrides: str) -> dict[str, str]:
    """This environment without app settings, plus `local.settings.sample.json`'s Values (as the host sets them)."""
    values = json.loads((REPO_ROOT / "local.settings.sample.json").read_text())["Values"]
    clean = {k: v for k, v in os.environ.items() if not k.startswith(_SETTINGS_PREFIXES)}
    return {**clean, **{k: str(v) for k, v in values.items()}, **overrides}


def _timed(code: str, env: dict[str, str]) -> float:
    """Seconds a fresh interpreter takes to run `code` (start-up included); raises on a failed run."""
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                          timeout=120)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"{code!r} failed:\n{done.stderr[-2000:]}")
    return elapsed


def leaked_modules(env: dict[str, str]) -> list[str]:
    """Which of MUST_BE_DEFERRED `import function_app` loads (an empty list when the deferral holds)."""
    code = f"import sys, function_app; print(','.join(m for m in {MUST_BE_DEFERRED!r} if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                          timeout=120, check=True)
    return [m for m in done.stdout.strip().split(",") if m]


def compile_app() -> None:
    """Write the app's bytecode, as pip did for azure.ai.ml at install, so neither side compiles source while
    timed (with PYTHONDONTWRITEBYTECODE set, every edited module was compiled again in every run)."""
    import compileall

    compileall.compile_file(str(REPO_ROOT / "function_app.py"), quiet=1)
    for package in ("shared", "functions"):
        compileall.compile_dir(str(REPO_ROOT / package), quiet=1)


def measure_import(runs: int) -> BenchResult:
    """`import function_app` vs `import azure.ai.ml`, alternating, `runs` of each; ratio of the medians."""
    env = sample_env()
    compile_app()
    _timed("pass", env)  # warm the file cache once for both sides alike
    app, aml, bare, floor = [], [], [], []
    for _ in range(runs):
        app.append(_timed(APP, env))
        aml.append(_timed(AML, env))
        bare.append(_timed("pass", env))
        floor.append(_timed(FLOOR, env))
    ratio = statistics.median(app) / statistics.median(aml)
    leaked = leaked_modules(env)
    return BenchResult(
        name="cold_start", title="import function_app vs import azure.ai.ml (fresh interpreters, alternating)",
        figures={"runs": runs, "function_app_median_s": round(statistics.median(app), 3),
                 "azure_ai_ml_median_s": round(statistics.median(aml), 3),
                 "bare_interpreter_median_s": round(statistics.median(bare), 3),
                 "indexing_floor_median_s": round(statistics.median(floor), 3),
                 "indexing_floor_ratio": round(statistics.median(floor) / statistics.median(aml), 3),
                 "function_app_min_s": round(min(app), 3), "azure_ai_ml_min_s": round(min(aml), 3),
                 "deferred_but_imported": ",".join(leaked) or "none"},
        ratio_name="median import function_app / median import azure.ai.ml", ratio=round(ratio, 3),
        goal=f"<= {GOAL}", met=ratio <= GOAL and not leaked,
        notes="Start-up floor: azure.functions (+werkzeug), the blob SDK binding (azure.storage.blob, azure.identity; "
              "needed at indexing), settings + policy validation (pydantic). Everything else is imported on first use. "
              "The app's bytecode is compiled before timing, as azure.ai.ml's was at install.",
    )


_FIRST_EVENT = """
import json, sys, time
t0 = time.perf_counter()
for name in {eager!r}:
    __import__(name)
import function_app, functions.ingest
from azure.storage.blob import BlobClient
t1 = time.perf_counter()
client = BlobClient.from_connection_string({conn!r}, container_name={container!r}, blob_name={blob!r})
functions.ingest.on_blob_created(client=client)
t2 = time.perf_counter()
print(json.dumps({{"import_s": t1 - t0, "first_event_s": t2 - t1}}))
"""


def _first_event(env: dict[str, str], conn: str, container: str, blob: str, eager: bool) -> dict[str, float]:
    code = _FIRST_EVENT.format(eager=EAGER if eager else (), conn=conn, container=container, blob=blob)
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                          timeout=180)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"first event ({'eager' if eager else 'lazy'}) failed:\n{done.stderr[-3000:]}")
    figures: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return {**figures, "wall_s": wall}


def measure_first_event(runs: int) -> BenchResult:
    """Import + the first blob event on Azurite, lazy (as shipped) against eager imports, alternating."""
    from azure.storage.blob import BlobServiceClient

    from devstack.azurite import connection_string, ensure_installed, start_azurite
    from devstack.procs import free_port

    ensure_installed()
    compile_app()
    state = Path(tempfile.mkdtemp(prefix="evergreen-bench-cold-"))
    ports = free_port(), free_port(), free_port()
    azurite = start_azurite(state, *ports)
    try:
        azurite.wait_ready()
        conn = connection_string(*ports)
        env = sample_env(AzureWebJobsStorage=conn, DATA_STORAGE=conn)
        container = env.get("EVERGREEN_LANDING_CONTAINER", "landing")
        landing = BlobServiceClient.from_connection_string(conn).get_container_client(container)
        landing.create_container()
        samples: dict[str, list[dict[str, float]]] = {"lazy": [], "eager": []}
        for i in range(runs):
            for variant in ("lazy", "eager") if i % 2 == 0 else ("eager", "lazy"):
                blob = f"{FOLDER_PREFIX}drop-{uuid.uuid4().hex[:8]}/part-{i}.csv"
                landing.upload_blob(blob, b"id,churned\n" + b"1,0\n" * 2000)
                samples[variant].append(_first_event(env, conn, container, blob, eager=variant == "eager"))
    finally:
        azurite.stop()
        shutil.rmtree(state, ignore_errors=True)

    def med(variant: str, key: str) -> float:
        return round(statistics.median(s[key] for s in samples[variant]), 3)

    ratio = med("lazy", "wall_s") / med("eager", "wall_s")
    return BenchResult(
        name="cold_start_first_event", title="cold interpreter: import + first blob event, lazy vs eager imports",
        figures={"runs": runs, **{f"{v}_{k}": med(v, k) for v in ("lazy", "eager")
                                  for k in ("import_s", "first_event_s", "wall_s")}},
        ratio_name="lazy / eager: interpreter start to first event handled", ratio=round(ratio, 3),
        notes="A new file of a folder dataset on Azurite through the trigger. Deferral moves the SDK clients' "
              "import into the first event (no goal in the issue: reported beside the eager app).",
    )


def run(quick: bool, *, runs: int | None = None, first_event: bool = True) -> list[BenchResult]:
    """The cold-start rows: `runs` alternating pairs (default 7, quick 2; first event 5, quick 1)."""
    results = [measure_import(runs or (2 if quick else 7))]
    if first_event:
        results.append(measure_first_event(runs or (1 if quick else 5)))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--runs", type=int, default=None)
    args = parser.parse_args()
    from bench.report import details, table

    results = run(args.quick, runs=args.runs)
    print(table(results))
    print(details(results))


if __name__ == "__main__":
    main()
