from datetime import UTC, datetime, timedelta

import pytest

from shared.blobnames import problem_with_name
from shared.errors import InvalidEventError
from shared.events import BlobCreated, SealRequest
from shared.ingest import AddToBatch, Ignore, RegisterFileVersion, plan_blob, plan_seal, seal_request_from_json
from shared.ledger import BatchRecord, Row
from shared.policy import parse_policy

POLICY = parse_policy({"datasets": [
    {"name": "churn", "container": "landing", "prefix": "churn/", "type": "uri_folder", "datastore": "landing",
     "batch": {"marker": "_SUCCESS", "quiet_period_seconds": 30}},
    {"name": "ref", "container": "landing", "prefix": "reference/", "type": "uri_file", "datastore": "landing"},
]})
NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)


def blob(name, container="landing"):
    return BlobCreated(container, name, f"http://x/{container}/{name}")


def test_file_dataset_registers_each_file():
    d = plan_blob(blob("reference/regions.csv"), POLICY)
    assert isinstance(d, RegisterFileVersion) and d.dataset.name == "ref"


def test_folder_dataset_batches_by_first_folder_and_spots_the_marker():
    d = plan_blob(blob("churn/2026-11-27/part 1 é.csv"), POLICY)
    assert isinstance(d, AddToBatch) and d.folder == "churn/2026-11-27/" and not d.is_marker
    m = plan_blob(blob("churn/2026-11-27/_SUCCESS"), POLICY)
    assert isinstance(m, AddToBatch) and m.is_marker
    deep = plan_blob(blob("churn/2026-11-27/sub/part.csv"), POLICY)
    assert isinstance(deep, AddToBatch) and deep.folder == "churn/2026-11-27/"
    flat = plan_blob(blob("churn/part.csv"), POLICY)
    assert isinstance(flat, AddToBatch) and flat.folder == "churn/"


@pytest.mark.parametrize(
    ("name", "container", "reason"),
    [
        ("churn/a.csv", "$logs", "system container"),
        ("other/a.csv", "landing", "under no dataset's prefix"),
        ("churn/../reference/a.csv", "landing", "'..' path segment"),
        ("churn/./a.csv", "landing", "'..' path segment"),
        ("churn//a.csv", "landing", "empty"),
        ("churn/" + "x" * 1100, "landing", "Azure allows 1024"),
        ("churn/a\x07.csv", "landing", "control characters"),
        ("churn/a.", "landing", "ends with '.'"),
    ],
)
def test_awkward_or_foreign_blobs_are_ignored_with_a_reason(name, container, reason):
    d = plan_blob(blob(name, container), POLICY)
    assert isinstance(d, Ignore) and reason in d.reason


def test_long_unicode_names_with_spaces_are_fine():
    name = "churn/drop 1/" + "é" * 900 + " part.csv"
    assert problem_with_name(name) is None
    assert isinstance(plan_blob(blob(name), POLICY), AddToBatch)


def batch(state="open", generation=1, opened=NOW - timedelta(minutes=5), version=None):
    return BatchRecord("churn", "churn/d/", generation, state, opened, None, version, Row({}, "e"))


def test_seal_waits_for_the_quiet_period_then_seals():
    req = SealRequest("churn", "churn/d/", 1, "quiet-period")
    ds = POLICY.dataset("churn")
    wait = plan_seal(req, batch(), ds, NOW - timedelta(seconds=10), False, NOW)
    assert wait.action == "wait" and wait.delay_seconds == pytest.approx(20)
    assert plan_seal(req, batch(), ds, NOW - timedelta(seconds=31), False, NOW).action == "seal"
    assert plan_seal(req, batch(), ds, None, False, NOW).action == "seal"  # opened 5 min ago, nothing since


def test_marker_seals_at_once_and_stale_or_sealed_requests_are_skipped():
    ds = POLICY.dataset("churn")
    req = SealRequest("churn", "churn/d/", 1, "marker")
    assert plan_seal(req, batch(), ds, NOW, True, NOW).action == "seal"
    assert plan_seal(req, batch(generation=2), ds, NOW, True, NOW).reason.startswith("stale request")
    sealed = plan_seal(req, batch(state="sealed", version="3"), ds, NOW, True, NOW)
    assert sealed.action == "skip" and "version 3" in sealed.reason
    assert plan_seal(req, None, ds, NOW, True, NOW).action == "skip"


def test_marker_only_dataset_waits_for_its_marker():
    policy = parse_policy({"datasets": [{"name": "m", "container": "landing", "prefix": "m/", "type": "uri_folder",
                                         "datastore": "landing", "batch": {"marker": "_DONE"}}]})
    check = plan_seal(SealRequest("m", "m/d/", 1, "x"), batch(), policy.dataset("m"), NOW, False, NOW)
    assert check.action == "skip" and "_DONE" in check.reason


@pytest.mark.parametrize(
    ("body", "message"),
    [("not json", "not JSON"), ("[1]", "JSON object"), ('{"dataset": "x"}', "lacks folder, generation"),
     ('{"dataset": "x", "folder": "f/", "generation": "1"}', "generation must be an integer")],
)
def test_bad_seal_messages_say_what_is_wrong(body, message):
    with pytest.raises(InvalidEventError, match=message):
        seal_request_from_json(body)
