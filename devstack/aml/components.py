"""Job building blocks: code assets (content-hash lookup, pending uploads), environments, components.

They share one shape: a version row of kind `<segment>/versions` whose parent is the asset name
(plus a container row of kind `<segment>`), answered as the recordings show. What differs is how
the service normalises the request (`_normalise_*`).

Code uploads go where the service puts them: `startPendingUpload` creates a fresh blob container
named `{workspaceId}-{random}` in the workspace storage account (Azurite locally) and answers a
container SAS URL; the SDK uploads `{dirname}/…` into it and PUTs the code version with
`codeUri = blobUri/dirname`. `code_location()` turns that URI back into (container, prefix) so the
job runner can download the snapshot.

Curated environments (`azureml:AzureML-…@latest`, `azureml://registries/azureml/…`) are never
resolved against the workspace: they pass through, and component specs show them in the
registry form the service uses.
"""

from __future__ import annotations

import logging
import re
import secrets
import string
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from devstack.aml.errors import bad_request, not_found
from devstack.aml.store import Row, Tx
from devstack.aml.web import Call, Reply, Router, W, newest_first, paged

if TYPE_CHECKING:
    from devstack.aml.emulator import Emulator

log = logging.getLogger(__name__)

# `azureml:Name:3`, `azureml:Name@latest` as written in component YAML (not workspace ARM ids)
_CURATED_REF = re.compile(r"^azureml:(?P<name>[^/:@]+)(?::(?P<version>[^/:@]+)|@(?P<label>[^/:@]+))$")
UPLOAD_SAS_HOURS = 24


@dataclass(frozen=True)
class Kind:
    segment: str  # codes, environments, components
    label: str  # Code, Environment, Component

    @property
    def version_kind(self) -> str:
        return f"{self.segment}/versions"

    @property
    def arm_type(self) -> str:
        return f"Microsoft.MachineLearningServices/workspaces/{self.segment}/versions"

    def not_found(self, name: str, version: str | None = None) -> Exception:
        if version is None:
            return not_found(f"{self.label}NotFound", f"{self.label} container with name: {name} not found.")
        return not_found(f"{self.label}VersionNotFound",
                         f"{self.label} version with name: {name} and version: {version} not found.")


CODES = Kind("codes", "Code")
ENVIRONMENTS = Kind("environments", "Environment")
COMPONENTS = Kind("components", "Component")
_KINDS = {k.segment: k for k in (CODES, ENVIRONMENTS, COMPONENTS)}


def register(r: Router) -> None:
    """Add the code, environment and component routes to the emulator's router."""
    base = f"{W}/(?P<kind>codes|environments|components)"
    r.add("GET", f"{base}/(?P<name>[^/]+)/versions", list_versions)
    r.add("GET", f"{base}/(?P<name>[^/]+)/versions/(?P<version>[^/]+)", get_version)
    r.add("PUT", f"{base}/(?P<name>[^/]+)/versions/(?P<version>[^/]+)", put_version)
    r.add("GET", f"{base}/(?P<name>[^/]+)", get_container)
    r.add("POST", f"{W}/codes/(?P<name>[^/]+)/versions/(?P<version>[^/]+)/startPendingUpload", start_pending_upload)


def _now() -> str:
    return datetime.now(UTC).isoformat()


def _kind(call: Call) -> Kind:
    return _KINDS[call.params["kind"].lower()]


def _system_data(call: Call) -> dict[str, Any]:
    now = _now()
    who, kind = call.principal.name, call.principal.kind
    return {"createdAt": now, "createdBy": who, "createdByType": kind,
            "lastModifiedAt": now, "lastModifiedBy": who, "lastModifiedByType": kind}


# --- normalisation, per kind -------------------------------------------------------------------

def _common(req: dict[str, Any]) -> dict[str, Any]:
    for key in ("tags", "properties"):
        if req.get(key) is not None and not isinstance(req[key], dict):
            raise bad_request(f"properties.{key} must be an object.")
    return {
        "description": req.get("description"),
        "tags": req.get("tags") or {},
        "properties": dict(req.get("properties") or {}),
        "isArchived": bool(req.get("isArchived", False)),
        "isAnonymous": bool(req.get("isAnonymous", False)),
    }


def _normalise_code(req: dict[str, Any]) -> dict[str, Any]:
    uri = req.get("codeUri")
    if not isinstance(uri, str) or not uri:
        raise bad_request("properties.codeUri is required and must be a non-empty string.")
    return {**_common(req), "codeUri": uri, "provisioningState": "Succeeded"}


def _normalise_environment(req: dict[str, Any]) -> dict[str, Any]:
    if not req.get("image") and not req.get("build"):
        raise bad_request("An environment needs an image or a build context (properties.image or properties.build).")
    props = {
        **_common(req),
        "autoDeleteSetting": req.get("autoDeleteSetting"),
        "environmentType": "UserCreated",
        "image": req.get("image"),
        "condaFile": req.get("condaFile") or "",
        "osType": req.get("osType") or "Linux",
        "autoRebuild": req.get("autoRebuild") or "Disabled",
        "provisioningState": "Succeeded",
        "stage": req.get("stage") or "Development",
        "intellectualProperty": req.get("intellectualProperty"),
    }
    props["properties"]["azureml.labels"] = "latest"
    for key, value in req.items():  # build, inferenceConfig, ...
        props.setdefault(key, value)
    return props


