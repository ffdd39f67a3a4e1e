"""The status page's read model (`shared.services.status`) on the in-memory adapters, after real flows.

The rollouts and rejections come from the real Promoter (the rig of `test_promotion.py`), the dry-run
plan from the real RetentionRunner (the world of `test_retention.py`).
"""

from __future__ import annotations

import json
from datetime import timedelta

import pytest

from shared.adapters.memory.azureml import MemoryWorkspace
from shared.adapters.memory.redrive import MemoryDeadLetters, MemoryPoisonQueue
from shared.domain.audit import AuditRecord
from shared.domain.retention.inventory import DataKey
from shared.domain.vocabulary import Phase, PromotionAction, Tag
from shared.domain.workspace import DataVersionInfo, DataVersionSpec
from shared.errors import InvalidEventError
from shared.services.ledger import COMPARISON_WORK
from shared.services.promotion import STALL_FLOOR
from shared.services.status import StatusLimits, StatusQuery, StatusReader, parse_status_query
from shared.status_page import render_html, render_json
from tests.services.test_promotion import ENDPOINT, MODEL, Rig, first_model
from tests.services.test_retention import World, data, model

SCHEDULE = "0 0 3 * * *"


def flow() -> Rig:
    """Champion 1 (0.80), a worse candidate 2 (rejected), a better 3 rolled out, a data version with its blob."""
    rig = Rig()
    first_model(rig)
    worse = rig.register("0.70")
    assert rig.deliver(worse).action is PromotionAction.SKIPPED
    better = rig.register("0.90")
    assert rig.deliver(better).action is PromotionAction.STARTED
    assert rig.run().phase is Phase.SUCCEEDED
    return rig


def reader(rig: Rig, **kwargs: object) -> StatusReader:
    registry = kwargs.pop("registry", MemoryWorkspace())
    return StatusReader(policy=rig.policy, registry=registry, endpoints=rig.endpoints,  # type: ignore[arg-type]
                        ledger=rig.ledger, audit=rig.audit, retention_schedule=SCHEDULE, clock=rig.clock,
                        **kwargs)  # type: ignore[arg-type]


def test_models_show_every_version_with_its_metric_the_champion_and_the_rejected_reason() -> None:
    rig = flow()
    view = reader(rig).read()
    (churn,) = view.models
    assert [(v.version, v.metric, v.champion) for v in churn.versions] == [
        ("1", 0.80, False), ("2", 0.70, False), ("3", 0.90, True)]
    assert "is worse" in churn.versions[1].rejected and not churn.versions[2].rejected
    assert [d.assets["model"] for d in churn.rejected] == [f"{MODEL}:2"]
    assert {d.kind for d in churn.decisions} >= {"promotion.started", "promotion.skipped"}


def test_the_endpoint_shows_what_serves_its_traffic_and_the_rollout_phase_by_phase() -> None:
    rig = flow()
    (endpoint,) = reader(rig).read().endpoints
    assert endpoint.name == ENDPOINT and endpoint.serving == f"{MODEL}:3"
    assert [(t.model, t.weight) for t in endpoint.traffic] == [(f"{MODEL}:3", 100)]
    assert endpoint.rollout is not None and endpoint.rollout.phase == Phase.SUCCEEDED.value
    phases = [d.kind.removeprefix("rollout.") for d in endpoint.timeline if d.assets["model"] == f"{MODEL}:3"]
    assert phases[0] == Phase.DEPLOY.value and phases[-1] == Phase.SUCCEEDED.value
    assert Phase.GRACE.value in phases
    assert [d.at for d in endpoint.timeline] == sorted(d.at for d in endpoint.timeline)  # oldest first


def test_data_versions_are_the_newest_with_their_blobs_and_bounded() -> None:
    rig = flow()
    registry = MemoryWorkspace()
    for n in range(1, 31):
        registry.register_data_version(DataVersionSpec("d", "uri_file", f"azureml://d/{n}", "",
                                                       {Tag.SOURCE_URL.value: f"https://acct/landing/d/{n}.csv",
                                                        Tag.ETAG.value: "x"}))
    (dataset,) = reader(rig, registry=registry, limits=StatusLimits(versions=5)).read().datasets
    assert [v.version for v in dataset.versions] == ["30", "29", "28", "27", "26"]
    assert dataset.versions[0].sources == {Tag.SOURCE_URL.value: "https://acct/landing/d/30.csv"}


