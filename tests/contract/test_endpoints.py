"""The `Endpoints` contract: `MemoryEndpoints` and the Azure adapter (`OnlineEndpoints` on the Azure ML
emulator, real SDK) behave alike.

The rollout's correctness rests on these semantics: operations return at once and are *in progress*
until they settle, traffic goes only to Succeeded deployments, a deployment that takes traffic cannot
be deleted, what does not exist reads as None, and every refused call raises `OperationFailedError`.
The service tests run on the in-memory twin; this suite keeps it honest.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from shared.adapters.memory.endpoints import MemoryEndpoints
from shared.domain.vocabulary import IN_PROGRESS_STATES, Tag
from shared.domain.workspace import DeploymentSpec, EndpointView
from shared.errors import OperationFailedError
from shared.ports import Endpoints

REPO = Path(__file__).resolve().parents[2]
SAMPLE = {"input_data": [{"tenure_months": 3, "monthly_charges": 99.5, "support_calls": 7, "contract": "monthly"},
                         {"tenure_months": 60, "monthly_charges": 35.0, "support_calls": 0, "contract": "annual"}]}


@dataclass
class Workspace:
    """An `Endpoints` adapter plus the two things the contract needs from its world: models, and time passing."""

    endpoints: Endpoints
    register: Callable[[str, dict[str, str]], str]  # (model name, tags) -> the new version
    let_time_pass: Callable[[], None]
    patience: int  # how many times `let_time_pass` may be called before an operation must have settled

    def eventually(self, check: Callable[[], bool], what: str) -> None:
        for _ in range(self.patience):
            if check():
                return
            self.let_time_pass()
        raise AssertionError(f"never happened: {what}")


def memory_workspace() -> Workspace:
    endpoints = MemoryEndpoints(operation_ticks=2)
    latest: dict[str, int] = {}

    def register(name: str, tags: dict[str, str]) -> str:
        latest[name] = latest.get(name, 0) + 1  # the registry numbers versions 1, 2, 3, ...
        return endpoints.add_model(name, str(latest[name]), tags).version

    return Workspace(endpoints, register, endpoints.advance, patience=10)


def azure_workspace(request: pytest.FixtureRequest) -> Workspace:
    from azure.identity import DefaultAzureCredential

    from shared.adapters.azure.azureml import AzureML, OnlineEndpoints
    from tests.fixtures.models import register

    aml = request.getfixturevalue("aml")
    ml_client = request.getfixturevalue("ml_client")
    model_uri = request.getfixturevalue("model_uri")
    endpoints = OnlineEndpoints(AzureML(DefaultAzureCredential(), aml.subscription_id, aml.resource_group,
                                        aml.workspace))

    def add(name: str, tags: dict[str, str]) -> str:
        return str(register(ml_client, name, model_uri, None, tags=tags).version)

    return Workspace(endpoints, add, lambda: time.sleep(0.25), patience=480)


@pytest.fixture(scope="module")
def model_uri(aml: Any, tmp_path_factory: pytest.TempPathFactory) -> str:
    from tests.fixtures.models import train_model_folder, upload_model_folder

    return upload_model_folder(aml.storage_connection_string, train_model_folder(tmp_path_factory.mktemp("train")))


@pytest.fixture(params=["memory", pytest.param("azure", marks=pytest.mark.integration)])
def ws(request: pytest.FixtureRequest) -> Iterator[Workspace]:
    yield memory_workspace() if request.param == "memory" else azure_workspace(request)


def names() -> tuple[str, str]:
    suffix = uuid.uuid4().hex[:8]
    return f"contract-{suffix}", f"ep-{suffix}"


def view(ws: Workspace, endpoint: str) -> EndpointView:
    found = ws.endpoints.endpoint(endpoint)
    assert found is not None, f"endpoint {endpoint} does not exist"
    return found


def settled_weight(ws: Workspace, endpoint: str, deployment: str) -> int | None:
    """The deployment's share of traffic once no update is in progress (None while one is)."""
    now = view(ws, endpoint)
    return None if now.busy else now.traffic.get(deployment, 0)


def ready_endpoint(ws: Workspace, endpoint: str) -> None:
    ws.endpoints.begin_create_endpoint(endpoint, {Tag.MANAGED.value: "true"})
    ws.eventually(lambda: view(ws, endpoint).state == "Succeeded", f"endpoint {endpoint} Succeeded")


def spec(endpoint: str, deployment: str, model: str, version: str) -> DeploymentSpec:
    return DeploymentSpec(endpoint=endpoint, name=deployment, model_name=model, model_version=version,
                          instance_type="Standard_DS3_v2", instance_count=1,
                          environment="azureml:AzureML-sklearn-1.5@latest", code_path=str(REPO / "ml" / "src"),
                          scoring_script="score.py", tags={Tag.MODEL.value: f"{model}:{version}"})


# -- reads ----------------------------------------------------------------------------------------------
def test_an_unknown_model_version_reads_as_none_and_a_registered_one_with_its_tags(ws: Workspace) -> None:
    model, _ = names()
    assert ws.endpoints.get_model(model, "1") is None
    version = ws.register(model, {"evergreen.metric.roc_auc": "0.8"})
    info = ws.endpoints.get_model(model, version)
    assert info is not None
    assert (info.name, info.version) == (model, version)
    assert info.tags["evergreen.metric.roc_auc"] == "0.8"
    assert ws.endpoints.get_model(model, str(int(version) + 1)) is None


