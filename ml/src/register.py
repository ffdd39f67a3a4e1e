"""Pipeline step `register`: register the trained model version with its metrics and lineage.

Lineage travels as tags *and* properties (tags are editable and searchable, properties are
immutable once set): data asset and version, the pipeline job name, the training-code hash and
every metric with the primary metric's name. Evergreen's gate reads them back from the registry.

Where the model files come from:
- `--model_uri` (the train output bound with `mode: direct`): Azure ML substitutes the output's
  datastore URI (`azureml://…/datastores/<ds>/paths/<path>`), so the model is registered *by
  reference*, nothing is uploaded, and the registry points at the files the train step wrote.
  A local executor that knows the datastore path of the train output passes it the same way.
- otherwise (`--model_uri` absent or a plain local path, as an executor without direct mode would
  substitute) the mounted `--model_dir` is registered by local path, which azure-ai-ml uploads to
  the workspace's default datastore.

Workspace and identity: explicit `AZURE_SUBSCRIPTION_ID` / `AZURE_RESOURCE_GROUP` /
`AZUREML_WORKSPACE_NAME` win; otherwise the run-context variables Azure ML sets in every job
(`AZUREML_ARM_SUBSCRIPTION` / `AZUREML_ARM_RESOURCEGROUP` / `AZUREML_ARM_WORKSPACE_NAME`).
The credential is `AzureMLOnBehalfOfCredential` when the job runs as the submitting user
(`OBO_ENDPOINT` set), else `DefaultAzureCredential` (the compute's managed identity in Azure ML;
`IDENTITY_ENDPOINT`/`IDENTITY_HEADER` locally). `AZUREML_DEV_URL_MFE` is honoured by MLClient.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from steplib import (
    METRICS_FILE,
    MODEL_FILE,
    MODEL_META_FILE,
    REGISTERED_MODEL_FILE,
    StepInputError,
    code_sha256,
    existing_dir,
    read_json,
    run_step,
    write_json,
)

log = logging.getLogger("evergreen.ml.register")

CODE_DIR = Path(__file__).resolve().parent
TAG_PREFIX = "evergreen."
TRACEPARENT_TAG = f"{TAG_PREFIX}traceparent"  # the W3C trace context Evergreen gave the retraining job
COPIED_JOB_TAGS = (TRACEPARENT_TAG,)  # the pipeline job's tags the model carries on (ModelRegistered brings them back)
REMOTE_PREFIXES = ("azureml://", "https://", "http://", "wasbs://", "wasb://", "abfss://", "abfs://")
# Azure ML asset names: start with a letter or digit; letters, digits, '-', '_' and '.'; at most 255.
MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,254}$")
REQUIRED_MODEL_FILES = (MODEL_FILE, MODEL_META_FILE, "score.py")

# (coordinate, explicit variable, variable Azure ML sets inside a job)
WORKSPACE_VARIABLES = (
    ("subscription_id", "AZURE_SUBSCRIPTION_ID", "AZUREML_ARM_SUBSCRIPTION"),
    ("resource_group", "AZURE_RESOURCE_GROUP", "AZUREML_ARM_RESOURCEGROUP"),
    ("workspace_name", "AZUREML_WORKSPACE_NAME", "AZUREML_ARM_WORKSPACE_NAME"),
)
# The pipeline (root) run first: that is the job Evergreen submitted and tracks; a bare command
# job has only its own run id.
JOB_NAME_VARIABLES = ("AZUREML_ROOT_RUN_ID", "AZUREML_RUN_ID")


@dataclass(frozen=True)
class WorkspaceCoords:
    """Where to register: the workspace's ARM coordinates."""

    subscription_id: str
    resource_group: str
    workspace_name: str


@dataclass(frozen=True)
class ModelSource:
    """What to pass as `Model(path=…)` and whether that is a remote reference or a local upload."""

    path: str
    remote: bool


def resolve_workspace(env: Mapping[str, str]) -> WorkspaceCoords:
    """Explicit variables win over Azure ML's run context; every missing one is named at once."""
    values: dict[str, str] = {}
    missing: list[str] = []
    for field_name, explicit, run_context in WORKSPACE_VARIABLES:
        value = env.get(explicit) or env.get(run_context)
        if value:
            values[field_name] = value
        else:
            missing.append(f"{explicit} (or {run_context})")
    if missing:
        raise StepInputError(f"workspace: set {', '.join(missing)}")
    return WorkspaceCoords(**values)


def resolve_job_name(explicit: str | None, env: Mapping[str, str]) -> str:
    """The job to record as lineage: an explicit name, else the pipeline run Azure ML reports."""
    if explicit and explicit.strip():
        return explicit.strip()
    for variable in JOB_NAME_VARIABLES:
        if env.get(variable):
            return env[variable]
    raise StepInputError(f"job name unknown: pass --job_name or set {' or '.join(JOB_NAME_VARIABLES)}")


