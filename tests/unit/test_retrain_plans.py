from datetime import UTC, datetime, timedelta

import pytest

from shared.config.policy import parse_policy
from shared.domain.events import DataVersionRegistered
from shared.domain.records import RetrainState, Row
from shared.domain.retrain import (
    Coalesce,
    RunFinished,
    Skip,
    SubmitRetrain,
    job_name_for,
    parse_data_version_registered,
    parse_run_event,
    plan_follow_up,
    plan_retrain,
)
from shared.domain.vocabulary import RunStatus, Tag
from shared.errors import InvalidEventError

POLICY = parse_policy({
    "datasets": [
        {"name": "churn", "container": "landing", "prefix": "churn/", "type": "uri_folder", "datastore": "landing",
         "batch": {"marker": "_SUCCESS"}},
        {"name": "ref", "container": "landing", "prefix": "ref/", "type": "uri_file", "datastore": "landing"},
    ],
    "retraining": [{"dataset": "churn", "pipeline": "ml/pipeline.yml", "experiment": "exp", "model_name": "m",
                    "min_interval_minutes": 30}],
})
NOW = datetime(2026, 11, 27, 12, tzinfo=UTC)


def event(version="3", dataset="churn"):
    return DataVersionRegistered(dataset, dataset, version, "azureml://x", "uri_folder", "ab" * 32, 1)


def state(active=None, active_version=None, pending=None, last=None):
    return RetrainState("churn", active, active_version, last, pending, "churn" if pending else None,
                        "uri_folder" if pending else None, Row({}, "e"))


def test_job_names_are_deterministic_and_valid():
    assert job_name_for("churn", "3") == job_name_for("churn", "3")
    assert job_name_for("churn", "3") != job_name_for("churn", "4")
    name = job_name_for("Churn Data_v2", "10")
    assert name.startswith("evergreen-churn-data-v2-v10-") and len(name) < 100


def test_first_version_submits():
    d = plan_retrain(event(), POLICY, None, None, NOW)
    assert isinstance(d, SubmitRetrain) and d.job_name == job_name_for("churn", "3")


def test_skips_with_reasons():
    assert "no retraining pipeline" in plan_retrain(event(dataset="ref"), POLICY, None, None, NOW).reason
    exists = plan_retrain(event(), POLICY, None, RunStatus.SUBMITTED, NOW)
    assert isinstance(exists, Skip) and "already exists" in exists.reason
    recent = plan_retrain(event(), POLICY, state(last=NOW - timedelta(minutes=5)), None, NOW)
    assert isinstance(recent, Skip) and "minimum interval of 30 min" in recent.reason
    later = plan_retrain(event(), POLICY, state(last=NOW - timedelta(minutes=31)), None, NOW)
    assert isinstance(later, SubmitRetrain)


def test_interrupted_submission_is_resumed():
    d = plan_retrain(event(), POLICY, state(active=job_name_for("churn", "3"), active_version="3"),
                     RunStatus.SUBMITTING, NOW)
    assert isinstance(d, SubmitRetrain) and "resuming" in d.reason


def test_versions_during_an_active_run_coalesce_newest_wins():
    active = state(active="job-2", active_version="2")
    assert isinstance(plan_retrain(event("3"), POLICY, active, None, NOW), Coalesce)
    with_pending = state(active="job-2", active_version="2", pending="5")
    assert "already queued" in plan_retrain(event("4"), POLICY, with_pending, None, NOW).reason
    assert isinstance(plan_retrain(event("10"), POLICY, with_pending, None, NOW), Coalesce)  # 10 > 5 numerically
    assert "not newer" in plan_retrain(event("1"), POLICY, active, None, NOW).reason