def test_a_query_string_in_a_data_version_uri_or_source_tag_never_reaches_the_page() -> None:
    """A version registered by hand (or before the tags were stripped) may carry a SAS: the page drops it."""
    registry = MemoryWorkspace()
    registry.register_data_version(DataVersionSpec("d", "uri_file", "https://acct/landing/d/1.csv?sv=1&sig=s3cret",
                                                   "", {Tag.SOURCE_URL.value: "https://acct/landing/d/1.csv?sig=s3cret"}))
    view = reader(flow(), registry=registry).read()
    (row,) = view.datasets[0].versions
    assert (row.uri, row.sources[Tag.SOURCE_URL.value]) == ("https://acct/landing/d/1.csv",) * 2
    assert "s3cret" not in render_json(view) and "s3cret" not in render_html(view)


class OddVersions(MemoryWorkspace):
    """A registry whose newest data version was registered by hand under a name that only looks like a number."""

    def __init__(self, newest: str) -> None:
        super().__init__()
        self.newest = newest

    def get_data_version(self, name: str, version: str | None = None) -> DataVersionInfo | None:
        if version is None or version == self.newest:
            return DataVersionInfo(name, self.newest, f"azureml://d/{self.newest}", "uri_file", {})
        return super().get_data_version(name, version)


@pytest.mark.parametrize("newest", ["²", "9" * 5000])
def test_a_version_that_only_looks_like_a_number_is_shown_alone_not_a_500(newest: str) -> None:
    """`str.isdigit` is True for '²' and for 5,000 nines, which `int` cannot read: the whole page once failed."""
    (dataset,) = reader(flow(), registry=OddVersions(newest)).read().datasets
    assert [v.version for v in dataset.versions] == [newest]


def test_filters_narrow_the_sections_and_the_audit_tail() -> None:
    rig = flow()
    rig.audit.record(AuditRecord("data.registered", "registered", "new file", "e-d", {"data": "d:1"}, at=rig.clock()))
    status = reader(rig)
    only_rejections = status.read(StatusQuery(kind="promotion.skipped", model=MODEL))
    assert [r.kind for r in only_rejections.audit.records] == ["promotion.skipped"]
    data_only = status.read(StatusQuery(dataset="d"))
    assert [r.event_id for r in data_only.audit.records] == ["e-d"]
    newest = status.read(StatusQuery(limit=3)).audit.records
    assert len(newest) == 3 and newest[0].kind == "data.registered"


def test_bad_filters_are_refused_naming_each_problem() -> None:
    policy = Rig().policy
    assert parse_status_query({"model": MODEL, "limit": "10"}, policy) == StatusQuery(model=MODEL, limit=10)
    with pytest.raises(InvalidEventError) as refused:
        parse_status_query({"model": "nope", "limit": "0", "kind": "<script>", "colour": "red"}, policy)
    text = str(refused.value)
    for expected in ("unknown parameter 'colour'", "model='nope' is not in the policy", "limit='0'",
                     "kind='<script>'"):
        assert expected in text


def test_the_function_key_parameter_is_accepted_and_never_echoed() -> None:
    """Azure callers pass the function key as `?code=…` (auth level function): it is not a filter, not a 400."""
    policy = Rig().policy
    assert parse_status_query({"code": "s3cret-key", "model": MODEL}, policy) == StatusQuery(model=MODEL)
    with pytest.raises(InvalidEventError) as refused:
        parse_status_query({"code": "s3cret-key", "model": "nope"}, policy)
    assert "s3cret-key" not in str(refused.value)


