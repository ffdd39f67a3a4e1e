"""The status page: `GET /api/status` (HTML) and `GET /api/status.json`, behind the edge like every trigger.

Auth level FUNCTION (a function or host key in Azure; App Service Authentication can be put in front of
it in the Bicep, `enableAuth`); the local host, like `func start`, does not check keys. Bad filters are
rejected by `parse_status_query` as `InvalidEventError`, which the edge answers with 400 naming them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import azure.functions as func

from functions.edge import Delivery, Handled, Settled, edge, http_request
from shared.composition import get_status_reader, load_configuration
from shared.domain.vocabulary import EdgeAction
from shared.domain.webhooks import HttpReply

if TYPE_CHECKING:  # imported on the first request: start-up stays cheap (tests/unit/test_cold_start.py)
    from shared.services.status import StatusQuery

bp = func.Blueprint()  # type: ignore[no-untyped-call]

NO_STORE = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}
PAGE_HEADERS = {**NO_STORE, "Content-Type": "text/html; charset=utf-8",
                "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; "
                                           "form-action 'self'; frame-ancestors 'none'"}
JSON_HEADERS = {**NO_STORE, "Content-Type": "application/json; charset=utf-8"}


def status_query(req: func.HttpRequest) -> StatusQuery:
    """The page's filters from the query string; raises InvalidEventError naming each bad one."""
    from shared.services.status import parse_status_query

    return parse_status_query(dict(req.params), load_configuration()[1])


def _describe(query: StatusQuery) -> str:
    return ",".join(f"{k}={v}" for k, v in query.to_json().items() if v and k != "limit") or "all"


@bp.function_name("status_page")
@bp.route(route="status", methods=["GET"], auth_level=func.AuthLevel.FUNCTION)
@edge(http_request(status_query), subject=_describe)
def status_page(query: StatusQuery, delivery: Delivery) -> Settled:
    """What Evergreen did and why, as one HTML page (server-rendered, no JavaScript)."""
    from shared.status_page import render_html

    policy = load_configuration()[1]
    body = render_html(get_status_reader().read(query), policy_datasets=tuple(d.name for d in policy.datasets),
                       policy_models=tuple(m.name for m in policy.models),
                       policy_endpoints=tuple(sorted({m.promotion.endpoint for m in policy.models}))).encode("utf-8")
    return Handled(action=EdgeAction.RENDERED, detail=f"{len(body)} bytes", reply=HttpReply(200, PAGE_HEADERS, body))


@bp.function_name("status_json")
@bp.route(route="status.json", methods=["GET"], auth_level=func.AuthLevel.FUNCTION)
@edge(http_request(status_query), subject=_describe)
def status_json(query: StatusQuery, delivery: Delivery) -> Settled:
    """The same view as JSON, for scripts and dashboards."""
    from shared.status_page import render_json

    body = render_json(get_status_reader().read(query)).encode("utf-8")
    return Handled(action=EdgeAction.RENDERED, detail=f"{len(body)} bytes", reply=HttpReply(200, JSON_HEADERS, body))
