"""Timer triggers fire on their NCRONTAB schedule (seconds first) and can be run by hand."""

from __future__ import annotations

import time

import httpx
import pytest

from devstack.testing.host import SampleHost, read_results, wait_for

pytestmark = pytest.mark.integration


def test_timer_fires_on_schedule(sample_host: SampleHost) -> None:
    # TICK_SCHEDULE is */2 * * * * *: every two seconds
    before = {k for k, v in read_results(sample_host, "tick").items()}
    started = time.time()
    wait_for(lambda: len(set(read_results(sample_host, "tick")) - before) >= 2, timeout=10,
             message="two timer firings")
    new = [v for k, v in read_results(sample_host, "tick").items() if k not in before]
    stamps = sorted(float(str(v["at"])) for v in new)
    assert all(stamp >= started - 0.1 for stamp in stamps)
    assert stamps[1] - stamps[0] >= 1.5
    assert all(v["past_due"] is False for v in new)


def test_admin_invoke_runs_timer_now(sample_host: SampleHost) -> None:
    marker = "Executing 'Functions.tick' (Reason='This function was programmatically called via the host APIs."
    before = sample_host.info.log_text().count(marker)
    assert httpx.post(f"{sample_host.url}/admin/functions/tick", json={"input": ""}).status_code == 202
    wait_for(lambda: sample_host.info.log_text().count(marker) > before, timeout=5, message="manual timer run")
