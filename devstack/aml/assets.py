"""Versioned assets (data, models): containers, versions, labels, archive/restore, paging.

Storage: a container is a row of kind `<segment>` (e.g. `data`), each version a row of kind
`<segment>/versions` whose parent is the container name. `latestVersion` and `nextVersion` are
computed on read: latest = the most recently created active version (archived ones only if all
are archived), next = highest numeric version ever stored + 1 (non-numeric versions don't count,
so `foo` alone gives `nextVersion: "1"`, as recorded).

Auto-increment under concurrency, as the service behaves: the SDK reads `nextVersion` and PUTs
that version, so two clients reading at once PUT the same version. The first creates it (201);
the second is an update of that version (200) when the asset path is the same, and fails with 400
UserError "Asset paths cannot be updated." when it differs. Nothing is silently renumbered or
overwritten; each PUT is one `BEGIN IMMEDIATE` transaction, so rows are never half-written.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from devstack.aml.errors import ArmError, bad_request, not_found
from devstack.aml.storage import parse_azureml_uri
from devstack.aml.store import Row, Tx
from devstack.aml.web import Call, Reply, Router, W, int_param, newest_first, next_link, paged

if TYPE_CHECKING:
    from devstack.aml.config import WorkspaceCoords
    from devstack.aml.emulator import Emulator

log = logging.getLogger(__name__)

ASSET_PATHS_IMMUTABLE = "Asset paths cannot be updated."
LIST_VIEW_TYPES = {"activeonly": "ActiveOnly", "archivedonly": "ArchivedOnly", "all": "All"}
_URI_SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")


@dataclass(frozen=True)
class AssetKind:
    """What differs between asset types; everything else is shared."""

    segment: str  # URL segment: data, models
    label: str  # Data, Model (messages and error codes)
    uri_field: str  # dataUri, modelUri
    rg_segment: str  # how the service spells resourceGroups inside normalised azureml:// URIs
    full_system_data: bool  # models always carry lastModifiedBy/-Type; data only after an update

    @property
    def version_kind(self) -> str:
        return f"{self.segment}/versions"

    def arm_type(self, versions: bool) -> str:
        return f"Microsoft.MachineLearningServices/workspaces/{self.segment}" + ("/versions" if versions else "")

    def container_not_found(self, name: str) -> ArmError:
        return not_found(f"{self.label}NotFound", f"{self.label} container with name: {name} not found.")

    def version_not_found(self, name: str, version: str) -> ArmError:
        return not_found(
            f"{self.label}VersionNotFound", f"{self.label} version with name: {name} and version: {version} not found."
        )


DATA = AssetKind("data", "Data", "dataUri", "resourcegroups", full_system_data=False)
MODELS = AssetKind("models", "Model", "modelUri", "resourceGroups", full_system_data=True)
KINDS = {k.segment: k for k in (DATA, MODELS)}
DATA_TYPES = ("uri_file", "uri_folder", "mltable")


def kind_of(call: Call) -> AssetKind:
    return KINDS[call.params["kind"].lower()]


def _now() -> str:
    return datetime.now(UTC).isoformat()


def _is_numeric(version: str) -> bool:
    return version.isascii() and version.isdigit()


# --- request validation and normalisation ----------------------------------------------------

def _check_types(props: dict[str, Any]) -> None:
    for key in ("isArchived", "isAnonymous"):
        if key in props and not isinstance(props[key], bool):
            raise bad_request(f"properties.{key} must be true or false, got {props[key]!r}.")
    for key in ("tags", "properties"):
        value = props.get(key)
        if value is not None and not (
            isinstance(value, dict) and all(isinstance(v, str | None) for v in value.values())
        ):
            raise bad_request(f"properties.{key} must be an object of strings.")
    if props.get("description") is not None and not isinstance(props["description"], str):
        raise bad_request("properties.description must be a string.")


def normalise_uri(kind: AssetKind, uri: str, coords: WorkspaceCoords, *, folder: bool) -> str:
    """The service's canonical form: long azureml:// URIs naming the workspace; other URIs unchanged."""
    parsed = parse_azureml_uri(uri)
    if parsed is None:
        return uri
    same_ws = parsed.subscription_id is None or coords.matches(
        parsed.subscription_id, parsed.resource_group or "", parsed.workspace or ""
    )
    sub = coords.subscription_id if same_ws else parsed.subscription_id
    rg = coords.resource_group if same_ws else parsed.resource_group
    ws = coords.workspace if same_ws else parsed.workspace
    path = parsed.path
    if folder and not path.endswith("/"):
        path += "/"
    return f"azureml://subscriptions/{sub}/{kind.rg_segment}/{rg}/workspaces/{ws}/datastores/{parsed.datastore}/paths/{path}"


