"""The benchmark's comparison app: the naive per-blob recipe, and a no-op blob trigger (the platform floor).

Run by the same local Functions host as Evergreen (`bench/bench_burst.py`, `bench/bench_overhead.py`),
with the same host.json queue settings and the same binding (an Event Grid–sourced blob trigger bound
as an SDK `BlobClient`), so the only difference measured is what the function does.

- `naive_on_blob` is Azure's "trigger a pipeline from Event Grid" recipe: for every BlobCreated it
  registers a data version of the blob's folder and submits the retraining pipeline (`ml/pipeline.yml`)
  on it, through azure-ai-ml. No deduplication, no batching: each delivery is one version and one job.
- `noop_on_blob` does nothing: its duration is what the host and the binding cost per event.

Not part of Evergreen; nothing imports this module.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import azure.functions as func
from azurefunctions.extensions.bindings import blob

app = func.FunctionApp()
log = logging.getLogger("naive_app")

PIPELINE = Path(__file__).resolve().parents[2] / "ml" / "pipeline.yml"
ASSET = "naive-burst"
_client_lock = threading.Lock()


@functools.cache
def _built_client() -> Any:
    from azure.ai.ml import MLClient
    from azure.identity import DefaultAzureCredential

    return MLClient(DefaultAzureCredential(), os.environ["AZURE_SUBSCRIPTION_ID"],
                    os.environ["AZURE_RESOURCE_GROUP"], os.environ["AZUREML_WORKSPACE_NAME"])


def _ml_client() -> Any:
    """One MLClient per process (built on first use), as a careful recipe would keep it."""
    with _client_lock:
        return _built_client()


@app.function_name("naive_on_blob")
@app.blob_trigger(arg_name="client", path="%NAIVE_CONTAINER%/{name}", connection="DATA_STORAGE",
                  source=func.BlobSource.EVENT_GRID)
def naive_on_blob(client: blob.BlobClient) -> None:
    """Register the blob's folder as a new data version and submit the pipeline on it (every event)."""
    from azure.ai.ml import Input, load_job
    from azure.ai.ml.entities import Data

    ml = _ml_client()
    folder = client.blob_name.rsplit("/", 1)[0]
    version = f"{time.time_ns()}{uuid.uuid4().hex[:6]}"
    data = ml.data.create_or_update(Data(
        name=ASSET, version=version, type="uri_folder",
        path=f"azureml://datastores/{os.environ['NAIVE_DATASTORE']}/paths/{folder}/"))
    job: Any = load_job(PIPELINE)
    job.experiment_name = "naive-burst"
    job.inputs.training_data = Input(type="uri_folder", path=f"azureml:{ASSET}:{data.version}")
    job.inputs.data_asset = ASSET
    job.inputs.data_version = str(data.version)
    created = ml.jobs.create_or_update(job)
    log.info("blob %s: data version %s:%s, job %s", client.blob_name, ASSET, data.version, created.name)


@app.function_name("noop_on_blob")
@app.blob_trigger(arg_name="client", path="%NAIVE_CONTAINER%/{name}", connection="DATA_STORAGE",
                  source=func.BlobSource.EVENT_GRID)
def noop_on_blob(client: blob.BlobClient) -> None:
    """Do nothing: the per-event cost of the host and the binding alone."""

