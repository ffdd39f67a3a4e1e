"""Managed online endpoints and deployments: ARM resources, their LROs, and local serving.

Storage: an endpoint is a row of kind `onlineEndpoints` (meta: keys, current operation, whether it
ever succeeded); a deployment a row of kind `onlineEndpoints/deployments` whose parent is the
endpoint (meta: operation, working folder, fault). Bodies carry `provisioningState`, which worker
threads move along (Creating/Updating/Scaling/Deleting -> Succeeded/Failed) while the operation row
(`lro.py`, `oe`/`od` prefixes as in the recordings) tells pollers the same.

Provisioning a deployment is real (serving.py): the model's files are downloaded from Azurite, the
scoring script imported in its own process, `init()` called, and the LRO succeeds only once the
process answers its liveness check; it never finishes sooner than `provisioning_delay`, so
pollers see `Updating` first. Scoring script: `codeConfiguration.codeId` (a code asset version,
`codeUri` = blob folder) + `scoringScript`; without a code configuration, a `score.py` found in the
model folder (top level or one folder down) is used, a local convenience Azure does not have.

Faults (for rollback tests), `EVERGREEN_FAULT` = `provisioning` | `init` | `smoke`, from a
deployment tag or environment variable of that name, or queued by
`POST /_emulator/faults {"model": "<name>", "version": "<v>"?, "fault": "...", "times": 1}` for the
next deployments of that model (`GET` lists, `DELETE` clears).
"""

from __future__ import annotations

import logging
import re
import secrets
import threading
import time
import weakref
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from devstack.aml import lro
from devstack.aml.errors import ArmError, bad_request, not_found
from devstack.aml.serving import (
    LaunchSpec,
    ProvisioningError,
    RouteInfo,
    ServingManager,
    fetch,
    launch,
)
from devstack.aml.store import Row, Tx
from devstack.aml.web import Call, Reply, Router, W, paged

if TYPE_CHECKING:
    from devstack.aml.emulator import Emulator

log = logging.getLogger(__name__)

EP = "onlineEndpoints"
DEP = "onlineEndpoints/deployments"
FAULTS = "emulatorFaults"
FAULT_KINDS = ("provisioning", "init", "smoke")
AUTH_MODES = {"key": "Key", "amltoken": "AMLToken", "aadtoken": "AADToken"}
IN_PROGRESS = frozenset({"Creating", "Updating", "Scaling", "Deleting"})
_NAME = re.compile(r"^[a-zA-Z][a-zA-Z0-9-]{1,30}[a-zA-Z0-9]$")
_MODEL_ID = re.compile(r"/workspaces/[^/]+/models/(?P<name>[^/]+)/versions/(?P<version>[^/]+)$", re.IGNORECASE)
_CODE_ID = re.compile(r"/workspaces/[^/]+/codes/(?P<name>[^/]+)/versions/(?P<version>[^/]+)$", re.IGNORECASE)
_PROBE = {"failureThreshold": 30, "successThreshold": 1, "timeout": "PT2S", "period": "PT10S", "initialDelay": "PT10S"}


def register(r: Router) -> None:
    ep = f"{W}/onlineEndpoints"
    one = f"{ep}/(?P<ep>[^/]+)"
    r.add("GET", ep, list_endpoints)
    r.add("GET", one, get_endpoint)
    r.add("PUT", one, put_endpoint)
    r.add("DELETE", one, delete_endpoint)
    r.add("POST", f"{one}/listKeys", list_keys)
    r.add("POST", f"{one}/token", get_token)
    r.add("GET", f"{one}/deployments", list_deployments)
    r.add("GET", f"{one}/deployments/(?P<d>[^/]+)", get_deployment)
    r.add("PUT", f"{one}/deployments/(?P<d>[^/]+)", put_deployment)
    r.add("DELETE", f"{one}/deployments/(?P<d>[^/]+)", delete_deployment)
    r.add("POST", f"{one}/deployments/(?P<d>[^/]+)/getLogs", get_logs)
    r.add("GET", "/_emulator/faults", list_faults)
    r.add("POST", "/_emulator/faults", add_fault)
    r.add("DELETE", "/_emulator/faults", clear_faults)


