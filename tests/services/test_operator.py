"""The operator's commands (`shared.services.operator.Operator`) on the in-memory adapters.

Abort and resume run against a real rollout driven by the Promoter (the same rig as
`test_promotion.py`); retrain goes through the real Retrainer (the same world as `test_retrain.py`).
"""

from __future__ import annotations

from datetime import timedelta

import pytest

from shared.adapters.memory.tables import MemoryTable
from shared.domain.audit import AuditRecord
from shared.domain.records import SUBMIT_LEASE, RolloutRecord
from shared.domain.retrain import job_name_for
from shared.domain.vocabulary import Phase, PromotionAction, RetrainAction, Tag
from shared.domain.workspace import DataVersionSpec
from shared.services.ledger import COMPARISON_WORK, Ledger
from shared.services.operator import Operator, OperatorRefused
from tests.services.conftest import FakeClock
from tests.services.test_promotion import ENDPOINT, MODEL, Rig, first_model
from tests.services.test_retrain import POLICY, World


def operator_for(rig: Rig) -> Operator:
    return Operator(policy=rig.policy, ledger=rig.ledger, audit=rig.audit, ticks=rig.queue, clock=rig.clock)


def run_until(rig: Rig, phase: Phase, *, canary: bool = False) -> RolloutRecord:
    """Deliver the rollout's steps until its row is in `phase` (and, with `canary`, the candidate takes traffic)."""
    for _ in range(200):
        record = rig.ledger.get_rollout(ENDPOINT)
        assert record is not None
        view = rig.endpoints.endpoint(ENDPOINT)
        serving = view is not None and view.traffic.get(record.deployment, 0) > 0
        if record.phase is phase and (serving or not canary):
            return record
        message = rig.next_due()
        assert message is not None, f"the rollout ended in {record.state} before reaching {phase}"
        rig.promoter.on_tick(message.item, message.dequeue_count)
        rig.queue.complete(message)
    raise AssertionError(f"never reached {phase}")


def second_rollout(rig: Rig) -> None:
    first_model(rig)
    assert rig.deliver(rig.register("0.85")).action is PromotionAction.STARTED


@pytest.fixture
def rig() -> Rig:
    return Rig()


@pytest.fixture
def world(clock: FakeClock) -> World:
    return World(clock)


# -- rollout abort ----------------------------------------------------------------------------------------
def test_abort_mid_canary_rolls_back_through_the_state_machine_and_the_champion_serves(rig: Rig) -> None:
    second_rollout(rig)
    shifting = run_until(rig, Phase.SHIFTING, canary=True)  # the candidate takes part of the traffic

    outcome = operator_for(rig).abort(ENDPOINT, who="ana", reason="p99 latency doubled")

    row = rig.ledger.get_rollout(ENDPOINT)
    assert row is not None and row.phase is Phase.ROLLBACK and row.seq == shifting.seq + 1
    assert row.failure == "aborted by ana: p99 latency doubled"
    assert f"{MODEL}:1" in outcome.detail and "rollback" in outcome.detail
    final = rig.run()
    assert final.phase is Phase.ROLLED_BACK
    assert rig.serving_model() == f"{MODEL}:1"
    view = rig.endpoints.endpoint(ENDPOINT)
    assert view is not None and shifting.deployment not in [d.name for d in view.deployments]
    (aborted,) = [r for r in rig.audit.query(kind_prefix="rollout.aborted", now=rig.clock())]
    assert aborted.assets["operator"] == "ana" and aborted.reason == "aborted by ana: p99 latency doubled"
    assert aborted.decision == f"abort at shifting (step {shifting.seq})"


def test_abort_refuses_when_there_is_nothing_to_abort(rig: Rig) -> None:
    operator = operator_for(rig)
    with pytest.raises(OperatorRefused, match="no rollout on endpoint 'nowhere'"):
        operator.abort("nowhere", who="ana", reason="")
    first_model(rig)
    with pytest.raises(OperatorRefused, match=r"is over \(succeeded\)"):
        operator.abort(ENDPOINT, who="ana", reason="")
    assert not [r for r in rig.audit.query(kind_prefix="rollout.aborted", now=rig.clock())]


