"""The span attributes Evergreen's Azure Monitor alerts fire on (`infra/modules/monitoring.bicep`) are set by
the services that know them: the reconciler (`evergreen.stuck`, `evergreen.dead_letters`) and a retention run
(`evergreen.retention_actions`, `evergreen.retention_errors`). Recorded on a span of a local tracer provider.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from typing import Any

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from shared.domain.telemetry import Attr
from shared.services.reconcile import Reconciler
from shared.services.retention import RetentionIncomplete
from tests.services.conftest import FakeClock
from tests.services.test_redrive import DATA, World, event
from tests.services.test_retention import World as RetentionWorld
from tests.services.test_retention import world as retention_world  # noqa: F401 (the fixture)


@pytest.fixture
def spans() -> Iterator[Callable[[Callable[[], Any]], dict[str, Any]]]:
    """Run a call inside a recording span; returns that span's attributes."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("test")

    def run(call: Callable[[], Any]) -> dict[str, Any]:
        # a retention run with a failed action raises at its end; its span still carries what it did
        with tracer.start_as_current_span("evergreen.test"), contextlib.suppress(RetentionIncomplete):
            call()
        (span, *_) = exporter.get_finished_spans()[-1:]
        exporter.clear()
        return dict(span.attributes or {})

    yield run
    provider.shutdown()


class Flow:
    def __init__(self, stuck: int) -> None:
        self.stuck = stuck

    def reconcile(self, now: datetime) -> Sequence[object]:
        return ["redriven"] * self.stuck


def test_the_reconciler_records_stuck_work_and_what_waits_in_dead_letters(spans: Any) -> None:
    reconciler = Reconciler(flows={"ingest": Flow(2), "promotion": Flow(1)}, dead_letters=lambda: 3)
    attributes = spans(lambda: reconciler.run(run_id="r-1"))
    assert (attributes[Attr.STUCK.value], attributes[Attr.DEAD_LETTERS.value]) == (3, 3)


def test_a_failing_dead_letter_count_is_left_out_and_the_pass_still_runs(spans: Any) -> None:
    def broken() -> int:
        raise ConnectionError("storage unreachable")

    attributes = spans(lambda: Reconciler(flows={"ingest": Flow(0)}, dead_letters=broken).run(run_id="r-2"))
    assert attributes[Attr.STUCK.value] == 0 and Attr.DEAD_LETTERS.value not in attributes


def test_the_redriver_counts_dead_letters_and_poison_messages_bounded(clock: FakeClock) -> None:
    world = World(clock)
    assert world.redriver.count_waiting() == 0
    for n in range(3):
        world.letters.add(f"EVERGREEN/DATA-VERSION-REGISTERED/2026/11/27/11/{n}.json", event("x", DATA, f"e-{n}"))
    world.seal_poison.add('{"dataset": "churn"}')
    assert world.redriver.count_waiting() == 4
    assert world.redriver.count_waiting(limit=1) == 2


def test_a_retention_run_records_its_actions_and_its_errors(spans: Any,
                                                             retention_world: RetentionWorld) -> None:  # noqa: F811
    retention_world.workspace.faults.throttle(100, operation="execute", target="data:churn:1")
    attributes = spans(lambda: retention_world.runner().run(run_id="failing", dry_run=False))
    assert attributes[Attr.RETENTION_ERRORS.value] == 1 and attributes[Attr.RETENTION_ACTIONS.value] == 7
    retention_world.workspace.faults.clear()
    attributes = spans(lambda: retention_world.runner().run(run_id="retry", dry_run=False))
    assert (attributes[Attr.RETENTION_ACTIONS.value], attributes[Attr.RETENTION_ERRORS.value]) == (1, 0)
