"""The fair gate end to end on the local stack: ModelRegistered → comparison job (ml/compare.yml, run by
the emulator on real model files and evaluation rows) → its RunCompleted through the local Event Grid →
decision from comparison.json → rollout.

The session host is restarted on a policy of its own (EVERGREEN_POLICY_PATH: the session's policy, i.e. the
repo's evergreen.yaml without evaluation, plus `fair-model` with `promotion.evaluation`, onto its own
endpoint), and restored afterwards onto the session's policy (`local_stack.env`), which the other end-to-end
tests run on.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from azure.data.tables import TableServiceClient
from azure.storage.blob import ContainerClient

from devstack.demo import churn_rows
from devstack.host import start_host
from devstack.procs import REPO_ROOT
from devstack.stack import Stack
from shared.adapters.azure.tables import AzureTable
from shared.domain.records import RolloutRecord
from shared.domain.vocabulary import Phase, Tag
from shared.services.ledger import LEDGER_TABLE, Ledger
from shared.services.promotion import comparison_job_name
from tests.e2e.helpers import wait_for
from tests.fixtures.models import register, train_model_folder, upload_model_folder

pytestmark = pytest.mark.e2e

MODEL, ENDPOINT, HOLDOUT = "fair-model", "fair-endpoint", "fair-holdout"
MODEL_REGISTERED = "Microsoft.MachineLearningServices.ModelRegistered"
RUN_COMPLETED = "Microsoft.MachineLearningServices.RunCompleted"


def _restart_host(stack: Stack, env: dict[str, str]) -> None:
    index, host = next((i, s) for i, s in enumerate(stack.services) if s.name == "functions-host")
    host.process.terminate()
    host.process.wait(timeout=20)
    restarted = start_host(REPO_ROOT, stack.ports.host, state_dir=stack.state_dir, env=env)
    stack.services[index] = restarted
    restarted.wait_ready(timeout=60)


@pytest.fixture(scope="module")
def fair_host(local_stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The host on the repo's policy plus `fair-model` (with evaluation); the app root is a folder whose ml/
    is the repo's, so `ml/compare.yml` and the scoring code resolve as in a deployment."""
    root = tmp_path_factory.mktemp("fair-app")
    (root / "ml").symlink_to(REPO_ROOT / "ml")
    session_policy = Path(local_stack.env.get("EVERGREEN_POLICY_PATH") or REPO_ROOT / "evergreen.yaml")
    policy = yaml.safe_load(session_policy.read_text(encoding="utf-8"))  # churn-model stays on the tags path
    policy["datasets"].append({"name": HOLDOUT, "container": "landing", "prefix": "fair-holdout/",
                               "type": "uri_file", "datastore": "landing"})
    churn = next(m for m in policy["models"] if m["name"] == "churn-model")
    promotion = {**churn["promotion"], "endpoint": ENDPOINT, "min_improvement": 0.0, "canary_steps": [100],
                 "grace_period_seconds": 0, "evaluation": {
        "data": f"{HOLDOUT}@latest", "label_column": "churned", "min_rows": 200, "resamples": 200,
        "slices": ["contract"], "min_slice_rows": 100, "max_slice_regression": 0.5}}
    policy["models"].append({"name": MODEL, "registered_elsewhere": True, "promotion": promotion})
    (root / "evergreen.yaml").write_text(yaml.safe_dump(policy), encoding="utf-8")
    _restart_host(local_stack, {**local_stack.env, "EVERGREEN_POLICY_PATH": str(root / "evergreen.yaml")})
    try:
        yield root
    finally:
        _restart_host(local_stack, local_stack.env)


@pytest.fixture(scope="module")
def ledger(local_stack: Stack) -> Ledger:
    tables = TableServiceClient.from_connection_string(local_stack.env["AzureWebJobsStorage"])
    return Ledger(AzureTable(tables.create_table_if_not_exists(LEDGER_TABLE)))