def is_remote(uri: str) -> bool:
    return uri.strip().lower().startswith(REMOTE_PREFIXES)


def choose_model_source(model_uri: str | None, model_dir: Path) -> ModelSource:
    """Prefer the datastore URI (no upload, reachable by a local emulator); else the local folder."""
    if model_uri and is_remote(model_uri):
        return ModelSource(path=model_uri.strip(), remote=True)
    if model_uri:
        log.info("model_uri %s is a local path (no direct-mode binding); registering the folder by upload", model_uri)
    return ModelSource(path=str(model_dir), remote=False)


def validate_model_dir(model_dir: Path) -> None:
    """The registered folder must be deployable as is."""
    missing = [name for name in REQUIRED_MODEL_FILES if not (model_dir / name).is_file()]
    if missing:
        raise StepInputError(f"model: {', '.join(missing)} missing from {model_dir} (is it the train step's output?)")


def validate_names(model_name: str, data_asset: str, data_version: str) -> None:
    if not MODEL_NAME.match(model_name):
        raise StepInputError(
            f"model_name {model_name!r} is not a valid Azure ML asset name "
            "(letters, digits, '-', '_', '.', starting with a letter or digit, at most 255)"
        )
    if not data_asset.strip():
        raise StepInputError("data_asset is empty: pass the data asset name the model was trained on")
    if not data_version.strip():
        raise StepInputError("data_version is empty: pass the data asset version the model was trained on")


def metric_values(metrics_doc: Mapping[str, Any]) -> tuple[str, dict[str, float], dict[str, bool]]:
    """(primary metric, values, higher_is_better) from evaluate's metrics.json, validated."""
    metrics = metrics_doc.get("metrics")
    primary = metrics_doc.get("primary_metric")
    if not isinstance(metrics, dict) or not metrics:
        raise StepInputError(f"metrics: {METRICS_FILE} has no 'metrics' object")
    if not isinstance(primary, str) or primary not in metrics:
        raise StepInputError(f"metrics: primary_metric {primary!r} is not one of {', '.join(metrics)}")
    values: dict[str, float] = {}
    higher: dict[str, bool] = {}
    for name, entry in metrics.items():
        if not isinstance(entry, dict) or not isinstance(entry.get("value"), (int, float)):
            raise StepInputError(f"metrics: metric {name!r} has no numeric value")
        values[name] = float(entry["value"])
        higher[name] = bool(entry.get("higher_is_better", True))
    return primary, values, higher


def build_lineage(
    metrics_doc: Mapping[str, Any], *, data_asset: str, data_version: str, job_name: str, code_hash: str
) -> tuple[dict[str, str], dict[str, str]]:
    """Tags and properties for the model version; all values are strings, as the registry stores them."""
    primary, values, higher = metric_values(metrics_doc)
    tags = {
        f"{TAG_PREFIX}data_asset": data_asset,
        f"{TAG_PREFIX}data_version": str(data_version),
        f"{TAG_PREFIX}job_name": job_name,
        f"{TAG_PREFIX}code_sha256": code_hash,
        f"{TAG_PREFIX}metric_primary": primary,
        **{f"{TAG_PREFIX}metric.{name}": repr(value) for name, value in sorted(values.items())},
    }
    properties = {
        **tags,
        **{f"{TAG_PREFIX}metric.{name}.higher_is_better": str(higher[name]).lower() for name in sorted(values)},
    }
    return tags, properties


def find_existing(client: Any, model_name: str, job_name: str) -> Any | None:
    """A version this pipeline run already registered (a retried step must not add another)."""
    from azure.core.exceptions import ResourceNotFoundError

    try:
        for model in client.models.list(name=model_name):
            if (model.tags or {}).get(f"{TAG_PREFIX}job_name") == job_name:
                return model
    except ResourceNotFoundError:
        return None
    return None


def job_tags_to_copy(client: Any, job_name: str) -> dict[str, str]:
    """The tags in COPIED_JOB_TAGS that the pipeline job `job_name` has (its trace context, so the model's
    promotion continues the trace that submitted the job).

    Best effort: if the job cannot be read (an Azure error), that is logged and the model is registered
    without them; the trace then breaks at the model, the registration does not fail.
    """
    from azure.core.exceptions import AzureError

    try:
        tags = client.jobs.get(job_name).tags or {}
    except AzureError as exc:
        log.warning("job %s: its tags could not be read (%s); the model will not carry %s", job_name,
                    type(exc).__name__, ", ".join(COPIED_JOB_TAGS))
        return {}
    return {key: str(tags[key]) for key in COPIED_JOB_TAGS if tags.get(key)}


