"""Retention's Azure ML listings over the public REST API: paging, URLs, and the JSON read into the inventory.

The same client runs against the emulator in `tests/contract/test_retention_adapters.py` and
`tests/e2e/test_retention_stack.py`; these tests pin what does not need a server.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from shared.adapters.azure.aml_rest import DATA_API, MODELS_API, WorkspaceRest, _with_api_version
from shared.adapters.azure.aml_retention import _job, rest_job_input
from shared.domain.retention.addresses import AddressBook, Datastore
from shared.domain.retention.inventory import BlobPath, DataKey, ModelKey

BOOK = AddressBook.of([Datastore("landing", "AzureBlob", "acct", "landing"),
                       Datastore("workspaceblobstore", "AzureBlob", "acct", "azureml-blobstore")], ["acct"])
WS = "/subscriptions/s/resourceGroups/r/providers/Microsoft.MachineLearningServices/workspaces/w"


class Paged(WorkspaceRest):
    """The client with its HTTP call replaced by canned pages, keyed by URL; records what it asked for."""

    def __init__(self, pages: dict[str, dict[str, Any]]) -> None:
        super().__init__(credential=None, subscription_id="s", resource_group="r", workspace="w",  # type: ignore[arg-type]
                         base_url="https://arm.example/")
        self.pages = pages
        self.asked: list[str] = []

    def _send(self, method: str, url: str) -> Any:
        self.asked.append(f"{method} {url}")
        return self.pages[url]


def test_versions_follow_next_link_and_keep_its_token_with_the_api_version_readded() -> None:
    first = f"https://arm.example{WS}/data/ds%2F1/versions?listViewType=All&api-version={DATA_API}"
    nxt = f"https://arm.example{WS}/data/ds%2F1/versions?listViewType=All&%24skipToken=abc"
    second = f"https://arm.example{WS}/data/ds%2F1/versions?listViewType=All&%24skipToken=abc&api-version={DATA_API}"
    rest = Paged({first: {"value": [{"name": "2"}], "nextLink": nxt}, second: {"value": [{"name": "1"}]}})
    assert [v["name"] for v in rest.versions("data", "ds/1")] == ["2", "1"]
    assert rest.asked == [f"GET {first}", f"GET {second}"]


def test_api_version_is_replaced_not_repeated_and_other_parameters_survive() -> None:
    url = _with_api_version("https://h/x?api-version=old&$skipToken=t%3D&listViewType=All", MODELS_API)
    query = parse_qs(urlsplit(url).query)
    assert query == {"api-version": [MODELS_API], "$skipToken": ["t="], "listViewType": ["All"]}


def test_an_unknown_asset_kind_is_refused() -> None:
    with pytest.raises(ValueError, match="data or models"):
        Paged({}).versions("jobs", "x")


@pytest.mark.parametrize(("value", "expected"), [
    ({"jobInputType": "uri_folder", "uri": f"azureml:{WS}/data/churn-training/versions/7"},
     DataKey("churn-training", "7")),
    ({"jobInputType": "custom_model", "uri": "azureml:churn-model:2"}, ModelKey("churn-model", "2")),
    ({"jobInputType": "uri_folder", "uri": "azureml://datastores/landing/paths/churn/d9/"},
     BlobPath("landing", "churn/d9/")),
    ({"jobInputType": "literal", "value": "churned"}, None),
])
def test_rest_job_inputs_are_recognised_as_data_models_paths_or_literals(value: dict[str, Any],
                                                                           expected: Any) -> None:
    assert rest_job_input(value, BOOK) == expected


def test_a_rest_job_reads_its_inputs_outputs_status_and_end() -> None:
    job = _job({"name": "train-7", "systemData": {"lastModifiedAt": "2026-11-01T10:00:00Z"}, "properties": {
        "status": "Completed", "tags": {"a": "b"},
        "inputs": {"data": {"jobInputType": "uri_folder", "uri": "azureml:churn-training:3"},
                   "target": {"jobInputType": "literal", "value": "churned"}},
        "outputs": {"model": {"jobOutputType": "uri_folder", "uri": None}}}}, BOOK)
    assert job.inputs == (DataKey("churn-training", "3"),)
    assert job.outputs == {"model": BlobPath("azureml-blobstore", "azureml/train-7/model/")}
    assert (job.status, job.tags) == ("Completed", {"a": "b"})
    assert job.finished_at == datetime(2026, 11, 1, 10, tzinfo=UTC)


def test_a_running_job_has_no_end() -> None:
    assert _job({"name": "j", "properties": {"status": "Running"}}, BOOK).finished_at is None
