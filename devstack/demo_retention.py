"""The demo's last step: retention with the real evergreen.yaml rules, first as a dry run, then for real.

Runs inside the demo with the stack's settings in os.environ, through the same `RetentionRunner`
the timer trigger uses (`get_services().retention`). A fresh stack has nothing old enough to
retire, so the step first seeds some history through the emulator (old versions of churn-training,
one of them tagged evergreen.keep=true, one archived long ago, with their raw blobs in landing/),
and measures ages as of 100 days from now: what the scheduled run would do then. The same preview
from a shell: `python -m shared.cli retention --dry-run --as-of <time>`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from shared.adapters.azure.tables import AzureTable
from shared.domain.audit import AuditRecord
from shared.domain.retention.planner import ActionKind, RetentionPlan
from shared.services.retention import Outcome, RetentionIncomplete, RetentionSummary

log = logging.getLogger(__name__)

DATASET = "churn-training"
LOOK_AHEAD = timedelta(days=100)
_VERBS = {
    ActionKind.ARCHIVE_DATA: "archived", ActionKind.ARCHIVE_MODEL: "archived", ActionKind.DELETE_DATA: "deleted",
    ActionKind.DELETE_MODEL: "deleted", ActionKind.DELETE_BLOB: "deleted", ActionKind.TIER_BLOB: "tiered",
    ActionKind.DELETE_DEPLOYMENT: "deleted", ActionKind.DELETE_JOB_OUTPUT: "deleted",
}


def seed_history(stamp: str) -> list[str]:
    """Old churn-training versions (200..100 days) with raw blobs: 1 archived long ago, 3 tagged keep."""
    import os

    import httpx
    from azure.storage.blob import BlobServiceClient

    landing = BlobServiceClient.from_connection_string(os.environ["DATA_STORAGE"]).get_container_client("landing")
    now = datetime.now(UTC)
    versions = []
    for i in range(1, 6):
        folder = f"history/{stamp}/{i}/"
        landing.upload_blob(f"{folder}part-0000.csv", b"customer_id,churned\nc1,0\n", overwrite=True)
        versions.append({
            "version": f"history-{stamp}-{i}", "uri": f"azureml://datastores/landing/paths/{folder}",
            "dataType": "uri_folder", "createdAt": (now - timedelta(days=220 - 20 * i)).isoformat(),
            "isArchived": i == 1, "tags": {"evergreen.keep": "true"} if i == 3 else {},
            "description": "seeded by the demo: an old drop",
        })
    with httpx.Client(verify=os.environ["REQUESTS_CA_BUNDLE"], timeout=30) as client:
        client.post(f"{os.environ['AZUREML_DEV_URL_MFE'].rstrip('/')}/_emulator/seed/data/{DATASET}",
                    json={"versions": versions}, headers={"Authorization": "Bearer local"}).raise_for_status()
    return [str(v["version"]) for v in versions]


def _indented(say: Callable[[str], None], text: str) -> None:
    for line in text.rstrip("\n").splitlines():
        say(f"   {line}")


def _what_happened(say: Callable[[str], None], summary: RetentionSummary) -> None:
    groups: dict[str, list[Outcome]] = {}
    for outcome in summary.outcomes:
        groups.setdefault(_VERBS[outcome.action.kind], []).append(outcome)
    for verb in ("archived", "deleted", "tiered"):
        items = groups.get(verb, [])
        say(f"\n   {verb} ({len(items)}):")
        for o in items:
            tier = f" to {o.action.tier.value}" if o.action.tier else ""
            say(f"   - {o.action.target}{tier} [{o.status}]: {o.action.reason} (rule {o.action.rule})")
    _protected(say, summary.plan)


def _protected(say: Callable[[str], None], plan: RetentionPlan) -> None:
    say(f"\n   protected ({len(plan.protected)}), though a rule selected them:")
    for p in plan.protected:
        say(f"   - {p.target}: {p.reason}")


def _audit_records(run_id: str) -> list[AuditRecord]:
    from shared.composition import credential_for, table_service
    from shared.config.settings import load_settings
    from shared.services.audit import AUDIT_TABLE, TableAuditLog

    settings = load_settings()
    tables = table_service(settings.app_storage, credential_for(settings.client_id))
    audit = TableAuditLog(AzureTable(tables.get_table_client(AUDIT_TABLE)))
    return [r for r in audit.query(kind_prefix="retention.") if r.event_id == run_id]


def run_retention_step(say: Callable[[str], None]) -> None:
    """Dry run (the plan as a table), then the real run: what was archived, deleted, protected and why."""
    from shared.composition import get_services

    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    runner: Any = get_services().retention
    say("   what runs: the `retention:` rules of evergreen.yaml, as the timer (EVERGREEN_RETENTION_SCHEDULE) "
        "or POST /admin/functions/retention runs them")
    seeded = seed_history(stamp)
    say(f"   seeded {len(seeded)} old versions of {DATASET} with raw blobs under landing/history/{stamp}/: "
        f"{seeded[0]} (archived long ago), {seeded[2]} (tagged evergreen.keep=true), "
        f"{', '.join(seeded[i] for i in (1, 3, 4))}")
    as_of = datetime.now(UTC) + LOOK_AHEAD
    say(f"   ages are measured as of {as_of:%Y-%m-%d} (100 days from now): what the scheduled run would do then")

    say(f"\n   dry run (same as `python -m shared.cli retention --dry-run --as-of {as_of:%Y-%m-%dT%H:%M:%S}`):")
    dry = runner.run(run_id=f"demo-retention-dry-{stamp}", dry_run=True, now=as_of)
    _indented(say, dry.render())

    run_id = f"demo-retention-{stamp}"
    say(f"\n   applying for real (run {run_id}):")
    try:
        summary = runner.run(run_id=run_id, dry_run=False, now=as_of)
    except RetentionIncomplete as exc:
        _what_happened(say, exc.summary)
        raise
    say(f"   listed {', '.join(f'{n} {k}' for k, n in summary.listed.items())}; "
        f"{', '.join(f'{n} {s}' for s, n in sorted(summary.counts.items())) or 'nothing to do'}")
    _what_happened(say, summary)

    records = _audit_records(run_id)
    say(f"\n   the audit log for this run ({len(records)} record(s); `python -m shared.cli audit --kind retention.`):")
    for r in records:
        say(f"   {r.at:%H:%M:%S}  {r.kind:<24} {r.assets.get('target', r.decision)}: {r.reason}")