def register_model(
    client: Any,
    *,
    model_name: str,
    source: ModelSource,
    tags: dict[str, str],
    properties: dict[str, str],
    description: str,
) -> Any:
    """Create the model version (auto-incremented), or return the one this run already made."""
    from azure.ai.ml.constants import AssetTypes
    from azure.ai.ml.entities import Model

    existing = find_existing(client, model_name, tags[f"{TAG_PREFIX}job_name"])
    if existing is not None:
        log.info("model %s:%s already registered by this job; reusing it", existing.name, existing.version)
        return existing
    model = Model(
        name=model_name,
        path=source.path,
        type=AssetTypes.CUSTOM_MODEL,
        description=description,
        tags=tags,
        properties=properties,
    )
    return client.models.create_or_update(model)


def build_ml_client(coords: WorkspaceCoords, env: Mapping[str, str]) -> Any:
    """MLClient from the job's identity (see the module docstring for the choice of credential)."""
    from azure.ai.ml import MLClient

    credential: Any
    if env.get("OBO_ENDPOINT"):
        from azure.ai.ml.identity import AzureMLOnBehalfOfCredential

        credential = AzureMLOnBehalfOfCredential()
    else:
        from azure.identity import DefaultAzureCredential

        credential = DefaultAzureCredential(
            managed_identity_client_id=env.get("DEFAULT_IDENTITY_CLIENT_ID") or env.get("AZURE_CLIENT_ID") or None,
            exclude_interactive_browser_credential=True,
        )
    return MLClient(
        credential,
        subscription_id=coords.subscription_id,
        resource_group_name=coords.resource_group,
        workspace_name=coords.workspace_name,
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Register the trained model with metrics and lineage.")
    parser.add_argument("--model_dir", required=True, help="train's model output, mounted")
    parser.add_argument("--model_uri", default=None, help="train's model output as a datastore URI (direct mode)")
    parser.add_argument("--metrics", required=True, help="evaluate's metrics output folder")
    parser.add_argument("--model_name", required=True)
    parser.add_argument("--data_asset", required=True)
    parser.add_argument("--data_version", required=True)
    parser.add_argument("--job_name", default=None, help="override; default $AZUREML_ROOT_RUN_ID / $AZUREML_RUN_ID")
    parser.add_argument("--registered_model", required=True, help="output folder for registered_model.json")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None, client: Any = None, env: Mapping[str, str] | None = None) -> None:
    """Register; `client` and `env` are injectable so the flow is testable without a workspace."""
    args = parse_args(argv)
    env = os.environ if env is None else env
    validate_names(args.model_name, args.data_asset, args.data_version)
    model_dir = existing_dir(args.model_dir, "model_dir")
    validate_model_dir(model_dir)
    meta = read_json(model_dir / MODEL_META_FILE, "model_dir")
    metrics_doc = read_json(existing_dir(args.metrics, "metrics") / METRICS_FILE, "metrics")
    job_name = resolve_job_name(args.job_name, env)
    # The hash train recorded is the code that produced the model; ours is the same folder in
    # this pipeline, so it is only the fallback for models trained elsewhere.
    code_hash = str(meta.get("code_sha256") or code_sha256(CODE_DIR))
    tags, properties = build_lineage(
        metrics_doc, data_asset=args.data_asset, data_version=args.data_version, job_name=job_name, code_hash=code_hash
    )
    source = choose_model_source(args.model_uri, model_dir)
    if client is None:
        client = build_ml_client(resolve_workspace(env), env)
    copied = job_tags_to_copy(client, job_name)
    tags, properties = {**tags, **copied}, {**properties, **copied}
    primary = tags[f"{TAG_PREFIX}metric_primary"]
    description = (
        f"Trained by pipeline job {job_name} on {args.data_asset}:{args.data_version}; "
        f"{primary}={tags[f'{TAG_PREFIX}metric.{primary}']}"
    )
    registered = register_model(
        client, model_name=args.model_name, source=source, tags=tags, properties=properties, description=description
    )
    result = {
        "name": registered.name,
        "version": str(registered.version),
        "id": getattr(registered, "id", None),
        "path": source.path,
        "registered_by": "datastore_uri" if source.remote else "local_upload",
        "job_name": job_name,
        "data_asset": args.data_asset,
        "data_version": args.data_version,
        "code_sha256": code_hash,
        "primary_metric": primary,
        "metrics": metric_values(metrics_doc)[1],
    }
    write_json(Path(args.registered_model) / REGISTERED_MODEL_FILE, result)
    log.info("registered model %s:%s (%s)", result["name"], result["version"], result["registered_by"])
    sys.stdout.write(json.dumps({"name": result["name"], "version": result["version"]}) + "\n")


if __name__ == "__main__":
    run_step("register", main)
