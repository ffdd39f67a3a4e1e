"""Long-running operations as the MFE exposes them (Azure-AsyncOperation and Location polling).

An operation is a stored row (kind `operations`) named `{prefix}:{workspaceId}:{id}` like the
service's (`oe`, `od`, `jc`, ...). Whoever starts work creates one and later finishes it; an
operation may also carry a deadline (`completes_at`) after which it counts as Succeeded, which is
how a simulated provisioning delay is expressed without a background thread.

- `GET …/locations/{loc}/mfeOperationsStatus/{name}` -> 200 `{id,name,status,startTime,endTime,percentComplete}`
- `GET …/locations/{loc}/mfeOperationResults/{name}` -> 202 `{}` while running, 200 empty when done
- `GET /_emulator/operations` -> 200 `{"value": [{name,status,startTime,endTime}, …]}`: every operation,
  oldest first (emulator only: benchmarks measure Azure ML's own time from it, `bench/bench_rollout.py`)
"""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from devstack.aml.errors import ArmError
from devstack.aml.store import Tx
from devstack.aml.web import LOCATIONS, Call, Reply, Router

if TYPE_CHECKING:
    from devstack.aml.emulator import Emulator

KIND = "operations"
TERMINAL = frozenset({"Succeeded", "Failed", "Canceled"})
NEVER = "0001-01-01T00:00:00+00:00"  # the service's endTime while running


def register(r: Router) -> None:
    """The operation status and result polls the SDK follows."""
    r.add("GET", f"{LOCATIONS}/mfeOperationsStatus/(?P<op>[^/]+)", get_status)
    r.add("GET", f"{LOCATIONS}/mfeOperationResults/(?P<op>[^/]+)", get_result)
    r.add("GET", "/_emulator/operations", list_operations)


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat()


def create_operation(
    tx: Tx,
    workspace_id: str,
    prefix: str,
    *,
    status: str = "InProgress",
    completes_at: float | None = None,
    resource_id: str | None = None,
) -> str:
    """Store a running operation and return its name (used in the polling URLs)."""
    name = f"{prefix}:{workspace_id}:{uuid.uuid4()}"
    now = time.time()
    body = {"name": name, "status": status, "startTime": _iso(now), "endTime": NEVER, "percentComplete": 0.0}
    tx.put(KIND, name, body, meta={"completes_at": completes_at, "resource_id": resource_id})
    return name


def finish_operation(tx: Tx, name: str, status: str = "Succeeded", error: dict[str, Any] | None = None) -> None:
    """Move an operation to a terminal status (`error` = `{code, message}` for Failed)."""
    if status not in TERMINAL:
        raise ValueError(f"{status!r} is not a terminal status ({', '.join(sorted(TERMINAL))})")
    row = tx.get(KIND, name)
    if row is None:
        raise KeyError(name)
    body = dict(row.body)
    body.update(status=status, endTime=_iso(time.time()), percentComplete=100.0)
    if error is not None:
        body["error"] = error
    tx.put(KIND, name, body, meta={**row.meta, "completes_at": None})


def operation_state(tx: Tx, name: str) -> dict[str, Any] | None:
    """The operation's current body, finishing it first if its deadline has passed."""
    row = tx.get(KIND, name)
    if row is None:
        return None
    due = row.meta.get("completes_at")
    if row.body["status"] not in TERMINAL and due is not None and time.time() >= float(due):
        finish_operation(tx, name)
        row = tx.get(KIND, name)
        assert row is not None
    return row.body


def status_url(call: Call, location: str, name: str) -> str:
    sub = call.params.get("sub", "")
    return call.url(
        f"/subscriptions/{sub}/providers/Microsoft.MachineLearningServices/locations/{location}"
        f"/mfeOperationsStatus/{name}",
        **{"api-version": call.api_version or ""},
    )


def result_url(call: Call, location: str, name: str) -> str:
    sub = call.params.get("sub", "")
    return call.url(
        f"/subscriptions/{sub}/providers/Microsoft.MachineLearningServices/locations/{location}"
        f"/mfeOperationResults/{name}",
        **{"api-version": call.api_version or ""},
    )


def accepted_headers(
    emu: Emulator, call: Call, name: str, *, async_operation: bool = True, location: bool = True, timeout: str = "PT30M"
) -> dict[str, str]:
    """Headers of a 201/202 that starts an LRO, pointing the poller back at this emulator."""
    loc = emu.config.coords.location
    headers = {"x-ms-async-operation-timeout": timeout, "Retry-After": _retry_after(emu)}
    if async_operation:
        headers["Azure-AsyncOperation"] = status_url(call, loc, name)
    if location:
        headers["Location"] = result_url(call, loc, name)
    return headers


def _retry_after(emu: Emulator) -> str:
    value = emu.config.lro_retry_after
    return str(int(value)) if float(value).is_integer() else str(value)


def _operation_id(call: Call) -> str:
    return (
        f"/subscriptions/{call.params['sub']}/providers/Microsoft.MachineLearningServices/locations/"
        f"{call.params['loc']}/mfeOperationsStatus/{call.params['op']}"
    )


def get_status(emu: Emulator, call: Call) -> Reply:
    with emu.store.write() as tx:  # a write: a due operation is finished on read
        state = operation_state(tx, call.params["op"])
    if state is None:
        raise ArmError(404, "NotFound", f"Operation {call.params['op']} was not found.")
    body = {"id": _operation_id(call), **state}
    headers = {} if state["status"] in TERMINAL else {"Retry-After": _retry_after(emu)}
    return Reply(200, body, headers)


def get_result(emu: Emulator, call: Call) -> Reply:
    with emu.store.write() as tx:
        state = operation_state(tx, call.params["op"])
    if state is None:
        raise ArmError(404, "NotFound", f"Operation {call.params['op']} was not found.")
    status = state["status"]
    if status not in TERMINAL:
        here = call.url(call.raw_path, **{"api-version": call.api_version or ""})
        return Reply(202, {}, {"Location": here, "Retry-After": _retry_after(emu)})
    if status == "Failed":
        error = state.get("error") or {"code": "InternalServerError", "message": "The operation failed."}
        raise ArmError(400 if error.get("code") == "UserError" else 500, error["code"], error["message"])
    return Reply(200, empty=True)


def list_operations(emu: Emulator, call: Call) -> Reply:
    """Every stored operation with its start and end (the end is NEVER while it runs), oldest first."""
    with emu.store.read() as tx:
        rows = tx.rows(KIND, newest_first=False)
    keys = ("name", "status", "startTime", "endTime")
    listed = sorted(({k: row.body.get(k) for k in keys} for row in rows), key=lambda op: str(op["startTime"]))
    return Reply(200, {"value": listed})
