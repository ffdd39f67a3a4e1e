"""Request/reply types, the case-insensitive ARM router and list paging shared by the handlers.

Handlers are plain synchronous functions `(Emulator, Call) -> Reply` (they talk to SQLite), so
they are easy to test and the ASGI layer in app.py only translates.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from devstack.aml.errors import bad_request

if TYPE_CHECKING:
    from devstack.aml.emulator import Emulator

# ARM prefix of the workspace; every MFE route hangs below it.
W = (
    r"/subscriptions/(?P<sub>[^/]+)/resourceGroups/(?P<rg>[^/]+)"
    r"/providers/Microsoft\.MachineLearningServices/workspaces/(?P<ws>[^/]+)"
)
LOCATIONS = r"/subscriptions/(?P<sub>[^/]+)/providers/Microsoft\.MachineLearningServices/locations/(?P<loc>[^/]+)"


@dataclass(frozen=True)
class Principal:
    """Who made the request, as shown in `systemData`."""

    name: str = "Local User"
    kind: str = "User"


@dataclass
class Call:
    """One request, already parsed."""

    method: str
    path: str  # decoded path
    raw_path: str  # as sent, for links back to the same resource
    params: dict[str, str]  # route groups
    query: dict[str, str]  # lower-cased keys, last value wins
    body: Any  # parsed JSON (None when empty)
    base_url: str  # scheme://host[:port] this request reached
    principal: Principal = field(default_factory=Principal)

    @property
    def api_version(self) -> str | None:
        return self.query.get("api-version")

    def url(self, path: str, **query: str) -> str:
        """Absolute URL on this emulator (what the client used to reach us)."""
        q = {k: v for k, v in query.items() if v is not None}
        return f"{self.base_url}{path}" + (f"?{urlencode(q)}" if q else "")

    def body_object(self) -> dict[str, Any]:
        """The body as a JSON object with a `properties` object, or a 400 naming what is wrong."""
        if not isinstance(self.body, dict):
            raise bad_request("The request body must be a JSON object.")
        props = self.body.get("properties")
        if not isinstance(props, dict):
            raise bad_request("The request body must contain a 'properties' object.")
        return self.body


@dataclass
class Reply:
    """What a handler answers: status, JSON body (or nothing) and headers."""

    status: int = 200
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    empty: bool = False  # send no body at all (e.g. finished Location polls)

    def encoded(self) -> bytes:
        return b"" if self.empty else json.dumps(self.body).encode()


Handler = Callable[["Emulator", Call], Reply]


@dataclass(frozen=True)
class Route:
    method: str
    pattern: re.Pattern[str]
    handler: Handler
    workspace_scoped: bool


class Router:
    """Regex routes matched case-insensitively (ARM paths and names are case-insensitive)."""

    def __init__(self) -> None:
        self.routes: list[Route] = []

    def add(self, method: str, pattern: str, handler: Handler) -> None:
        self.routes.append(
            Route(method, re.compile(f"^{pattern}/?$", re.IGNORECASE), handler, pattern.startswith(W))
        )

    def match(self, method: str, path: str) -> tuple[Route, dict[str, str]] | bool | None:
        """(route, groups); False when the path exists with another method; None when unknown."""
        path_known = False
        for route in self.routes:
            m = route.pattern.match(path)
            if m is None:
                continue
            if route.method == method:
                return route, {k: v for k, v in m.groupdict().items() if v is not None}
            path_known = True
        return False if path_known else None


# --- paging ------------------------------------------------------------------------------------

def _encode_token(offset: int) -> str:
    raw = json.dumps({"o": offset}).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_token(token: str) -> int:
    try:
        padded = token + "=" * (-len(token) % 4)
        offset = json.loads(base64.urlsafe_b64decode(padded.encode()))["o"]
    except (binascii.Error, ValueError, KeyError, TypeError) as exc:
        raise bad_request(f"The continuation token '{token}' is not valid.") from exc
    if not isinstance(offset, int) or offset < 0:
        raise bad_request(f"The continuation token '{token}' is not valid.")
    return offset


_ORDER_BY = re.compile(r"^\s*createdtime(?:\s+(asc|desc))?\s*$", re.IGNORECASE)


def newest_first(call: Call) -> bool:
    """`$orderBy=createdtime asc|desc` (the only order the asset listings take); newest first by default."""
    order = call.query.get("$orderby")
    if not order:
        return True
    m = _ORDER_BY.match(order)
    if m is None:
        raise bad_request(f"$orderBy supports 'createdtime asc|desc', got '{order}'.")
    return (m.group(1) or "asc").lower() == "desc"


def int_param(call: Call, name: str) -> int | None:
    value = call.query.get(name.lower())
    if value is None or value == "":
        return None
    try:
        number = int(value)
    except ValueError as exc:
        raise bad_request(f"The query parameter '{name}' must be an integer, got '{value}'.") from exc
    if number < 0:
        raise bad_request(f"The query parameter '{name}' must not be negative, got '{value}'.")
    return number


def paged(call: Call, items: list[dict[str, Any]], page_size: int) -> Reply:
    """`{value, nextLink?}`: `$top` caps the total, an opaque `$skipToken` carries the offset.

    The nextLink is absolute, points at the host the client used, and keeps every filter of the
    original request, because the SDK follows it as-is (adding only api-version).
    """
    offset = _decode_token(call.query["$skiptoken"]) if call.query.get("$skiptoken") else 0
    top = int_param(call, "$top")
    if top is not None:
        items = items[:top]
    size = max(1, page_size)
    result: dict[str, Any] = {"value": items[offset : offset + size]}
    if offset + size < len(items):
        result["nextLink"] = next_link(call, _encode_token(offset + size))
    return Reply(200, result)


def next_link(call: Call, token: str) -> str:
    """The link to the next page: this request's own filters plus `$skipToken`."""
    keep = {k: v for k, v in call.query.items() if k not in ("api-version", "$skiptoken")}
    original = _original_query_names(call)
    query = {original.get(k, k): v for k, v in keep.items()}
    query["$skipToken"] = token
    return f"{call.base_url}{call.raw_path}?{urlencode(query)}"


def _original_query_names(call: Call) -> dict[str, str]:
    """Map lower-cased query names back to a conventional spelling for links."""
    conventional = ["listViewType", "$orderBy", "$top", "isDefault", "count", "orderByAsc", "stage", "tags"]
    return {name.lower(): name for name in conventional}
