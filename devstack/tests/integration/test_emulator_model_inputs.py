"""Model inputs of jobs on the Azure ML emulator: `azureml:<model>:<version>` → the model version's files.

Azure ML mounts a `custom_model`/`mlflow_model` input as the registered model's folder; the emulator
downloads it from Azurite into the step's input folder. An optional input left unset is absent (its
`$[[…]]` block vanishes). The comparison pipeline (ml/compare.yml) runs on it end to end.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from azure.ai.ml import Input, Output, command, load_job
from azure.ai.ml.entities import Data, Model
from azure.storage.blob import BlobServiceClient

from devstack.procs import REPO_ROOT
from devstack.testing.aml import AmlInfo
from devstack.testing.workloads import CURATED
from devstack.tests.integration.test_emulator_jobs import blob_text, job_logs, unique, wait_status

ML_SRC = REPO_ROOT / "ml" / "src"
LIST_PY = """
import argparse, pathlib
p = argparse.ArgumentParser(); p.add_argument("--model"); p.add_argument("--extra"); p.add_argument("--out")
a = p.parse_args()
root = pathlib.Path(a.model)
files = sorted(f"{x.relative_to(root).as_posix()}={x.read_text()}" for x in root.rglob("*") if x.is_file())
pathlib.Path(a.out, "files.txt").write_text(";".join(files) + f"|extra={a.extra}")
"""


def upload_folder(azurite: Any, prefix: str, folder: Path) -> None:
    """Every file of `folder` (binary as is) under `landing/<prefix>/`."""
    container = BlobServiceClient.from_connection_string(azurite.connection_string).get_container_client("landing")
    if not container.exists():
        container.create_container()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        container.upload_blob(f"{prefix}/{path.relative_to(folder).as_posix()}", path.read_bytes(), overwrite=True)


def register_model(ml_client: Any, azurite: Any, name: str, version: str, folder: Path) -> None:
    prefix = f"models/{name}/{version}"
    upload_folder(azurite, prefix, folder)
    ml_client.models.create_or_update(Model(name=name, version=version, type="custom_model",
                                            path=f"azureml://datastores/landing/paths/{prefix}/"))


def test_a_command_job_sees_the_model_files(ml_client, aml: AmlInfo, azurite, tmp_path: Path) -> None:
    name = unique("model-files").replace("_", "-")
    for version, text in (("1", "one"), ("2", "two")):
        folder = tmp_path / version
        (folder / "sub").mkdir(parents=True)
        (folder / "model.txt").write_text(text)
        (folder / "sub" / "meta.txt").write_text(f"meta {text}")
        register_model(ml_client, azurite, name, version, folder)
    code = tmp_path / "src"
    code.mkdir()
    (code / "list.py").write_text(LIST_PY)
    seen = {}
    for ref in (f"azureml:{name}:1", f"{name}@latest"):
        job_name = unique("model-input")
        job = command(
            name=job_name, code=str(code), environment=CURATED, experiment_name="evergreen-tests",
            command="python list.py --model ${{inputs.model}} $[[--extra ${{inputs.extra}}]] --out ${{outputs.out}}",
            inputs={"model": Input(type="custom_model", path=ref)}, outputs={"out": Output(type="uri_folder")},
        )
        ml_client.jobs.create_or_update(job)
        assert wait_status(ml_client, job_name, {"Completed"}) == "Completed", job_logs(aml, job_name)
        seen[ref] = blob_text(azurite, "azureml-blobstore", f"azureml/{job_name}/out/files.txt")
    assert seen[f"azureml:{name}:1"] == "model.txt=one;sub/meta.txt=meta one|extra=None"
    assert seen[f"{name}@latest"] == "model.txt=two;sub/meta.txt=meta two|extra=None"


def test_a_missing_model_version_fails_the_job_naming_it(ml_client, aml: AmlInfo) -> None:
    name = unique("no-model")
    job = command(name=name, environment=CURATED, experiment_name="evergreen-tests",
                  command="ls ${{inputs.model}}",
                  inputs={"model": Input(type="custom_model", path="azureml:no-such-model:9")})
    ml_client.jobs.create_or_update(job)
    assert wait_status(ml_client, name, {"Failed"}) == "Failed"
    error = job_logs(aml, name)["error"]
    assert error.startswith("Model ") and "no-such-model/versions/9" in error  # the SDK sends an ARM id


def churn_model(tmp_path: Path) -> Path:
    """A model folder as the retraining pipeline's train step writes it, from a small generated drop."""
    def step(*argv: str) -> None:
        subprocess.run([sys.executable, *argv], cwd=ML_SRC, check=True, capture_output=True, timeout=180)

    step("make_churn_data.py", "--out_dir", str(tmp_path / "drop"), "--rows", "400", "--seed", "5",
         "--extra_columns")
    step("prep.py", "--training_data", str(tmp_path / "drop"), "--train_data", str(tmp_path / "train"),
         "--test_data", str(tmp_path / "test"))
    step("train.py", "--train_data", str(tmp_path / "train"), "--model", str(tmp_path / "model"))
    return tmp_path / "model"


