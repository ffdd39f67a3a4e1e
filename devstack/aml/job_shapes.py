"""What a stored job looks like: its kind, terminal states, and the bodies the service answers.

Shared by the job routes (jobs.py) and the local executor (runner.py), which creates child step
jobs and events in the same shapes; neither imports the other for them.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from devstack.aml.errors import bad_request

if TYPE_CHECKING:
    from devstack.aml.emulator import Emulator

KIND = "jobs"
TERMINAL = frozenset({"Completed", "Failed", "Canceled", "NotResponding"})


def now_iso() -> str:
    return datetime.now(UTC).isoformat()


def experiment_id(emu: Emulator, experiment: str) -> str:
    """Stable experiment GUID per name (RunCompleted events carry it)."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"{emu.config.coords.arm_id.lower()}/experiments/{experiment}"))


# --- response shapes ---------------------------------------------------------------------------

def _services(emu: Emulator, name: str) -> dict[str, Any]:
    coords = emu.config.coords

    def service(kind: str, endpoint: str) -> dict[str, Any]:
        return {"jobServiceType": kind, "port": None, "endpoint": endpoint, "status": None,
                "errorMessage": None, "properties": None, "nodes": None}

    return {
        "Tracking": service("Tracking", f"azureml://{coords.location}.api.azureml.ms/mlflow/v1.0{coords.arm_id}?"),
        "Studio": service("Studio", f"https://ml.azure.com/runs/{name}?wsid=/subscriptions/{coords.subscription_id}"
                                    f"/resourcegroups/{coords.resource_group}/workspaces/{coords.workspace}"),
    }


def _input(value: dict[str, Any]) -> dict[str, Any]:
    kind = value.get("jobInputType")
    if kind == "literal":
        return {"description": value.get("description"), "value": value.get("value"), "jobInputType": kind}
    out = {"description": value.get("description"), "uri": value.get("uri"),
           "mode": value.get("mode") or "ReadOnlyMount", "pathOnCompute": value.get("pathOnCompute"),
           "jobInputType": kind}
    return {**out, **{k: v for k, v in value.items() if k not in out}}


def output_body(value: dict[str, Any]) -> dict[str, Any]:
    out = {"description": value.get("description"), "uri": value.get("uri"), "assetName": value.get("assetName"),
           "assetVersion": value.get("assetVersion"), "mode": value.get("mode") or "ReadWriteMount",
           "pathOnCompute": value.get("pathOnCompute"), "autoDeleteSetting": value.get("autoDeleteSetting"),
           "jobOutputType": value.get("jobOutputType") or "uri_folder"}
    return {**out, **{k: v for k, v in value.items() if k not in out}}


def _common(emu: Emulator, name: str, req: dict[str, Any], status: str) -> dict[str, Any]:
    return {
        "description": req.get("description"),
        "tags": req.get("tags") or {},
        "properties": dict(req.get("properties") or {}),
        "parentJobName": req.get("parentJobName"),
        "displayName": req.get("displayName") or name,
        "status": status,
        "experimentName": req.get("experimentName") or "Default",
        "services": _services(emu, name),
        "computeId": req.get("computeId"),
        "isArchived": bool(req.get("isArchived", False)),
        "identity": req.get("identity"),
        "componentId": req.get("componentId"),
        "notificationSetting": req.get("notificationSetting"),
        "secretsConfiguration": req.get("secretsConfiguration"),
        "jobType": req["jobType"],
    }


def _compute_name(compute_id: str | None) -> str | None:
    return compute_id.rstrip("/").rsplit("/", 1)[-1] if compute_id else None


def command_properties(emu: Emulator, name: str, req: dict[str, Any]) -> dict[str, Any]:
    if not isinstance(req.get("command"), str) or not req["command"].strip():
        raise bad_request("properties.command is required for a command job.")
    if not req.get("environmentId"):
        raise bad_request("properties.environmentId is required for a command job.")
    status = "NotStarted" if req.get("computeId") else "Starting"
    props = _common(emu, name, req, status)
    props["identity"] = req.get("identity") or {"identityType": "AMLToken"}
    props["properties"] = {"_azureml.ComputeTargetType": "amlctrain",
                           "_azureml.ClusterName": _compute_name(req.get("computeId")), **props["properties"]}
    resources = req.get("resources") or {}
    outputs = {k: output_body(v) for k, v in (req.get("outputs") or {}).items()}
    outputs.setdefault("default", output_body({
        "uri": f"azureml://datastores/workspaceartifactstore/ExperimentRun/dcid.{name}", "mode": "ReadWriteMount",
    }))
    queue = req.get("queueSettings") or {}
    props.update({
        "resources": {"instanceCount": resources.get("instanceCount", 1),
                      "maxInstanceCount": resources.get("maxInstanceCount"),
                      "instanceType": resources.get("instanceType"), "locations": resources.get("locations"),
                      "properties": resources.get("properties"), "shmSize": resources.get("shmSize", "2g"),
                      "dockerArgs": resources.get("dockerArgs"), "dockerArgsList": resources.get("dockerArgsList")},
        "codeId": req.get("codeId"),
        "command": req["command"],
        "environmentId": req["environmentId"],
        "inputs": {k: _input(v) for k, v in (req.get("inputs") or {}).items()},
        "outputs": outputs,
        "distribution": req.get("distribution"),
        "autologgerSettings": req.get("autologgerSettings"),
        "limits": req.get("limits"),
        "environmentVariables": req.get("environmentVariables") or {},
        "parameters": req.get("parameters") or {},
        "queueSettings": {"jobTier": queue.get("jobTier"), "priority": queue.get("priority")},
    })
    return props


def pipeline_properties(emu: Emulator, name: str, req: dict[str, Any]) -> dict[str, Any]:
    jobs = req.get("jobs")
    if not isinstance(jobs, dict) or not jobs:
        raise bad_request("properties.jobs is required for a pipeline job and must name at least one node.")
    settings = req.get("settings") or {}
    props = _common(emu, name, req, "Preparing")
    literals = {k: v.get("value") for k, v in (req.get("inputs") or {}).items() if v.get("jobInputType") == "literal"}
    default_compute = _compute_name(settings.get("default_compute") or req.get("computeId")) or "serverless"
    props["properties"] = {
        "azureml.DevPlatv2": "true",
        "azureml.DatasetAccessMode": "Asset",
        "azureml.runsource": "azureml.PipelineRun",
        "runSource": "MFE",
        "runType": "HTTP",
        "azureml.parameters": json.dumps(literals),
        "azureml.continue_on_step_failure": str(bool(settings.get("continue_on_step_failure", True))),
        "azureml.continue_on_failed_optional_input": "True",
        "azureml.enforceRerun": str(bool(settings.get("force_rerun", False))),
        "azureml.defaultComputeName": default_compute,
        "azureml.defaultDataStoreName": "workspaceblobstore",
        "azureml.pipelineComponent": "pipelinerun",
        **props["properties"],
    }
    props.update({
        "settings": settings,
        "jobs": jobs,
        "inputs": {k: _input(v) for k, v in (req.get("inputs") or {}).items()},
        "outputs": {k: output_body(v) for k, v in (req.get("outputs") or {}).items()},
        "sourceJobId": req.get("sourceJobId"),
    })
    return props
