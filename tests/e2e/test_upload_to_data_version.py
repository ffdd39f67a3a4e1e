"""Upload → data version, end to end: Azurite → storage watcher → local Event Grid → Functions host →
Evergreen → Azure ML emulator (real azure-ai-ml) → Evergreen.DataVersionRegistered on the custom topic."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest

from tests.e2e.helpers import versions, wait_for, with_tag

pytestmark = pytest.mark.e2e
def published(local_stack) -> list[dict[str, Any]]:
    url = local_stack.env["EVERGREEN_EVENTGRID_URL"]
    return [item["event"] for item in httpx.get(f"{url}/events", params={"topic": "evergreen", "limit": 1000}).json()]


def test_a_folder_drop_becomes_one_data_version_and_an_event(local_stack, ml, landing):
    folder = f"churn/drop-{uuid.uuid4().hex[:8]}/"
    names = [f"{folder}part {i:03d} ü.csv" for i in range(40)]
    for name in names:
        landing.upload_blob(name, f"customer_id,churned\n{name},1\n", overwrite=True)
    landing.upload_blob(f"{folder}_SUCCESS", b"", overwrite=True)

    (version,) = wait_for(lambda: with_tag(ml, "churn-training", "evergreen.source_folder", f"landing/{folder}"),
                          "the drop's data version")
    assert version.type == "uri_folder"
    assert version.tags["evergreen.files"] == "40"
    # the version is its generation's immutable snapshot, not the (overwritable) landing folder
    snapshot = f"_evergreen/snapshots/churn-training/{version.tags['evergreen.sha256']}/"
    assert version.path.endswith(f"/datastores/landing/paths/{snapshot}")
    assert sorted(b.name for b in landing.list_blobs(name_starts_with=snapshot)) == sorted(
        f"{snapshot}{name[len(folder):]}" for name in names)

    def event_for_version() -> list[dict[str, Any]]:
        return [e for e in published(local_stack)
                if e.get("subject") == f"datasets/churn-training/versions/{version.version}"]

    (event,) = wait_for(event_for_version, "Evergreen.DataVersionRegistered")
    assert event["eventType"] == "Evergreen.DataVersionRegistered"
    assert event["data"]["file_count"] == 40
    assert sorted(event["data"]["files"]) == sorted(names)


def test_same_content_again_registers_nothing_new(local_stack, ml, landing):
    tag = uuid.uuid4().hex
    body = f"region,code\nnorth,{tag}\n"
    first = landing.upload_blob(f"reference/{tag}.csv", body)
    wait_for(lambda: with_tag(ml, "churn-reference", "evergreen.source_url", first.url), "the first version")
    before = len(versions(ml, "churn-reference"))
    landing.upload_blob(f"reference/{tag}-copy.csv", body)
    # the copy is delivered and handled (logged as a duplicate); wait until the host has seen it
    eventgrid = local_stack.env["EVERGREEN_EVENTGRID_URL"]
    wait_for(lambda: [d for d in httpx.get(f"{eventgrid}/deliveries", params={"limit": 1000}).json()
                      if f"{tag}-copy.csv" in str(d) and d.get("status") == "delivered"], "the copy's delivery")
    assert len(versions(ml, "churn-reference")) == before
    assert with_tag(ml, "churn-reference", "evergreen.source_url", first.url)


def test_defect8_a_marker_mid_way_through_a_drop_loses_no_file_and_fails_no_execution(local_stack, ml, landing):
    """The marker lands while files still arrive: files seen during the seal go to the next generation, and
    every file ends up in the folder's newest version, with no failed (retried) delivery on the way."""
    folder = f"churn/mid-{uuid.uuid4().hex[:8]}/"
    names = [f"{folder}part-{i:03d}.csv" for i in range(30)]
    for name in names[:15]:
        landing.upload_blob(name, f"customer_id,churned\n{name},0\n", overwrite=True)
    landing.upload_blob(f"{folder}_SUCCESS", b"", overwrite=True)
    for name in names[15:]:
        landing.upload_blob(name, f"customer_id,churned\n{name},1\n", overwrite=True)

    def all_files_versioned() -> list[Any]:
        found = with_tag(ml, "churn-training", "evergreen.source_folder", f"landing/{folder}")
        return [v for v in found if v.tags.get("evergreen.files") == str(len(names))]

    holding = wait_for(all_files_versioned, "a version holding every file of the drop", timeout=180)
    assert len(holding) == 1
    eventgrid = local_stack.env["EVERGREEN_EVENTGRID_URL"]
    ours = [d for d in httpx.get(f"{eventgrid}/deliveries", params={"limit": 1000}).json() if folder in str(d)]
    assert len(ours) >= len(names) + 1
    assert [d for d in ours if d["attempts"] != 1 or d["status"] != "delivered"] == []
