from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from shared.config.policy import parse_policy
from shared.domain.events import DataVersionRegistered
from shared.domain.records import RetrainState, Row
from shared.domain.retrain import (
    Coalesce,
    Defer,
    RetrainCheck,
    RunFinished,
    Skip,
    SubmitRetrain,
    Wait,
    job_name_for,
    parse_data_version_registered,
    parse_run_event,
    plan_follow_up,
    plan_recheck,
    plan_reconcile,
    plan_retrain,
    retrain_check_from_json,
    retrain_check_to_json,
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
    later = plan_retrain(event(), POLICY, state(last=NOW - timedelta(minutes=31)), None, NOW)
    assert isinstance(later, SubmitRetrain)


def test_defect9_a_version_inside_the_minimum_interval_waits_for_the_window_end_not_skipped():
    """Before: Skip('inside the minimum interval') – the version was dropped for good."""
    recent = plan_retrain(event("3"), POLICY, state(last=NOW - timedelta(minutes=5)), None, NOW)
    assert isinstance(recent, Defer) and "minimum interval of 30 min" in recent.reason
    assert (recent.data_version, recent.due) == ("3", NOW + timedelta(minutes=25))
    waiting = state(last=NOW - timedelta(minutes=5), pending="3")
    assert isinstance(plan_retrain(event("4"), POLICY, waiting, None, NOW), Defer)  # newest wins
    older = plan_retrain(event("2"), POLICY, waiting, None, NOW)
    assert isinstance(older, Defer) and older.data_version == "3"  # the waiting one stays, its re-check ensured
    due = plan_retrain(event("2"), POLICY, state(last=NOW - timedelta(minutes=40), pending="3"), None, NOW)
    assert isinstance(due, SubmitRetrain) and due.data_version == "3" and "interval ended" in due.reason


def test_defect9_a_recheck_runs_the_waiting_version_once_the_window_has_ended():
    waiting = state(last=NOW - timedelta(minutes=10), pending="5")
    early = plan_recheck(waiting, POLICY, NOW)
    assert isinstance(early, Defer) and early.due == NOW + timedelta(minutes=20)
    run = plan_recheck(waiting, POLICY, NOW + timedelta(minutes=20))
    assert isinstance(run, SubmitRetrain) and run.job_name == job_name_for("churn", "5") and not run.resume
    assert isinstance(plan_recheck(state(last=NOW - timedelta(hours=1)), POLICY, NOW), Skip)
    assert isinstance(plan_recheck(None, POLICY, NOW), Skip)
    assert "is active" in plan_recheck(state(active="job-2", active_version="2", pending="5"), POLICY, NOW).reason


def test_an_older_late_event_after_a_newer_run_is_skipped():
    done = replace(state(last=NOW - timedelta(hours=2)), last_version="5")
    late = plan_retrain(event("4"), POLICY, done, None, NOW)
    assert isinstance(late, Skip) and "not newer than the last run's 5" in late.reason
    assert isinstance(plan_retrain(event("6"), POLICY, done, None, NOW), SubmitRetrain)


def submitting(until, owner="other/1"):
    return replace(state(active=job_name_for("churn", "3"), active_version="3"), active_status=RunStatus.SUBMITTING,
                   lease_owner=owner, lease_until=until, active_asset="churn", active_asset_type="uri_folder",
                   active_event="e3")


def test_defect2_an_unconfirmed_submission_is_waited_for_while_its_lease_lives_then_resumed():
    held = plan_retrain(event("3"), POLICY, submitting(NOW + timedelta(minutes=1)), None, NOW)
    assert isinstance(held, Wait) and held.until == NOW + timedelta(minutes=1) and "other/1" in held.reason
    resumed = plan_retrain(event("3"), POLICY, submitting(NOW), None, NOW)
    assert isinstance(resumed, SubmitRetrain) and resumed.resume and resumed.trigger_event == "e3"
    assert resumed.job_name == job_name_for("churn", "3")
    newer = plan_retrain(event("4"), POLICY, submitting(NOW + timedelta(minutes=1)), None, NOW)
    assert isinstance(newer, Coalesce)  # a newer version still coalesces behind the submission
    assert isinstance(plan_recheck(submitting(NOW - timedelta(seconds=1)), POLICY, NOW), SubmitRetrain)


def test_reconcile_plans_what_is_stuck_and_leaves_the_rest():
    assert plan_reconcile(submitting(NOW + timedelta(minutes=1)), None, POLICY, NOW) is None
    lost = plan_reconcile(submitting(NOW - timedelta(minutes=1)), None, POLICY, NOW)
    assert isinstance(lost, SubmitRetrain) and lost.resume and "lease expired" in lost.reason
    confirmed = replace(submitting(None), active_status=RunStatus.SUBMITTED)
    assert plan_reconcile(confirmed, "Running", POLICY, NOW) is None
    missing = plan_reconcile(confirmed, None, POLICY, NOW)
    assert isinstance(missing, SubmitRetrain) and "does not exist" in missing.reason
    ended = plan_reconcile(confirmed, "Completed", POLICY, NOW)
    assert isinstance(ended, RunFinished) and ended.succeeded and ended.dataset == "churn"
    assert ended.tags[Tag.DATA_VERSION.value] == "3"
    waiting = replace(state(last=NOW - timedelta(hours=1), pending="5"), recheck_at=NOW - timedelta(minutes=1))
    assert plan_reconcile(waiting, None, POLICY, NOW) is None  # its re-check is (probably) still coming
    stale = replace(waiting, recheck_at=NOW - timedelta(hours=1))
    assert isinstance(plan_reconcile(stale, None, POLICY, NOW), SubmitRetrain)
    assert plan_reconcile(state(last=NOW), None, POLICY, NOW) is None


def test_recheck_messages_round_trip_and_reject_garbage():
    check = RetrainCheck("churn", "the minimum interval ends")
    assert retrain_check_from_json(retrain_check_to_json(check)) == check
    for body in ("not json", "[]", "{}", '{"dataset": 3}'):
        with pytest.raises(InvalidEventError):
            retrain_check_from_json(body)


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
