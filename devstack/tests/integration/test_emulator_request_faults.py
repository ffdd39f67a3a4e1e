"""The Azure ML emulator's request faults (`/_emulator/request-faults`): 429 with Retry-After, 5xx, and
hangs past the client's timeout, on a fraction of matching calls, deterministic under a seed."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import httpx
import pytest

from devstack.testing.aml import AmlInfo, bearer

pytestmark = pytest.mark.integration
API = {"api-version": "2024-04-01"}


@pytest.fixture
def client(aml: AmlInfo) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=aml.base_url, headers=bearer(aml), verify=aml.env["REQUESTS_CA_BUNDLE"],
                      timeout=10) as c:
        c.delete("/_emulator/request-faults").raise_for_status()
        try:
            yield c
        finally:
            c.delete("/_emulator/request-faults").raise_for_status()


def _data_path(aml: AmlInfo, name: str) -> str:
    return f"{aml.workspace_url[len(aml.base_url):]}/data/{name}"


def _statuses(client: httpx.Client, path: str, calls: int) -> list[int]:
    return [client.get(path, params=API).status_code for _ in range(calls)]


def test_throttle_answers_429_with_retry_after_on_matching_calls_only(client: httpx.Client, aml: AmlInfo) -> None:
    name = f"faults-{uuid.uuid4().hex[:8]}"
    rule = client.post("/_emulator/request-faults", json={"fault": "throttle", "method": "GET",
                                                          "pathContains": f"/data/{name}", "retryAfter": 3,
                                                          "times": 2}).json()
    first = client.get(_data_path(aml, name), params=API)
    assert first.status_code == 429 and first.headers["Retry-After"] == "3"
    assert first.json()["error"]["code"] == "TooManyRequests"
    assert client.get(_data_path(aml, "someone-else"), params=API).status_code == 404  # not matched
    assert client.get(_data_path(aml, name), params=API).status_code == 429
    assert client.get(_data_path(aml, name), params=API).status_code == 404  # `times` used up: normal answer
    assert all(r["id"] != rule["id"] for r in client.get("/_emulator/request-faults").json()["value"])


def test_error_fault_hits_the_given_fraction_and_the_seed_fixes_which_calls(client: httpx.Client,
                                                                            aml: AmlInfo) -> None:
    name = f"faults-{uuid.uuid4().hex[:8]}"
    spec = {"fault": "error", "status": 503, "pathContains": f"/data/{name}", "fraction": 0.3, "seed": 11}
    runs = []
    for _ in range(2):
        client.post("/_emulator/request-faults", json=spec).raise_for_status()
        runs.append(_statuses(client, _data_path(aml, name), 40))
        client.delete("/_emulator/request-faults").raise_for_status()
    assert runs[0] == runs[1], "same seed, same calls: same faults"
    assert set(runs[0]) == {503, 404}
    assert 5 <= runs[0].count(503) <= 20
    (fired,) = [client.post("/_emulator/request-faults", json=spec).json()]
    _statuses(client, _data_path(aml, name), 10)
    listed = {r["id"]: r for r in client.get("/_emulator/request-faults").json()["value"]}
    assert listed[fired["id"]]["fired"] == runs[0][:10].count(503)


def test_hang_outlasts_the_client_timeout_and_then_processes_the_request(client: httpx.Client, aml: AmlInfo) -> None:
    name = f"faults-{uuid.uuid4().hex[:8]}"
    body = {"properties": {"description": "made during a hang"}}
    client.post("/_emulator/request-faults", json={"fault": "hang", "method": "PUT", "pathContains": f"/data/{name}",
                                                   "hangSeconds": 1.5, "then": "process", "times": 1})
    started = time.monotonic()
    with pytest.raises(httpx.ReadTimeout):
        client.put(_data_path(aml, name), params=API, json=body, timeout=0.5)
    assert time.monotonic() - started < 1.4

    def created() -> bool:
        return client.get(_data_path(aml, name), params=API).status_code == 200

    deadline = time.monotonic() + 10
    while not created():
        assert time.monotonic() < deadline, "the hung request was processed after the hang (a lost reply)"
        time.sleep(0.1)
    assert time.monotonic() - started >= 1.5


def test_hang_then_abort_changes_nothing(client: httpx.Client, aml: AmlInfo) -> None:
    name = f"faults-{uuid.uuid4().hex[:8]}"
    client.post("/_emulator/request-faults", json={"fault": "hang", "method": "PUT", "pathContains": f"/data/{name}",
                                                   "hangSeconds": 0.3, "then": "abort", "times": 1})
    response = client.put(_data_path(aml, name), params=API, json={"properties": {}}, timeout=5)
    assert response.status_code == 500
    assert client.get(_data_path(aml, name), params=API).status_code == 404


def test_admin_routes_and_token_endpoint_are_never_faulted(client: httpx.Client, aml: AmlInfo) -> None:
    client.post("/_emulator/request-faults", json={"fault": "error", "pathContains": "/"}).raise_for_status()
    assert client.get("/_emulator/request-faults").status_code == 200
    assert bearer(aml)["Authorization"].startswith("Bearer ")
    assert client.get(_data_path(aml, "anything"), params=API).status_code == 500


@pytest.mark.parametrize("body", [{"fault": "explode"}, {"fraction": 2}, {"status": 404}, {"then": "later"},
                                  {"times": 0}, {"hangSeconds": -1}])
def test_bad_rules_are_400(client: httpx.Client, body: dict[str, object]) -> None:
    response = client.post("/_emulator/request-faults", json=body)
    assert response.status_code == 400, response.text


def test_throttle_route_is_the_same_mechanism(client: httpx.Client, aml: AmlInfo) -> None:
    name = f"faults-{uuid.uuid4().hex[:8]}"
    client.post("/_emulator/request-faults", json={"fault": "error", "pathContains": "/nothing-here"})
    entry = client.post("/_emulator/throttle", json={"method": "GET", "pathContains": f"/data/{name}"}).json()
    assert (entry["fault"], entry["times"], entry["retryAfter"]) == ("throttle", 1, 1)
    assert [r["id"] for r in client.get("/_emulator/throttle").json()["value"]] == [entry["id"]]
    assert client.get(_data_path(aml, name), params=API).status_code == 429
    assert client.get("/_emulator/throttle").json()["value"] == []
    assert len(client.get("/_emulator/request-faults").json()["value"]) == 1  # the error rule is untouched