def test_retention_shows_the_next_run_the_last_run_and_the_cached_dry_run_plan() -> None:
    rig = flow()
    world = World()
    world.workspace.put(data("1", 200), data("2", 180), data("3", 5), model("1", 100, 0.9))
    runner = world.runner()
    calls: list[str] = []
    real_run = runner.run

    def counting_run(**kwargs: object) -> object:
        calls.append("run")
        return real_run(**kwargs)  # type: ignore[arg-type]

    runner.run = counting_run  # type: ignore[method-assign]
    rig.audit.record(AuditRecord("retention.run", "applied 1 action(s)", "1 done", "ret-1", {}, at=rig.clock()))
    status = reader(rig, retention=runner, plan_ttl_seconds=600)
    view = status.read()
    retention = view.retention
    assert retention.next_run is not None and (retention.next_run.hour, retention.next_run.minute) == (3, 0)
    assert retention.next_run > rig.clock()
    assert retention.last_run is not None and retention.last_run.event_id == "ret-1"
    expected = runner.run(run_id="check", dry_run=True, now=rig.clock()).plan
    assert [a.target for a in retention.actions] == [str(a.target) for a in expected.actions]
    assert str(DataKey("churn", "1")) in [a.target for a in retention.actions]
    assert [p.target for p in retention.protected] == [str(p.target) for p in expected.protected]
    assert (retention.actions_total, retention.protected_total) == (len(expected.actions), len(expected.protected))
    capped = reader(rig, retention=runner, limits=StatusLimits(plan_rows=1)).read().retention
    assert len(capped.actions) == 1 and capped.actions_total == len(expected.actions) > 1
    status.read()
    assert calls == ["run", "run", "run"]  # the first page's two reads computed it once (+ the check, + `capped`)


def test_health_lists_dead_letters_poison_failed_runs_and_stuck_work_each_bounded() -> None:
    rig = flow()
    letters = MemoryDeadLetters()
    for n in range(30):
        letters.add(f"topic/sub/2026/12/01/09/{n:03d}.json",
                    {"id": f"e{n}", "eventType": "Microsoft.Storage.BlobCreated",
                     "deadLetterReason": "MaxDeliveryAttemptsExceeded"})
    poison = MemoryPoisonQueue("evergreen-rollout-poison")
    poison.add("{}")
    rig.audit.record(AuditRecord("retrain.failed", "failed", "the job failed: OOM", "run-1",
                                 {"data": "d:3", "job": "job-3"}, at=rig.clock()))
    rig.ledger.track_work("ingest", "b1", {"Kind": "batch", "Dataset": "d", "Folder": "d/x/", "Generation": 1})
    rig.clock.advance(3600)
    health = reader(rig, dead_letters=letters, poison_queues=[poison], limits=StatusLimits(health=10),
                    stuck_after=timedelta(minutes=10)).read().health
    assert len(health.dead_letters) == 10 and health.dead_letters[0].reason == "MaxDeliveryAttemptsExceeded"
    assert [p.what for p in health.poison] == ["evergreen-rollout-poison"]
    assert [(f.what, f.reason) for f in health.failed_runs] == [("job-3", "the job failed: OOM")]
    assert [s.what for s in health.stuck] == ["ingest: b1"]


def test_an_empty_system_reads_without_errors_and_serialises_to_json() -> None:
    rig = Rig()
    view = reader(rig).read()
    (churn,) = view.models
    assert churn.versions == () and churn.rejected == ()
    (endpoint,) = view.endpoints
    assert not endpoint.exists and endpoint.serving == ""
    doc = json.loads(json.dumps(view.to_json()))
    assert doc["retention"]["note"] == "retention is not configured for this page"
    assert doc["models"][0]["name"] == MODEL and doc["at"] == rig.clock().isoformat()


def _stuck_comparisons(rig: Rig, **kwargs: object) -> list[tuple[str, str]]:
    return [(s.what, s.reason) for s in reader(rig, **kwargs).read().health.stuck if s.what.startswith("comparison")]


