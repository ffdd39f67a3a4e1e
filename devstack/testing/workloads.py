"""Ready-made workloads for the Azure ML emulator, shared by the devstack's tests and the product's.

- a scoring model: `register_model()` uploads a pickled classifier plus a `score.py` (SCORE_PY) to
  the workspace blob store and registers the folder; `deployment()` builds a managed deployment of it;
- a two-step pipeline (PIPELINE over the SCALE and TOTAL components, SCALE_PY/TOTAL_PY their
  code) whose data input is a folder under the `landing` container (`upload_landing()`);
- CURATED, the curated environment jobs name (never resolved by the emulator).
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

from azure.ai.ml.entities import ManagedOnlineDeployment, Model
from azure.storage.blob import BlobServiceClient, ContainerClient

from devstack.testing.aml import AmlInfo

CURATED = "azureml:AzureML-sklearn-1.5@latest"

SCORE_PY = '''
import json, logging, os
import joblib

model = None

def init():
    global model
    path = os.path.join(os.environ["AZUREML_MODEL_DIR"], "{folder}", "model.pkl")
    model = joblib.load(path)
    logging.info("model loaded from %s", path)
    print("init done, version {label}")

def run(raw_data):
    data = json.loads(raw_data)["data"]
    return {{"predictions": [int(p) for p in model.predict(data)], "version": "{label}"}}
'''


def _unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def register_model(ml_client: Any, aml: AmlInfo, pickle: Path, label: str) -> Any:
    """Upload model.pkl + score.py to Azurite under models/<folder>/ and register that folder."""
    folder = _unique("m")
    container = ContainerClient.from_connection_string(aml.storage_connection_string, "azureml-blobstore")
    if not container.exists():
        container.create_container()
    container.upload_blob(f"models/{folder}/model.pkl", pickle.read_bytes(), overwrite=True)
    container.upload_blob(f"models/{folder}/score.py", SCORE_PY.format(folder=folder, label=label).encode(),
                          overwrite=True)
    return ml_client.models.create_or_update(Model(
        name=_unique("clf"), version="1", type="custom_model",
        path=f"azureml://datastores/workspaceblobstore/paths/models/{folder}/",
    ))


def deployment(name: str, endpoint: str, model: Model, **kwargs: Any) -> ManagedOnlineDeployment:
    return ManagedOnlineDeployment(name=name, endpoint_name=endpoint, model=model.id,
                                   instance_type="Standard_DS3_v2", instance_count=1, **kwargs)


PIPELINE = """
$schema: https://azuremlschemas.azureedge.net/latest/pipelineJob.schema.json
type: pipeline
experiment_name: evergreen-tests
settings:
  default_compute: azureml:cpu-cluster
inputs:
  raw:
    type: uri_folder
    path: azureml:{data}:1
  factor: 3
outputs:
  final:
    type: uri_folder
jobs:
  double:
    type: command
    component: ./scale.yml
    inputs:
      data: ${{{{parent.inputs.raw}}}}
      factor: ${{{{parent.inputs.factor}}}}
  total:
    type: command
    component: ./total.yml
    inputs:
      scaled: ${{{{parent.jobs.double.outputs.scaled}}}}
      scaled_uri:
        path: ${{{{parent.jobs.double.outputs.scaled}}}}
        mode: direct
    outputs:
      total: ${{{{parent.outputs.final}}}}
"""

SCALE = """
$schema: https://azuremlschemas.azureedge.net/latest/commandComponent.schema.json
type: command
name: scale
version: "1"
code: ./src
environment: azureml:AzureML-sklearn-1.5@latest
inputs:
  data: {type: uri_folder}
  factor: {type: integer, default: 2}
outputs:
  scaled: {type: uri_folder}
command: python scale.py ${{inputs.data}} ${{inputs.factor}} ${{outputs.scaled}}
"""

TOTAL = """
$schema: https://azuremlschemas.azureedge.net/latest/commandComponent.schema.json
type: command
name: total
version: "1"
code: ./src
environment:
  image: mcr.microsoft.com/azureml/openmpi4.1.0-ubuntu22.04:latest
inputs:
  scaled: {type: uri_folder}
  scaled_uri: {type: uri_folder}
outputs:
  total: {type: uri_folder}
command: python total.py ${{inputs.scaled}} ${{inputs.scaled_uri}} ${{outputs.total}}
"""

SCALE_PY = """
import pathlib, sys
src, factor, out = pathlib.Path(sys.argv[1]), int(sys.argv[2]), pathlib.Path(sys.argv[3])
for f in sorted(src.rglob("*.csv")):
    values = [int(x) * factor for x in f.read_text().split()]
    (out / f.name).write_text(" ".join(map(str, values)))
print("scaled", sorted(p.name for p in out.iterdir()))
"""

TOTAL_PY = """
import pathlib, sys
src, uri, out = pathlib.Path(sys.argv[1]), sys.argv[2], pathlib.Path(sys.argv[3])
assert uri.startswith("azureml://"), uri
total = sum(int(x) for f in src.glob("*.csv") for x in f.read_text().split())
(out / "total.txt").write_text(f"{total} {uri}")
print("total", total)
"""


def upload_landing(azurite: Any, prefix: str, files: dict[str, str]) -> None:
    service = BlobServiceClient.from_connection_string(azurite.connection_string)
    container = service.get_container_client("landing")
    if not container.exists():
        container.create_container()
    for name, text in files.items():
        container.upload_blob(f"{prefix}/{name}", text.encode(), overwrite=True)
