"""The seeded workspace and what hangs off it directly: datastores and computes.

Shapes follow the recordings (workspace GET at 2024-10-01-preview, datastores at
2024-07-01-preview); datastores map onto Azurite containers through storage.DatastoreMap.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from devstack.aml.errors import bad_request, not_found
from devstack.aml.storage import DEFAULT_DATASTORE, SEEDED_DATASTORES
from devstack.aml.store import Tx
from devstack.aml.web import Call, Reply, Router, W, paged

if TYPE_CHECKING:
    from devstack.aml.config import AmlConfig
    from devstack.aml.emulator import Emulator

SEEDED_COMPUTE = "cpu-cluster"
_SYSTEM = {"lastModifiedBy": "devstack", "lastModifiedByType": "Application"}


def register(r: Router) -> None:
    """The workspace itself, its datastores (with `listSecrets`) and its computes."""
    r.add("GET", W, get_workspace)
    r.add("GET", f"{W}/datastores", list_datastores)
    r.add("GET", f"{W}/datastores/(?P<name>[^/]+)", get_datastore)
    r.add("PUT", f"{W}/datastores/(?P<name>[^/]+)", put_datastore)
    r.add("POST", f"{W}/datastores/(?P<name>[^/]+)/listSecrets", list_secrets)
    r.add("GET", f"{W}/computes", list_computes)
    r.add("GET", f"{W}/computes/(?P<name>[^/]+)", get_compute)


def _now() -> str:
    return datetime.now(UTC).isoformat()


def seed(tx: Tx, config: AmlConfig, account_name: str) -> None:
    """Create the workspace's fixed resources unless they exist (idempotent; safe from two processes)."""
    coords = config.coords
    ws = coords.arm_id
    now = _now()
    if tx.get("datastores", DEFAULT_DATASTORE) is None:
        for name, container in SEEDED_DATASTORES.items():
            tx.put("datastores", name, {
                "id": f"{ws}/datastores/{name}",
                "name": name,
                "type": "Microsoft.MachineLearningServices/workspaces/datastores",
                "properties": {
                    "description": None,
                    "tags": None,
                    "properties": None,
                    "isDefault": name == DEFAULT_DATASTORE,
                    "credentials": {"credentialsType": "AccountKey"},
                    "subscriptionId": coords.subscription_id,
                    "resourceGroup": coords.resource_group,
                    "datastoreType": "AzureBlob",
                    "accountName": account_name,
                    "containerName": container,
                    "endpoint": "core.windows.net",
                    "protocol": "https",
                    "serviceDataAccessAuthIdentity": "WorkspaceSystemAssignedIdentity",
                },
                "systemData": {"createdAt": now, "lastModifiedAt": now, **_SYSTEM},
            })
    if tx.get("computes", SEEDED_COMPUTE) is None:
        tx.put("computes", SEEDED_COMPUTE, {
            "id": f"{ws}/computes/{SEEDED_COMPUTE}",
            "name": SEEDED_COMPUTE,
            "type": "Microsoft.MachineLearningServices/workspaces/computes",
            "location": coords.location,
            "tags": {},
            "identity": None,
            "properties": {
                "computeType": "AmlCompute",
                "computeLocation": coords.location,
                "provisioningState": "Succeeded",
                "description": "Local CPU cluster (jobs run on this machine)",
                "createdOn": now,
                "modifiedOn": now,
                "resourceId": None,
                "provisioningErrors": None,
                "isAttachedCompute": False,
                "disableLocalAuth": True,
                "properties": {
                    "vmSize": "STANDARD_DS3_V2",
                    "vmPriority": "Dedicated",
                    "osType": "Linux",
                    "scaleSettings": {"maxNodeCount": 2, "minNodeCount": 0, "nodeIdleTimeBeforeScaleDown": "PT120S"},
                    "remoteLoginPortPublicAccess": "Disabled",
                    "enableNodePublicIp": True,
                    "allocationState": "Steady",
                    "allocationStateTransitionTime": now,
                    "errors": None,
                    "currentNodeCount": 0,
                    "targetNodeCount": 0,
                    "nodeStateCounts": {"idleNodeCount": 0, "runningNodeCount": 0, "preparingNodeCount": 0,
                                        "unusableNodeCount": 0, "leavingNodeCount": 0, "preemptedNodeCount": 0},
                    "isolatedNetwork": False,
                },
            },
            "systemData": {"createdAt": now, "lastModifiedAt": now, **_SYSTEM},
        })