# --- pure rules (unit-tested) --------------------------------------------------------------------

def validate_name(kind: str, name: str) -> None:
    if not _NAME.match(name):
        raise bad_request(
            f"{kind} name '{name}' is invalid: it must be 3-32 characters, start with a letter, contain only "
            "letters, digits and '-', and end with a letter or digit."
        )


def _weights(field: str, value: Any) -> dict[str, int]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(
        isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 100 for v in value.values()
    ):
        raise bad_request(f"properties.{field} must map deployment names to integer percentages 0-100.")
    return {str(k): int(v) for k, v in value.items()}


def validate_traffic(traffic: dict[str, int], mirror: dict[str, int], deployments: dict[str, str]) -> None:
    """Azure's rules; `deployments` maps lower-case deployment name -> provisioningState."""
    for field, weights in (("traffic", traffic), ("mirrorTraffic", mirror)):
        unknown = [n for n in weights if n.lower() not in deployments]
        if unknown:
            raise bad_request(f"Invalid {field}: deployment(s) {', '.join(sorted(unknown))} do not exist in this "
                              "endpoint.")
    total = sum(traffic.values())
    if total not in (0, 100):
        raise bad_request(f"Invalid traffic: the traffic weights must sum to 100 or 0, got {total}.")
    not_ready = [n for n, w in {**traffic, **mirror}.items() if w > 0 and deployments[n.lower()] != "Succeeded"]
    if not_ready:
        raise bad_request(f"Invalid traffic: deployment(s) {', '.join(sorted(not_ready))} are not in a Succeeded "
                          "state and cannot take traffic.")
    for name, weight in mirror.items():
        if weight > 50:
            raise bad_request(f"Invalid mirrorTraffic: at most 50% can be mirrored, got {weight} for {name}.")
        if weight > 0 and traffic.get(name, 0) > 0:
            raise bad_request(f"Invalid mirrorTraffic: deployment {name} takes live traffic and cannot also "
                              "receive mirrored traffic.")


def tail_lines(text: str, tail: int | None) -> str:
    if tail is None or tail <= 0:
        return text
    lines = text.splitlines(keepends=True)
    return "".join(lines[-tail:])


# --- manager per emulator ------------------------------------------------------------------------

_MANAGERS: weakref.WeakKeyDictionary[Emulator, ServingManager] = weakref.WeakKeyDictionary()
_MANAGERS_LOCK = threading.Lock()


def manager(emu: Emulator) -> ServingManager:
    with _MANAGERS_LOCK:
        found = _MANAGERS.get(emu)
        if found is None:
            found = ServingManager(lambda ep: route_info(emu, ep), emu.token_key, emu.config.scoring_port)
            _MANAGERS[emu] = found
        return found


def start(emu: Emulator) -> None:
    """At emulator start: open the scoring router, re-serve deployments, resume interrupted LROs."""
    mgr = manager(emu)
    log.info("online endpoints: scoring router on port %s", mgr.port)
    with emu.store.read() as tx:
        endpoints = tx.rows(EP, newest_first=False)
        deployments = [(e, d) for e in endpoints for d in tx.rows(DEP, e.name, newest_first=False)]
    for e, d in deployments:
        state = d.body["properties"]["provisioningState"]
        if state == "Deleting":
            _spawn(_delete_deployment_worker, emu, e.body["name"], d.body["name"], d.meta["op"])
        elif state in IN_PROGRESS or state == "Succeeded":
            mgr.expect(e.body["name"], d.body["name"])
            _spawn(_provision_worker, emu, e.body["name"], d.body["name"], d.meta["op"], state == "Succeeded")
    for e in endpoints:
        state = e.body["properties"]["provisioningState"]
        if state == "Deleting":
            _spawn(_delete_endpoint_worker, emu, e.body["name"], e.meta["op"])
        elif state in IN_PROGRESS:
            _spawn(_endpoint_worker, emu, e.body["name"], e.meta["op"])


