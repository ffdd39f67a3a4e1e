"""Jobs (command and pipeline): submit, get, list, cancel, and the emulator's log inspection route.

A PUT stores the job as the service answers it (the fields it adds, `status` Starting/NotStarted
for command jobs and Preparing for pipelines) and hands it to the runner (runner.py), which
executes it locally and moves it through the real lifecycle.

The job name is an idempotency key, as in the service: a PUT of an existing name never starts a
second run. If only description, tags, displayName, properties or isArchived differ it is an
update (200); any other difference is the service's 400 "A job with this name already exists…".

Child step jobs of a pipeline are stored like jobs, but as in the service a GET of one answers
`properties: null` (the SDK then turns to RunHistory) and the workspace list leaves them out;
their status and logs are inspectable through `GET /_emulator/jobs/{pipeline}/logs`.
"""

from __future__ import annotations

import json
import logging
import uuid
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from devstack.aml import lro
from devstack.aml.errors import ArmError, bad_request, detail, not_found
from devstack.aml.web import Call, Reply, W, paged

if TYPE_CHECKING:
    from devstack.aml.app import Emulator
    from devstack.aml.store import Tx
    from devstack.aml.web import Router

log = logging.getLogger(__name__)

KIND = "jobs"
TERMINAL = frozenset({"Completed", "Failed", "Canceled", "NotResponding"})
MUTABLE = ("description", "tags", "displayName", "properties", "isArchived")
JOB_EXISTS = (
    "A job with this name already exists. If you are trying to create a new job, use a different name. If you "
    "are trying to update an existing job, the existing job's Settings,  Inputs,  Outputs,  Jobs,  InputBindings,  "
    "OutputBindings cannot be changed. Only description, tags, displayName, properties, and isArchived can be "
    "updated."
)
SUPPORTED = ("Command", "Pipeline")


def register(r: Router) -> None:
    """Add the job routes and `/_emulator/jobs/{name}/logs` to the emulator's router."""
    from devstack.aml import components

    components.register(r)
    r.add("GET", f"{W}/jobs", list_jobs)
    r.add("GET", f"{W}/jobs/(?P<name>[^/]+)", get_job)
    r.add("PUT", f"{W}/jobs/(?P<name>[^/]+)", put_job)
    r.add("POST", f"{W}/jobs/(?P<name>[^/]+)/cancel", cancel_job)
    r.add("GET", "/_emulator/jobs/(?P<name>[^/]+)/logs", get_logs)


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


