from datetime import UTC, datetime, timedelta

import pytest

from shared.config.policy import parse_policy
from shared.domain.blobnames import problem_with_name
from shared.domain.events import BlobCreated, SealRequest
from shared.domain.ingest import (
    MAX_EVENT_FILES,
    REDRIVE_GRACE,
    SNAPSHOT_ROOT,
    AddToBatch,
    FileFacts,
    Ignore,
    RegisterFileVersion,
    SealStep,
    announcement,
    blob_created_from_json,
    blob_created_to_json,
    file_snapshot,
    file_version_spec,
    folder_snapshot,
    folder_version_spec,
    late_files,
    manifest_sha256,
    plan_blob,
    plan_seal,
    seal_request_from_json,
    seal_request_to_json,
    stuck_batch,
)
from shared.domain.records import BatchRecord, Row
from shared.domain.vocabulary import Tag
from shared.errors import InvalidEventError

POLICY = parse_policy({"datasets": [
    {"name": "churn", "container": "landing", "prefix": "churn/", "type": "uri_folder", "datastore": "landing",
     "batch": {"marker": "_SUCCESS", "quiet_period_seconds": 30}},
    {"name": "ref", "container": "landing", "prefix": "reference/", "type": "uri_file", "datastore": "landing"},
]})
NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
PREFIXLESS = parse_policy({"datasets": [  # a dataset over the whole container: snapshots are under its prefix
    {"name": "everything", "container": "landing", "prefix": "", "type": "uri_folder", "datastore": "landing",
     "batch": {"marker": "_SUCCESS"}}]})


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



def test_defect7_a_file_directly_under_a_folder_datasets_prefix_is_ignored_with_a_reason():
    """It used to become a version of the whole prefix (every batch folder under it, at once)."""
    flat = plan_blob(blob("churn/part.csv"), POLICY)
    assert isinstance(flat, Ignore) and flat.audited
    assert "directly under churn's prefix 'churn/'" in flat.reason and "churn/<batch>/part.csv" in flat.reason
    assert isinstance(plan_blob(blob("churn/_SUCCESS"), POLICY), Ignore)


def test_evergreens_own_snapshot_copies_are_ignored_without_an_audit_record():
    for name in ("_evergreen/snapshots/ref/aa/regions.csv", "_evergreen/snapshots/churn/bb/part-0.csv"):
        decision = plan_blob(blob(name), PREFIXLESS)
        assert isinstance(decision, Ignore) and not decision.audited and "snapshot" in decision.reason


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
    return BatchRecord("churn", "churn/d/", generation, state, opened, None, version, row=Row({}, "e"))


def test_seal_waits_for_the_quiet_period_then_seals():
    req = SealRequest("churn", "churn/d/", 1, "quiet-period")
    ds = POLICY.dataset("churn")
    wait = plan_seal(req, batch(), ds, NOW - timedelta(seconds=10), False, NOW)
    assert wait.action is SealStep.WAIT and wait.delay_seconds == pytest.approx(20)
    assert plan_seal(req, batch(), ds, NOW - timedelta(seconds=31), False, NOW).action is SealStep.SEAL
    assert plan_seal(req, batch(), ds, None, False, NOW).action is SealStep.SEAL  # opened 5 min ago, nothing since


def test_marker_seals_at_once_and_stale_or_sealed_requests_are_skipped():
    ds = POLICY.dataset("churn")
    req = SealRequest("churn", "churn/d/", 1, "marker")
    assert plan_seal(req, batch(), ds, NOW, True, NOW).action is SealStep.SEAL
    assert plan_seal(req, batch(generation=2), ds, NOW, True, NOW).reason.startswith("stale request")
    sealed = plan_seal(req, batch(state="sealed", version="3"), ds, NOW, True, NOW)
    assert sealed.action is SealStep.SKIP and "version 3" in sealed.reason
    assert plan_seal(req, None, ds, NOW, True, NOW).action is SealStep.SKIP


