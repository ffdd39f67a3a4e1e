"""`POST|OPTIONS /api/registry-webhook` through the real local Functions host: handshakes, signed registry
webhooks, refusals (401/400) and ignored events, as the registry or Event Grid sees them over HTTP.

Nothing sent here may execute anything: the models are either not in the policy (`not-managed-…`) or are
refused before the promoter sees them, so no rollout row and no `promotion.started` audit record may appear.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from devstack.stack import Stack
from shared.domain.keys import event_id as stable_event_id
from shared.domain.webhooks import DEFAULT_TOLERANCE_SECONDS, MODEL_REGISTERED, mlflow_signature
from shared.services.audit import AUDIT_TABLE
from shared.services.ledger import LEDGER_TABLE
from tests.unit.test_webhooks import databricks_headers, mlflow_headers

pytestmark = pytest.mark.e2e

MANAGED_MODEL = "churn-model"  # in evergreen.yaml `models:`; only ever sent in requests that must be refused


# -- plumbing ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def client(local_stack: Stack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=local_stack.env["EVERGREEN_HOST_URL"], timeout=30) as http:
        yield http


@pytest.fixture(scope="module")
def secret(local_stack: Stack) -> str:
    value = local_stack.env.get("EVERGREEN_WEBHOOK_SECRET", "")
    assert value, "the local stack sets no EVERGREEN_WEBHOOK_SECRET: registry webhooks cannot be tested locally"
    return value


def unmanaged() -> str:
    return f"not-managed-{uuid.uuid4().hex[:12]}"


def unique_version() -> str:
    return str(900_000 + uuid.uuid4().int % 100_000)


def post(client: httpx.Client, body: bytes | object, headers: dict[str, str] | None = None) -> httpx.Response:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return client.post("/api/registry-webhook", content=raw,
                       headers={"Content-Type": "application/json", **(headers or {})})


def mlflow_body(name: str, version: str = "1", *, entity: str = "model_version", action: str = "created") -> bytes:
    data: dict[str, Any] = {"name": name, "version": version, "tags": {"evergreen.metric.roc_auc": "0.99"}}
    if entity == "registered_model":
        data = {"name": name, "tags": {}}
    return json.dumps({"entity": entity, "action": action, "timestamp": datetime.now(UTC).isoformat(),
                       "data": data}).encode()


def databricks_doc(name: str, version: str = "1", *, event: str = "MODEL_VERSION_CREATED",
                   at: datetime | None = None) -> dict[str, Any]:
    ms = int((at or datetime.now(UTC)).timestamp() * 1000)
    return {"event": event, "webhook_id": "wh-e2e", "event_timestamp": ms, "model_name": name, "version": version}


def signed_mlflow(client: httpx.Client, body: bytes, secret: str, *, at: datetime | None = None,
                  delivery: str | None = None) -> httpx.Response:
    return post(client, body, mlflow_headers(body, secret=secret, at=at or datetime.now(UTC),
                                             delivery=delivery or f"d-{uuid.uuid4().hex}"))


def signed_databricks(client: httpx.Client, doc: dict[str, Any], secret: str) -> httpx.Response:
    body = json.dumps(doc).encode()
    return post(client, body, databricks_headers(body, secret=secret))


def event_grid_event(event_type: str, data: object, **extra: Any) -> dict[str, Any]:
    return {"id": str(uuid.uuid4()), "eventType": event_type, "subject": "", "eventTime": datetime.now(UTC).isoformat(),
            "data": data, "dataVersion": "1", "metadataVersion": "1", **extra}


def error_of(response: httpx.Response) -> str:
    assert response.headers["content-type"].startswith("application/json"), response.headers
    return str(response.json()["error"])


def _entities(local_stack: Stack, table: str, query: str) -> list[dict[str, Any]]:
    from azure.core.exceptions import ResourceNotFoundError
    from azure.data.tables import TableServiceClient

    service = TableServiceClient.from_connection_string(local_stack.env["AzureWebJobsStorage"])
    try:
        return [dict(e) for e in service.get_table_client(table).query_entities(query)]
    except ResourceNotFoundError:  # nothing was ever written there
        return []


def audit_for(local_stack: Stack, model: str) -> list[dict[str, Any]]:
    """Audit records (today's and yesterday's partitions) whose assets name `model` (name or name:version)."""
    days = {(datetime.now(UTC) - timedelta(days=back)).strftime("%Y%m%d") for back in (0, 1)}
    query = " or ".join(f"PartitionKey eq '{day}'" for day in sorted(days))
    found = []
    for e in _entities(local_stack, AUDIT_TABLE, query):
        if "Key" in e:  # one of the log's time-ordered index rows (they carry the record's `Key`), not a record
            continue
        named = str(json.loads(e.get("Assets") or "{}").get("model", ""))
        if named == model or named.startswith(f"{model}:"):
            found.append(e)
    return found


def _is(model: str, name: object, version: object) -> bool:
    """Does (name, version) denote `model` ("name" matches any version, "name:version" exactly one)?"""
    want_name, _, want_version = model.partition(":")
    return name == want_name and (not want_version or version == want_version)


def assert_nothing_executed(local_stack: Stack, *models: str) -> None:
    """No rollout row, no promotion row and no promotion.started audit record names any of `models`."""
    rollouts = _entities(local_stack, LEDGER_TABLE, "PartitionKey eq 'rollout'")
    promotions = _entities(local_stack, LEDGER_TABLE, "PartitionKey eq 'promotion'")
    for model in models:
        rows = [r for r in rollouts if _is(model, r.get("CandidateName"), r.get("CandidateVersion"))
                or _is(model, r.get("QueuedName"), r.get("QueuedVersion"))]
        assert not rows, (model, rows)
        tried = [p for p in promotions if _is(model, *str(p.get("Candidate", "")).partition(":")[::2])]
        assert not tried, (model, tried)
        started = [a for a in audit_for(local_stack, model) if a["Kind"] == "promotion.started"]
        assert not started, (model, started)


def assert_never_reached_the_promoter(local_stack: Stack, model: str) -> None:
    assert_nothing_executed(local_stack, model)
    assert audit_for(local_stack, model) == []


def assert_skipped_unmanaged(local_stack: Stack, model: str, event_id: str) -> None:
    """The promoter saw the event and skipped it: one promotion.skipped record, nothing started."""
    records = audit_for(local_stack, model)
    assert [(r["Kind"], r["EventId"]) for r in records] == [("promotion.skipped", event_id)], records
    assert "no promotion policy" in records[0]["Reason"]
    assert_nothing_executed(local_stack, model)


# -- Event Grid and CloudEvents handshakes ---------------------------------------------------------------
def test_event_grid_subscription_validation_answers_with_the_code(client: httpx.Client) -> None:
    code = str(uuid.uuid4())
    event = event_grid_event("Microsoft.EventGrid.SubscriptionValidationEvent",
                             {"validationCode": code, "validationUrl": "https://rp.eventgrid.azure.net/validate?x=1"})
    response = post(client, [event], {"aeg-event-type": "SubscriptionValidation"})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/json")
    assert response.json() == {"validationResponse": code}


def test_event_grid_subscription_validation_without_a_code_is_400(client: httpx.Client) -> None:
    event = event_grid_event("Microsoft.EventGrid.SubscriptionValidationEvent", {"validationUrl": "https://x"})
    response = post(client, [event], {"aeg-event-type": "SubscriptionValidation"})
    assert response.status_code == 400
    assert "validationCode" in error_of(response)


@pytest.mark.parametrize(("requested", "allowed"), [("120", "120"), ("*", "*"), (None, None)])
def test_cloudevents_abuse_protection_handshake(client: httpx.Client, requested: str | None,
                                                allowed: str | None) -> None:
    headers = {"WebHook-Request-Origin": "eventgrid.azure.net"}
    if requested is not None:
        headers["WebHook-Request-Rate"] = requested
    response = client.options("/api/registry-webhook", headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["WebHook-Allowed-Origin"] == "eventgrid.azure.net"
    assert response.headers["Allow"] == "POST"
    assert response.headers.get("WebHook-Allowed-Rate") == allowed


@pytest.mark.parametrize(
    ("headers", "fragment"),
    [({}, "WebHook-Request-Origin"),
     ({"WebHook-Request-Origin": "eventgrid.azure.net", "WebHook-Request-Rate": "fast"}, "WebHook-Request-Rate")],
)
def test_bad_abuse_protection_requests_are_400(client: httpx.Client, headers: dict[str, str], fragment: str) -> None:
    response = client.options("/api/registry-webhook", headers=headers)
    assert response.status_code == 400
    assert fragment in error_of(response)
    assert "WebHook-Allowed-Origin" not in response.headers


# -- signed registry webhooks for a model outside the policy --------------------------------------------
def test_signed_mlflow_model_version_created_is_accepted_and_skipped(client: httpx.Client, secret: str,
                                                                      local_stack: Stack) -> None:
    name, delivery = unmanaged(), f"d-{uuid.uuid4().hex}"
    response = signed_mlflow(client, mlflow_body(name, "3"), secret, delivery=delivery)
    assert response.status_code == 202, response.text
    assert response.json() == {"accepted": [{"event_id": delivery, "model": name, "version": "3"}], "ignored": []}
    assert_skipped_unmanaged(local_stack, name, delivery)


def test_signed_mlflow_within_the_tolerance_is_accepted(client: httpx.Client, secret: str,
                                                        local_stack: Stack) -> None:
    name, delivery = unmanaged(), f"d-{uuid.uuid4().hex}"
    sent = datetime.now(UTC) - timedelta(seconds=DEFAULT_TOLERANCE_SECONDS - 60)
    response = signed_mlflow(client, mlflow_body(name), secret, at=sent, delivery=delivery)
    assert response.status_code == 202, response.text
    assert [a["model"] for a in response.json()["accepted"]] == [name]
    assert_skipped_unmanaged(local_stack, name, delivery)


def test_signed_databricks_model_version_created_is_accepted_and_skipped(client: httpx.Client, secret: str,
                                                                          local_stack: Stack) -> None:
    name = unmanaged()
    doc = databricks_doc(name, "4")
    response = signed_databricks(client, doc, secret)
    assert response.status_code == 202, response.text
    ident = stable_event_id("databricks", "wh-e2e", "MODEL_VERSION_CREATED", name, "4", str(doc["event_timestamp"]))
    assert response.json() == {"accepted": [{"event_id": ident, "model": name, "version": "4"}], "ignored": []}
    assert_skipped_unmanaged(local_stack, name, ident)


# -- refused: not provably from the registry (401) -------------------------------------------------------
@pytest.mark.parametrize("model", ["unmanaged", "managed"])
def test_mlflow_with_a_wrong_signature_is_401(client: httpx.Client, local_stack: Stack, model: str) -> None:
    name = unmanaged() if model == "unmanaged" else MANAGED_MODEL
    version = unique_version()
    response = signed_mlflow(client, mlflow_body(name, version), "not-the-secret")
    assert response.status_code == 401, response.text
    assert "X-MLflow-Signature does not match" in error_of(response)
    assert_never_reached_the_promoter(local_stack, f"{name}:{version}")


def test_mlflow_with_a_body_altered_after_signing_is_401(client: httpx.Client, secret: str,
                                                         local_stack: Stack) -> None:
    version = unique_version()
    signed_for = mlflow_body(unmanaged(), version)
    tampered = mlflow_body(MANAGED_MODEL, version)
    headers = mlflow_headers(signed_for, secret=secret, at=datetime.now(UTC), delivery="d-tamper")
    response = post(client, tampered, headers)
    assert response.status_code == 401, response.text
    assert "does not match the body" in error_of(response)
    assert_never_reached_the_promoter(local_stack, f"{MANAGED_MODEL}:{version}")


def test_databricks_with_a_wrong_signature_is_401(client: httpx.Client, local_stack: Stack) -> None:
    version = unique_version()
    response = signed_databricks(client, databricks_doc(MANAGED_MODEL, version), "not-the-secret")
    assert response.status_code == 401, response.text
    assert "X-Databricks-Signature does not match" in error_of(response)
    assert_never_reached_the_promoter(local_stack, f"{MANAGED_MODEL}:{version}")


@pytest.mark.parametrize("skew", [-(DEFAULT_TOLERANCE_SECONDS + 300), DEFAULT_TOLERANCE_SECONDS + 300])
def test_mlflow_timestamp_outside_the_tolerance_is_401(client: httpx.Client, secret: str, local_stack: Stack,
                                                       skew: float) -> None:
    name, version = unmanaged(), unique_version()
    sent = datetime.now(UTC) + timedelta(seconds=skew)  # a replay (past) or a clock far ahead (future)
    response = signed_mlflow(client, mlflow_body(name, version), secret, at=sent)
    assert response.status_code == 401, response.text
    message = error_of(response)
    assert "X-MLflow-Timestamp" in message
    assert "possible replays" in message
    assert_never_reached_the_promoter(local_stack, name)


def test_databricks_event_timestamp_outside_the_tolerance_is_401(client: httpx.Client, secret: str,
                                                                 local_stack: Stack) -> None:
    name = unmanaged()
    old = datetime.now(UTC) - timedelta(seconds=DEFAULT_TOLERANCE_SECONDS + 300)
    response = signed_databricks(client, databricks_doc(name, at=old), secret)
    assert response.status_code == 401, response.text
    assert "event_timestamp" in error_of(response)
    assert "possible replays" in error_of(response)
    assert_never_reached_the_promoter(local_stack, name)


@pytest.mark.parametrize("shape", ["mlflow", "databricks"])
def test_unsigned_registry_shaped_json_is_401(client: httpx.Client, local_stack: Stack, shape: str) -> None:
    version = unique_version()
    body = (mlflow_body(MANAGED_MODEL, version) if shape == "mlflow"
            else json.dumps(databricks_doc(MANAGED_MODEL, version)).encode())
    response = post(client, body, {"aeg-event-type": "Notification"})
    assert response.status_code == 401, response.text
    assert "not signed" in error_of(response)
    assert_never_reached_the_promoter(local_stack, f"{MANAGED_MODEL}:{version}")


def test_mlflow_headers_without_a_signature_are_401(client: httpx.Client, secret: str, local_stack: Stack) -> None:
    version = unique_version()
    body = mlflow_body(MANAGED_MODEL, version)
    headers = mlflow_headers(body, secret=secret, at=datetime.now(UTC), delivery="d-nosig")
    del headers["X-MLflow-Signature"]
    response = post(client, body, headers)
    assert response.status_code == 401, response.text
    assert "lacks X-MLflow-Signature" in error_of(response)
    assert_never_reached_the_promoter(local_stack, f"{MANAGED_MODEL}:{version}")


# -- refused: malformed (400), with a message naming what is wrong ----------------------------------------
@pytest.mark.parametrize(
    ("body", "headers", "fragment"),
    [(b"{not json", {}, "not valid JSON"),
     (b'"a string"', {}, "must be a JSON array of events, not a string"),
     (b"[]", {}, "empty array"),
     (b"[42]", {}, "events[0] must be a JSON object, not a number"),
     ([{"eventType": MODEL_REGISTERED, "data": {}}], {}, "events[0]: 'id' is missing"),
     ([{"id": "e-1", "data": {}}], {}, "events[0]: 'eventType' is missing"),
     ([{"id": "e-1", "eventType": MODEL_REGISTERED, "data": ["x"]}], {}, "events[0].data must be an object"),
     ([{"id": "e-1", "eventType": MODEL_REGISTERED, "subject": "nonsense", "data": {"ModelVersion": 1}}], {},
      "data.ModelName is missing"),
     ([{"id": "e-1", "eventType": "Microsoft.Storage.BlobCreated", "data": {}}],
      {"aeg-event-type": "SubscriptionValidation"}, "holds no Microsoft.EventGrid.SubscriptionValidationEvent"),
     ({"specversion": "0.3", "id": "c-1", "source": "/x", "type": MODEL_REGISTERED}, {},
      "specversion must be '1.0'"),
     ({"specversion": "1.0", "id": "c-1", "type": MODEL_REGISTERED}, {}, "the CloudEvent: 'source' is missing"),
     ({"specversion": "1.0", "id": "c-1", "source": "/x", "type": MODEL_REGISTERED}, {"ce-specversion": "1.0"},
      "binary-mode CloudEvents")],
)
def test_malformed_deliveries_are_400_and_say_what_is_wrong(client: httpx.Client, body: bytes | object,
                                                            headers: dict[str, str], fragment: str) -> None:
    response = post(client, body, headers)
    assert response.status_code == 400, response.text
    assert fragment in error_of(response)


@pytest.mark.parametrize(
    ("document", "fragment"),
    [([1, 2], "must be a JSON object, not an array"),
     (None, "not valid JSON"),
     ({"entity": "model_version", "data": {"name": "{name}"}}, "'action' is missing"),
     ({"entity": "model_version", "action": "created", "data": {"version": "1"}}, "'name' is missing"),
     ({"entity": "model_version", "action": "created", "data": "{name}"}, "'data' must be an object, not a string"),
     ({"entity": "model_version", "action": "created", "data": {"name": "{name}", "version": True}},
      "version must be a string or an integer"),
     ({"entity": "model_version_alias", "action": "created", "data": {"name": "{name}", "version": "2"}},
      "'alias' is missing")],
)
def test_malformed_signed_mlflow_bodies_are_400(client: httpx.Client, secret: str, local_stack: Stack,
                                                document: object, fragment: str) -> None:
    name = unmanaged()
    body = b"not json {" if document is None else json.dumps(document).replace("{name}", name).encode()
    response = signed_mlflow(client, body, secret)
    assert response.status_code == 400, response.text
    assert fragment in error_of(response)
    assert_never_reached_the_promoter(local_stack, name)


@pytest.mark.parametrize(
    ("change", "fragment"),
    [({"version": None}, "model_name and version are required"),
     ({"event_timestamp": "yesterday"}, "event_timestamp must be Unix milliseconds"),
     ({"model_name": 7}, "'model_name' must be a string"),
     ({"event": ""}, "'event' must be a non-empty string")],
)
def test_malformed_signed_databricks_bodies_are_400(client: httpx.Client, secret: str, local_stack: Stack,
                                                    change: dict[str, Any], fragment: str) -> None:
    name = unmanaged()
    response = signed_databricks(client, {**databricks_doc(name), **change}, secret)
    assert response.status_code == 400, response.text
    assert fragment in error_of(response)
    assert_never_reached_the_promoter(local_stack, name)


def test_mlflow_non_numeric_timestamp_with_a_valid_signature_is_400(client: httpx.Client, secret: str) -> None:
    body = mlflow_body(unmanaged())
    headers = mlflow_headers(body, secret=secret, at=datetime.now(UTC), delivery="d-ts")
    headers["X-MLflow-Timestamp"] = "soon"
    headers["X-MLflow-Signature"] = mlflow_signature(secret, "d-ts", "soon", body)
    response = post(client, body, headers)
    assert response.status_code == 400, response.text
    assert "X-MLflow-Timestamp must be Unix seconds" in error_of(response)


# -- well-formed but not for Evergreen: 202 "ignored" with the reason --------------------------------------
def test_event_grid_blob_created_is_ignored_with_the_reason(client: httpx.Client) -> None:
    event = event_grid_event("Microsoft.Storage.BlobCreated", {"url": "https://x.blob.core.windows.net/c/b"})
    response = post(client, [event], {"aeg-event-type": "Notification"})
    assert response.status_code == 202, response.text
    reason = response.json()["ignored"]
    assert "Microsoft.Storage.BlobCreated is not handled" in reason
    assert MODEL_REGISTERED in reason


def test_cloudevent_of_another_type_is_ignored_with_the_reason(client: httpx.Client) -> None:
    event = {"specversion": "1.0", "id": str(uuid.uuid4()), "source": "/subscriptions/x", "type": "Contoso.Other",
             "data": {}}
    response = client.post("/api/registry-webhook", content=json.dumps(event).encode(),
                           headers={"Content-Type": "application/cloudevents+json; charset=utf-8"})
    assert response.status_code == 202, response.text
    assert "Contoso.Other is not handled" in response.json()["ignored"]


def test_signed_mlflow_registered_model_created_is_ignored(client: httpx.Client, secret: str,
                                                           local_stack: Stack) -> None:
    name = unmanaged()
    response = signed_mlflow(client, mlflow_body(name, entity="registered_model"), secret)
    assert response.status_code == 202, response.text
    assert response.json() == {"ignored": "MLflow event registered_model.created is not handled (Evergreen acts "
                                          "on model_version.created, model_version_alias.created)"}
    assert_never_reached_the_promoter(local_stack, name)


def test_signed_databricks_registered_model_created_is_ignored(client: httpx.Client, secret: str,
                                                               local_stack: Stack) -> None:
    name = unmanaged()
    response = signed_databricks(client, databricks_doc(name, event="REGISTERED_MODEL_CREATED"), secret)
    assert response.status_code == 202, response.text
    reason = response.json()["ignored"]
    assert "Databricks event REGISTERED_MODEL_CREATED is not handled" in reason
    assert "MODEL_VERSION_CREATED" in reason
    assert_never_reached_the_promoter(local_stack, name)


def test_only_post_and_options_are_routed(client: httpx.Client) -> None:
    assert client.get("/api/registry-webhook").status_code in {404, 405}
    assert client.put("/api/registry-webhook", content=b"[]").status_code in {404, 405}
