"""Cold start: `import function_app` (what the host runs to index) loads only what indexing needs.

The blob trigger's SDK binding type subclasses azure-storage-blob's client, so azure.storage.blob is
part of indexing; everything below is imported on first use (see `shared/composition.py` and
`bench/bench_cold_start.py`, which measures the time).
"""

import subprocess
import sys

from bench.bench_cold_start import MUST_BE_DEFERRED, sample_env
from bench.report import REPO_ROOT

DEFERRED = (*MUST_BE_DEFERRED, "azure.monitor.opentelemetry", "opentelemetry.sdk", "azure.eventgrid",
            "azure.storage.queue", "shared.services.retention", "shared.services.promotion",
            "shared.adapters.azure.tables")


def imported_after(code: str) -> set[str]:
    probe = f"{code}\nimport sys\nprint('\\n'.join(sorted(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", probe], cwd=REPO_ROOT, env=sample_env(), capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return set(done.stdout.split())


def test_importing_function_app_defers_sdk_clients_adapters_and_services():
    loaded = imported_after("import function_app")
    assert "function_app" in loaded and "shared.config.policy" in loaded  # start-up still validates the policy
    leaked = sorted(name for name in DEFERRED if name in loaded)
    assert leaked == [], f"imported at start-up although only the first event needs them: {leaked}"