def test_marker_only_dataset_waits_for_its_marker():
    policy = parse_policy({"datasets": [{"name": "m", "container": "landing", "prefix": "m/", "type": "uri_folder",
                                         "datastore": "landing", "batch": {"marker": "_DONE"}}]})
    check = plan_seal(SealRequest("m", "m/d/", 1, "x"), batch(), policy.dataset("m"), NOW, False, NOW)
    assert check.action is SealStep.SKIP and "_DONE" in check.reason


@pytest.mark.parametrize(
    ("body", "message"),
    [("not json", "not JSON"), ("[1]", "JSON object"), ('{"dataset": "x"}', "lacks folder, generation"),
     ('{"dataset": "x", "folder": "f/", "generation": "1"}', "generation must be an integer")],
)
def test_bad_seal_messages_say_what_is_wrong(body, message):
    with pytest.raises(InvalidEventError, match=message):
        seal_request_from_json(body)


def test_seal_messages_round_trip():
    request = SealRequest("churn", "churn/drop é/", 3, "marker")
    assert seal_request_from_json(seal_request_to_json(request)) == request


def facts(sha, size=3):
    return FileFacts(etag="0x1", size=size, sha256=sha, last_modified=NOW)


def test_a_file_version_is_tagged_with_its_source_and_hash():
    spec = file_version_spec(POLICY.dataset("ref"), blob("reference/a b.csv"), facts("aa"))
    assert spec.uri == "azureml://datastores/landing/paths/_evergreen/snapshots/ref/aa/a%20b.csv"
    assert spec.tags[Tag.SOURCE_URL.value] == "http://x/landing/reference/a b.csv"
    assert spec.tags[Tag.SHA256.value] == "aa" and spec.tags[Tag.ETAG.value] == "0x1"
    assert spec.tags[Tag.UPLOADED_AT.value] == NOW.isoformat()


def test_a_folder_version_hashes_its_manifest_independently_of_order():
    one = {"churn/d/a.csv": facts("aa"), "churn/d/b.csv": facts("bb", 5)}
    other = dict(reversed(list(one.items())))
    assert manifest_sha256(one) == manifest_sha256(other)
    assert manifest_sha256(one) != manifest_sha256({**one, "churn/d/b.csv": facts("cc", 5)})
    spec = folder_version_spec(POLICY.dataset("churn"), batch(generation=2), one, "marker _SUCCESS is present")
    assert spec.tags[Tag.FILES.value] == "2" and spec.tags[Tag.SIZE.value] == "8"
    assert spec.tags[Tag.BATCH_GENERATION.value] == "2" and spec.tags[Tag.SHA256.value] == manifest_sha256(one)


def test_an_announcement_lists_at_most_max_event_files():
    spec = folder_version_spec(POLICY.dataset("churn"), batch(), {"churn/d/a.csv": facts("aa")}, "x")
    files = tuple(f"f{i}" for i in range(MAX_EVENT_FILES + 5))
    event = announcement(spec, "churn", "4", "ab", files)
    assert event.file_count == MAX_EVENT_FILES + 5 and len(event.files) == MAX_EVENT_FILES
    assert event.files_truncated


# -- issue 11: leases, re-drives, the blob-retry message -----------------------------------------------
def sealing(lease_until, reason="marker _SUCCESS is present"):
    return BatchRecord("churn", "churn/d/", 1, "sealing", NOW - timedelta(minutes=5), NOW - timedelta(minutes=1),
                       None, row=Row({}, "e"), owner="i-1", lease_until=lease_until, seal_reason=reason)


def test_a_seal_held_under_a_live_lease_waits_for_its_end_and_an_expired_one_is_taken_over():
    req = SealRequest("churn", "churn/d/", 1, "marker")
    ds = POLICY.dataset("churn")
    wait = plan_seal(req, sealing(NOW + timedelta(seconds=90)), ds, None, True, NOW)
    assert wait.action is SealStep.WAIT and wait.delay_seconds == pytest.approx(91) and "i-1" in wait.reason
    take = plan_seal(req, sealing(NOW - timedelta(seconds=1)), ds, None, False, NOW)
    assert take.action is SealStep.SEAL and take.reason == "marker _SUCCESS is present"  # the holder's reason