def stop(emu: Emulator) -> None:
    with _MANAGERS_LOCK:
        found = _MANAGERS.pop(emu, None)
    if found is not None:
        found.stop_all()


def _spawn(target: Callable[..., None], *args: Any) -> None:
    threading.Thread(target=target, args=args, daemon=True, name=f"aml-{target.__name__}").start()


def route_info(emu: Emulator, endpoint: str) -> RouteInfo | None:
    with emu.store.read() as tx:
        row = tx.get(EP, endpoint)
        if row is None or row.body["properties"]["provisioningState"] == "Deleting":
            return None
        names = frozenset(d.name for d in tx.rows(DEP, row.name))
    props = row.body["properties"]
    return RouteInfo(row.body["name"], tuple(row.meta.get("keys", [])), dict(props.get("traffic") or {}),
                     dict(props.get("mirrorTraffic") or {}), names)


# --- helpers -------------------------------------------------------------------------------------

def _now() -> str:
    return datetime.now(UTC).isoformat()


def _resource_url(call: Call) -> str:
    return call.url(call.raw_path, **{"api-version": call.api_version or ""})


def _lro_headers(emu: Emulator, call: Call, op: str, *, location: str | None) -> dict[str, str]:
    headers = lro.accepted_headers(emu, call, op, location=location is None)
    if location is not None:
        headers["Location"] = location
    else:
        # The SDK deserialises a delete's Retry-After as an int ("0.1" fails); the first status poll
        # is immediate anyway and its answer carries the Retry-After pollers use afterwards.
        headers.pop("Retry-After", None)
    return headers


def _endpoint(tx: Tx, name: str) -> Row:
    row = tx.get(EP, name)
    if row is None:
        raise not_found("OnlineEndpointNotFound", f"Online endpoint {name} not found.")
    return row


def _endpoint_view(emu: Emulator, row: Row) -> dict[str, Any]:
    body = {**row.body, "properties": dict(row.body["properties"])}
    props = body["properties"]
    if row.meta.get("served"):
        base = manager(emu).scoring_base(row.body["name"])
        props["scoringUri"], props["swaggerUri"] = f"{base}/score", f"{base}/swagger.json"
    return body


def _set_state(tx: Tx, kind: str, name: str, parent: str, state: str, **meta: Any) -> Row | None:
    row = tx.get(kind, name, parent)
    if row is None:
        return None
    body = {**row.body, "properties": {**row.body["properties"], "provisioningState": state}}
    tx.put(kind, name, body, parent=parent, meta={**row.meta, **meta})
    return tx.get(kind, name, parent)


def _finish(tx: Tx, op: str, status: str = "Succeeded", error: dict[str, Any] | None = None) -> None:
    row = tx.get(lro.KIND, op)
    if row is not None and row.body["status"] not in lro.TERMINAL:
        lro.finish_operation(tx, op, status, error)


# --- endpoints -----------------------------------------------------------------------------------

def list_endpoints(emu: Emulator, call: Call) -> Reply:
    with emu.store.read() as tx:
        rows = tx.rows(EP, newest_first=False)
    return paged(call, [_endpoint_view(emu, r) for r in rows], emu.config.page_size)


def get_endpoint(emu: Emulator, call: Call) -> Reply:
    with emu.store.read() as tx:
        row = _endpoint(tx, call.params["ep"])
    return Reply(200, _endpoint_view(emu, row))


