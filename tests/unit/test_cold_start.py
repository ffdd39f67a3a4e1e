"""Cold start: `import function_app` (what the host runs to index) loads only what indexing needs.

The blob trigger's SDK binding type subclasses azure-storage-blob's client, so azure.storage.blob is
part of indexing; everything below is imported on first use (see `shared/composition.py` and
`bench/bench_cold_start.py`, which measures the time). The start-up policy check parses the policy
and its pipelines with libyaml (`shared.config.validate.safe_load`): the same values and the same
problems as `yaml.safe_load`, checked here over every policy and pipeline file of the repository.
"""

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from bench.bench_cold_start import MUST_BE_DEFERRED, sample_env
from bench.report import REPO_ROOT
from shared.config import validate

DEFERRED = (*MUST_BE_DEFERRED, "azure.monitor.opentelemetry", "opentelemetry.sdk", "azure.eventgrid",
            "azure.storage.queue", "shared.services.retention", "shared.services.promotion",
            "shared.adapters.azure.tables",
            # first use only: the status page (Jinja2), the CLI, the other adapters and services, and the
            # libraries only tests, the CLI or the training code load
            "jinja2", "shared.status_page", "shared.cli", "shared.adapters.azure.blobs",
            "shared.adapters.azure.queues", "shared.services.ledger", "shared.services.status",
            "jsonschema", "mlflow", "pandas", "numpy", "sklearn", "azure.mgmt",
            "argparse")  # `python -m shared.cli validate` parses arguments; the start-up check does not

YAML_FILES = sorted(path for path in {*REPO_ROOT.glob("*.yaml"), *(REPO_ROOT / "ml").rglob("*.yml"),
                                       *(REPO_ROOT / "tests" / "fixtures" / "policies").rglob("*.yaml")}
                    if path.name != "not_utf8.yaml")  # read_document refuses that one before parsing
NOT_YAML = ("datasets: [\n  - name: churn\n", "a: 1\n\tb: 2\n", "key: {unclosed\n", "- a\nb: c\n",
            "x: *undefined\n", "a: 'unterminated\n", "? [a\n: b\n", "%YAML 9.9\n---\na: 1\n",
            "a: !!python/object:os.system x\n")


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


def _outcome(load, text: str) -> tuple[str, object]:
    try:
        return "value", load(text)
    except (yaml.YAMLError, RecursionError) as exc:
        return type(exc).__name__, str(exc)


@pytest.mark.parametrize("path", YAML_FILES, ids=lambda p: str(p.relative_to(REPO_ROOT)))
def test_the_start_up_parser_reads_every_policy_and_pipeline_as_safe_load_does(path: Path):
    text = path.read_text(encoding="utf-8")
    assert _outcome(validate.safe_load, text) == _outcome(yaml.safe_load, text)


@pytest.mark.parametrize("text", NOT_YAML)
def test_a_document_libyaml_refuses_gets_the_pure_python_loaders_error(text: str):
    outcome = _outcome(validate.safe_load, text)
    assert outcome[0] != "value"
    assert outcome == _outcome(yaml.safe_load, text)


def test_valid_documents_are_parsed_by_libyaml_not_the_pure_python_loader(monkeypatch: pytest.MonkeyPatch):
    assert yaml.__with_libyaml__, "PyYAML without libyaml: the start-up check parses YAML in pure Python"

    def pure_python(_text: str) -> object:
        raise AssertionError("the pure-Python loader parsed a valid document")

    monkeypatch.setattr(yaml, "safe_load", pure_python)
    policy = (REPO_ROOT / "evergreen.yaml").read_text(encoding="utf-8")
    assert validate.safe_load(policy) == yaml.load(policy, Loader=yaml.CSafeLoader)
    with pytest.raises(AssertionError, match="pure-Python"):
        validate.safe_load("key: {unclosed\n")  # only a refused document falls back