def _version_properties(kind: AssetKind, req: dict[str, Any], coords: WorkspaceCoords) -> dict[str, Any]:
    """Stored version properties in the service's key order; unknown request keys are kept."""
    _check_types(req)
    uri = req.get(kind.uri_field)
    if not isinstance(uri, str) or not uri:
        raise bad_request(f"properties.{kind.uri_field} is required and must be a non-empty string.")
    if not _URI_SCHEME.match(uri):
        raise bad_request(
            f"properties.{kind.uri_field} must be a URI such as azureml://datastores/<name>/paths/<path> "
            f"or https://…, got '{uri}'."
        )
    archived = bool(req.get("isArchived", False))
    common: dict[str, Any] = {
        "description": req.get("description"),
        "tags": req.get("tags") if req.get("tags") is not None else {},
        "properties": req.get("properties") if req.get("properties") is not None else {},
        "isArchived": archived,
        "isAnonymous": bool(req.get("isAnonymous", False)),
        "autoDeleteSetting": req.get("autoDeleteSetting"),
    }
    if kind is DATA:
        data_type = req.get("dataType")
        if data_type not in DATA_TYPES:
            raise bad_request(f"properties.dataType must be one of {', '.join(DATA_TYPES)}; got {data_type!r}.")
        props = {
            **common,
            "dataUri": normalise_uri(kind, uri, coords, folder=data_type != "uri_file"),
            "stage": req.get("stage"),
            "intellectualProperty": req.get("intellectualProperty"),
            "dataType": data_type,
        }
    else:
        flavors = req.get("flavors")
        if flavors is not None and not isinstance(flavors, dict):
            raise bad_request("properties.flavors must be an object.")
        model_type = req.get("modelType", "custom_model")
        if not isinstance(model_type, str):
            raise bad_request("properties.modelType must be a string.")
        stage = req.get("stage")
        props = {
            **common,
            "flavors": flavors or {},
            "modelType": model_type,
            "modelUri": normalise_uri(kind, uri, coords, folder=False),
            "jobName": req.get("jobName"),
            "provisioningState": "Succeeded",
            "stage": "Archived" if archived else (stage if stage and stage != "Archived" else "Development"),
            "intellectualProperty": req.get("intellectualProperty"),
        }
    for key, value in req.items():  # e.g. referencedUris of mltable
        props.setdefault(key, value)
    return props


# --- container view ----------------------------------------------------------------------------

def _summary(tx: Tx, kind: AssetKind, container: Row) -> tuple[str | None, int]:
    """(latestVersion, nextVersion) by two indexed queries, not by reading every version (containers list in O(1)).

    latest = the newest active version (the newest overall if all are archived); next = highest numeric
    version ever stored + 1 (non-numeric versions don't count).
    """
    parent = container.name.lower()
    active = tx.select("kind=? AND parent=? AND coalesce(json_extract(body, '$.properties.isArchived'), 0) = 0",
                       (kind.version_kind, parent), newest_first=True, limit=1)
    newest = active or tx.select("kind=? AND parent=?", (kind.version_kind, parent), newest_first=True, limit=1)
    highest = tx.conn.execute(
        "SELECT max(CAST(name AS INTEGER)) FROM resources WHERE kind=? AND parent=? "
        "AND name <> '' AND name NOT GLOB '*[^0-9]*'", (kind.version_kind, parent)).fetchone()[0]
    latest = str(newest[0].body["name"]) if newest else None
    return latest, max(int(container.meta.get("highest", 0)), int(highest or 0)) + 1


def container_view(kind: AssetKind, container: Row, summary: tuple[str | None, int]) -> dict[str, Any]:
    body = dict(container.body)
    stored = container.body["properties"]
    props: dict[str, Any] = {
        "description": stored.get("description"),
        "tags": stored.get("tags"),
        "properties": stored.get("properties"),
        "isArchived": bool(stored.get("isArchived", False)),
        "latestVersion": summary[0],
        "nextVersion": str(summary[1]),
    }
    if kind is DATA:
        props["dataType"] = stored.get("dataType")
    else:
        props["provisioningState"] = "Succeeded"
    body["properties"] = props
    return body


