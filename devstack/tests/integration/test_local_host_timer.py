"""Timer triggers fire on their NCRONTAB schedule (seconds first) and can be run by hand."""

from __future__ import annotations

import httpx
import pytest

from devstack.testing.host import SampleHost, read_results, wait_for

pytestmark = pytest.mark.integration


def test_timer_fires_on_schedule(sample_host: SampleHost) -> None:
    # TICK_SCHEDULE is */2 * * * * *: every two seconds
    # A firing that started before this test may land its result after ``earlier`` is read, so
    # "new" is judged by the firings' own stamps, not by the wall clock here.
    earlier = read_results(sample_host, "tick")
    last_earlier = max((float(str(v["at"])) for v in earlier.values()), default=0.0)
    wait_for(lambda: len(set(read_results(sample_host, "tick")) - set(earlier)) >= 3, timeout=12,
             message="three timer firings")
    new = [v for k, v in read_results(sample_host, "tick").items() if k not in earlier]
    stamps = sorted(float(str(v["at"])) for v in new)[-3:]
    assert all(stamp > last_earlier for stamp in stamps)
    # three firings two periods (4 s) apart by the schedule; judged over both periods so that one firing
    # dispatched late on a loaded machine does not count as firing early
    assert stamps[2] - stamps[0] >= 2.5
    assert all(v["past_due"] is False for v in new)


def test_admin_invoke_runs_timer_now(sample_host: SampleHost) -> None:
    marker = "Executing 'Functions.tick' (Reason='This function was programmatically called via the host APIs."
    before = sample_host.info.log_text().count(marker)
    assert httpx.post(f"{sample_host.url}/admin/functions/tick", json={"input": ""}).status_code == 202
    wait_for(lambda: sample_host.info.log_text().count(marker) > before, timeout=5, message="manual timer run")