def put_endpoint(emu: Emulator, call: Call) -> Reply:
    name = call.params["ep"]
    validate_name("Endpoint", name)
    req = call.body_object()
    props = req["properties"]
    auth = AUTH_MODES.get(str(props.get("authMode") or "Key").lower())
    if auth is None:
        raise bad_request(f"properties.authMode must be one of Key, AMLToken, AADToken; got {props.get('authMode')!r}.")
    traffic = _weights("traffic", props.get("traffic"))
    mirror = _weights("mirrorTraffic", props.get("mirrorTraffic"))
    coords = emu.config.coords
    with emu.store.write() as tx:
        existing = tx.get(EP, name)
        if existing is not None and existing.body["properties"]["provisioningState"] == "Deleting":
            raise ArmError(409, "Conflict", f"Online endpoint {name} is being deleted.")
        deployments = {d.name: d.body["properties"]["provisioningState"] for d in tx.rows(DEP, name)}
        validate_traffic(traffic, mirror, deployments)
        op = lro.create_operation(tx, coords.workspace_id, "oe", status="Updating")
        status_url = lro.status_url(call, coords.location, op)
        arm_id = f"{coords.arm_id}/onlineEndpoints/{existing.body['name'] if existing else name}"
        body: dict[str, Any] = {
            "id": arm_id,
            "name": existing.body["name"] if existing else name,
            "type": "Microsoft.MachineLearningServices/workspaces/onlineEndpoints",
            "properties": {
                "description": props.get("description"),
                "properties": {**(props.get("properties") or {}), "azureml.onlineendpointid": arm_id.lower(),
                               "AzureAsyncOperationUri": status_url},
                "scoringUri": None,
                "swaggerUri": None,
                "authMode": auth,
                "provisioningState": "Updating" if existing else "Creating",
                "compute": props.get("compute"),
                "traffic": traffic,
                "mirrorTraffic": mirror,
                "publicNetworkAccess": props.get("publicNetworkAccess") or "Enabled",
            },
            "systemData": ({**existing.body["systemData"], "lastModifiedAt": _now()} if existing else
                           {"createdAt": _now(), "createdBy": call.principal.name,
                            "createdByType": call.principal.kind, "lastModifiedAt": _now()}),
            "tags": req.get("tags") or {},
            "location": req.get("location") or coords.location,
            "kind": req.get("kind") or "Managed",
            "identity": {**(req.get("identity") or {"type": "SystemAssigned"}),
                         "principalId": emu.config.object_id, "tenantId": emu.config.tenant_id},
        }
        meta: dict[str, Any] = (
            dict(existing.meta) if existing else {"keys": [secrets.token_urlsafe(24), secrets.token_urlsafe(24)]}
        )
        meta["op"] = op
        tx.put(EP, name, body, meta=meta)
        row = tx.get(EP, name)
        assert row is not None
    _spawn(_endpoint_worker, emu, name, op)
    return Reply(200 if existing else 201, _endpoint_view(emu, row),
                 _lro_headers(emu, call, op, location=_resource_url(call)))


def _endpoint_worker(emu: Emulator, name: str, op: str) -> None:
    time.sleep(emu.config.provisioning_delay)
    with emu.store.write() as tx:
        row = tx.get(EP, name)
        if row is not None and row.meta.get("op") == op:
            _set_state(tx, EP, name, "", "Succeeded", served=True)
        _finish(tx, op)


def delete_endpoint(emu: Emulator, call: Call) -> Reply:
    name = call.params["ep"]
    coords = emu.config.coords
    with emu.store.write() as tx:
        if tx.get(EP, name) is None:
            return Reply(204, empty=True)
        op = lro.create_operation(tx, coords.workspace_id, "oe", status="Updating")
        _set_state(tx, EP, name, "", "Deleting", op=op)
    _spawn(_delete_endpoint_worker, emu, name, op)
    return Reply(202, None, _lro_headers(emu, call, op, location=None))