def _output(value: dict[str, Any]) -> dict[str, Any]:
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
    outputs = {k: _output(v) for k, v in (req.get("outputs") or {}).items()}
    outputs.setdefault("default", _output({
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
        "outputs": {k: _output(v) for k, v in (req.get("outputs") or {}).items()},
        "sourceJobId": req.get("sourceJobId"),
    })
    return props


# --- handlers ----------------------------------------------------------------------------------

def _job_not_found(name: str) -> ArmError:
    return not_found("JobNotFound", f"Job {name} not found.")


def _runner(emu: Emulator) -> Any:
    from devstack.aml.runner import runner_for

    return runner_for(emu)


def get_job(emu: Emulator, call: Call) -> Reply:
    _runner(emu)  # recovers jobs orphaned by a restart before anyone reads them
    with emu.store.read() as tx:
        row = tx.get(KIND, call.params["name"])
    if row is None:
        raise _job_not_found(call.params["name"])
    if row.meta.get("parent"):
        # As the service does: pipeline step jobs come back without properties (the SDK then asks
        # RunHistory, which the emulator does not serve); /_emulator/jobs/{parent}/logs shows them.
        return Reply(200, {**row.body, "properties": None})
    return Reply(200, row.body)


def list_jobs(emu: Emulator, call: Call) -> Reply:
    _runner(emu)
    view = (call.query.get("listviewtype") or "ActiveOnly").lower()
    with emu.store.read() as tx:
        rows = [r for r in tx.rows(KIND) if not r.meta.get("parent")]
    items = [r.body for r in rows
             if view == "all" or (view == "archivedonly") == bool(r.body["properties"].get("isArchived"))]
    tag = call.query.get("tag")
    if tag:
        items = [i for i in items if tag in (i["properties"].get("tags") or {})]
    return paged(call, items, emu.config.page_size)


def _immutable_view(req: dict[str, Any]) -> str:
    return json.dumps({k: v for k, v in req.items() if k not in MUTABLE}, sort_keys=True)


def put_job(emu: Emulator, call: Call) -> Reply:
    name = call.params["name"]
    req = call.body_object()["properties"]
    job_type = req.get("jobType")
    if job_type not in SUPPORTED:
        raise bad_request(f"jobType '{job_type}' is not supported by the local emulator ({', '.join(SUPPORTED)}).")
    build = command_properties if job_type == "Command" else pipeline_properties
    runner = _runner(emu)
    with emu.store.write() as tx:
        existing = tx.get(KIND, name)
        if existing is not None:
            return _update_existing(tx, call, existing.body, existing.meta, req)
        props = build(emu, name, req)
        body = {"id": f"{emu.config.coords.arm_id}/jobs/{name}", "name": name,
                "type": "Microsoft.MachineLearningServices/workspaces/jobs", "properties": props,
                "systemData": {"createdAt": now_iso(), "createdBy": call.principal.name,
                               "createdByType": call.principal.kind}}
        tx.put(KIND, name, body, meta={"request": req, "base_url": call.base_url, "owner": runner.owner})
    runner.submit(name)
    location = call.url(call.raw_path, **{"api-version": call.api_version or ""})
    return Reply(201, body, {"Location": location})


def _update_existing(tx: Tx, call: Call, body: dict[str, Any], meta: dict[str, Any], req: dict[str, Any]) -> Reply:
    """Same name again: an update of the mutable fields, or the service's 400; never a second run."""
    if _immutable_view(req) != _immutable_view(meta.get("request") or {}):
        raise ArmError(400, "UserError", JOB_EXISTS,
                       details=[detail("JobPropertyImmutable", JOB_EXISTS)])
    props = dict(body["properties"])
    for key in ("description", "tags", "displayName", "isArchived"):
        if key in req:
            props[key] = req[key]
    props["properties"] = {**props["properties"], **(req.get("properties") or {})}
    updated = {**body, "properties": props}
    tx.put(KIND, body["name"], updated, meta={**meta, "request": req})
    return Reply(200, updated)


def cancel_job(emu: Emulator, call: Call) -> Reply:
    """202 + Location (`jc:{workspaceId}:{job}`); the runner kills the steps and finishes the operation."""
    name = call.params["name"]
    runner = _runner(emu)
    op = f"jc:{emu.config.coords.workspace_id}:{name}"
    with emu.store.write() as tx:
        row = tx.get(KIND, name)
        if row is None:
            raise _job_not_found(name)
        status = row.body["properties"]["status"]
        if tx.get(lro.KIND, op) is None or status not in TERMINAL:
            tx.put(lro.KIND, op, {"name": op, "status": "InProgress", "startTime": now_iso(), "endTime": lro.NEVER,
                                  "percentComplete": 0.0}, meta={"resource_id": row.body["id"]})
        if status in TERMINAL:
            lro.finish_operation(tx, op)
        elif status != "CancelRequested":
            runner.set_status(tx, row.name, "CancelRequested")
    if status not in TERMINAL:
        runner.cancel(name)
    headers = lro.accepted_headers(emu, call, op, async_operation=False, timeout="PT1H")
    headers.pop("Retry-After", None)  # as recorded; the SDK reads this 202's Retry-After as an int
    return Reply(202, None, headers)


def get_logs(emu: Emulator, call: Call) -> Reply:
    """Inspection (devstack only): status and captured stdout/stderr of a job and its steps."""
    name = call.params["name"]
    with emu.store.read() as tx:
        row = tx.get(KIND, name)
        if row is None:
            raise _job_not_found(name)
        children = {node: tx.get(KIND, child) for node, child in (row.meta.get("children") or {}).items()}
    steps = {node: {"jobName": child.body["name"], "status": child.body["properties"]["status"],
                    "log": child.meta.get("log", "")}
             for node, child in children.items() if child is not None}
    return Reply(200, {"name": row.body["name"], "status": row.body["properties"]["status"],
                       "error": row.meta.get("error"), "log": row.meta.get("log", ""), "steps": steps})