def workspace_body(emu: Emulator, call: Call) -> dict[str, Any]:
    coords = emu.config.coords
    ws = coords.arm_id
    sub, rg = coords.subscription_id, coords.resource_group
    base = call.base_url
    return {
        "id": ws,
        "name": coords.workspace,
        "type": "Microsoft.MachineLearningServices/workspaces",
        "location": coords.location,
        "tags": {},
        "etag": None,
        "properties": {
            "friendlyName": coords.workspace,
            "description": "Evergreen local workspace (devstack emulator)",
            "storageAccount": f"/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.Storage/storageAccounts/"
                              f"{emu.datastores.account.account_name}",
            "keyVault": f"/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.Keyvault/vaults/evergreen-kv",
            "applicationInsights": f"/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.insights/components/"
                                   "evergreen-ai",
            "containerRegistry": None,
            "hbiWorkspace": False,
            "tenantId": emu.config.tenant_id,
            "imageBuildCompute": None,
            "provisioningState": "Succeeded",
            "v1LegacyMode": False,
            "softDeleteEnabled": False,
            "creationTime": emu.started_at,
            "storageHnsEnabled": False,
            "workspaceId": coords.workspace_id,
            "privateLinkCount": 0,
            "publicNetworkAccess": "Enabled",
            "discoveryUrl": f"{base}/discovery",
            "mlFlowTrackingUri": f"azureml://{call.base_url.split('://', 1)[-1]}/mlflow/v1.0{ws}",
            "enableDataIsolation": False,
            "systemDatastoresAuthMode": "accesskey",
        },
        "identity": {"type": "SystemAssigned", "principalId": emu.config.object_id, "tenantId": emu.config.tenant_id},
        "kind": "Default",
        "sku": {"name": "Basic", "tier": "Basic"},
        "systemData": {"createdAt": emu.started_at, "lastModifiedAt": emu.started_at, **_SYSTEM},
    }


def get_workspace(emu: Emulator, call: Call) -> Reply:
    return Reply(200, workspace_body(emu, call))


def discovery(emu: Emulator, call: Call) -> Reply:
    """Service endpoints for the workspace; they all point here (unserved routes answer 404)."""
    services = ["api", "catalog", "experimentation", "gallery", "history", "hyperdrive", "labeling",
                "modelmanagement", "pipelines", "studiometadata"]
    return Reply(200, {name: call.base_url for name in services})


# --- datastores ---------------------------------------------------------------------------------

def _datastore(tx: Tx, name: str) -> dict[str, Any]:
    row = tx.get("datastores", name)
    if row is None:
        raise not_found("DatastoreNotFound", f"Datastore with name: {name} not found.")
    return row.body


def get_datastore(emu: Emulator, call: Call) -> Reply:
    with emu.store.read() as tx:
        return Reply(200, _datastore(tx, call.params["name"]))


# What a datastore kind must name (the REST shape azure-ai-ml 1.35.2 sends for AzureBlobDatastore and
# AzureDataLakeGen2Datastore); other kinds are refused as Azure ML refuses a body it cannot read.
_DATASTORE_KINDS: dict[str, tuple[str, ...]] = {
    "AzureBlob": ("accountName", "containerName"),
    "AzureDataLakeGen2": ("accountName", "filesystem"),
}