def test_the_latest_model_is_the_newest_version_and_an_unknown_model_has_none(ws: Workspace) -> None:
    model, _ = names()
    assert ws.endpoints.latest_model(model) is None
    ws.register(model, {"evergreen.metric.roc_auc": "0.7"})
    newest = ws.register(model, {"evergreen.metric.roc_auc": "0.9"})
    info = ws.endpoints.latest_model(model)
    assert info is not None
    assert (info.name, info.version) == (model, newest)
    assert info.tags["evergreen.metric.roc_auc"] == "0.9"


def test_model_tags_are_merged_and_an_unknown_version_is_refused(ws: Workspace) -> None:
    model, _ = names()
    version = ws.register(model, {"evergreen.metric.roc_auc": "0.8", "team": "a"})
    ws.endpoints.set_model_tags(model, version, {Tag.DECISION.value: "improved", "team": "b"})
    info = ws.endpoints.get_model(model, version)
    assert info is not None
    assert info.tags == {"evergreen.metric.roc_auc": "0.8", "team": "b", Tag.DECISION.value: "improved"}
    with pytest.raises(OperationFailedError):
        ws.endpoints.set_model_tags(model, str(int(version) + 1), {Tag.DECISION.value: "x"})


def test_an_unknown_endpoint_reads_as_none(ws: Workspace) -> None:
    _, endpoint = names()
    assert ws.endpoints.endpoint(endpoint) is None


# -- endpoints ------------------------------------------------------------------------------------------
def test_a_created_endpoint_is_in_progress_then_succeeded_with_no_traffic(ws: Workspace) -> None:
    _, endpoint = names()
    ws.endpoints.begin_create_endpoint(endpoint, {Tag.MANAGED.value: "true"})
    first = view(ws, endpoint)
    assert first.state.lower() in IN_PROGRESS_STATES | {"succeeded"}
    ws.eventually(lambda: view(ws, endpoint).state == "Succeeded", "endpoint Succeeded")
    settled = view(ws, endpoint)
    assert (settled.name, settled.deployments, settled.serving()) == (endpoint, (), None)
    assert not any(settled.traffic.values())


def test_traffic_to_a_deployment_that_does_not_exist_is_refused(ws: Workspace) -> None:
    _, endpoint = names()
    ready_endpoint(ws, endpoint)
    with pytest.raises(OperationFailedError):
        ws.endpoints.begin_set_traffic(endpoint, {"nosuchdeployment": 100})
    assert not any(view(ws, endpoint).traffic.values())


def test_a_deployment_on_an_endpoint_that_does_not_exist_is_refused(ws: Workspace) -> None:
    model, endpoint = names()
    version = ws.register(model, {})
    with pytest.raises(OperationFailedError):
        ws.endpoints.begin_create_deployment(spec(endpoint, "blue", model, version))


# -- a deployment's whole life --------------------------------------------------------------------------------
def test_a_deployment_provisions_scores_takes_traffic_and_is_deleted(ws: Workspace) -> None:
    model, endpoint = names()
    version = ws.register(model, {})
    ready_endpoint(ws, endpoint)
    deployment = "green-1"

    # create: provisioning first, then Succeeded, serving the model it was given, with its tags
    ws.endpoints.begin_create_deployment(spec(endpoint, deployment, model, version))
    created = view(ws, endpoint).deployment(deployment)
    assert created is not None and created.state.lower() in IN_PROGRESS_STATES, created
    ws.eventually(lambda: getattr(view(ws, endpoint).deployment(deployment), "state", "") == "Succeeded",
                  "deployment Succeeded")
    settled = view(ws, endpoint).deployment(deployment)
    assert settled is not None
    assert settled.model == (model, version)
    assert settled.tags[Tag.MODEL.value] == f"{model}:{version}"
    assert isinstance(ws.endpoints.deployment_logs(endpoint, deployment, lines=5), str)

    # score the deployment alone (no traffic yet): its reply
    reply = ws.endpoints.score(endpoint, deployment, SAMPLE)
    assert isinstance(reply, dict) and len(reply["predictions"]) == len(SAMPLE["input_data"])
    with pytest.raises(OperationFailedError):  # a deployment that is not there never falls back to routing
        ws.endpoints.score(endpoint, "nosuchdeployment", SAMPLE)

    # traffic: reflected once the update settles
    ws.endpoints.begin_set_traffic(endpoint, {deployment: 100})
    ws.eventually(lambda: settled_weight(ws, endpoint, deployment) == 100, "traffic applied")
    serving = view(ws, endpoint).serving()
    assert serving is not None and serving.name == deployment

    # a deployment that takes traffic cannot be deleted
    with pytest.raises(OperationFailedError):
        ws.endpoints.begin_delete_deployment(endpoint, deployment)
    assert view(ws, endpoint).deployment(deployment) is not None

    # once it takes none, delete: gone (and deleting again is not an error)
    ws.endpoints.begin_set_traffic(endpoint, {deployment: 0})
    ws.eventually(lambda: settled_weight(ws, endpoint, deployment) == 0, "traffic removed")
    ws.endpoints.begin_delete_deployment(endpoint, deployment)
    ws.eventually(lambda: view(ws, endpoint).deployment(deployment) is None, "deployment gone")
    ws.endpoints.begin_delete_deployment(endpoint, deployment)
    assert view(ws, endpoint).deployments == ()