def test_the_comparison_pipeline_runs_with_and_without_a_champion(ml_client, aml: AmlInfo, azurite,
                                                                  tmp_path: Path) -> None:
    model_name, data_name = unique("churn-model").replace("_", "-"), unique("churn-holdout")
    model = churn_model(tmp_path)
    register_model(ml_client, azurite, model_name, "1", model)
    register_model(ml_client, azurite, model_name, "2", model)
    subprocess.run([sys.executable, str(ML_SRC / "make_churn_data.py"), "--out_dir", str(tmp_path / "holdout"),
                    "--rows", "300", "--seed", "6", "--holdout"], check=True, timeout=120)
    upload_folder(azurite, f"holdout/{data_name}", tmp_path / "holdout")
    ml_client.data.create_or_update(Data(name=data_name, version="1", type="uri_folder",
                                         path=f"azureml://datastores/landing/paths/holdout/{data_name}/"))
    docs = {}
    for champion in (None, "1"):
        job: Any = load_job(REPO_ROOT / "ml" / "compare.yml")
        job.name = unique("compare")
        job.inputs.challenger_model = Input(type="custom_model", path=f"azureml:{model_name}:2")
        job.inputs.challenger_name = f"{model_name}:2"
        job.inputs.evaluation_data = Input(type="uri_folder", path=f"azureml:{data_name}:1")
        job.inputs.data_asset, job.inputs.data_version, job.inputs.resamples = data_name, "1", 100
        if champion is not None:
            job.jobs["compare"].inputs.champion_model = Input(type="custom_model",
                                                             path=f"azureml:{model_name}:{champion}")
            job.jobs["compare"].inputs.champion_name = f"{model_name}:{champion}"
        ml_client.jobs.create_or_update(job)
        assert wait_status(ml_client, job.name, {"Completed"}, timeout=180) == "Completed", job_logs(aml, job.name)
        path = ml_client.jobs.get(job.name).outputs["comparison"].path.split("/paths/", 1)[1]
        docs[champion] = json.loads(blob_text(azurite, "azureml-blobstore", path + "comparison.json"))
    alone, paired = docs[None], docs["1"]
    assert alone["champion"] is None and alone["difference"] is None
    assert alone["challenger"]["model"] == f"{model_name}:2" and alone["evaluation"]["rows"] == 300
    assert alone["evaluation"]["data_asset"] == data_name and alone["seed"] == 7
    assert paired["champion"]["model"] == f"{model_name}:1"
    assert paired["difference"] == {"metric": "roc_auc", "estimate": 0.0, "low": 0.0, "high": 0.0}  # same files
    assert {s["column"] for s in paired["slices"]} == {"region", "contract"}