def _delete_endpoint_worker(emu: Emulator, name: str, op: str) -> None:
    started = time.monotonic()
    with emu.store.read() as tx:
        deployments = [d.name for d in tx.rows(DEP, name)]
    for d in deployments:
        manager(emu).retire(name, d)
    time.sleep(max(0.0, emu.config.provisioning_delay - (time.monotonic() - started)))
    with emu.store.write() as tx:
        tx.delete_children(DEP, name)
        tx.delete(EP, name)
        _finish(tx, op)


def list_keys(emu: Emulator, call: Call) -> Reply:
    with emu.store.read() as tx:
        row = _endpoint(tx, call.params["ep"])
    primary, secondary = row.meta["keys"]
    return Reply(200, {"primaryKey": primary, "secondaryKey": secondary})


def get_token(emu: Emulator, call: Call) -> Reply:
    with emu.store.read() as tx:
        row = _endpoint(tx, call.params["ep"])
    return Reply(200, manager(emu).issue_token(row.body["name"], emu.config.token_lifetime))


# --- deployments ---------------------------------------------------------------------------------

def list_deployments(emu: Emulator, call: Call) -> Reply:
    with emu.store.read() as tx:
        ep = _endpoint(tx, call.params["ep"])
        rows = tx.rows(DEP, ep.name, newest_first=False)
    return paged(call, [r.body for r in rows], emu.config.page_size)


def _deployment(tx: Tx, endpoint: str, name: str) -> Row:
    _endpoint(tx, endpoint)
    row = tx.get(DEP, name, endpoint)
    if row is None:
        raise not_found("OnlineDeploymentNotFound", f"Online deployment {name} not found in endpoint {endpoint}.")
    return row


def get_deployment(emu: Emulator, call: Call) -> Reply:
    with emu.store.read() as tx:
        row = _deployment(tx, call.params["ep"], call.params["d"])
    return Reply(200, row.body)


def _fault_for(tx: Tx, req: dict[str, Any], model: tuple[str, str] | None) -> str:
    props = req["properties"]
    for source in (req.get("tags") or {}, props.get("environmentVariables") or {}):
        value = str(source.get("EVERGREEN_FAULT") or "").strip().lower()
        if value:
            if value not in FAULT_KINDS:
                raise bad_request(f"EVERGREEN_FAULT must be one of {', '.join(FAULT_KINDS)}; got '{value}'.")
            return value
    if model is None:
        return ""
    for row in tx.rows(FAULTS, newest_first=False):
        fault = row.body
        if fault["model"].lower() != model[0].lower() or fault.get("version") not in (None, model[1]):
            continue
        if fault["times"] <= 1:
            tx.delete(FAULTS, row.name)
        else:
            tx.put(FAULTS, row.name, {**fault, "times": fault["times"] - 1})
        log.info("fault %s injected into a deployment of model %s:%s", fault["fault"], *model)
        return str(fault["fault"])
    return ""


