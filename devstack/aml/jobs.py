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
from typing import TYPE_CHECKING, Any

from devstack.aml import lro
from devstack.aml.errors import ArmError, bad_request, detail, not_found
from devstack.aml.job_shapes import KIND, TERMINAL, command_properties, now_iso, pipeline_properties
from devstack.aml.runner import Runner, runner_for
from devstack.aml.web import Call, Reply, Router, W, paged

if TYPE_CHECKING:
    from devstack.aml.emulator import Emulator
    from devstack.aml.store import Tx

log = logging.getLogger(__name__)

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
    r.add("GET", f"{W}/jobs", list_jobs)
    r.add("GET", f"{W}/jobs/(?P<name>[^/]+)", get_job)
    r.add("PUT", f"{W}/jobs/(?P<name>[^/]+)", put_job)
    r.add("POST", f"{W}/jobs/(?P<name>[^/]+)/cancel", cancel_job)
    r.add("GET", "/_emulator/jobs/(?P<name>[^/]+)/logs", get_logs)


# --- handlers ----------------------------------------------------------------------------------

def _job_not_found(name: str) -> ArmError:
    return not_found("JobNotFound", f"Job {name} not found.")


def _runner(emu: Emulator) -> Runner:
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