@pytest.fixture(scope="module")
def models(local_stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A weak model (40 training rows) and a strong one (2000 rows), uploaded: their datastore URIs."""
    connection = local_stack.env["AzureWebJobsStorage"]
    weak = train_model_folder(tmp_path_factory.mktemp("weak"), rows=40, seed=3)
    strong = train_model_folder(tmp_path_factory.mktemp("strong"), rows=2000, seed=11)
    return {"weak": upload_model_folder(connection, weak), "strong": upload_model_folder(connection, strong)}


@pytest.fixture(scope="module")
def holdout(local_stack: Stack, ml: Any) -> str:
    """One labelled evaluation drop (1500 rows), registered as a data version; its version."""
    from azure.ai.ml.entities import Data

    folder = f"fair-eval/{uuid.uuid4().hex[:8]}"
    container = ContainerClient.from_connection_string(local_stack.env["DATA_STORAGE"], "landing")
    container.upload_blob(f"{folder}/part-0.csv", churn_rows(1500, seed=99).encode(), overwrite=True)
    data = ml.data.create_or_update(Data(name=HOLDOUT, path=f"azureml://datastores/landing/paths/{folder}/",
                                         type="uri_folder"))
    return str(data.version)


def finished(ledger: Ledger, model: str) -> RolloutRecord | None:
    record = ledger.get_rollout(ENDPOINT)
    return record if record and record.candidate == model and not record.active else None


def tags(ml: Any, version: str) -> dict[str, str]:
    return dict(ml.models.get(MODEL, version=version).tags or {})


def decided(ml: Any, version: str) -> dict[str, str] | None:
    found = tags(ml, version)
    return found if found.get(Tag.DECISION.value) else None


def jobs(ml: Any, model: str | None = None) -> list[str]:
    """The comparison jobs in the workspace (of one challenger, by its tag)."""
    return [str(j.name) for j in ml.jobs.list() if str(j.name).startswith("evergreen-compare-")
            and (model is None or (j.tags or {}).get(Tag.MODEL.value) == model)]


def redeliver(local_stack: Stack, function: str, event_type: str, subject: str, data: dict[str, Any]) -> None:
    """An event delivered again, late, as the local Event Grid delivers it to the host's Event Grid trigger."""
    event = {"id": f"redelivered-{uuid.uuid4().hex[:8]}", "eventType": event_type, "subject": subject,
             "eventTime": datetime.now(UTC).isoformat(), "dataVersion": "2", "metadataVersion": "1",
             "topic": "/subscriptions/x/resourceGroups/y/providers/Microsoft.MachineLearningServices/workspaces/z",
             "data": data}
    reply = httpx.post(f"{local_stack.env['EVERGREEN_HOST_URL']}/runtime/webhooks/EventGrid?functionName={function}",
                       content=json.dumps([event]), timeout=60,
                       headers={"Content-Type": "application/json", "aeg-event-type": "Notification"})
    assert reply.status_code in (200, 202), reply.text


def test_registered_models_are_compared_on_the_same_rows_then_rolled_out(
        fair_host: Path, local_stack: Stack, ml: Any, ledger: Ledger, models: dict[str, str], holdout: str) -> None:
    # 1. The first model is scored alone, then deployed (it meets no threshold: there is none).
    first = register(ml, MODEL, models["weak"], "0.99")
    v1 = f"{MODEL}:{first.version}"
    record = wait_for(lambda: finished(ledger, v1), "the first model's comparison and rollout", timeout=240)
    assert record.phase is Phase.SUCCEEDED, record.failure
    assert tags(ml, first.version)[Tag.DECISION.value] == "first_model"
    assert jobs(ml, v1) == [comparison_job_name(v1, "", HOLDOUT, holdout)]

    # 2. A copy of the champion: compared with v1 on the same rows, the interval holds 0: not promoted.
    copy = register(ml, MODEL, models["weak"], "0.99")  # its own holdout metric plays no part
    v2 = f"{MODEL}:{copy.version}"
    same = wait_for(lambda: decided(ml, copy.version), "the copy's decision", timeout=240)
    assert same[Tag.DECISION.value] == "not_significant" and same[Tag.COMPARED_WITH.value] == v1, same
    low, high = (float(x) for x in same[Tag.INTERVAL.value].strip("[]").split(","))
    assert low <= 0 <= high

    # 3. A clearly better model: compared with v1, promoted on the lower bound, rolled out; a redelivered
    #    ModelRegistered finds its comparison job and submits nothing new.
    better = register(ml, MODEL, models["strong"], "0.10")
    v3 = f"{MODEL}:{better.version}"
    wait_for(lambda: jobs(ml, v3) or None, "the better model's comparison job", timeout=120)
    redeliver(local_stack, "on_model_registered", MODEL_REGISTERED, f"models/{v3}",
              {"modelName": MODEL, "modelVersion": better.version, "modelTags": {}})
    record = wait_for(lambda: finished(ledger, v3), "the better model's comparison and rollout", timeout=300)
    assert record.phase is Phase.SUCCEEDED, record.failure
    won = tags(ml, better.version)
    assert won[Tag.DECISION.value] == "improved" and won[Tag.COMPARED_WITH.value] == v1, won
    assert float(won[Tag.INTERVAL.value].strip("[]").split(",")[0]) > 0, won
    assert jobs(ml, v3) == [comparison_job_name(v3, v1, HOLDOUT, holdout)]  # one job, not two

    # 4. The copy's RunCompleted arrives again, late: the champion it was compared with (v1) no longer
    #    serves, so it is compared again, with v3.
    old_job = comparison_job_name(v2, v1, HOLDOUT, holdout)
    redeliver(local_stack, "on_run_event", RUN_COMPLETED, f"experiments/evergreen-compare/runs/{old_job}",
              {"runId": old_job, "experimentName": "evergreen-compare", "runStatus": "Completed",
               "runTags": dict(ml.jobs.get(old_job).tags or {})})

    def compared_with_v3() -> dict[str, str] | None:
        found = decided(ml, copy.version)
        return found if found is not None and found[Tag.COMPARED_WITH.value] == v3 else None

    again = wait_for(compared_with_v3, "the copy compared with the new champion", timeout=240)
    assert again[Tag.DECISION.value] == "not_significant", again
    assert sorted(jobs(ml, v2)) == sorted([old_job, comparison_job_name(v2, v3, HOLDOUT, holdout)])
    assert finished(ledger, v3) is not None  # v3 still serves