def _system_data(call: Call, *, full: bool) -> dict[str, Any]:
    now = _now()
    data = {"createdAt": now, "createdBy": call.principal.name, "createdByType": call.principal.kind,
            "lastModifiedAt": now}
    if full:
        data.update(lastModifiedBy=call.principal.name, lastModifiedByType=call.principal.kind)
    return data


def _touch(system_data: dict[str, Any], call: Call) -> dict[str, Any]:
    return {**system_data, "lastModifiedAt": _now(), "lastModifiedBy": call.principal.name,
            "lastModifiedByType": call.principal.kind}


def _new_container(kind: AssetKind, emu: Emulator, call: Call, name: str, req: dict[str, Any]) -> dict[str, Any]:
    defaults: dict[str, Any] = {"description": None, "tags": None, "properties": None}
    if kind is not DATA:
        defaults.update(tags={}, properties={})
    props: dict[str, Any] = {**defaults, **{k: req[k] for k in ("description", "tags", "properties") if k in req}}
    props["isArchived"] = bool(req.get("isArchived", False))
    if kind is DATA:
        props["dataType"] = req.get("dataType")
    return {
        "id": f"{emu.config.coords.arm_id}/{kind.segment}/{name}",
        "name": name,
        "type": kind.arm_type(versions=False),
        "properties": props,
        "systemData": _system_data(call, full=kind.full_system_data),
    }


# --- handlers: containers ----------------------------------------------------------------------

def _list_view(call: Call) -> str:
    raw = call.query.get("listviewtype") or "ActiveOnly"
    view = LIST_VIEW_TYPES.get(raw.lower())
    if view is None:
        raise bad_request(f"listViewType must be one of ActiveOnly, ArchivedOnly, All; got '{raw}'.")
    return view


def _visible(archived: bool, view: str) -> bool:
    return view == "All" or (view == "ArchivedOnly") == archived


def get_container(emu: Emulator, call: Call) -> Reply:
    kind, name = kind_of(call), call.params["name"]
    with emu.store.read() as tx:
        container = tx.get(kind.segment, name)
        view = container_view(kind, container, _summary(tx, kind, container)) if container else None
    if view is None:
        raise kind.container_not_found(name)
    return Reply(200, view)


def list_containers(emu: Emulator, call: Call) -> Reply:
    kind, view = kind_of(call), _list_view(call)
    with emu.store.read() as tx:
        items = [
            container_view(kind, c, _summary(tx, kind, c))
            for c in tx.rows(kind.segment, newest_first=False)
        ]
    items = [c for c in items if _visible(c["properties"]["isArchived"], view)]
    return paged(call, items, emu.config.page_size)


def put_container(emu: Emulator, call: Call) -> Reply:
    kind, name = kind_of(call), call.params["name"]
    req = call.body_object()["properties"]
    _check_types(req)
    with emu.store.write() as tx:
        container = tx.get(kind.segment, name)
        if container is None:
            body = _new_container(kind, emu, call, name, req)
            tx.put(kind.segment, name, body)
            status = 201
        else:
            body = dict(container.body)
            props = dict(body["properties"])
            for key in ("description", "tags", "properties", "isArchived"):
                if key in req:
                    props[key] = req[key]
            body["properties"] = props
            body["systemData"] = _touch(body["systemData"], call)
            tx.put(kind.segment, name, body, meta=container.meta)
            status = 200
        row = tx.get(kind.segment, name)
        assert row is not None
        view = container_view(kind, row, _summary(tx, kind, row))
    headers = {"Location": call.url(call.raw_path, **{"api-version": call.api_version or ""})} if status == 201 else {}
    return Reply(status, view, headers)


def delete_container(emu: Emulator, call: Call) -> Reply:
    kind, name = kind_of(call), call.params["name"]
    with emu.store.write() as tx:
        existed = tx.delete(kind.segment, name)
        tx.delete_children(kind.version_kind, name)
    return Reply(200 if existed else 204, empty=True)


# --- handlers: versions ------------------------------------------------------------------------

def get_version(emu: Emulator, call: Call) -> Reply:
    kind, name, version = kind_of(call), call.params["name"], call.params["version"]
    with emu.store.read() as tx:
        row = tx.get(kind.version_kind, version, parent=name)
        if row is None:
            if tx.get(kind.segment, name) is None:
                raise kind.container_not_found(name)
            raise kind.version_not_found(name, version)
    return Reply(200, row.body)