def put_deployment(emu: Emulator, call: Call) -> Reply:
    ep_name, name = call.params["ep"], call.params["d"]
    validate_name("Deployment", name)
    req = call.body_object()
    props = req["properties"]
    model_id = props.get("model")
    model: tuple[str, str] | None = None
    coords = emu.config.coords
    with emu.store.write() as tx:
        ep = _endpoint(tx, ep_name)
        if ep.body["properties"]["provisioningState"] == "Deleting":
            raise ArmError(409, "Conflict", f"Online endpoint {ep_name} is being deleted.")
        if model_id is not None:
            m = _MODEL_ID.search(str(model_id))
            if m is None or tx.get("models/versions", m["version"], m["name"]) is None:
                raise bad_request(f"Could not find model asset with ID {model_id}.")
            model = (m["name"], m["version"])
        code = props.get("codeConfiguration")
        if code is not None and (not isinstance(code, dict) or not code.get("scoringScript")):
            raise bad_request("properties.codeConfiguration needs codeId and scoringScript.")
        if model is None and code is None:
            raise bad_request("A deployment needs a model or a codeConfiguration with a scoring script.")
        existing = tx.get(DEP, name, ep.name)
        if existing is not None and existing.body["properties"]["provisioningState"] in IN_PROGRESS:
            raise ArmError(409, "Conflict", f"Deployment {name} has an operation in progress "
                                            f"({existing.body['properties']['provisioningState']}).")
        fault = _fault_for(tx, req, model)
        op = lro.create_operation(tx, coords.workspace_id, "od", status="Updating")
        sku = {"name": "Default", "tier": "Standard", "capacity": 1, **(req.get("sku") or {})}
        new_props: dict[str, Any] = {
            "description": None, "codeConfiguration": None, "environmentId": None, "environmentVariables": {},
            "scaleSettings": {"scaleType": "Default"},
            "requestSettings": {"maxQueueWait": "PT0S", "requestTimeout": "PT5S",
                                "maxConcurrentRequestsPerInstance": 1},
            "modelMountPath": None, "appInsightsEnabled": False, "livenessProbe": dict(_PROBE),
            "readinessProbe": dict(_PROBE), "instanceType": "Standard_DS3_v2", "model": None,
            "egressPublicNetworkAccess": "Enabled", "endpointComputeType": "Managed",
            **{k: v for k, v in props.items() if v is not None},
        }
        new_props["properties"] = {**(props.get("properties") or {}),
                                   "AzureAsyncOperationUri": lro.status_url(call, coords.location, op)}
        scaling_only = existing is not None and existing.body["properties"]["provisioningState"] == "Succeeded" and {
            k: v for k, v in existing.body["properties"].items() if k not in ("properties", "provisioningState")
        } == {k: v for k, v in new_props.items() if k not in ("properties", "provisioningState")} and (
            existing.body["tags"] == (req.get("tags") or {}) and existing.meta.get("fault", "") == fault)
        new_props["provisioningState"] = "Scaling" if scaling_only else "Updating"
        body = {
            "id": f"{coords.arm_id}/onlineEndpoints/{ep.body['name']}/deployments/{name}",
            "name": existing.body["name"] if existing else name,
            "type": "Microsoft.MachineLearningServices/workspaces/onlineEndpoints/deployments",
            "properties": new_props,
            "systemData": ({**existing.body["systemData"], "lastModifiedAt": _now()} if existing else
                           {"createdAt": _now(), "createdBy": call.principal.name,
                            "createdByType": call.principal.kind, "lastModifiedAt": _now()}),
            "tags": req.get("tags") or {},
            "location": req.get("location") or coords.location,
            "kind": "Managed",
            "sku": sku,
        }
        tx.put(DEP, name, body, parent=ep.name, meta={**(existing.meta if existing else {}), "op": op, "fault": fault})
    if scaling_only:
        _spawn(_scale_worker, emu, ep.name, name, op)
    else:
        _spawn(_provision_worker, emu, ep.name, name, op, False)
    return Reply(200 if existing else 201, body, _lro_headers(emu, call, op, location=_resource_url(call)))


def _scale_worker(emu: Emulator, endpoint: str, name: str, op: str) -> None:
    """Capacity changes: one local process serves any capacity, so only the states move."""
    time.sleep(emu.config.provisioning_delay)
    with emu.store.write() as tx:
        row = tx.get(DEP, name, endpoint)
        if row is not None and row.meta.get("op") == op:
            _set_state(tx, DEP, name, endpoint, "Succeeded")
        _finish(tx, op)


def _script_in(model_dir: Path) -> Path | None:
    for candidate in [model_dir / "score.py", *sorted(model_dir.glob("*/score.py"))]:
        if candidate.is_file():
            return candidate
    return None


