"""Replays recorded Azure ML sessions (../shared/aml-recordings) against the emulator.

Each in-scope recording's MFE requests are sent in order, with the sanitized host and workspace
rewritten to the emulator's, and the answers are compared with the recorded ones: status code,
the shape of the body (keys, recursively; list elements against the recorded elements), the
important values (error codes and messages, names, latest/nextVersion, isArchived, stage,
normalised URIs, list order and length) and the Location header of creates. Volatile fields
(timestamps, ids of the recording's storage account, correlation ids) are not compared.
Blob-storage requests in the recordings went to Azure Storage, not to the MFE, so they are not
replayed.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from devstack.procs import REPO_ROOT
from devstack.testing.aml import AmlInfo

pytestmark = pytest.mark.integration

RECORDINGS = REPO_ROOT.parent / "shared" / "aml-recordings"  # ../shared/aml-recordings

IN_SCOPE = [
    "test_data.pyTestDatatest_create_uri_folder.json",
    "legacy_2022_test_data.pyTestDatatest_create_uri_file.json",
    "test_data.pyTestDatatest_list.json",
    "test_data.pyTestDatatest_data_archive_restore_version.json",
    "test_data.pyTestDatatest_data_get_latest_label.json",
    "test_model.pyTestModeltest_crud_file.json",
    "test_model.pyTestModeltest_model_archive_restore_version.json",
    # lists every model container of the workspace: replayed after the model recordings above
    "test_model.pyTestModeltest_list_no_name.json",
    "test_code.pyTestCodetest_create_and_get.json",
    "test_component.pyTestComponenttest_command_component_with_code.json",
    "test_environment.pyTestEnvironmenttest_environment_create_or_update_docker.json",
    "test_command_job.pyTestCommandJobtest_command_job_serverless.json",
    "test_pipeline_job.pyTestPipelineJobtest_pipeline_job_serverless_compute_with_job_tier.json",
]

# The service's job and component shapes differ with the api-version (e.g. `parentJobName` only at
# 2025-01-01-preview, `secretsConfiguration` only at 2024-01-01-preview, no `stage` at 2022-10-01);
# the emulator answers the union, so these are compared for missing keys, not extra ones.
UNION_SHAPES = {
    "test_command_job.pyTestCommandJobtest_command_job_serverless.json",
    "test_pipeline_job.pyTestPipelineJobtest_pipeline_job_serverless_compute_with_job_tier.json",
}

# Values the test proxy sanitized in the URL but not in the body (the anonymous component's GUID).
SANITIZED_NAMES = {
    ("test_pipeline_job.pyTestPipelineJobtest_pipeline_job_serverless_compute_with_job_tier.json", 0),
}

# Recordings of routes the emulator does not serve yet (left out on purpose, not skipped).
LEFT_OUT = {
    "test_online_endpoint.pyTestOnlineEndpointtest_online_endpoint_e2e.json":
        "polls operation ids of the recorded service and of another test; its protocol (statuses, LRO headers, "
        "body keys, token, delete) is checked in test_emulator_endpoints.py::test_raw_protocol_matches_the_recording",
}

# State the recorded workspace had before the recording started.
_CODE_URI = "https://salkdszptezyn4m.blob.core.windows.net:443/8e7dad76-df37-472b-b882-0c1c58adfcf9-x/"


def _code(hash_sha256: str) -> dict[str, Any]:
    return {"properties": {"codeUri": _CODE_URI, "isAnonymous": False,
                           "properties": {"hash_sha256": hash_sha256, "hash_version": "202208"}}}


PRECONDITIONS: dict[str, list[tuple[str, str, dict[str, Any]]]] = {
    "test_code.pyTestCodetest_create_and_get.json": [
        ("PUT", "codes/test_679501396464/versions/2",
         _code("49eadfeccdc40c46a054f17f07829f9bd5bf4ff0b51fb49f2de9a63d5ddf0098")),
    ],
    "test_component.pyTestComponenttest_command_component_with_code.json": [
        ("PUT", "codes/5ace567e-38f5-4171-ac9b-393c056b6b43/versions/1",
         _code("3b94ac6cb29712a56cb97d9765c2dacc29a08b4fcde68a55a600b8abadbcf91e")),
    ],
    "test_pipeline_job.pyTestPipelineJobtest_pipeline_job_serverless_compute_with_job_tier.json": [
        ("PUT", "components/azureml_anonymous/versions/972ae3b5-faae-4e97-9d91-64f7d6d0626c",
         {"properties": {"isAnonymous": True, "componentSpec": {
             "command": "echo \"Hello World\"", "name": "azureml_anonymous", "version": "1", "type": "command",
             "environment": "azureml:AzureML-sklearn-1.0-ubuntu20.04-py38-cpu@latest"}}}),
    ],
    "test_data.pyTestDatatest_list.json": [
        ("PUT", "data/list_data_v2_test/versions/1", {"properties": {"dataType": "uri_folder", "dataUri": "https://bla"}}),
        ("PUT", "data/list_data_v2_test/versions/2", {"properties": {"dataType": "uri_folder", "dataUri": "http://bla"}}),
    ],
}

SANITIZED_WS = re.compile(
    r"subscriptions/00000000-0000-0000-0000-000000000/resource(?P<g>[gG])roups/00000/"
    r"(?P<prov>providers/Microsoft\.MachineLearningServices/)?workspaces/00000(?![0-9])"
)
SANITIZED_HOST = re.compile(r"^https://(?:management|Sanitized)\.azure\.com", re.IGNORECASE)
# Values compared wherever they appear; everything else is compared by shape only.
IMPORTANT = {"name", "code", "message", "latestVersion", "nextVersion", "isArchived", "stage", "dataUri",
             "modelUri", "dataType", "modelType", "flavors", "description", "tags", "isDefault", "datastoreType",
             "secretsType", "isAnonymous", "provisioningState"}
# Shapes whose values come from the recorded workspace, not from the protocol.
WORKSPACE_SPECIFIC = {"accountName", "containerName", "credentials", "subscriptionId", "resourceGroup"}


@dataclass(frozen=True)
class Divergence:
    status: int
    compare_body: bool
    reason: str


def _list_secrets_divergence(recorded: dict[str, Any]) -> Divergence | None:
    if recorded["RequestMethod"] == "POST" and recorded["RequestUri"].split("?")[0].endswith("/listSecrets"):
        return Divergence(200, False, "local datastores use Azurite's account key; the recorded workspaces "
                                      "used SAS (2024+) or identity-based (credentialsType None) datastores")
    return None


def _rewrite(text: str, aml: AmlInfo) -> str:
    def ws(m: re.Match[str]) -> str:
        return (f"subscriptions/{aml.subscription_id}/resource{m['g']}roups/{aml.resource_group}/"
                f"{m['prov'] or ''}workspaces/{aml.workspace}")
    return SANITIZED_WS.sub(ws, text)


def _is_mfe(uri: str) -> bool:
    return bool(SANITIZED_HOST.match(uri))


def _token(aml: AmlInfo) -> str:
    resp = httpx.get(f"{aml.base_url}/msi/token", params={"api-version": "2019-08-01",
                     "resource": "https://management.azure.com"},
                     headers={"X-IDENTITY-HEADER": aml.env["IDENTITY_HEADER"]}, verify=aml.env["REQUESTS_CA_BUNDLE"])
    resp.raise_for_status()
    return str(resp.json()["access_token"])


def _compare(
    recorded: Any, actual: Any, path: str, problems: list[str], *, exact_keys: bool, values: bool = True
) -> None:
    if path.endswith("systemData"):
        if not isinstance(actual, dict) or "createdAt" not in actual:
            problems.append(f"{path}: expected systemData with createdAt, got {actual!r:.80}")
        return  # who and when: volatile, and its keys vary with the recorded identity
    if isinstance(recorded, dict):
        _compare_object(recorded, actual, path, problems, exact_keys=exact_keys, values=values)
    elif isinstance(recorded, list):
        if not isinstance(actual, list):
            problems.append(f"{path}: expected a list, got {actual!r:.80}")
            return
        if len(recorded) != len(actual):
            problems.append(f"{path}: expected {len(recorded)} items, got {len(actual)}")
        for i, (r, a) in enumerate(zip(recorded, actual, strict=False)):
            _compare(r, a, f"{path}[{i}]", problems, exact_keys=exact_keys, values=values)
    elif (
        recorded is not None
        and actual is not None
        and type(recorded) is not type(actual)
        and not (isinstance(recorded, int | float) and isinstance(actual, int | float))
    ):
        problems.append(f"{path}: expected a {type(recorded).__name__}, got {type(actual).__name__}")


def _compare_object(
    recorded: dict[str, Any], actual: Any, path: str, problems: list[str], *, exact_keys: bool, values: bool
) -> None:
    if not isinstance(actual, dict):
        problems.append(f"{path}: expected an object, got {actual!r:.80}")
        return
    missing = set(recorded) - set(actual)
    extra = set(actual) - set(recorded)
    if missing:
        problems.append(f"{path}: missing keys {sorted(missing)}")
    if exact_keys and extra:
        problems.append(f"{path}: unexpected keys {sorted(extra)}")
    for key in set(recorded) & set(actual):
        if key in WORKSPACE_SPECIFIC or key == "additionalInfo":
            continue
        sub = f"{path}.{key}"
        if not values and key in IMPORTANT:
            _compare(recorded[key], actual[key], sub, problems, exact_keys=exact_keys, values=False)
        elif key in IMPORTANT and (not isinstance(recorded[key], dict | list) or key in ("flavors", "tags")):
            if recorded[key] != actual[key]:
                problems.append(f"{sub}: expected {recorded[key]!r}, got {actual[key]!r}")
        else:
            _compare(recorded[key], actual[key], sub, problems, exact_keys=exact_keys, values=values)


def _compare_container_list(recorded: Any, actual: Any, problems: list[str]) -> None:
    """The recording lists another workspace's containers: compare the element shape only."""
    if not actual.get("value"):
        problems.append("value: expected model containers, got none")
        return
    template = recorded["value"][0]
    for i, item in enumerate(actual["value"]):
        _compare(template, item, f"value[{i}]", problems, exact_keys=True, values=False)
        props = item["properties"]
        if props["nextVersion"] is None or props["latestVersion"] is None:
            problems.append(f"value[{i}]: latestVersion/nextVersion missing")


