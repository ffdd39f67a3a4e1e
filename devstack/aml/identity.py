"""The App Service managed-identity endpoint (`IDENTITY_ENDPOINT` / `IDENTITY_HEADER`).

azure-identity 1.27 hands App Service to msal's managed-identity client, which sends
`GET {IDENTITY_ENDPOINT}?api-version=2019-08-01&resource=<r>` with `X-IDENTITY-HEADER` and reads
`access_token` plus `expires_on` (epoch seconds, as a string). The token is a real JWT because the
SDK decodes it for pipeline jobs and requires `aud == "https://ml.azure.com"` exactly.
"""

from __future__ import annotations

import hmac
import secrets
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jwt

from devstack.aml.web import Call, Reply

if TYPE_CHECKING:
    from devstack.aml.emulator import Emulator


def signing_key(state_dir: Path) -> bytes:
    """A per-state-dir HS256 key, kept so tokens stay verifiable across restarts."""
    path = state_dir / "aml-token.key"
    if not path.exists():
        tmp = path.with_suffix(".tmp")
        tmp.write_text(secrets.token_hex(32))
        tmp.chmod(0o600)
        tmp.replace(path)
    return path.read_text().strip().encode()


def audience(resource: str) -> str:
    """AAD's `aud` for a resource; Azure ML's must have no trailing slash."""
    if resource.rstrip("/").lower() == "https://ml.azure.com":
        return "https://ml.azure.com"
    return resource


def issue_token(emu: Emulator, resource: str, now: float | None = None) -> dict[str, Any]:
    cfg = emu.config
    issued = int(now if now is not None else time.time())
    expires = issued + cfg.token_lifetime
    claims = {
        "aud": audience(resource),
        "iss": f"https://sts.windows.net/{cfg.tenant_id}/",
        "iat": issued,
        "nbf": issued,
        "exp": expires,
        "tid": cfg.tenant_id,
        "oid": cfg.object_id,
        "sub": cfg.object_id,
        "appid": cfg.client_id,
        "idtyp": "app",
    }
    token = jwt.encode(claims, emu.token_key, algorithm="HS256")
    return {
        "access_token": token,
        "expires_on": str(expires),
        "resource": resource,
        "token_type": "Bearer",
        "client_id": cfg.client_id,
    }


def get_token(emu: Emulator, call: Call, header_value: str | None) -> Reply:
    """Answer like App Service: 401 for a wrong or missing secret header, 400 without a resource."""
    if header_value is None or not hmac.compare_digest(header_value, emu.config.identity_header):
        return Reply(401, {"statusCode": 401, "message": "Unauthorized: X-IDENTITY-HEADER is missing or wrong."})
    resource = call.query.get("resource")
    if not resource:
        return Reply(400, {"statusCode": 400, "message": "The 'resource' query parameter is required."})
    return Reply(200, issue_token(emu, resource))