def _prepare(emu: Emulator, endpoint: str, name: str, row: Row, workdir: Path) -> LaunchSpec:
    """Download model and code into `workdir` (logged as the storage initializer) and say what to run."""
    props = row.body["properties"]
    model_dir, code_dir = workdir / "model", workdir / "code"
    init_log = workdir / "storage-initializer.log"
    workdir.mkdir(parents=True, exist_ok=True)

    def note(message: str) -> None:
        with init_log.open("a") as f:
            f.write(f"{_now()} {message}\n")

    model_dir.mkdir(exist_ok=True)
    if props.get("model"):
        m = _MODEL_ID.search(props["model"])
        assert m is not None
        with emu.store.read() as tx:
            version = tx.get("models/versions", m["version"], m["name"])
        if version is None:
            raise ProvisioningError("UserError", f"Model {m['name']}:{m['version']} no longer exists.")
        uri = version.body["properties"]["modelUri"]
        note(f"downloading model {m['name']}:{m['version']} from {uri}")
        files = fetch(emu.datastores, uri, model_dir, keep_folder_name=True)
        note(f"downloaded {len(files)} model file(s) to {model_dir}")
    code = props.get("codeConfiguration")
    if code:
        c = _CODE_ID.search(str(code.get("codeId") or ""))
        with emu.store.read() as tx:
            version = tx.get("codes/versions", c["version"], c["name"]) if c else None
        if version is None:
            raise ProvisioningError("UserError", f"Could not find code asset with ID {code.get('codeId')}.")
        uri = version.body["properties"]["codeUri"]
        note(f"downloading code from {uri}")
        fetch(emu.datastores, uri, code_dir, keep_folder_name=False)
        script_dir, script = code_dir, str(code["scoringScript"])
    else:
        found = _script_in(model_dir)
        if found is None:
            raise ProvisioningError("UserError", "No scoring script: give codeConfiguration (codeId + scoringScript) "
                                                 "or put a score.py into the model folder.")
        script_dir, script = found.parent, found.name
    env = {str(k): str(v) for k, v in (props.get("environmentVariables") or {}).items()}
    return LaunchSpec(endpoint, name, workdir, model_dir, script_dir, script, env, row.meta.get("fault", ""),
                      emu.config.deployment_start_timeout)


def _provision_worker(emu: Emulator, endpoint: str, name: str, op: str, reserve: bool) -> None:
    """Provision (or, after a restart, re-serve) a deployment and finish its LRO."""
    started = time.monotonic()
    mgr = manager(emu)
    with emu.store.read() as tx:
        row = tx.get(DEP, name, endpoint)
    if row is None:
        mgr.abandon(endpoint, name)
        return
    workdir = emu.config.state_dir / "serving" / endpoint.lower() / name.lower() / op.rsplit(":", 1)[-1]
    replica = None
    error: dict[str, Any] | None = None
    try:
        spec = _prepare(emu, endpoint, name, row, workdir)
        if spec.fault == "provisioning":
            raise ProvisioningError("ResourceOperationFailure",
                                    "EVERGREEN_FAULT=provisioning: the deployment fails provisioning on purpose.")
        replica = launch(spec)
    except ProvisioningError as exc:
        error = {"code": exc.code, "message": exc.message}
    except Exception as exc:  # never leave an LRO running forever
        log.exception("provisioning %s/%s failed", endpoint, name)
        error = {"code": "InternalServerError", "message": f"Provisioning failed: {exc}"}
    if error is not None:
        with (workdir / "inference-server.log").open("a") as f:
            f.write(f"{_now()} provisioning failed: {error['message']}\n")
    if not reserve:
        time.sleep(max(0.0, emu.config.provisioning_delay - (time.monotonic() - started)))
    with emu.store.write() as tx:
        current = tx.get(DEP, name, endpoint)
        superseded = current is None or current.meta.get("op") != op
        if not superseded:
            if error is None:
                _set_state(tx, DEP, name, endpoint, "Succeeded", workdir=str(workdir))
            else:
                _set_state(tx, DEP, name, endpoint, "Failed", workdir=str(workdir))
        _finish(tx, op, "Failed" if error else "Succeeded", error)
    if replica is not None and not superseded:
        mgr.activate(replica)
    elif replica is not None:
        replica.stop()
    else:
        mgr.abandon(endpoint, name)
    log.info("deployment %s/%s: %s", endpoint, name, "served" if error is None else f"failed: {error['message']}")


