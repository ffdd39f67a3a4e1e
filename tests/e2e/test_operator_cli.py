"""The operator's commands on the local stack, run as an operator runs them: `python -m shared.cli …` subprocesses.

- `rollout abort` mid-rollout (the host is stopped there, so the rollout cannot finish first): the row
  moves to rollback, and once the host is back the rollout's own steps put traffic back on the champion;
  `status --json` lists the rollout while it is in flight, `rollout resume` re-sends its step (stale
  once the abort moved the row on), `audit --json --model …` shows both, and a second abort or a
  resume after the end is refused (exit 2).
- `retrain <dataset>:<version>` on a version registered without an event: one job; a second call is
  deduplicated by the same decision (no second job).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from azure.data.tables import TableServiceClient

from devstack.demo import churn_rows
from devstack.host import start_host
from devstack.procs import REPO_ROOT
from devstack.stack import Stack
from shared.adapters.azure.tables import AzureTable
from shared.domain.records import RolloutRecord
from shared.domain.retrain import job_name_for
from shared.domain.vocabulary import Phase, Tag, metric_tag
from shared.services.ledger import LEDGER_TABLE, Ledger
from tests.e2e.helpers import wait_for
from tests.fixtures.models import register, train_model_folder, upload_model_folder

pytestmark = pytest.mark.e2e
REPO = Path(__file__).resolve().parents[2]
MODEL, ENDPOINT, DATASET = "churn-model", "churn-endpoint", "churn-training"


def cli(local_stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "shared.cli", *args], cwd=REPO,
                          env={**os.environ, **local_stack.env, "EVERGREEN_OPERATOR": "e2e"},
                          capture_output=True, text=True, timeout=180)


@pytest.fixture(scope="module")
def ledger(local_stack: Stack) -> Ledger:
    tables = TableServiceClient.from_connection_string(local_stack.env["AzureWebJobsStorage"])
    return Ledger(AzureTable(tables.create_table_if_not_exists(LEDGER_TABLE)))


def finished(ledger: Ledger, model: Any) -> RolloutRecord | None:
    record = ledger.get_rollout(ENDPOINT)
    return record if record and record.candidate == f"{model.name}:{model.version}" and not record.active else None


def serving(ml: Any) -> tuple[str, float] | None:
    """The model serving the endpoint and its roc_auc; None if there is no endpoint or nothing takes traffic."""
    from azure.core.exceptions import ResourceNotFoundError

    try:
        traffic = ml.online_endpoints.get(ENDPOINT).traffic or {}
    except ResourceNotFoundError:
        return None
    live = [(w, n) for n, w in traffic.items() if w > 0]
    if not live:
        return None
    tags = ml.online_deployments.get(name=max(live)[1], endpoint_name=ENDPOINT).tags
    name, version = tags[Tag.MODEL.value].split(":")
    return tags[Tag.MODEL.value], float(ml.models.get(name, version).tags.get(metric_tag("roc_auc"), "0"))


def stop_host(local_stack: Stack) -> None:
    host = next(s for s in local_stack.services if s.name == "functions-host")
    host.process.kill()
    host.process.wait(timeout=10)


def start_host_again(local_stack: Stack) -> None:
    index = next(i for i, s in enumerate(local_stack.services) if s.name == "functions-host")
    restarted = start_host(REPO_ROOT, local_stack.ports.host, state_dir=local_stack.state_dir, env=local_stack.env)
    local_stack.services[index] = restarted
    restarted.wait_ready(timeout=60)


def test_abort_during_a_rollout_rolls_back_and_the_champion_keeps_serving(
        local_stack: Stack, ml: Any, ledger: Ledger, tmp_path: Path) -> None:
    uri = upload_model_folder(local_stack.env["AzureWebJobsStorage"], train_model_folder(tmp_path))
    # an earlier test's rollout (a module's first model creates the endpoint) may still be under way: the
    # champion is read once nothing rolls out, or a champion registered now would queue behind it and lose
    wait_for(lambda: (r := ledger.get_rollout(ENDPOINT)) is None or not r.active or None,
             f"no rollout in flight on {ENDPOINT}", timeout=180)
    now = serving(ml)
    if now is None or ledger.get_rollout(ENDPOINT) is None:
        champion = register(ml, MODEL, uri, f"{(now[1] if now else 0.5) + 0.01:.4f}")
        assert wait_for(lambda: finished(ledger, champion), "the champion's rollout", timeout=180).phase \
            is Phase.SUCCEEDED
        now = serving(ml)
    assert now is not None
    champion_model, metric = now
    candidate = register(ml, MODEL, uri, f"{metric + 0.01:.4f}")
    wanted = f"{MODEL}:{candidate.version}"

    def in_flight() -> RolloutRecord | None:
        record = ledger.get_rollout(ENDPOINT)
        return record if record and record.candidate == wanted and record.phase in (
            Phase.DEPLOY, Phase.PROVISIONING, Phase.SMOKE, Phase.SHIFT, Phase.SHIFTING, Phase.GRACE) else None

    wait_for(in_flight, "the candidate's rollout to be under way", timeout=120)
    stop_host(local_stack)  # nothing advances the rollout now: the abort cannot come too late
    try:
        status = cli(local_stack, "status", "--json")
        assert status.returncode == 0, status.stderr
        (listed,) = [r for r in json.loads(status.stdout)["rollouts"] if r["endpoint"] == ENDPOINT]
        assert listed["candidate"] == wanted and listed["champion"] == champion_model and listed["age_seconds"] > 0

        # resume re-sends the current step; it is stale once the abort below moves the row on
        resumed = cli(local_stack, "rollout", "resume", ENDPOINT, "--json")
        assert resumed.returncode == 0, resumed.stderr
        assert json.loads(resumed.stdout)["action"] == "resumed"
        aborted = cli(local_stack, "rollout", "abort", ENDPOINT, "--reason", "e2e: latency", "--json")
        assert aborted.returncode == 0, aborted.stderr
        assert json.loads(aborted.stdout)["action"] == "aborted"
        row = ledger.get_rollout(ENDPOINT)
        assert row is not None and row.phase is Phase.ROLLBACK and row.failure == "aborted by e2e: e2e: latency"
    finally:
        start_host_again(local_stack)

    record = wait_for(lambda: finished(ledger, candidate), "the rollback", timeout=240)
    assert record.phase is Phase.ROLLED_BACK, record.reason
    assert serving(ml) == now
    again = cli(local_stack, "rollout", "abort", ENDPOINT)
    assert again.returncode == 2 and "is over (rolled_back)" in again.stderr
    late = cli(local_stack, "rollout", "resume", ENDPOINT)
    assert late.returncode == 2 and "is over (rolled_back)" in late.stderr
    audit = cli(local_stack, "audit", "--json", "--model", wanted, "--kind", "rollout.")
    assert audit.returncode == 0, audit.stderr
    kinds = [r["kind"] for r in json.loads(audit.stdout)]
    assert "rollout.aborted" in kinds and "rollout.resumed" in kinds and "rollout.rolled_back" in kinds
    (abort,) = [r for r in json.loads(audit.stdout) if r["kind"] == "rollout.aborted"]
    assert abort["assets"]["operator"] == "e2e" and abort["reason"] == "aborted by e2e: e2e: latency"


def test_retrain_submits_one_job_and_a_second_request_is_deduplicated(
        local_stack: Stack, ml: Any, ledger: Ledger, landing: Any) -> None:
    from azure.ai.ml.entities import Data

    def idle() -> bool:  # a run of another test would coalesce our version instead of running it
        state = ledger.get_retrain_state(DATASET)
        return state is None or not state.active_job

    wait_for(idle, f"{DATASET} to have no active run", timeout=300)
    folder = f"operator-e2e/{uuid.uuid4().hex[:8]}/"  # under no dataset's prefix: ingest ignores it
    landing.upload_blob(f"{folder}part-0.csv", churn_rows(300, seed=11), overwrite=True)
    data = ml.data.create_or_update(Data(
        name=DATASET, type="uri_folder", path=f"azureml://datastores/landing/paths/{folder}",
        tags={Tag.SHA256.value: uuid.uuid4().hex, Tag.FILES.value: "1"}))
    job = job_name_for(DATASET, str(data.version))

    first = cli(local_stack, "retrain", f"{DATASET}:{data.version}", "--json", "--reason", "e2e")
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout)["action"] == "submitted", first.stdout
    assert ml.jobs.get(job).tags[Tag.DATA_VERSION.value] == str(data.version)

    second = cli(local_stack, "retrain", f"{DATASET}:{data.version}", "--json")
    assert second.returncode == 0, second.stderr
    assert json.loads(second.stdout)["action"] != "submitted", second.stdout
    state = ledger.get_retrain_state(DATASET)  # one run, under the job name derived from (dataset, version)
    assert state is not None and state.last_version == str(data.version) and state.active_job in (job, None)

    time.sleep(0.5)
    audit = cli(local_stack, "audit", "--json", "--dataset", f"{DATASET}:{data.version}", "--kind", "retrain.")
    assert audit.returncode == 0, audit.stderr
    requested = [r for r in json.loads(audit.stdout) if r["kind"] == "retrain.requested"]
    assert len(requested) == 2 and all(r["assets"]["operator"] == "e2e" for r in requested)
    unknown = cli(local_stack, "retrain", f"{DATASET}:99999")
    assert unknown.returncode == 2 and "no version 99999" in unknown.stderr
