"""Azure ML's public ARM REST API for one workspace, on azure-core's public pipeline (no azure-ai-ml).

Retention lists every version of every data and model asset, and every job. Going through
azure-ai-ml for that meant either building a full SDK entity per item (most of the run's CPU at 10×)
or reading private attributes of the SDK (`ml_client.data._operation`), which any release may break.
This client speaks the documented resource-manager routes instead and hands back each item's JSON:

- `GET …/workspaces/{ws}/data?listViewType=All`, `…/data/{name}/versions?listViewType=All`
- `GET …/workspaces/{ws}/models?listViewType=All`, `…/models/{name}/versions?listViewType=All`
- `GET …/workspaces/{ws}/jobs?listViewType=All`
- `GET` / `DELETE …/{data|models}/{name}/versions/{version}`

Paging follows `nextLink` (an absolute URL that carries its own `$skipToken`), re-adding only the
api-version, as the SDK does. The pipeline is `azure.mgmt.core.ARMPipelineClient` (bearer token for
the resource manager, azure-core's retry policy: 429 and 5xx are retried with `Retry-After`).
Locally `AZUREML_DEV_URL_MFE` replaces the resource manager's URL, as it does for azure-ai-ml.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, quote, urlencode, urlsplit, urlunsplit

if TYPE_CHECKING:
    from azure.core.credentials import TokenCredential
    from azure.core.rest import HttpRequest, HttpResponse
    from azure.mgmt.core import ARMPipelineClient

log = logging.getLogger(__name__)

ARM_URL = "https://management.azure.com/"
ARM_SCOPE = "https://management.azure.com/.default"
# The api-versions azure-ai-ml 1.35 sends for these routes (../shared/notes/azureml-rest.md).
DATA_API = "2023-04-01-preview"
MODELS_API = "2023-08-01-preview"
JOBS_API = "2024-01-01-preview"
MAX_PAGES = 100_000  # a guard against a nextLink that never ends
# Retries of one request on a 429/5xx reply (azure-core's default is 3). A retention apply makes thousands
# of calls: with 10 % of calls throttled, 4 refusals in a row failed about one action per run at 10x
# (`make bench`); 6 makes that one in ten million calls. A 429 waits its Retry-After, a 5xx backs off.
STATUS_RETRIES = 6


def resource_manager_url() -> str:
    """The resource manager's base URL: `AZUREML_DEV_URL_MFE` when set (a local emulator), else Azure's."""
    return os.environ.get("AZUREML_DEV_URL_MFE") or ARM_URL


class WorkspaceRest:
    """Reads and deletes a workspace's asset versions and jobs as raw JSON over the public REST API.

    Raises azure-core's errors: `ResourceNotFoundError` (404), `HttpResponseError` (other failures
    after the pipeline's retries), `ServiceRequestError` (no connection).
    """

    def __init__(self, credential: TokenCredential, subscription_id: str, resource_group: str, workspace: str,
                 *, timeout: float = 60.0, base_url: str | None = None) -> None:
        self._credential = credential
        self._base = (base_url or resource_manager_url()).rstrip("/")
        self._workspace_path = (f"/subscriptions/{quote(subscription_id)}/resourceGroups/{quote(resource_group)}"
                                f"/providers/Microsoft.MachineLearningServices/workspaces/{quote(workspace)}")
        self._timeout = timeout
        self._pipeline: ARMPipelineClient[HttpRequest, HttpResponse] | None = None

    @property
    def _client(self) -> ARMPipelineClient[HttpRequest, HttpResponse]:
        if self._pipeline is None:  # built on first use (a benign race builds two; one is kept)
            from azure.core.pipeline import policies
            from azure.mgmt.core import ARMPipelineClient
            from azure.mgmt.core.policies import ARMChallengeAuthenticationPolicy, ARMHttpLoggingPolicy

            # azure-core's default order: ids and headers, redirects, retries (429/5xx with Retry-After), the
            # resource manager's bearer token, logging without secrets.
            self._pipeline = ARMPipelineClient(base_url=self._base, policies=[
                policies.RequestIdPolicy(), policies.HeadersPolicy(),
                policies.UserAgentPolicy(sdk_moniker="evergreen-retention"), policies.ProxyPolicy(),
                policies.RedirectPolicy(), policies.RetryPolicy(retry_status=STATUS_RETRIES),
                ARMChallengeAuthenticationPolicy(self._credential, ARM_SCOPE),
                policies.CustomHookPolicy(), policies.NetworkTraceLoggingPolicy(), ARMHttpLoggingPolicy(),
            ])
        return self._pipeline

    def _url(self, path: str, api_version: str, **params: str) -> str:
        return f"{self._base}{self._workspace_path}/{path}?{urlencode({**params, 'api-version': api_version})}"

    def _send(self, method: str, url: str) -> Any:
        """One request through the pipeline; the reply's JSON (None when empty). Raises on a non-2xx."""
        from azure.core.exceptions import HttpResponseError, ResourceNotFoundError
        from azure.core.rest import HttpRequest

        reply = self._client.send_request(HttpRequest(method, url), connection_timeout=self._timeout,
                                          read_timeout=self._timeout)
        if reply.status_code == 404:
            raise ResourceNotFoundError(response=reply)
        if reply.status_code >= 400:
            raise HttpResponseError(response=reply)
        return reply.json() if reply.content else None

    def _pages(self, url: str, api_version: str) -> Iterator[dict[str, Any]]:
        """Every item of a paged listing, following `nextLink` (api-version re-added, as the SDK does)."""
        for _ in range(MAX_PAGES):
            page = self._send("GET", url) or {}
            yield from page.get("value") or []
            next_link = page.get("nextLink")
            if not next_link:
                return
            url = _with_api_version(str(next_link), api_version)
        raise RuntimeError(f"paging did not end after {MAX_PAGES} pages: {url.split('?')[0]}")

    # -- reads -----------------------------------------------------------------------------------
    def asset_names(self, kind: str) -> list[str]:
        """Names of every data (`kind="data"`) or model (`"models"`) container, archived ones included."""
        api = _api(kind)
        return [str(item["name"]) for item in self._pages(self._url(kind, api, listViewType="All"), api)]

    def versions(self, kind: str, name: str) -> list[dict[str, Any]]:
        """Every version of one data or model asset, archived ones included, as the service's JSON."""
        api = _api(kind)
        return list(self._pages(self._url(f"{kind}/{quote(name, safe='')}/versions", api, listViewType="All"), api))

    def jobs(self) -> list[dict[str, Any]]:
        """Every job of the workspace (archived ones included), as the service's JSON."""
        return list(self._pages(self._url("jobs", JOBS_API, listViewType="All"), JOBS_API))

    def version(self, kind: str, name: str, version: str) -> dict[str, Any]:
        """One version's JSON; raises ResourceNotFoundError if it does not exist."""
        found: dict[str, Any] = self._send("GET", self._version_url(kind, name, version)) or {}
        return found

    # -- writes ----------------------------------------------------------------------------------
    def delete_version(self, kind: str, name: str, version: str) -> None:
        """DELETE one version (the service answers 204 whether or not it existed)."""
        self._send("DELETE", self._version_url(kind, name, version))

    def _version_url(self, kind: str, name: str, version: str) -> str:
        return self._url(f"{kind}/{quote(name, safe='')}/versions/{quote(version, safe='')}", _api(kind))


def _api(kind: str) -> str:
    if kind == "data":
        return DATA_API
    if kind == "models":
        return MODELS_API
    raise ValueError(f"not an asset kind: {kind!r} (data or models)")


def _with_api_version(link: str, api_version: str) -> str:
    """`link` with its api-version set (a nextLink may leave it out), every other parameter kept."""
    parts = urlsplit(link)
    query: Mapping[str, list[str]] = parse_qs(parts.query, keep_blank_values=True)
    merged = {k: v for k, v in query.items() if k != "api-version"} | {"api-version": [api_version]}
    return urlunsplit(parts._replace(query=urlencode(merged, doseq=True)))