def _load(name: str) -> list[dict[str, Any]]:
    raw = (RECORDINGS / name).read_text(encoding="utf-8-sig")
    return list(json.loads(raw)["Entries"])


def test_every_recording_is_replayed_or_left_out_with_a_reason() -> None:
    present = {p.name for p in RECORDINGS.glob("*.json")}
    assert present, f"no recordings found in {RECORDINGS}"
    assert present == set(IN_SCOPE) | set(LEFT_OUT), "classify new recordings in IN_SCOPE or LEFT_OUT"
    assert not set(IN_SCOPE) & set(LEFT_OUT)


def _location_problems(entry: dict[str, Any], resp: httpx.Response, aml: AmlInfo) -> list[str]:
    """The Location header against the recorded one (rewritten to this emulator and workspace)."""
    recorded_location = {k.lower(): v for k, v in entry["ResponseHeaders"].items()}.get("location")
    if recorded_location and "/mfeOperationResults/" in recorded_location:
        # region and workspace GUID are the recorded service's; the operation names the job
        _, _, job = recorded_location.split("?")[0].rpartition(":")
        got = resp.headers.get("location", "").split("?")[0]
        if not (got.startswith(aml.base_url) and "/mfeOperationResults/jc:" in got and got.endswith(f":{job}")):
            return [f"Location: expected …/mfeOperationResults/jc:<workspaceId>:{job}, got {got}"]
    elif recorded_location:
        want = SANITIZED_HOST.sub("", _rewrite(recorded_location, aml)).split("?")[0]
        got = resp.headers.get("location", "")
        if not got.startswith(aml.base_url) or got[len(aml.base_url):].split("?")[0] != want:
            return [f"Location: expected {want}, got {got}"]
    elif resp.status_code == 200 and "location" in resp.headers:
        return ["Location header on an update"]
    return []


