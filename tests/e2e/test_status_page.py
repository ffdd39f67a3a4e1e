"""The status page in a real browser: Debian's chromium, driven by Playwright, on the whole local stack.

After a flow like the demo's (a champion rolled out through the host, a worse candidate rejected by the
gate, a retention dry run), the test opens `GET /api/status` and checks what a person would: the chart
has one point per registered version, the serving version and traffic match the endpoint as the SDK reads
it, the rejected candidate shows its reason, the dry-run plan is the CLI's, and Tab reaches the filters.
It saves a screenshot to `test-artifacts/status-page.png` (CI keeps it as an artifact).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from azure.ai.ml.constants import ListViewType
from azure.data.tables import TableServiceClient

from devstack.browser import INSTALL_HINT, find_chromium
from devstack.stack import Stack
from shared.adapters.azure.tables import AzureTable
from shared.domain.records import RolloutRecord
from shared.domain.vocabulary import Phase
from shared.services.ledger import LEDGER_TABLE, Ledger
from shared.services.status import StatusLimits
from tests.e2e.helpers import wait_for
from tests.e2e.test_operator_cli import serving as serving_now  # the same endpoint, read through the SDK
from tests.e2e.test_retention_stack import DATASET, seed_old_versions
from tests.fixtures.models import register, train_model_folder, upload_model_folder

pytestmark = pytest.mark.e2e
REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "test-artifacts"
MODEL, ENDPOINT = "churn-model", "churn-endpoint"


@pytest.fixture(scope="module")
def ledger(local_stack: Stack) -> Ledger:
    tables = TableServiceClient.from_connection_string(local_stack.env["AzureWebJobsStorage"])
    return Ledger(AzureTable(tables.create_table_if_not_exists(LEDGER_TABLE)))


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    chromium = find_chromium()
    assert chromium is not None, INSTALL_HINT  # `make test` installs it; never skipped
    with sync_playwright() as p:
        launched = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        try:
            yield launched
        finally:
            launched.close()


def finished(ledger: Ledger, model: Any) -> RolloutRecord | None:
    record = ledger.get_rollout(ENDPOINT)
    return record if record and record.candidate == f"{model.name}:{model.version}" and not record.active else None


def retention_dry_run(local_stack: Stack) -> dict[str, Any]:
    done = subprocess.run([sys.executable, "-m", "shared.cli", "retention", "--dry-run", "--json"], cwd=REPO,
                          env={**os.environ, **local_stack.env}, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr
    plan: dict[str, Any] = json.loads(done.stdout)
    return plan


def test_the_status_page_shows_what_serves_why_a_candidate_was_rejected_and_what_retention_would_do(
        local_stack: Stack, ml: Any, ledger: Ledger, browser: Any, tmp_path: Path) -> None:
    uri = upload_model_folder(local_stack.env["AzureWebJobsStorage"], train_model_folder(tmp_path))
    # an earlier test's rollout (a module's first model creates the endpoint) may still be under way: the
    # champion is read once nothing rolls out, or a champion registered now would queue behind it and lose
    wait_for(lambda: (r := ledger.get_rollout(ENDPOINT)) is None or not r.active or None,
             f"no rollout in flight on {ENDPOINT}", timeout=180)
    now = serving_now(ml)
    champion = register(ml, MODEL, uri, f"{(now[1] if now else 0.9) + 0.01:.4f}")  # clears min_improvement
    record = wait_for(lambda: finished(ledger, champion), "the champion's rollout", timeout=240)
    assert record.phase is Phase.SUCCEEDED, record.failure
    worse = register(ml, MODEL, uri, "0.5000")
    host_log = next(s for s in local_stack.services if s.name == "functions-host").log_path
    wait_for(lambda: f"subject={MODEL}:{worse.version} outcome=skipped" in host_log.read_text(errors="replace"),
             "the gate to reject the worse candidate", timeout=90)
    seeded = seed_old_versions(local_stack.env, uuid.uuid4().hex[:6])  # old data versions: retention has work
    cli_plan = retention_dry_run(local_stack)
    assert {f"data:{DATASET}:{v}" for v in seeded} & {a["target"] for a in cli_plan["actions"]}

    url = f"http://127.0.0.1:{local_stack.ports.host}/api/status"
    page = browser.new_page(viewport={"width": 1366, "height": 900})  # a laptop screen
    try:
        reply = page.goto(url, wait_until="load", timeout=60_000)
        assert reply is not None and reply.status == 200, reply and reply.text()
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "status-page.png"), full_page=True)

        # the chart: one point per registered version (the newest `versions` of them), champion marked
        # archived versions too: retention may have archived old ones earlier in the session
        everything = ml.models.list(name=MODEL, list_view_type=ListViewType.ALL)
        registered = sorted((int(m.version) for m in everything), reverse=True)
        shown = registered[:StatusLimits().versions]
        chart = page.locator(f'svg.trend[data-model="{MODEL}"]')
        points = chart.locator("circle.point")
        assert sorted(int(v) for v in points.evaluate_all("els => els.map(e => e.dataset.version)")) == sorted(shown)
        assert chart.locator("circle.champion").get_attribute("data-version") == champion.version
        assert f"champion version {champion.version}" in (chart.get_attribute("aria-label") or "")

        # the serving version and the traffic split, as the SDK reads the endpoint
        assert page.locator(f'[data-endpoint="{ENDPOINT}"] strong').get_attribute("data-serving") == \
            f"{MODEL}:{champion.version}"
        traffic = {n: w for n, w in (ml.online_endpoints.get(ENDPOINT).traffic or {}).items()}
        rows = page.locator(f'table.traffic[data-endpoint="{ENDPOINT}"] tbody tr')
        shown_traffic = {rows.nth(i).locator("th").inner_text(): int(rows.nth(i).locator("td").first.inner_text())
                         for i in range(rows.count())}
        assert shown_traffic == traffic

        # the rejected candidate, with its reason
        rejected_row = page.locator("table.rejected tbody tr", has_text=f"{MODEL}:{worse.version}").first
        reason = rejected_row.locator("td.reason").inner_text()
        assert "worse" in reason and str(worse.version) in rejected_row.inner_text()
        assert page.locator(f'circle.rejected[data-version="{worse.version}"]').count() == 1

        # the dry-run plan is the CLI's
        page_targets = page.locator("table.retention-plan th.target").all_inner_texts()
        assert page_targets == [a["target"] for a in cli_plan["actions"]][:StatusLimits().plan_rows]
        page_protected = page.locator("table.retention-protected th.target").all_inner_texts()
        assert page_protected == [p["target"] for p in cli_plan["protected"]][:StatusLimits().plan_rows]

        # keyboard: Tab from the top reaches the skip link, then the filter form
        page.keyboard.press("Tab")
        assert page.evaluate("document.activeElement.getAttribute('href')") == "#main"
        for _ in range(4):
            page.keyboard.press("Tab")
            if page.evaluate("!!document.activeElement.closest('form.filters')"):
                break
        assert page.evaluate("document.activeElement.closest('form.filters') && document.activeElement.id") \
            == "f-dataset"

        # a filter is a query parameter; a bad one is a 400 naming it
        page.select_option("#f-model", MODEL)
        page.locator("form.filters button[type=submit]").press("Enter")
        page.wait_for_url("**model=churn-model**")
        page.screenshot(path=str(ARTIFACTS / "status-page-filtered.png"), full_page=True)
    finally:
        page.close()
    bad = httpx.get(f"{url}?limit=zero&colour=red", timeout=30)
    assert bad.status_code == 400 and "limit='zero'" in bad.text and "'colour'" in bad.text
    as_json = httpx.get(f"{url}.json?model={MODEL}", timeout=30).json()
    assert {e["name"]: e["serving"] for e in as_json["endpoints"]} == {ENDPOINT: f"{MODEL}:{champion.version}"}
