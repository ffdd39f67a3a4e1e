"""The trace context travels with the work on the in-memory adapters: queue messages, the job's tags, the
ledger rows, and what the reconciler re-drives from them.

No tracing SDK is configured here (as in every services test): a handler span then records nothing but
passes the context it continues on unchanged, so what the services send must carry exactly that context.
"""

from __future__ import annotations

from datetime import timedelta

import pytest

from shared import telemetry
from shared.domain.ingest import REDRIVE_GRACE
from shared.domain.records import CLAIM_LEASE
from shared.domain.telemetry import TRACEPARENT_TAG
from shared.domain.vocabulary import IngestAction, Phase, PromotionAction, RetrainAction
from shared.services.promotion import STALL_FLOOR
from tests.services.conftest import FakeClock
from tests.services.test_ingest import World as IngestWorld
from tests.services.test_promotion import ENDPOINT, Rig, drop_next_tick
from tests.services.test_retrain import World, event

UPLOAD = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
OTHER = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def test_a_rollout_continues_its_promotions_trace_through_every_step_and_a_redrive() -> None:
    rig = Rig()
    with telemetry.handler_span("on_model_registered", traceparent=UPLOAD):
        assert rig.deliver(rig.register("0.80")).action is PromotionAction.STARTED
    started = rig.ledger.get_rollout(ENDPOINT)
    assert started is not None and started.traceparent == UPLOAD  # the row keeps the trace it was started in
    for _ in range(3):
        message = rig.next_due()
        assert message is not None and message.traceparent == UPLOAD
        with telemetry.handler_span("advance_rollout", traceparent=message.traceparent):
            rig.promoter.on_tick(message.item, message.dequeue_count)
        rig.queue.complete(message)
    drop_next_tick(rig)  # poisoned: only the reconciler can move the rollout on
    rig.clock.advance(STALL_FLOOR.total_seconds() + 1)
    with telemetry.handler_span("reconcile", traceparent=OTHER):  # the timer's own trace
        assert len(rig.promoter.reconcile(rig.clock())) == 1
    resent = rig.next_due()
    assert resent is not None and resent.traceparent == UPLOAD  # the re-drive continues the rollout's trace
    rig.queue.complete(resent)
    with telemetry.handler_span("advance_rollout", traceparent=resent.traceparent):
        rig.promoter.on_tick(resent.item, resent.dequeue_count)
    assert rig.run().phase is Phase.SUCCEEDED


def test_the_retraining_job_and_the_state_row_carry_the_events_trace(clock: FakeClock) -> None:
    world = World(clock)
    retrainer = world.instance()
    with telemetry.handler_span("on_data_version_registered", traceparent=UPLOAD):
        assert retrainer.on_data_version_registered(event("1"), "e1").action is RetrainAction.SUBMITTED
    (job,) = world.jobs.jobs()
    assert job.submission.tags[TRACEPARENT_TAG] == UPLOAD  # the register step copies it onto the model
    state = world.ledger.get_retrain_state("churn")
    assert state is not None and state.traceparent == UPLOAD


def test_without_a_trace_the_job_gets_no_trace_tag(clock: FakeClock) -> None:
    world = World(clock)
    assert world.instance().on_data_version_registered(event("1"), "e1").action is RetrainAction.SUBMITTED
    (job,) = world.jobs.jobs()
    assert TRACEPARENT_TAG not in job.submission.tags


def test_a_coalesced_version_keeps_its_own_trace_on_the_state_row(clock: FakeClock) -> None:
    world = World(clock)
    retrainer = world.instance()
    with telemetry.handler_span("on_data_version_registered", traceparent=OTHER):
        retrainer.on_data_version_registered(event("1"), "e1")
    with telemetry.handler_span("on_data_version_registered", traceparent=UPLOAD):
        outcome = retrainer.on_data_version_registered(event("2"), "e2")
    assert outcome.action is RetrainAction.COALESCED  # run 1 is active: version 2 waits for it
    state = world.ledger.get_retrain_state("churn")
    assert state is not None and state.pending_version == "2" and state.traceparent == UPLOAD
    world.jobs.set_job_status(state.active_job or "", "Completed")  # its run event is lost
    clock.advance(3600)
    with telemetry.handler_span("reconcile", traceparent=OTHER):  # the timer's own trace
        (redriven,) = retrainer.reconcile(clock())
    assert redriven.action is RetrainAction.REDRIVEN
    follow_up = next(j for j in world.jobs.jobs() if j.submission.tags.get("evergreen.data_version") == "2")
    assert follow_up.submission.tags[TRACEPARENT_TAG] == UPLOAD  # the follow-up continues version 2's trace


def test_an_announcement_the_reconciler_finishes_continues_the_uploads_trace(clock: FakeClock) -> None:
    world = IngestWorld(clock)
    world.publisher.failures = 1  # registered, then Event Grid failed: the event never went out
    with pytest.raises(ConnectionError), telemetry.handler_span("on_blob_created", traceparent=UPLOAD):
        world.ingestor.on_blob_created(world.upload("reference/r.csv", b"r\n"))
    clock.advance(CLAIM_LEASE.total_seconds() + 1)
    with telemetry.handler_span("reconcile", traceparent=OTHER):
        (outcome,) = world.ingestor.reconcile(clock())
    assert outcome.action is IngestAction.REGISTERED
    (event,) = world.publisher.events
    assert event.traceparent == UPLOAD


def test_a_batch_sealed_by_the_reconciler_announces_in_the_trace_it_was_opened_in(clock: FakeClock) -> None:
    world = IngestWorld(clock)
    with telemetry.handler_span("on_blob_created", traceparent=UPLOAD):
        world.ingestor.on_blob_created(world.upload("churn/t1/a.csv", b"a\n"))
    (request,) = world.queue.due(clock() + timedelta(hours=1))  # the quiet period's request carries the trace,
    assert request.traceparent == UPLOAD
    world.queue.complete(request)  # and is lost
    batch = world.ledger.get_batch("churn", "churn/t1/")
    assert batch is not None and batch.traceparent == UPLOAD
    clock.advance(60 + REDRIVE_GRACE.total_seconds())
    with telemetry.handler_span("reconcile", traceparent=OTHER):
        (outcome,) = world.ingestor.reconcile(clock())
    assert outcome.action is IngestAction.SEALED
    (event,) = world.publisher.events
    assert event.traceparent == UPLOAD