def registry_environment(ref: str) -> str:
    """`azureml:AzureML-x:3` -> the registry URI the service shows; other references unchanged.

    Only curated names (AzureML-…) live in the `azureml` registry; a workspace environment keeps
    its `azureml:name:version` reference. `@latest` stays a label (the service resolves it to a
    number we cannot know offline).
    """
    m = _CURATED_REF.match(ref)
    if m is None or not m["name"].lower().startswith("azureml-"):
        return ref
    base = f"azureml://registries/azureml/environments/{m['name']}"
    return f"{base}/versions/{m['version']}" if m["version"] else f"{base}/labels/{m['label']}"


def normalise_component_spec(spec: dict[str, Any]) -> dict[str, Any]:
    """What the service stores: `_source` dropped, `is_deterministic` as "True"/"False", resources filled."""
    out = {k: v for k, v in spec.items() if k != "_source"}
    if "is_deterministic" in out or out.get("type") == "command":
        out["is_deterministic"] = str(bool(out.get("is_deterministic", True)))
    env = out.get("environment")
    if isinstance(env, str):
        out["environment"] = registry_environment(env)
    if out.get("type", "command") == "command":
        resources = dict(out.get("resources") or {})
        resources.pop("instance_type", None)
        resources.setdefault("instance_count", "1")
        out["resources"] = {k: str(v) for k, v in resources.items()}
    return out


def _normalise_component(req: dict[str, Any]) -> dict[str, Any]:
    spec = req.get("componentSpec")
    if not isinstance(spec, dict):
        raise bad_request("properties.componentSpec is required and must be an object.")
    if spec.get("type", "command") == "command" and not isinstance(spec.get("command"), str):
        raise bad_request("componentSpec.command is required for a command component.")
    common = _common(req)
    props: dict[str, Any] = {
        **common,
        "description": None,  # as recorded: the description lives in componentSpec only
        "autoDeleteSetting": req.get("autoDeleteSetting"),
        "componentSpec": normalise_component_spec(spec),
        "provisioningState": "Succeeded",
        "stage": req.get("stage") or "Development",
    }
    return props


_NORMALISERS = {"codes": _normalise_code, "environments": _normalise_environment, "components": _normalise_component}


# --- handlers ----------------------------------------------------------------------------------

def get_container(emu: Emulator, call: Call) -> Reply:
    kind, name = _kind(call), call.params["name"]
    with emu.store.read() as tx:
        versions = tx.rows(kind.version_kind, name)
    if not versions:
        raise kind.not_found(name)
    latest = versions[0].body
    return Reply(200, {
        "id": f"{emu.config.coords.arm_id}/{kind.segment}/{name}",
        "name": name,
        "type": f"Microsoft.MachineLearningServices/workspaces/{kind.segment}",
        "properties": {"description": None, "tags": {}, "properties": {}, "isArchived": False,
                       "latestVersion": latest["name"], "nextVersion": None},
        "systemData": latest["systemData"],
    })


def get_version(emu: Emulator, call: Call) -> Reply:
    kind, name, version = _kind(call), call.params["name"], call.params["version"]
    with emu.store.read() as tx:
        row = tx.get(kind.version_kind, version, parent=name)
    if row is None:
        raise kind.not_found(name, version)
    return Reply(200, row.body)


def list_versions(emu: Emulator, call: Call) -> Reply:
    """Versions newest first; for codes, `hash=` searches the whole workspace (as recorded)."""
    kind, name = _kind(call), call.params["name"]
    wanted_hash = call.query.get("hash")
    with emu.store.read() as tx:
        if kind is CODES and wanted_hash:
            hash_version = call.query.get("hashversion")
            rows = [
                r for r in reversed(tx.rows_of_kind(kind.version_kind))
                if (r.body["properties"].get("properties") or {}).get("hash_sha256") == wanted_hash
                and (not hash_version
                     or (r.body["properties"].get("properties") or {}).get("hash_version") == hash_version)
            ]
            return Reply(200, {"value": [r.body for r in rows]})
        rows = tx.rows(kind.version_kind, name, newest_first=newest_first(call))
    if not rows and kind is not CODES:
        raise kind.not_found(name)
    view = (call.query.get("listviewtype") or "ActiveOnly").lower()
    items = [r.body for r in rows
             if view == "all" or (view == "archivedonly") == bool(r.body["properties"].get("isArchived"))]
    return paged(call, items, emu.config.page_size)


