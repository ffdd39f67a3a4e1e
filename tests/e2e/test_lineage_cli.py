"""`python -m shared.cli lineage` on the local stack, run as an operator runs it, after a real flow.

A folder drop → data version → retraining pipeline (prep → train → evaluate → register on the emulator) →
registered model → the gate. Then lineage from the data version goes forward to the model and the job
with its steps, and lineage from the model goes back to the drop's folder and forward to the gate's
decision (and its deployment when the gate promoted it). The table is saved to
`test-artifacts/lineage-model.txt` (the README shows one).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

from devstack.demo import churn_rows
from devstack.stack import Stack
from shared.domain.retrain import job_name_for
from tests.e2e.helpers import wait_for, with_tag

pytestmark = pytest.mark.e2e
REPO = Path(__file__).resolve().parents[2]
DATASET, MODEL = "churn-training", "churn-model"


def cli(local_stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "shared.cli", *args], cwd=REPO, env={**os.environ, **local_stack.env},
                          capture_output=True, text=True, timeout=180)


def lineage(local_stack: Stack, ref: str) -> dict[str, Any]:
    done = cli(local_stack, "lineage", ref, "--json")
    assert done.returncode == 0, done.stderr
    doc: dict[str, Any] = json.loads(done.stdout)
    return doc


def test_lineage_of_a_dropped_folder_and_of_the_model_trained_on_it(local_stack: Stack, ml: Any, landing: Any) -> None:
    folder = f"churn/lineage-{uuid.uuid4().hex[:8]}/"
    for part in range(2):
        landing.upload_blob(f"{folder}part-{part}.csv", churn_rows(200, seed=part), overwrite=True)
    landing.upload_blob(f"{folder}_SUCCESS", b"", overwrite=True)
    (data,) = wait_for(lambda: with_tag(ml, DATASET, "evergreen.source_folder", f"landing/{folder}"),
                       "the data version")
    job_name = job_name_for(DATASET, str(data.version))

    def trained() -> dict[str, Any] | None:
        doc = lineage(local_stack, f"{DATASET}:{data.version}")
        # the register step and the gate can finish before the pipeline job itself is marked Completed
        done = any(j["name"] == job_name and j["status"] == "Completed" for j in doc["jobs"])
        gated = any(d["kind"].startswith("promotion.") for d in doc["decisions"])
        return doc if done and doc["models"] and gated else None

    forward = wait_for(trained, "a model trained on the data version, through the gate", timeout=300)
    (model,) = forward["models"]
    assert (model["name"], model["data"], model["job"]) == (MODEL, f"{DATASET}:{data.version}", job_name)
    (job,) = [j for j in forward["jobs"] if j["name"] == job_name]
    assert job["status"] == "Completed" and job["tags"]["evergreen.data_version"] == str(data.version)
    assert [s["name"] for s in job["steps"]] == ["prep", "train", "evaluate", "register"]
    assert ("source_folder", f"landing/{folder}") in [(b["role"], b["path"]) for b in forward["data"][0]["blobs"]]

    back = lineage(local_stack, f"{MODEL}:{model['version']}")
    assert back["subject"] == {"kind": "model", "name": MODEL, "version": model["version"]}
    assert [f"{d['name']}:{d['version']}" for d in back["data"]] == [f"{DATASET}:{data.version}"]
    (decision, *_) = back["decisions"]
    assert decision["assets"]["model"] == f"{MODEL}:{model['version']}"
    if decision["kind"] == "promotion.started":  # the gate promoted it: its deployment is in the chain
        assert [d["model"] for d in back["deployments"]] == [f"{MODEL}:{model['version']}"]

    table = cli(local_stack, "lineage", f"{MODEL}:{model['version']}")
    assert table.returncode == 0, table.stderr
    assert f"Lineage of model {MODEL}:{model['version']}" in table.stdout and job_name in table.stdout
    artifacts = REPO / "test-artifacts"
    artifacts.mkdir(exist_ok=True)
    (artifacts / "lineage-model.txt").write_text(f"$ python -m shared.cli lineage {MODEL}:{model['version']}\n"
                                                 + table.stdout, encoding="utf-8")


def test_a_malformed_reference_exits_2_and_an_unknown_version_1(local_stack: Stack) -> None:
    malformed = cli(local_stack, "lineage", "churn-model")
    assert malformed.returncode == 2 and "NAME:VERSION" in malformed.stderr
    unknown = cli(local_stack, "lineage", f"{MODEL}:999999")
    assert unknown.returncode == 1 and unknown.stderr.startswith("not found:")