def list_versions(emu: Emulator, call: Call) -> Reply:
    """One page of versions, filtered and paged in SQL: a full listing costs O(n), not O(n²).

    The continuation token carries the last row id served (keyset paging), so each page is one
    index range scan however deep into the listing it is.
    """
    kind, name, view = kind_of(call), call.params["name"], _list_view(call)
    descending = newest_first(call)
    after, served = _decode_keyset(call.query.get("$skiptoken"))
    top = int_param(call, "$top")
    size = max(1, emu.config.page_size)
    limit = size if top is None else max(0, min(size, top - served))
    with emu.store.read() as tx:
        if tx.get(kind.segment, name) is None:
            raise kind.container_not_found(name)
        rows = _version_page(tx, kind, name, view=view, stage=call.query.get("stage"), newest_first=descending,
                             after=after, limit=limit + 1)
    page = rows[:limit]
    result: dict[str, Any] = {"value": [r.body for r in page]}
    if len(rows) > limit and page and (top is None or served + len(page) < top):
        result["nextLink"] = next_link(call, _encode_keyset(page[-1].id, served + len(page)))
    return Reply(200, result)


def _version_page(tx: Tx, kind: AssetKind, name: str, *, view: str, stage: str | None, newest_first: bool,
                  after: int | None, limit: int) -> list[Row]:
    where = ["kind=?", "parent=?"]
    args: list[Any] = [kind.version_kind, name.lower()]
    if after is not None:
        where.append("id < ?" if newest_first else "id > ?")
        args.append(after)
    if view != "All":
        where.append("coalesce(json_extract(body, '$.properties.isArchived'), 0) = ?")
        args.append(1 if view == "ArchivedOnly" else 0)
    if stage:
        where.append("lower(coalesce(json_extract(body, '$.properties.stage'), '')) = ?")
        args.append(stage.lower())
    return tx.select(" AND ".join(where), tuple(args), newest_first=newest_first, limit=limit)


def _encode_keyset(last_id: int, served: int) -> str:
    return base64.urlsafe_b64encode(json.dumps({"k": last_id, "n": served}).encode()).decode().rstrip("=")


def _decode_keyset(token: str | None) -> tuple[int | None, int]:
    if not token:
        return None, 0
    try:
        doc = json.loads(base64.urlsafe_b64decode((token + "=" * (-len(token) % 4)).encode()))
        last, served = doc["k"], doc["n"]
    except (binascii.Error, ValueError, KeyError, TypeError) as exc:
        raise bad_request(f"The continuation token '{token}' is not valid.") from exc
    if not isinstance(last, int) or not isinstance(served, int) or served < 0:
        raise bad_request(f"The continuation token '{token}' is not valid.")
    return last, served


def put_version(emu: Emulator, call: Call) -> Reply:
    kind, name, version = kind_of(call), call.params["name"], call.params["version"]
    coords = emu.config.coords
    props = _version_properties(kind, call.body_object()["properties"], coords)
    with emu.store.write() as tx:
        existing = tx.get(kind.version_kind, version, parent=name)
        if existing is None:
            body = _create_version(emu, call, tx, kind, name, version, props)
            return Reply(201, body, {"Location": call.url(body["id"], **{"api-version": call.api_version or ""})})
        old = existing.body["properties"]
        if old[kind.uri_field] != props[kind.uri_field]:
            raise ArmError(400, "UserError", ASSET_PATHS_IMMUTABLE)
        body = dict(existing.body)
        body["properties"] = {**props, **{k: old[k] for k in ("dataType",) if k in old}}
        body["systemData"] = _touch(existing.body["systemData"], call)
        tx.put(kind.version_kind, version, body, parent=name, meta=existing.meta)
    return Reply(200, body)


def _create_version(
    emu: Emulator,
    call: Call,
    tx: Tx,
    kind: AssetKind,
    name: str,
    version: str,
    props: dict[str, Any],
) -> dict[str, Any]:
    """Store a new version (and its container if needed)."""
    container = tx.get(kind.segment, name)
    if container is None:
        implicit = {"dataType": props.get("dataType")} if kind is DATA else {}
        container_body, meta = _new_container(kind, emu, call, name, implicit), {}
    else:
        container_body = {**container.body, "systemData": {**container.body["systemData"], "lastModifiedAt": _now()}}
        meta = dict(container.meta)
    if _is_numeric(version):
        meta["highest"] = max(int(meta.get("highest", 0)), int(version))
    tx.put(kind.segment, name, container_body, meta=meta)
    name = container_body["name"]  # the container's own spelling
    body = {
        "id": f"{emu.config.coords.arm_id}/{kind.segment}/{name}/versions/{version}",
        "name": version,
        "type": kind.arm_type(versions=True),
        "properties": props,
        "systemData": _system_data(call, full=kind.full_system_data),
    }
    tx.put(kind.version_kind, version, body, parent=name)
    if kind is MODELS:
        emu.record_event(tx, "ModelRegistered", f"models/{name}:{version}", {
            "modelName": name, "modelVersion": version,
            "modelTags": props.get("tags") or {}, "modelProperties": props.get("properties") or {},
        })
    return body