def test_abort_refuses_a_rollout_already_rolling_back_and_sends_nothing(rig: Rig) -> None:
    second_rollout(rig)
    run_until(rig, Phase.SHIFTING)
    operator = operator_for(rig)
    operator.abort(ENDPOINT, who="ana", reason="first")
    queued = len(rig.queue)
    with pytest.raises(OperatorRefused, match=r"already rolling back \(rollback\)"):
        operator.abort(ENDPOINT, who="bo", reason="second")
    assert len(rig.queue) == queued


def test_abort_reads_again_when_a_step_moves_the_row_meanwhile(rig: Rig) -> None:
    second_rollout(rig)
    run_until(rig, Phase.SHIFTING)
    real = rig.ledger.update_rollout
    calls: list[int] = []

    def racing(record: RolloutRecord) -> RolloutRecord | None:
        calls.append(record.seq)
        return None if len(calls) == 1 else real(record)  # a step took the row first, once

    rig.ledger.update_rollout = racing  # type: ignore[method-assign]
    operator_for(rig).abort(ENDPOINT, who="ana", reason="")
    assert len(calls) == 2
    row = rig.ledger.get_rollout(ENDPOINT)
    assert row is not None and row.phase is Phase.ROLLBACK


# -- rollout resume ---------------------------------------------------------------------------------------
def test_resume_re_sends_a_lost_step_and_the_rollout_finishes(rig: Rig) -> None:
    second_rollout(rig)
    run_until(rig, Phase.PROVISIONING)
    lost = rig.next_due()
    assert lost is not None
    rig.queue.complete(lost)  # the message is gone, its step never taken
    assert len(rig.queue) == 0

    outcome = operator_for(rig).resume(ENDPOINT, who="ana", reason="stuck")

    assert "re-sent" in outcome.detail and len(rig.queue) == 1
    assert rig.run().phase is Phase.SUCCEEDED
    assert rig.serving_model() == f"{MODEL}:2"
    (resumed,) = [r for r in rig.audit.query(kind_prefix="rollout.resumed", now=rig.clock())]
    assert resumed.reason == "resumed by ana: stuck" and resumed.assets["endpoint"] == ENDPOINT


def test_resume_refuses_without_an_active_rollout(rig: Rig) -> None:
    first_model(rig)
    with pytest.raises(OperatorRefused, match="is over"):
        operator_for(rig).resume(ENDPOINT, who="ana")
    assert len(rig.queue) == 0


# -- status -----------------------------------------------------------------------------------------------
def test_status_shows_open_batches_retraining_active_rollouts_and_the_last_retention_run(clock: FakeClock) -> None:
    table = MemoryTable()
    ledger = Ledger(table, clock=clock)
    world = World(clock)
    ledger.track_work("ingest", "b1", {"Kind": "batch", "Dataset": "churn", "Folder": "churn/2026-11/",
                                        "Generation": 1})
    batch, _ = ledger.open_batch("churn", "churn/2026-11/")
    ledger.add_batch_file(batch, "churn/2026-11/a.csv", "e1", 10, "aa")
    ledger.add_batch_file(batch, "churn/2026-11/b.csv", "e2", 10, "bb")
    ledger.claim_submission(None, dataset="churn", job="job-1", version="3", asset="churn", asset_type="uri_folder",
                            event="evt", owner="me", until=clock() + SUBMIT_LEASE, clear_pending=False)
    started = clock()
    ledger.create_rollout(RolloutRecord(
        endpoint="ep", rollout_id="r1", seq=4, state=Phase.SHIFTING.value, candidate_name="m", candidate_version="2",
        deployment="m-2", champion_deployment="m-1", champion_model="m:1", step=0, due_at=None, started_at=started,
        reason="shifting 50%", queued_name="", queued_version="", queued_event="", event_id="evt",
        phase_since=started, attempts=0, failure=""))
    world.audit.record(AuditRecord("retention.run", "applied 2 action(s)", "2 done", "retention-1", {}, at=clock()))
    clock.advance(125)

    status = Operator(policy=POLICY, ledger=ledger, audit=world.audit, clock=clock).status()

    (open_batch,) = status.batches
    assert (open_batch.dataset, open_batch.files, open_batch.state) == ("churn", 2, "open")
    assert open_batch.seals == "on the marker _SUCCESS"
    (state,) = status.retraining
    assert state.active_job == "job-1" and state.submitting
    (rollout,) = status.rollouts
    assert (rollout.endpoint, rollout.phase, rollout.champion, rollout.age_seconds) == ("ep", "shifting", "m:1", 125)
    assert status.last_retention is not None and status.last_retention.event_id == "retention-1"
    doc = status.to_json()
    assert doc["rollouts"][0]["phase_since"] == started.isoformat()
    assert doc["retraining"][0]["active_status"] == "submitting" and doc["notes"] == []


