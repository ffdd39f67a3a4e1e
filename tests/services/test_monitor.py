"""A decaying champion, and changed training code, on the in-memory adapters (`shared.services.monitor`).

The champion serves on a `MemoryEndpoints` endpoint; `MemoryWorkspace` is Azure ML (data versions, the
re-score job, the comparison.json the compare step would write); the Retrainer is the real one, so a
retrain goes through its decision (job names, dedupe). Each path: degraded by threshold, by margin,
not degraded, a redelivered event acting once, changed code retraining once.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from shared.adapters.memory.azureml import MemoryWorkspace
from shared.adapters.memory.endpoints import MemoryEndpoints
from shared.adapters.memory.eventgrid import MemoryEventPublisher
from shared.adapters.memory.queues import MemoryDelayedQueue
from shared.adapters.memory.tables import MemoryTable
from shared.config.policy import Policy, parse_policy
from shared.domain.decay import rescore_job_name
from shared.domain.events import DataVersionRegistered
from shared.domain.retrain import RetrainCheck, RunFinished, job_name_for
from shared.domain.vocabulary import ComparisonPurpose, MonitorAction, RetrainAction, Tag, metric_tag
from shared.domain.workspace import DataVersionSpec, DeploymentSpec
from shared.errors import InvalidEventError
from shared.services.audit import TableAuditLog
from shared.services.ledger import Ledger
from shared.services.monitor import ChampionMonitor
from shared.services.retrain import Retrainer
from tests.services.conftest import FakeClock

REPO = Path(__file__).resolve().parents[2]
MODEL, ENDPOINT, TRAINING, HOLDOUT = "churn", "churn-online", "churn-training", "churn-holdout"


def policy(**evaluation: Any) -> Policy:
    folder = {"container": "landing", "type": "uri_folder", "datastore": "landing", "batch": {"marker": "_SUCCESS"}}
    return parse_policy({
        "datasets": [{"name": TRAINING, "prefix": "train/", **folder},
                     {"name": HOLDOUT, "prefix": "holdout/", **folder}],
        "retraining": [{"dataset": TRAINING, "pipeline": "ml/pipeline.yml", "experiment": "exp", "model_name": MODEL}],
        "models": [{"name": MODEL, "promotion": {
            "metric": "roc_auc", "direction": "higher_is_better", "endpoint": ENDPOINT, "threshold": 0.7,
            "deployment": {"instance_type": "Standard_DS3_v2", "code": "ml/src", "scoring_script": "score.py"},
            "smoke_test": {"request": {"input_data": [1]}},
            "evaluation": {"data": f"{HOLDOUT}@latest", "label_column": "churned", "max_decay": 0.02, **evaluation},
        }}],
    })


class World:
    def __init__(self, clock: FakeClock, code: str = "c0de" * 16, **evaluation: Any) -> None:
        self.clock = clock
        self.policy = policy(**evaluation)
        self.table = MemoryTable()
        self.ledger = Ledger(self.table, clock=clock)
        self.audit = TableAuditLog(MemoryTable())
        self.aml = MemoryWorkspace()
        self.endpoints = MemoryEndpoints(operation_ticks=0)
        self.published = MemoryEventPublisher()
        self.code = code
        self.retrainer = Retrainer(policy=self.policy, app_root=REPO, ledger=self.ledger, jobs=self.aml,
                                   audit=self.audit, rechecks=MemoryDelayedQueue[RetrainCheck](clock=clock),
                                   clock=clock, sleep=lambda _s: None)

    def monitor(self) -> ChampionMonitor:
        return ChampionMonitor(policy=self.policy, endpoints=self.endpoints, jobs=self.aml, data=self.aml,
                               ledger=Ledger(self.table, clock=self.clock), audit=self.audit,
                               publisher=self.published, retrainer=self.retrainer, app_root=REPO,
                               code_hash=lambda: self.code, clock=self.clock)

    def serve(self, version: str, auc: str, code: str = "c0de" * 16) -> str:
        self.endpoints.add_model(MODEL, version, {metric_tag("roc_auc"): auc, Tag.CODE_SHA256.value: code})
        self.endpoints.begin_create_endpoint(ENDPOINT, {})
        self.endpoints.begin_create_deployment(DeploymentSpec(ENDPOINT, f"d{version}", MODEL, version,
                                                              "Standard_DS3_v2", 1, None, None, None, {}))
        self.endpoints.settle_all()
        self.endpoints.begin_set_traffic(ENDPOINT, {f"d{version}": 100})
        self.endpoints.settle_all()
        return f"{MODEL}:{version}"

    def upload(self, name: str) -> DataVersionRegistered:
        registered = self.aml.register_data_version(DataVersionSpec(name, "uri_folder", f"azureml://{name}/", "",
                                                                    {Tag.SHA256.value: f"{name}-sha"}))
        return DataVersionRegistered(name, name, registered.version, registered.uri, "uri_folder", f"{name}-sha", 1)

    def completed(self, job: str, auc: str | None) -> RunFinished:
        """The compare step's output for the re-score job, and its RunCompleted as the edge parses it."""
        submitted = next(j for j in self.aml.jobs() if j.name == job)
        tags = dict(submitted.submission.tags)
        if auc is not None:
            self.aml.write_comparison(job, json.dumps({
                "schema": "evergreen.comparison/1",
                "evaluation": {"data_asset": tags[Tag.DATA_ASSET.value], "data_version": tags[Tag.DATA_VERSION.value],
                               "rows": 5000, "label_column": "churned"},
                "seed": 7, "resamples": 1000, "confidence": 0.95, "metric": "roc_auc", "direction": "higher_is_better",
                "challenger": {"model": tags[Tag.MODEL.value], "metrics": {"roc_auc": float(auc)}},
                "champion": None, "difference": None, "slices": []}))
        return RunFinished(job, "Completed", "evergreen-compare", tags)

    def retrain_jobs(self) -> list[str]:
        return [j.name for j in self.aml.jobs() if j.submission.tags.get(Tag.DATASET.value) == TRAINING]