@pytest.mark.parametrize("recording", IN_SCOPE)
def test_recording_replays(aml: AmlInfo, recording: str) -> None:
    headers = {"Authorization": f"Bearer {_token(aml)}", "Accept": "application/json"}
    problems: list[str] = []
    replayed = 0
    last_location = ""
    with httpx.Client(verify=aml.env["REQUESTS_CA_BUNDLE"], headers=headers, timeout=10) as client:
        for method, rel, body in PRECONDITIONS.get(recording, []):
            resp = client.request(method, f"{aml.workspace_url}/{rel}", json=body)
            assert resp.status_code in (200, 201), resp.text
        for index, entry in enumerate(_load(recording)):
            uri = entry["RequestUri"]
            if not _is_mfe(uri):
                continue
            url = SANITIZED_HOST.sub(aml.base_url, _rewrite(uri, aml))
            if "/mfeOperationResults/" in uri and last_location:
                url = last_location  # the operation id names our workspace, not the recorded one
            body = entry["RequestBody"]
            content = _rewrite(json.dumps(body), aml).encode() if body is not None else None
            resp = client.request(entry["RequestMethod"], url, content=content,
                                  headers={"Content-Type": "application/json"} if content else {})
            if "/mfeOperationResults/" in resp.headers.get("location", ""):
                last_location = resp.headers["location"]
            if "/mfeOperationResults/" in uri:
                # job-cancel polls: local steps stop sooner or later than the recorded service did, so
                # a recorded 202 may already be 200 here and a recorded 200 is awaited (deadline)
                deadline = time.monotonic() + 15
                while entry["StatusCode"] == 200 and resp.status_code == 202 and time.monotonic() < deadline:
                    time.sleep(0.1)
                    resp = client.get(url)
                if entry["StatusCode"] == 202 and resp.status_code == 200:
                    replayed += 1
                    continue
            replayed += 1
            where = f"#{index} {entry['RequestMethod']} {uri.split('/workspaces/00000')[-1][:90]}"
            divergence = _list_secrets_divergence(entry) if entry["StatusCode"] != 200 or "Sas" in json.dumps(
                entry["ResponseBody"]) else None
            expected_status = divergence.status if divergence else entry["StatusCode"]
            if resp.status_code != expected_status:
                problems.append(f"{where}: status {resp.status_code}, recorded {expected_status}: {resp.text[:300]}")
                continue
            if divergence:
                assert resp.json() == {"secretsType": "AccountKey", "key": resp.json()["key"]}
                continue
            recorded_body = json.loads(_rewrite(json.dumps(entry["ResponseBody"]), aml))
            actual = resp.json() if resp.content else None
            found: list[str] = []
            if (recording, index) in SANITIZED_NAMES:
                assert actual is not None, f"{recording}[{index}]: no body"
                recorded_body["name"] = actual["name"]
            if recording.endswith("test_list_no_name.json"):
                _compare_container_list(recorded_body, actual, found)
            else:
                exact = not recording.startswith("legacy_2022") and recording not in UNION_SHAPES
                _compare(recorded_body, actual, "", found, exact_keys=exact)
            found += _location_problems(entry, resp, aml)
            problems += [f"{where}: {p}" for p in found]
    assert replayed > 0
    assert not problems, "\n".join(problems)