def delete_deployment(emu: Emulator, call: Call) -> Reply:
    ep_name, name = call.params["ep"], call.params["d"]
    coords = emu.config.coords
    with emu.store.write() as tx:
        ep = _endpoint(tx, ep_name)
        row = tx.get(DEP, name, ep.name)
        if row is None:
            return Reply(204, empty=True)
        props = ep.body["properties"]
        weights = {k.lower(): v for k, v in {**props.get("mirrorTraffic", {}), **props.get("traffic", {})}.items()}
        if weights.get(row.name, 0) > 0:
            raise bad_request(f"Deployment {row.body['name']} cannot be deleted because it receives traffic "
                              f"({weights[row.name]}%). Set its traffic to 0 first.")
        op = lro.create_operation(tx, coords.workspace_id, "od", status="Updating")
        _set_state(tx, DEP, name, ep.name, "Deleting", op=op)
    _spawn(_delete_deployment_worker, emu, ep.name, name, op)
    return Reply(202, None, _lro_headers(emu, call, op, location=None))


def _delete_deployment_worker(emu: Emulator, endpoint: str, name: str, op: str) -> None:
    started = time.monotonic()
    manager(emu).retire(endpoint, name)
    time.sleep(max(0.0, emu.config.provisioning_delay - (time.monotonic() - started)))
    with emu.store.write() as tx:
        row = tx.get(DEP, name, endpoint)
        if row is not None and row.meta.get("op") == op:
            tx.delete(DEP, name, endpoint)
        _finish(tx, op)


def get_logs(emu: Emulator, call: Call) -> Reply:
    with emu.store.read() as tx:
        row = _deployment(tx, call.params["ep"], call.params["d"])
    body = call.body if isinstance(call.body, dict) else {}
    tail = body.get("tail")
    if tail is not None and (not isinstance(tail, int) or isinstance(tail, bool)):
        raise bad_request("tail must be an integer.")
    container = str(body.get("containerType") or "InferenceServer").lower()
    if container not in ("inferenceserver", "storageinitializer"):
        raise bad_request("containerType must be InferenceServer or StorageInitializer.")
    workdir = row.meta.get("workdir")
    file = "inference-server.log" if container == "inferenceserver" else "storage-initializer.log"
    path = Path(workdir) / file if workdir else None
    text = path.read_text(errors="replace") if path is not None and path.exists() else ""
    return Reply(200, {"content": tail_lines(text, tail)})


# --- fault injection admin routes -----------------------------------------------------------------

def list_faults(emu: Emulator, call: Call) -> Reply:
    with emu.store.read() as tx:
        return Reply(200, {"value": [r.body for r in tx.rows(FAULTS, newest_first=False)]})


def add_fault(emu: Emulator, call: Call) -> Reply:
    body = call.body if isinstance(call.body, dict) else {}
    model, fault, times = body.get("model"), str(body.get("fault") or "").lower(), body.get("times", 1)
    if not isinstance(model, str) or not model:
        raise bad_request("'model' (a model name) is required.")
    if fault not in FAULT_KINDS:
        raise bad_request(f"'fault' must be one of {', '.join(FAULT_KINDS)}.")
    if not isinstance(times, int) or times < 1:
        raise bad_request("'times' must be a positive integer.")
    version = body.get("version")
    fault_id = secrets.token_hex(8)
    entry = {"id": fault_id, "model": model, "version": str(version) if version is not None else None,
             "fault": fault, "times": times}
    with emu.store.write() as tx:
        tx.put(FAULTS, fault_id, entry)
    return Reply(201, entry)


def clear_faults(emu: Emulator, call: Call) -> Reply:
    with emu.store.write() as tx:
        removed = tx.delete_children(FAULTS, "")
    return Reply(200, {"removed": removed})
