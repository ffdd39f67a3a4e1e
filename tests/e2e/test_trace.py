"""One upload, one trace: the trace context travels with the work through the whole local stack.

A CSV lands under `landing/houses/` → `on_blob_created` registers a `house-prices` data version and
publishes `Evergreen.DataVersionRegistered` (its `data.traceparent`) → `on_data_version_registered`
submits the pipeline with the `evergreen.traceparent` job tag → the register step copies it onto the
model → `on_model_registered` (the model's tag in the ModelRegistered event) gates it and writes the
rollout row → every `advance_rollout` step (the `traceparent` in each queue message) up to 100 %.
The stack's host writes each finished span to `<state dir>/traces.jsonl` (`EVERGREEN_TRACE_FILE`).

The stack is the test's own: on the session's stack another test may already serve a better
house-price model, and the gate would (rightly) stop the chain before the rollout.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest
from azure.data.tables import TableServiceClient

from devstack.stack import Stack
from shared.adapters.azure.tables import AzureTable
from shared.domain.records import RolloutRecord
from shared.domain.telemetry import SPAN_PREFIX, Attr
from shared.domain.vocabulary import Phase, Tag
from shared.services.ledger import LEDGER_TABLE, Ledger
from tests.e2e.helpers import own_stack, wait_for, with_tag
from tests.e2e.test_second_pipeline import DATASET, ENDPOINT, MODEL, _generator

pytestmark = pytest.mark.e2e

CHAIN = ("on_blob_created", "on_data_version_registered", "on_model_registered", "advance_rollout")


def read_spans(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def finished(ledger: Ledger) -> RolloutRecord | None:
    record = ledger.get_rollout(ENDPOINT)
    return record if record is not None and not record.active else None


def describe(spans: list[dict[str, Any]]) -> str:
    return "\n".join(f"  {s['trace_id']} {s['name']} {json.dumps(s['attributes'], sort_keys=True)}" for s in spans)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Any:
    with own_stack(tmp_path_factory.mktemp("trace-stack")) as own:
        yield own


def test_one_upload_is_one_trace_from_the_blob_to_the_rollouts_last_step(stack: Stack) -> None:
    from azure.ai.ml import MLClient
    from azure.identity import DefaultAzureCredential
    from azure.storage.blob import BlobServiceClient

    env = stack.env
    ml = MLClient(DefaultAzureCredential(), env["AZURE_SUBSCRIPTION_ID"], env["AZURE_RESOURCE_GROUP"],
                  env["AZUREML_WORKSPACE_NAME"])
    landing = BlobServiceClient.from_connection_string(env["DATA_STORAGE"]).get_container_client("landing")
    ledger = Ledger(AzureTable(TableServiceClient.from_connection_string(env["AzureWebJobsStorage"])
                               .create_table_if_not_exists(LEDGER_TABLE)))

    name = f"houses/trace-{uuid.uuid4().hex[:8]}.csv"
    blob = landing.upload_blob(name, _generator().house_csv(800, seed=21).encode(), overwrite=True)
    (data,) = wait_for(lambda: with_tag(ml, DATASET, Tag.SOURCE_URL.value, blob.url), "the CSV's data version")
    record = wait_for(lambda: finished(ledger), "the rollout of the model trained on it", timeout=240)
    assert record.phase is Phase.SUCCEEDED, record.failure
    assert record.traceparent, "the rollout row stores the trace context it was started in"

    trace_file = stack.state_dir / "traces.jsonl"

    def last_step() -> dict[str, Any] | None:
        return next((s for s in reversed(read_spans(trace_file)) if s["name"] == SPAN_PREFIX + "advance_rollout"
                     and s["attributes"].get(Attr.ROLLOUT_PHASE) == Phase.SUCCEEDED.value), None)

    final = wait_for(last_step, "the rollout's last step in the trace file", timeout=30)
    spans = read_spans(trace_file)
    mine = {
        "on_blob_created": [s for s in spans if s["attributes"].get(Attr.BLOB) == f"landing/{name}"],
        "on_data_version_registered": [s for s in spans
                                       if s["attributes"].get(Attr.DATA_VERSION) == str(data.version)],
        "on_model_registered": [s for s in spans if s["attributes"].get(Attr.MODEL) == MODEL
                                and s["attributes"].get(Attr.MODEL_VERSION) == record.candidate_version],
        "advance_rollout": [s for s in spans if s["attributes"].get(Attr.ROLLOUT) == record.rollout_id],
    }
    trace = [s for s in spans if s["trace_id"] == final["trace_id"]]
    listing = describe([s for s in spans if s["name"].startswith(SPAN_PREFIX)])
    missing = [function for function in CHAIN
               if not any(s["name"] == SPAN_PREFIX + function and s in trace for s in mine[function])]
    assert not missing, (f"{missing} of this upload's chain are not in the rollout's trace {final['trace_id']}; "
                         f"every handler span in {trace_file}:\n{listing}")
    registered = [s for s in mine["on_blob_created"] if s["attributes"].get(Attr.OUTCOME) == "registered"]
    assert registered and all(s in trace for s in registered), f"the upload's span starts the trace:\n{listing}"
    steps = mine["advance_rollout"]
    assert len(steps) >= 3 and all(s in trace for s in steps), f"every rollout step is in the trace:\n{listing}"
    roots = [s["name"] for s in trace if s["parent_span_id"] is None]
    assert roots == [SPAN_PREFIX + "on_blob_created"], f"the upload is the trace's only root:\n{listing}"