def delete_version(emu: Emulator, call: Call) -> Reply:
    kind, name, version = kind_of(call), call.params["name"], call.params["version"]
    with emu.store.write() as tx:
        existed = tx.delete(kind.version_kind, version, parent=name)
    return Reply(200 if existed else 204, empty=True)


# --- emulator-only admin route: bulk seeding -----------------

def register(r: Router) -> None:
    """Data and model containers and their versions."""
    asset = f"{W}/(?P<kind>data|models)"
    r.add("GET", asset, list_containers)
    r.add("GET", f"{asset}/(?P<name>[^/]+)", get_container)
    r.add("PUT", f"{asset}/(?P<name>[^/]+)", put_container)
    r.add("DELETE", f"{asset}/(?P<name>[^/]+)", delete_container)
    r.add("GET", f"{asset}/(?P<name>[^/]+)/versions", list_versions)
    r.add("GET", f"{asset}/(?P<name>[^/]+)/versions/(?P<version>[^/]+)", get_version)
    r.add("PUT", f"{asset}/(?P<name>[^/]+)/versions/(?P<version>[^/]+)", put_version)
    r.add("DELETE", f"{asset}/(?P<name>[^/]+)/versions/(?P<version>[^/]+)", delete_version)


def register_admin(r: Router) -> None:
    """`/_emulator/seed/{data|models}/{name}` (throttling lives in request_faults.py)."""
    r.add("POST", "/_emulator/seed/(?P<kind>data|models)/(?P<name>[^/]+)", seed_versions)


def seed_versions(emu: Emulator, call: Call) -> Reply:
    """Bulk-create versions in one transaction, with a given `createdAt` (benchmarks, demos of old assets).

    Body: `{"versions": [{"version": "1", "uri": "azureml://datastores/…/paths/…", "dataType": "uri_folder",
    "createdAt": "2026-01-01T00:00:00+00:00", "tags": {}, "properties": {}, "isArchived": false}]}`.
    Versions are stored exactly as a PUT would store them (same validation and normalisation); no events.
    """
    kind, name = kind_of(call), call.params["name"]
    body = call.body if isinstance(call.body, dict) else {}
    versions = body.get("versions")
    if not isinstance(versions, list) or not all(isinstance(v, dict) for v in versions):
        raise bad_request("'versions' must be a list of objects.")
    coords = emu.config.coords
    prepared = []
    for spec in versions:
        version = str(spec.get("version") or "")
        if not version:
            raise bad_request("every version needs 'version'.")
        req = {kind.uri_field: spec.get("uri"), **{k: spec[k] for k in ("dataType", "tags", "properties",
                                                                           "isArchived", "description") if k in spec}}
        props = _version_properties(kind, req, coords)
        created = spec.get("createdAt") or _now()
        try:
            created = datetime.fromisoformat(str(created)).astimezone(UTC).isoformat()
        except ValueError as exc:
            raise bad_request(f"createdAt {created!r} is not an ISO 8601 time.") from exc
        prepared.append((version, props, created))
    with emu.store.write() as tx:
        container = tx.get(kind.segment, name)
        if container is None:
            implicit = {"dataType": prepared[0][1].get("dataType")} if kind is DATA and prepared else {}
            container_body, meta = _new_container(kind, emu, call, name, implicit), {}
        else:
            container_body, meta = dict(container.body), dict(container.meta)
        numbers = [int(v) for v, _, _ in prepared if _is_numeric(v)]
        meta["highest"] = max([int(meta.get("highest", 0)), *numbers])
        tx.put(kind.segment, name, container_body, meta=meta)
        display = container_body["name"]
        for version, props, created in prepared:
            system = {**_system_data(call, full=kind.full_system_data), "createdAt": created, "lastModifiedAt": created}
            tx.put(kind.version_kind, version, {
                "id": f"{coords.arm_id}/{kind.segment}/{display}/versions/{version}",
                "name": version,
                "type": kind.arm_type(versions=True),
                "properties": props,
                "systemData": system,
            }, parent=name)
    return Reply(201, {"created": len(prepared)})