def put_datastore(emu: Emulator, call: Call) -> Reply:
    """Create or update a blob or ADLS Gen2 datastore (200 on update, 201 on create); secrets are never echoed."""
    name = call.params["name"]
    props = (call.body or {}).get("properties") if isinstance(call.body, dict) else None
    if not isinstance(props, dict):
        raise bad_request("The request body must carry the datastore's properties.")
    kind = str(props.get("datastoreType") or "")
    if kind not in _DATASTORE_KINDS:
        raise bad_request(f"Datastore type {kind or '(none)'} is not supported here; use one of "
                          f"{', '.join(_DATASTORE_KINDS)}.")
    missing = [f for f in _DATASTORE_KINDS[kind] if not props.get(f)]
    if missing:
        raise bad_request(f"A {kind} datastore needs {', '.join(missing)}.")
    credentials = dict(props.get("credentials") or {"credentialsType": "None"})
    credentials.pop("secrets", None)  # kept out of every answer, as Azure ML does
    coords = emu.config.coords
    with emu.store.write() as tx:
        existing = tx.get("datastores", name)
        now = _now()
        created = existing.body["systemData"]["createdAt"] if existing else now
        body = {
            "id": f"{coords.arm_id}/datastores/{name}",
            "name": name,
            "type": "Microsoft.MachineLearningServices/workspaces/datastores",
            "properties": {
                "description": props.get("description"), "tags": props.get("tags") or None,
                "properties": props.get("properties"), "isDefault": False, "credentials": credentials,
                "subscriptionId": coords.subscription_id, "resourceGroup": coords.resource_group,
                "endpoint": props.get("endpoint") or "core.windows.net", "protocol": props.get("protocol") or "https",
                "serviceDataAccessAuthIdentity": props.get("serviceDataAccessAuthIdentity") or "None",
                **{k: props[k] for k in ("datastoreType", *_DATASTORE_KINDS[kind])},
            },
            "systemData": {"createdAt": created, "lastModifiedAt": now, **_SYSTEM},
        }
        tx.put("datastores", name, body)
    return Reply(200 if existing else 201, body)


def list_datastores(emu: Emulator, call: Call) -> Reply:
    with emu.store.read() as tx:
        items = [r.body for r in tx.rows("datastores", newest_first=False)]
    is_default = call.query.get("isdefault")
    if is_default is not None:
        wanted = is_default.lower() == "true"
        items = [d for d in items if bool(d["properties"].get("isDefault")) == wanted]
    names = call.query.get("names")
    if names:
        wanted_names = {n.lower() for n in names.split(",")}
        items = [d for d in items if d["name"].lower() in wanted_names]
    if (call.query.get("orderbyasc") or "").lower() == "false":
        items = sorted(items, key=lambda d: d["name"].lower(), reverse=True)
    count = call.query.get("count")
    size = int(count) if count and count.isdigit() and int(count) > 0 else emu.config.page_size
    return paged(call, items, min(size, emu.config.page_size))


def list_secrets(emu: Emulator, call: Call) -> Reply:
    with emu.store.read() as tx:
        ds = _datastore(tx, call.params["name"])
    kind = (ds["properties"].get("credentials") or {}).get("credentialsType", "None")
    if kind != "AccountKey":
        raise bad_request(f"No secrets for credentials of type {kind}.")
    return Reply(200, {"secretsType": "AccountKey", "key": emu.datastores.account.account_key})


# --- computes -----------------------------------------------------------------------------------

def get_compute(emu: Emulator, call: Call) -> Reply:
    with emu.store.read() as tx:
        row = tx.get("computes", call.params["name"])
    if row is None:
        name = call.params["name"]
        raise not_found("ComputeNotFound", f"Compute with name: {name} not found.")
    return Reply(200, row.body)


def list_computes(emu: Emulator, call: Call) -> Reply:
    with emu.store.read() as tx:
        items = [r.body for r in tx.rows("computes", newest_first=False)]
    return paged(call, items, emu.config.page_size)