@pytest.fixture
def world(clock: FakeClock) -> World:
    return World(clock)


def rescore(world: World, auc: str | None) -> tuple[str, Any]:
    """Upload a holdout version, let the monitor submit the re-score, complete it with `auc`."""
    outcome = world.monitor().on_data_version(world.upload(HOLDOUT), "evt-holdout")
    assert outcome.action is MonitorAction.RESCORE_SUBMITTED, outcome.detail
    return outcome.job_name, world.monitor().on_rescore_finished(world.completed(outcome.job_name, auc), "evt-run")


def test_a_champion_below_the_threshold_is_announced_and_its_newest_training_data_retrained(world: World) -> None:
    champion = world.serve("3", "0.80")
    world.upload(TRAINING)
    assert world.retrainer.on_data_version_registered(world.upload(TRAINING), "e").action is RetrainAction.SUBMITTED
    world.aml.set_job_status(job_name_for(TRAINING, "2"), "Completed")
    world.retrainer.on_run_finished(RunFinished(job_name_for(TRAINING, "2"), "Completed", "exp",
                                                {Tag.DATASET.value: TRAINING, Tag.DATA_VERSION.value: "2"}), "e")
    job, outcome = rescore(world, "0.65")
    assert job == rescore_job_name(champion, HOLDOUT, "1")
    submitted = next(j for j in world.aml.jobs() if j.name == job).submission
    assert submitted.tags[Tag.COMPARISON.value] == ComparisonPurpose.RESCORE.value
    assert submitted.model_inputs == {"challenger_model": f"azureml:{champion}"}  # scored alone
    assert outcome.action is MonitorAction.DEGRADED and "below the threshold 0.7" in outcome.detail
    (event,) = world.published.degraded
    assert (event.model, event.code, event.value, event.at_promotion) == (champion, "below_threshold", "0.65", "0.80")
    # the newest training version (2) already ran: the degradation reruns it under its own job name
    reruns = [j for j in world.retrain_jobs() if j != job_name_for(TRAINING, "2")]
    assert len(reruns) == 1 and "-v2-r-" in reruns[0]
    (score,) = world.ledger.champion_scores(ENDPOINT)
    assert (score.model, score.data_version, score.value, score.degraded) == (champion, "1", "0.65", True)


def test_a_champion_worse_than_at_promotion_by_more_than_max_decay_is_degraded(world: World) -> None:
    world.serve("3", "0.80")
    world.upload(TRAINING)
    _, outcome = rescore(world, "0.77")
    assert outcome.action is MonitorAction.DEGRADED
    assert "0.03 worse than at promotion (0.80), more than max_decay 0.02" in outcome.detail
    assert [e.code for e in world.published.degraded] == ["decayed"]
    assert len(world.retrain_jobs()) == 1  # a rerun of the newest training version


def test_a_healthy_champion_is_recorded_over_time_and_nothing_is_retrained(world: World) -> None:
    world.serve("3", "0.80")
    world.upload(TRAINING)
    _, first = rescore(world, "0.79")
    world.clock.advance(3600)
    _, second = rescore(world, "0.81")
    assert first.action is MonitorAction.HEALTHY and second.action is MonitorAction.HEALTHY
    assert world.published.degraded == [] and world.retrain_jobs() == []
    scores = world.ledger.champion_scores(ENDPOINT)
    assert [(s.data_version, s.value, s.degraded) for s in scores] == [("1", "0.79", False), ("2", "0.81", False)]