def test_status_of_an_idle_system_says_so(clock: FakeClock) -> None:
    world = World(clock)
    status = Operator(policy=POLICY, ledger=world.ledger, audit=world.audit, clock=clock).status()
    assert (status.batches, status.retraining, status.rollouts, status.last_retention) == ([], [], [], None)
    assert status.notes == ["no retention run in the last 7 days"]


def test_a_sealed_batch_is_not_open_work(clock: FakeClock) -> None:
    world = World(clock)
    world.ledger.track_work("ingest", "b1", {"Kind": "batch", "Dataset": "churn", "Folder": "f/", "Generation": 1})
    batch, _ = world.ledger.open_batch("churn", "f/")
    sealing = world.ledger.claim_seal(batch, owner="x")
    assert sealing is not None
    world.ledger.finish_seal(sealing, "4", {})
    assert world.ledger.open_batches() == []


# -- retrain ----------------------------------------------------------------------------------------------
def register(world: World, n: int) -> None:
    world.jobs.register_data_version(DataVersionSpec("churn", "uri_folder", f"azureml://d/churn/{n}/", "",
                                                     {Tag.SHA256.value: f"{n}" * 8, Tag.FILES.value: "3"}))


def retrain_operator(world: World) -> Operator:
    return Operator(policy=POLICY, ledger=world.ledger, audit=world.audit, retrainer=world.instance(),
                    registry=world.jobs, clock=world.clock)


def test_retrain_the_latest_version_submits_once_and_a_second_request_is_deduplicated(world: World) -> None:
    register(world, 1)
    register(world, 2)
    operator = retrain_operator(world)

    first = operator.retrain("churn", None, who="ana", reason="new features")
    second = operator.retrain("churn", None, who="ana")

    assert first.action is RetrainAction.SUBMITTED and first.job_name == job_name_for("churn", "2")
    assert second.action is not RetrainAction.SUBMITTED
    assert world.submitted() == [job_name_for("churn", "2")]
    requested = [r for r in world.audit.query(kind_prefix="retrain.requested", now=world.clock())]
    assert {r.reason for r in requested} == {"requested by ana: new features", "requested by ana"}
    assert all(r.assets == {"data": "churn:2", "operator": "ana"} for r in requested)


def test_retrain_an_older_version_while_a_run_is_active_coalesces(world: World) -> None:
    register(world, 1)
    register(world, 2)
    operator = retrain_operator(world)
    operator.retrain("churn", "2", who="ana")
    outcome = operator.retrain("churn", "1", who="ana")
    assert outcome.action in (RetrainAction.COALESCED, RetrainAction.SKIPPED)
    assert len(world.submitted()) == 1


def test_retrain_refuses_an_unknown_dataset_or_version(world: World) -> None:
    register(world, 1)
    operator = retrain_operator(world)
    with pytest.raises(OperatorRefused, match="no dataset 'nope' in the policy"):
        operator.retrain("nope", None, who="ana")
    with pytest.raises(OperatorRefused, match="no version 7 of data asset 'churn'"):
        operator.retrain("churn", "7", who="ana")
    with pytest.raises(OperatorRefused, match="the registry has no version of data asset 'ref'"):
        operator.retrain("ref", None, who="ana")
    assert world.submitted() == []