def test_a_batch_is_stuck_only_when_a_seal_is_overdue():
    ds = POLICY.dataset("churn")
    assert stuck_batch(sealing(NOW + timedelta(seconds=1)), ds, None, None, NOW) is None
    assert "lease expired" in stuck_batch(sealing(NOW - timedelta(seconds=1)), ds, None, None, NOW)
    quiet_over = NOW - timedelta(seconds=30) - REDRIVE_GRACE - timedelta(seconds=1)
    assert stuck_batch(batch(), ds, NOW - timedelta(seconds=40), None, NOW) is None  # its request may be on its way
    assert "quiet period" in stuck_batch(batch(), ds, quiet_over, None, NOW)
    assert stuck_batch(batch(), ds, NOW, NOW - timedelta(seconds=10), NOW) is None
    assert "marker" in stuck_batch(batch(), ds, NOW, NOW - REDRIVE_GRACE - timedelta(seconds=1), NOW)
    assert stuck_batch(batch(state="sealed", version="1"), ds, quiet_over, None, NOW) is None


def test_late_files_are_those_recorded_but_not_covered_at_their_etag():
    recorded = {"a": {"ETag": "1"}, "b": {"ETag": "2"}, "c": {"ETag": "3"}}
    covered = {"a": {"ETag": "1"}, "b": {"ETag": "1"}}
    assert late_files(recorded, covered) == ["b", "c"]


def test_blob_retry_messages_round_trip_and_bad_ones_say_what_is_wrong():
    event = blob("churn/drop é/a b.csv")
    assert blob_created_from_json(blob_created_to_json(event)) == event
    with pytest.raises(InvalidEventError, match="lacks name, url"):
        blob_created_from_json('{"container": "landing", "name": ""}')
    with pytest.raises(InvalidEventError, match="not JSON"):
        blob_created_from_json("{")


# -- issue 12: the bytes of a registered version are what retention protects ---------------------------------
def test_retention_protects_the_snapshot_of_every_registered_version_and_not_the_staging_uploads():
    """Retention reads a version's path (`AddressBook.locate`); a snapshot path protects exactly the version's
    files. The landing uploads (and any alias of them) are a staging area a blob rule may clean up."""
    from shared.domain.retention import AddressBook, Blob, Datastore, DataVersion, Inventory, plan_retention

    policy = parse_policy({"datasets": [
        {"name": "churn", "container": "landing", "prefix": "churn/", "type": "uri_folder", "datastore": "landing",
         "batch": {"marker": "_SUCCESS"}},
        {"name": "ref", "container": "landing", "prefix": "reference/", "type": "uri_file", "datastore": "landing"}],
        "retention": {"rules": [{"name": "everything", "type": "blobs", "filters": {"prefixes": ["landing/"]},
                                 "actions": {"delete": {"days_after_modification_greater_than": 1}}}]}})
    book = AddressBook.of([Datastore("landing", "AzureBlob", "devstoreaccount1", "landing")], ["devstoreaccount1"])
    generation = {"churn/d/a.csv": facts("aa"), "churn/d/b.csv": facts("bb")}
    folder = folder_version_spec(policy.dataset("churn"), batch(), generation, "marker")
    file = file_version_spec(policy.dataset("ref"), blob("reference/r.csv"), facts("cc"))
    old = NOW - timedelta(days=30)
    versions = tuple(DataVersion(spec.name, "1", old, blob_paths=(book.locate(spec.uri),)) for spec in (folder, file))
    snapshot = [copy.to_name for copy in folder_snapshot(policy.dataset("churn"), batch(), generation)]
    snapshot.append(file_snapshot(policy.dataset("ref"), blob("reference/r.csv"), facts("cc")).to_name)
    staging = ["churn/d/a.csv", "churn/d/b.csv", "churn/d/_SUCCESS", "reference/r.csv", "reference/r-copy.csv",
               f"{SNAPSHOT_ROOT}churn/not-a-version/x.csv"]
    blobs = tuple(Blob("landing", name, old, etag="0x1") for name in snapshot + staging)
    plan = plan_retention(Inventory(NOW, data_versions=versions, blobs=blobs), policy.retention.rules)
    deleted = sorted(str(a.target).split("/", 1)[1] for a in plan.actions)
    assert deleted == sorted(staging)
    assert not set(snapshot) & set(deleted) and len(snapshot) == 3