def test_a_comparison_in_flight_is_stuck_only_past_the_reconcilers_patience() -> None:
    """The reconciler re-drives a comparison open longer than `min(STALL_FLOOR, lease)`: the page says so then,
    not before (a fresh job is just running) and not only after the whole lease."""
    rig = Rig()
    rig.ledger.track_comparison("cmp-old", {Tag.MODEL.value: f"{MODEL}:4", Tag.COMPARED_WITH.value: f"{MODEL}:3"})
    rig.clock.advance(STALL_FLOOR.total_seconds())
    rig.ledger.track_comparison("cmp-new", {Tag.MODEL.value: f"{MODEL}:5"})
    lease = timedelta(minutes=10)
    assert _stuck_comparisons(rig, stuck_after=lease) == []  # cmp-old is exactly at the patience: not past it
    rig.clock.advance(1)
    [(what, reason)] = _stuck_comparisons(rig, stuck_after=lease)
    assert what == f"comparison: cmp-old ({MODEL}:4)"
    assert reason == f"open for 0:03:01 (longer than {STALL_FLOOR}); the reconciler re-drives it"
    short = timedelta(seconds=30)  # a lease shorter than the floor is the patience itself, as for the promoter
    assert [w for w, _ in _stuck_comparisons(rig, stuck_after=short)] == [f"comparison: cmp-old ({MODEL}:4)"]
    rig.clock.advance(30)  # cmp-new: 31 s
    assert [w for w, _ in _stuck_comparisons(rig, stuck_after=lease)] == [f"comparison: cmp-old ({MODEL}:4)"]
    assert [w for w, _ in _stuck_comparisons(rig, stuck_after=short)] == [
        f"comparison: cmp-new ({MODEL}:5)", f"comparison: cmp-old ({MODEL}:4)"]
    rig.ledger.finish_comparison("cmp-old")
    assert [w for w, _ in _stuck_comparisons(rig, stuck_after=short)] == [f"comparison: cmp-new ({MODEL}:5)"]


def test_an_unreadable_comparison_entry_is_listed_for_an_operator_at_once_and_shown_on_the_page() -> None:
    rig = Rig()
    rig.ledger.track_work(COMPARISON_WORK, "cmp-bad", {"Tags": "{not json"})
    rig.table.upsert({"PartitionKey": f"work-{COMPARISON_WORK}", "RowKey": "cmp-timeless",
                      "Tags": json.dumps({Tag.MODEL.value: f"{MODEL}:7"})})  # no time: stale for the reconciler
    view = reader(rig).read()
    stuck = [s for s in view.health.stuck if s.what.startswith("comparison")]
    assert [(s.what, s.at) for s in stuck] == [("comparison: cmp-bad (needs an operator)", rig.clock()),
                                              (f"comparison: cmp-timeless ({MODEL}:7)", None)]
    assert stuck[0].reason.startswith("its open-work entry cannot be read (its tags are not JSON (")
    assert stuck[0].reason.endswith("); the reconciler will not re-drive it")
    assert stuck[1].reason.startswith("open for an unknown time")
    page = render_html(view)
    stuck_section = page[page.index("<h3>Stuck work</h3>"):page.index('<section id="audit"')]
    assert "cmp-bad (needs an operator)" in stuck_section and f"cmp-timeless ({MODEL}:7)" in stuck_section
    assert "Nothing stuck." not in stuck_section
    doc = json.loads(render_json(view))
    assert [s["what"] for s in doc["health"]["stuck"]] == [s.what for s in stuck]


def test_an_open_work_entry_with_a_garbled_time_is_listed_and_never_fails_the_page() -> None:
    rig = Rig()
    rig.table.upsert({"PartitionKey": "work-ingest", "RowKey": "b-garbled", "Since": "yesterday-ish"})
    rig.ledger.track_work("ingest", "b-fresh", {"Kind": "batch", "Dataset": "d", "Folder": "d/x/", "Generation": 1})
    view = reader(rig).read()
    stuck = [(s.what, s.reason) for s in view.health.stuck if s.what.startswith("ingest")]
    assert stuck == [("ingest: b-garbled", "its open-work time 'yesterday-ish' cannot be read")]
    assert "ingest: b-garbled" in render_html(view)