def test_redelivered_events_submit_one_rescore_and_retrain_once(world: World) -> None:
    world.serve("3", "0.80")
    world.upload(TRAINING)
    holdout = world.upload(HOLDOUT)
    first = world.monitor().on_data_version(holdout, "evt-1")
    again = world.monitor().on_data_version(holdout, "evt-1")
    assert first.job_name == again.job_name
    assert [j.name for j in world.aml.jobs()] == [first.job_name]  # one re-score job
    finished = world.completed(first.job_name, "0.60")
    world.monitor().on_rescore_finished(finished, "run-1")
    world.monitor().on_rescore_finished(finished, "run-1")
    assert len(world.retrain_jobs()) == 1
    assert len(world.published.degraded) == 1 and world.published.attempts == 2  # same id: consumers keep one
    assert len(world.ledger.champion_scores(ENDPOINT)) == 1


def test_a_rescore_whose_run_completed_was_lost_is_judged_by_the_next_timer_tick(world: World) -> None:
    """Event Grid gave up on the re-score's RunCompleted: the next tick finds the ended job under its name
    (submitting nothing new) and judges it, so a decayed champion is not left serving until the next drop."""
    world.serve("3", "0.80")
    world.upload(TRAINING)
    outcome = world.monitor().on_data_version(world.upload(HOLDOUT), "evt-holdout")
    world.completed(outcome.job_name, "0.60")  # the step wrote its comparison.json...
    world.aml.set_job_status(outcome.job_name, "Completed")  # ...and ended; its event never came
    ticks = [world.monitor().on_schedule(f"tick-{n}") for n in range(2)]
    assert [o.action for o in ticks[0]] == [MonitorAction.DEGRADED], ticks[0]
    assert [j.name for j in world.aml.jobs() if j.name == outcome.job_name] == [outcome.job_name]
    assert len(world.retrain_jobs()) == 1 and len(world.ledger.champion_scores(ENDPOINT)) == 1


def test_a_failed_or_unreadable_rescore_decides_nothing(world: World) -> None:
    world.serve("3", "0.80")
    world.upload(TRAINING)
    outcome = world.monitor().on_data_version(world.upload(HOLDOUT), "evt")
    failed = world.completed(outcome.job_name, None)
    failed = RunFinished(failed.run_id, "Failed", failed.experiment, failed.tags)
    assert world.monitor().on_rescore_finished(failed, "run").action is MonitorAction.SKIPPED
    unreadable = world.monitor().on_rescore_finished(world.completed(outcome.job_name, None), "run")
    assert unreadable.action is MonitorAction.SKIPPED and "no value of roc_auc" in unreadable.detail
    assert world.retrain_jobs() == [] and world.published.degraded == []


def test_a_run_whose_tags_do_not_match_its_name_is_rejected(world: World) -> None:
    champion = world.serve("3", "0.80")
    tags = {Tag.COMPARISON.value: "rescore", Tag.MODEL.value: champion, Tag.ENDPOINT.value: ENDPOINT,
            Tag.DATA_ASSET.value: HOLDOUT, Tag.DATA_VERSION.value: "1"}
    with pytest.raises(InvalidEventError):
        world.monitor().on_rescore_finished(RunFinished("someone-elses-job", "Completed", "x", tags), "e")
    other = world.monitor().on_rescore_finished(RunFinished("j", "Completed", "x", {}), "e")
    assert other.action is MonitorAction.SKIPPED


def test_only_evaluation_datasets_are_routed_to_the_monitor(world: World) -> None:
    monitor = world.monitor()
    assert monitor.evaluates(world.upload(HOLDOUT))
    assert not monitor.evaluates(world.upload(TRAINING))


def test_changed_training_code_retrains_the_newest_data_once(clock: FakeClock) -> None:
    world = World(clock, code="new" * 20)
    world.serve("3", "0.80", code="old" * 20)
    world.upload(TRAINING)
    world.upload(HOLDOUT)
    outcomes = world.monitor().on_schedule("tick-1")
    assert [o.action for o in outcomes] == [MonitorAction.RESCORE_SUBMITTED, MonitorAction.CODE_CHANGED]
    assert "training code changed" in outcomes[1].detail
    world.monitor().on_schedule("tick-2")
    assert len(world.retrain_jobs()) == 1  # once per (dataset, version, code hash)
    assert len([j for j in world.aml.jobs() if j.name.startswith("evergreen-rescore-")]) == 1


def test_the_same_code_retrains_nothing(world: World) -> None:
    world.serve("3", "0.80")
    world.upload(TRAINING)
    world.upload(HOLDOUT)
    outcomes = world.monitor().on_schedule("tick")
    assert [o.action for o in outcomes] == [MonitorAction.RESCORE_SUBMITTED]
    assert world.retrain_jobs() == []
