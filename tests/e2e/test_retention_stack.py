"""Retention on the whole local stack, with the real evergreen.yaml: the dry-run CLI, then a manual run of the timer.

Old versions of `churn-training` are seeded with old creation times (the emulator's bulk seed
route), so the policy's `archive-old-training-data` rule (keep the latest 3, archive after 30 days)
has something to do; one of them carries `evergreen.keep=true`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from azure.data.tables import TableServiceClient

from devstack.stack import Stack
from shared.adapters.azure.tables import AzureTable
from shared.services.audit import AUDIT_TABLE, TableAuditLog

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
DATASET = "churn-training"


def seed_old_versions(env: dict[str, str], uid: str) -> list[str]:
    """Six versions 200..150 days old; the third oldest is tagged evergreen.keep=true."""
    now = datetime.now(UTC)
    versions = [f"e2e-{uid}-{i}" for i in range(1, 7)]
    body = {"versions": [
        {"version": v, "uri": f"azureml://datastores/landing/paths/history/{uid}/{i}/", "dataType": "uri_folder",
         "createdAt": (now - timedelta(days=210 - 10 * i)).isoformat(),
         "tags": {"evergreen.keep": "true"} if i == 3 else {}}
        for i, v in enumerate(versions, start=1)]}
    with httpx.Client(verify=env["REQUESTS_CA_BUNDLE"], timeout=30) as client:
        client.post(f"{env['AZUREML_DEV_URL_MFE'].rstrip('/')}/_emulator/seed/data/{DATASET}", json=body,
                    headers={"Authorization": "Bearer local"}).raise_for_status()
    return versions


def archived(ml: Any) -> set[str]:
    from azure.ai.ml.constants import ListViewType

    return {str(d.version) for d in ml.data.list(name=DATASET, list_view_type=ListViewType.ARCHIVED_ONLY)}


def test_dry_run_cli_then_manual_timer_run_through_the_host(local_stack: Stack, ml: Any) -> None:
    uid = uuid.uuid4().hex[:6]
    versions = seed_old_versions(local_stack.env, uid)
    before = archived(ml)

    env = {**os.environ, **local_stack.env}
    dry = subprocess.run([sys.executable, "-m", "shared.cli", "retention", "--dry-run", "--json"], cwd=REPO,
                         env=env, capture_output=True, text=True, timeout=300)
    assert dry.returncode == 0, dry.stderr
    plan = json.loads(dry.stdout)
    assert plan["dry_run"] is True and plan["outcomes"] == []
    planned = {a["target"]: a for a in plan["actions"]}
    for v in versions[:2]:  # the two oldest: beyond the latest 3 and older than 30 days
        assert planned[f"data:{DATASET}:{v}"]["rule"] == "archive-old-training-data"
        assert "days ago (> 30)" in planned[f"data:{DATASET}:{v}"]["reason"]
    protected = {p["target"]: p["reason"] for p in plan["protected"]}
    assert "tagged evergreen.keep" in protected[f"data:{DATASET}:{versions[2]}"]
    assert archived(ml) == before  # the dry run changed nothing

    table = TableServiceClient.from_connection_string(local_stack.env["AzureWebJobsStorage"]).get_table_client(
        AUDIT_TABLE)
    audit = TableAuditLog(AzureTable(table))
    runs_before = {r.event_id for r in audit.query(days=2, kind_prefix="retention.run")}
    reply = httpx.post(f"{local_stack.env['EVERGREEN_HOST_URL']}/admin/functions/retention", json={"input": ""},
                       timeout=30)
    assert reply.status_code == 202

    deadline = time.monotonic() + 180
    new_runs: set[str] = set()
    while not new_runs and time.monotonic() < deadline:
        time.sleep(0.5)
        new_runs = {r.event_id for r in audit.query(days=2, kind_prefix="retention.run")} - runs_before
    assert new_runs, "the manual run of the retention timer left no retention.run record"
    run_id = new_runs.pop()
    now_archived = archived(ml)
    assert {versions[0], versions[1]} <= now_archived and versions[2] not in now_archived
    decisions = {r.assets["target"]: r for r in audit.query(days=2, kind_prefix="retention.archive_data")
                 if r.event_id == run_id}
    assert f"data:{DATASET}:{versions[0]}" in decisions
    assert decisions[f"data:{DATASET}:{versions[0]}"].assets["rule"] == "archive-old-training-data"


def test_the_demo_step_previews_then_applies_and_shows_what_and_why(local_stack: Stack, ml: Any) -> None:
    from azure.storage.blob import BlobServiceClient

    from devstack.demo_retention import run_retention_step

    said: list[str] = []
    run_retention_step(said.append)
    text = "\n".join(said)
    history = sorted(v for v in {str(d.version) for d in ml.data.list(name=DATASET)} | archived(ml)
                     if v.startswith("history-"))
    stamp = history[-1].split("-")[1]
    mine = [f"history-{stamp}-{i}" for i in range(1, 6)]
    assert "Dry run: nothing was changed." in text
    assert f"data:{DATASET}:{mine[1]}" in text.split("applying for real")[0]  # planned in the dry run
    assert {mine[0], mine[1]} <= archived(ml) and mine[2] not in archived(ml)
    assert f"data:{DATASET}:{mine[2]}: tagged evergreen.keep" in text  # shown as protected, with why
    landing = BlobServiceClient.from_connection_string(local_stack.env["DATA_STORAGE"]).get_container_client("landing")
    left = {b.name for b in landing.list_blobs(name_starts_with=f"history/{stamp}/")}
    assert f"history/{stamp}/1/part-0000.csv" not in left  # its version was archived long ago: deleted
    assert f"history/{stamp}/3/part-0000.csv" in left  # the kept version's blobs stay
    audit_section = text.split("the audit log")[1]
    assert any("retention.delete_blob" in line and f"blob:landing/history/{stamp}/1/part-0000.csv" in line
               for line in audit_section.splitlines())


def test_defect1_every_datastore_kind_and_path_form_protects_its_landing_blobs_in_a_far_future_dry_run(
        local_stack: Stack, ml: Any) -> None:
    """Data versions at abfss://, wasbs://, https://…dfs… and azureml:// paths, on an ADLS Gen2 and a blob
    datastore of the data account: a dry run three years ahead plans none of their blobs (issue 12)."""
    from azure.ai.ml.entities import AzureBlobDatastore, AzureDataLakeGen2Datastore, Data
    from azure.storage.blob import BlobServiceClient

    uid = uuid.uuid4().hex[:6]
    account = BlobServiceClient.from_connection_string(local_stack.env["DATA_STORAGE"]).account_name
    ml.datastores.create_or_update(AzureDataLakeGen2Datastore(name=f"lake{uid}", account_name=account,
                                                              filesystem="landing"))
    ml.datastores.create_or_update(AzureBlobDatastore(name=f"raw{uid}", account_name=account,
                                                      container_name="landing"))
    paths = {
        "abfss": f"abfss://landing@{account}.dfs.core.windows.net/e2e-{uid}/abfss/",
        "wasbs": f"wasbs://landing@{account}.blob.core.windows.net/e2e-{uid}/wasbs/",
        "dfs": f"https://{account}.dfs.core.windows.net/landing/e2e-{uid}/dfs/",
        "lake": f"azureml://datastores/lake{uid}/paths/e2e-{uid}/lake/",
        "raw": f"azureml://datastores/raw{uid}/paths/e2e-{uid}/raw/",
    }
    landing = BlobServiceClient.from_connection_string(local_stack.env["DATA_STORAGE"]).get_container_client("landing")
    for form, path in paths.items():
        landing.upload_blob(f"e2e-{uid}/{form}/part-0.csv", b"a,b\n1,2\n", overwrite=True)
        ml.data.create_or_update(Data(name=f"e2e-forms-{uid}", version=form, path=path, type="uri_folder"))
    landing.upload_blob(f"e2e-{uid}/stray/part-0.csv", b"a,b\n1,2\n", overwrite=True)  # referenced by nothing

    env = {**os.environ, **local_stack.env}
    future = (datetime.now(UTC) + timedelta(days=3 * 365)).isoformat()
    dry = subprocess.run([sys.executable, "-m", "shared.cli", "retention", "--dry-run", "--json", "--as-of", future],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert dry.returncode == 0, dry.stderr
    plan = json.loads(dry.stdout)
    assert plan["suspended"] == []  # every address was read: the blob rule ran
    planned = {a["target"] for a in plan["actions"]}
    assert f"blob:landing/e2e-{uid}/stray/part-0.csv" in planned  # the rule would act on an unused blob
    for form in paths:
        assert f"blob:landing/e2e-{uid}/{form}/part-0.csv" not in planned, form
    protected = {p["target"]: p["reason"] for p in plan["protected"]}
    assert f"referenced by non-archived data:e2e-forms-{uid}:abfss" in protected[
        f"blob:landing/e2e-{uid}/abfss/part-0.csv"]

    applied = subprocess.run([sys.executable, "-m", "shared.cli", "retention", "--as-of", future], cwd=REPO, env=env,
                             capture_output=True, text=True, timeout=300)
    assert applied.returncode == 2 and "requires --dry-run" in applied.stderr  # a preview never applies
    assert {b.name for b in landing.list_blobs(name_starts_with=f"e2e-{uid}/")} == {
        f"e2e-{uid}/{form}/part-0.csv" for form in [*paths, "stray"]}