def test_status_gives_a_rollouts_age_since_it_started(clock: FakeClock) -> None:
    world = World(clock)
    started = clock() - timedelta(hours=2)
    world.ledger.create_rollout(RolloutRecord(
        endpoint="ep", rollout_id="r", seq=1, state=Phase.GRACE.value, candidate_name="m", candidate_version="1",
        deployment="d", champion_deployment="", champion_model="", step=1, due_at=None, started_at=started,
        reason="", queued_name="", queued_version="", queued_event="", event_id="e", phase_since=started,
        attempts=0, failure=""))
    (rollout,) = Operator(policy=POLICY, ledger=world.ledger, audit=world.audit, clock=clock).status().rollouts
    assert rollout.age_seconds == 7200


def test_status_shows_comparisons_in_flight_and_candidates_awaiting_approval() -> None:
    from tests.services.test_approval import ApprovalRig

    arig = ApprovalRig()
    assert arig.deliver(arig.register("0.80")).action is PromotionAction.AWAITING_APPROVAL
    requested = arig.clock()
    arig.ledger.track_comparison("cmp-churn-3-2", {Tag.MODEL.value: f"{MODEL}:3",
                                                   Tag.COMPARED_WITH.value: f"{MODEL}:2"})  # as the promoter does
    arig.clock.advance(60)

    status = operator_for(arig).status()

    (waiting,) = status.approvals
    assert (waiting.endpoint, waiting.candidate, waiting.state) == (ENDPOINT, f"{MODEL}:1", "pending")
    assert (waiting.requested_at, waiting.expires_at) == (requested, requested + timedelta(hours=2))
    (comparison,) = status.comparisons
    assert (comparison.job, comparison.candidate, comparison.champion) == ("cmp-churn-3-2", f"{MODEL}:3", f"{MODEL}:2")
    doc = status.to_json()
    assert doc["awaiting_approval"][0]["expires_at"] == (requested + timedelta(hours=2)).isoformat()
    assert doc["comparisons"][0]["job"] == "cmp-churn-3-2"


def test_status_shows_a_comparison_entry_it_cannot_read_and_says_why(rig: Rig) -> None:
    rig.ledger.track_work(COMPARISON_WORK, "cmp-garbled", {"Tags": "[]"})  # a garbled index entry
    status = operator_for(rig).status()
    (comparison,) = status.comparisons
    assert (comparison.job, comparison.candidate, comparison.champion, comparison.since) == (
        "cmp-garbled", "", "", rig.clock())
    assert "comparison job cmp-garbled: its open-work entry cannot be read (its tags are not a JSON object)" \
        in status.notes


def test_status_shows_candidates_waiting_for_their_evaluation_data_and_a_garbled_entry(rig: Rig) -> None:
    from shared.cli.operate import render_status
    from shared.services.ledger import EVALUATION_WAIT_WORK

    rig.ledger.track_waiting(MODEL, "4", "churn-eval", "churn-eval@latest", "ev-4")  # as the promoter does
    rig.ledger.track_work(EVALUATION_WAIT_WORK, "w-garbled", {"Model": MODEL})  # no version, no asset
    status = operator_for(rig).status()
    (waiting,) = status.waiting
    assert (waiting.candidate, waiting.data, waiting.since) == (f"{MODEL}:4", "churn-eval@latest", rig.clock())
    assert "waiting candidate entry w-garbled: it cannot be read (it has no Version; it has no DataAsset)" \
        in status.notes
    assert status.to_json()["waiting_for_evaluation_data"][0]["candidate"] == f"{MODEL}:4"
    text = render_status(status)
    assert "Waiting for evaluation data" in text and f"{MODEL}:4" in text and "churn-eval@latest" in text