def test_non_numeric_versions_sort_after_numeric_ones():
    """One version order (vocabulary.version_order): a label such as 'latest' is newer than any number."""
    assert isinstance(plan_retrain(event("latest"), POLICY, state(active="job-2", active_version="2"), None, NOW),
                      Coalesce)
    assert "not newer" in plan_retrain(event("99"), POLICY, state(active="job-x", active_version="x"), None,
                                       NOW).reason
    assert "not newer" in plan_retrain(event("²"), POLICY, state(active="job-³", active_version="³"), None,
                                       NOW).reason  # superscripts are labels, not numbers, and do not crash


def test_run_finished_maps_to_the_ledger_status():
    assert RunFinished("j", "Completed", "e").run_status is RunStatus.COMPLETED
    assert RunFinished("j", "Canceled", "e").run_status is RunStatus.CANCELED
    assert RunFinished("j", "Failed", "e").run_status is RunStatus.FAILED
    assert RunFinished("j", "NotResponding", "e").run_status is RunStatus.FAILED
    assert RunFinished("j", "Completed", "e", {Tag.DATASET.value: "churn"}).dataset == "churn"
    assert RunFinished("j", "Completed", "e", {}).dataset is None


def test_follow_up_runs_once_on_the_newest_pending_version():
    done = RunFinished("job-2", "Completed", "exp", {"evergreen.dataset": "churn"})
    follow = plan_follow_up(done, state(active="job-2", active_version="2", pending="5"), POLICY)
    assert isinstance(follow, SubmitRetrain) and follow.data_version == "5"
    assert isinstance(plan_follow_up(done, state(active="job-2", active_version="2"), POLICY), Skip)
    assert isinstance(plan_follow_up(done, state(active="other"), POLICY), Skip)
    failed = RunFinished("job-2", "Failed", "exp", {})
    assert isinstance(plan_follow_up(failed, state(active="job-2", pending="6"), POLICY), SubmitRetrain)


def test_run_events_parse_case_insensitively():
    ok = parse_run_event("Microsoft.MachineLearningServices.RunCompleted",
                         {"RunId": "j1", "ExperimentName": "e", "RunTags": {"evergreen.dataset": "churn"}})
    assert ok.succeeded and ok.tags["evergreen.dataset"] == "churn"
    failed = parse_run_event("Microsoft.MachineLearningServices.RunStatusChanged",
                             {"runId": "j1", "runStatus": "Failed"})
    assert failed.status == "Failed" and not failed.succeeded


@pytest.mark.parametrize(("etype", "data", "message"), [
    ("Microsoft.MachineLearningServices.RunCompleted", [], "JSON object"),
    ("Microsoft.MachineLearningServices.RunCompleted", {}, "lacks runId"),
    ("Microsoft.MachineLearningServices.RunStatusChanged", {"runId": "x"}, "lacks runStatus"),
    ("Other.Event", {"runId": "x"}, "not an Azure ML run event"),
])
def test_bad_run_events(etype, data, message):
    with pytest.raises(InvalidEventError, match=message):
        parse_run_event(etype, data)


def test_bad_data_version_events():
    with pytest.raises(InvalidEventError, match="lacks dataset, asset_name"):
        parse_data_version_registered({"version": "1"})
    with pytest.raises(InvalidEventError, match="files must be a list"):
        parse_data_version_registered({"dataset": "d", "asset_name": "d", "version": "1", "uri": "u",
                                       "asset_type": "uri_file", "sha256": "s", "files": "x"})
    ok = parse_data_version_registered({"dataset": "d", "asset_name": "d", "version": 2, "uri": "u",
                                        "asset_type": "uri_file", "sha256": "s", "files": ["a"]})
    assert ok.version == "2" and ok.files == ("a",)


@pytest.mark.parametrize("count", ["many", "²", -1, 1.5, True, None, [1]])
def test_a_bad_file_count_is_an_invalid_event_not_a_crash(count):
    data = {"dataset": "d", "asset_name": "d", "version": "1", "uri": "azureml://x", "asset_type": "uri_folder",
            "sha256": "0" * 64, "file_count": count}
    with pytest.raises(InvalidEventError, match="file_count"):
        parse_data_version_registered(data)