def put_version(emu: Emulator, call: Call) -> Reply:
    kind, name, version = _kind(call), call.params["name"], call.params["version"]
    props = _NORMALISERS[kind.segment](call.body_object()["properties"])
    with emu.store.write() as tx:
        existing = tx.get(kind.version_kind, version, parent=name)
        if existing is not None:
            old = existing.body["properties"]
            if kind is CODES and old["codeUri"] != props["codeUri"]:
                raise bad_request("Asset paths cannot be updated.")
            body = {**existing.body, "properties": props,
                    "systemData": {**existing.body["systemData"], "lastModifiedAt": _now()}}
            tx.put(kind.version_kind, version, body, parent=name, meta=existing.meta)
            return Reply(200, body)
        if tx.get(kind.segment, name) is None:
            tx.put(kind.segment, name, {"name": name})
        if kind is ENVIRONMENTS:
            _move_latest_label(tx, name)
        body = {
            "id": f"{emu.config.coords.arm_id}/{kind.segment}/{name}/versions/{version}",
            "name": version,
            "type": kind.arm_type,
            "properties": props,
            "systemData": _system_data(call),
        }
        tx.put(kind.version_kind, version, body, parent=name)
    location = call.url(call.raw_path, **{"api-version": call.api_version or ""})
    return Reply(201, body, {"Location": location})


def _move_latest_label(tx: Tx, name: str) -> None:
    """Only the newest environment version carries `azureml.labels: latest`."""
    for row in tx.rows(ENVIRONMENTS.version_kind, name):
        props = row.body["properties"].get("properties") or {}
        if props.get("azureml.labels") == "latest":
            kept = {k: v for k, v in props.items() if k != "azureml.labels"}
            body = {**row.body, "properties": {**row.body["properties"], "properties": kept}}
            tx.put(ENVIRONMENTS.version_kind, row.name, body, parent=name, meta=row.meta)


def start_pending_upload(emu: Emulator, call: Call) -> Reply:
    """A fresh container and a container SAS for the SDK's snapshot upload (TemporaryBlobReference)."""
    from azure.storage.blob import BlobServiceClient, ContainerSasPermissions, generate_container_sas

    body = call.body if isinstance(call.body, dict) else {}
    upload_type = body.get("pendingUploadType") or "TemporaryBlobReference"
    if upload_type != "TemporaryBlobReference":
        raise bad_request(f"pendingUploadType '{upload_type}' is not supported; use TemporaryBlobReference.")
    account = emu.datastores.account
    suffix = "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(26))
    container = f"{emu.config.coords.workspace_id}-{suffix}"
    service = BlobServiceClient(account.blob_endpoint, credential={"account_name": account.account_name,
                                                                   "account_key": account.account_key})
    service.create_container(container)
    sas = generate_container_sas(
        account.account_name, container, account_key=account.account_key,
        permission=ContainerSasPermissions(read=True, add=True, create=True, write=True, list=True),
        expiry=datetime.now(UTC) + timedelta(hours=UPLOAD_SAS_HOURS),
    )
    blob_uri = f"{account.blob_endpoint}/{container}"
    coords = emu.config.coords
    return Reply(200, {
        "blobReferenceForConsumption": {
            "blobUri": blob_uri,
            "storageAccountArmId": f"/subscriptions/{coords.subscription_id}/resourceGroups/"
                                   f"{coords.resource_group}/providers/Microsoft.Storage/storageAccounts/"
                                   f"{account.account_name}",
            "credential": {"credentialType": "SAS", "sasUri": f"{blob_uri}?{sas}"},
        },
        "pendingUploadId": secrets.token_hex(16),
        "pendingUploadType": upload_type,
    })


# --- lookups for the job runner ----------------------------------------------------------------

_ARM_VERSION = re.compile(
    r"(?:^azureml:)?/?subscriptions/[^/]+/resource[gG]roups/[^/]+/providers/Microsoft\.MachineLearningServices/"
    r"workspaces/[^/]+/(?P<seg>codes|components|environments|data|models)/(?P<name>[^/]+)/versions/(?P<version>[^/]+)$",
    re.IGNORECASE,
)


def parse_version_id(ref: str) -> tuple[str, str, str] | None:
    """(segment, name, version) of a workspace asset ARM id (optionally `azureml:`-prefixed)."""
    m = _ARM_VERSION.match(ref.strip())
    return (m["seg"].lower(), m["name"], m["version"]) if m else None


def find_version(tx: Tx, ref: str) -> Row | None:
    parsed = parse_version_id(ref)
    if parsed is None:
        return None
    segment, name, version = parsed
    return tx.get(f"{segment}/versions", version, parent=name)


def code_location(emu: Emulator, code_uri: str) -> tuple[str, str]:
    """(container, folder prefix) of a code snapshot URI in the workspace storage account."""
    endpoint = urlsplit(emu.datastores.account.blob_endpoint)
    uri = urlsplit(code_uri)
    path = uri.path
    if uri.netloc == endpoint.netloc and path.startswith(endpoint.path + "/"):
        path = path[len(endpoint.path) + 1:]
    else:
        path = path.lstrip("/")
    container, _, prefix = path.partition("/")
    if not container:
        raise ValueError(f"code URI {code_uri!r} names no container")
    return container, prefix.strip("/")
