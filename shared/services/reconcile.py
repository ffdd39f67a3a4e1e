"""One reconciler pass: ask every flow's service to re-drive its stuck work (`reconcile(now)`).

The timer `functions/reconcile.py:reconcile` (EVERGREEN_RECONCILE_SCHEDULE) and
`python -m shared.cli reconcile` run it. Each service finds its own stuck work (expired leases, lost
messages, lost events) and audits each re-drive; this only calls them, one after the other, so that one
failing flow does not stop the others, and sums up what they did in one line.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import cast

from shared.domain.records import utcnow
from shared.domain.telemetry import Attr
from shared.errors import TransientError
from shared.ports import Clock, Reconcilable
from shared.telemetry import annotate

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReconcileSummary:
    """What one pass did: re-drives per flow, flows that cannot reconcile yet, flows that failed."""

    run_id: str
    redriven: Mapping[str, int] = field(default_factory=dict)
    unsupported: tuple[str, ...] = ()
    failed: Mapping[str, str] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.redriven.values())

    @property
    def detail(self) -> str:
        """The one summary line: `ingest=1 retrain=0 promotion=2; failed: …; no reconcile: …`."""
        parts = [" ".join(f"{flow}={n}" for flow, n in self.redriven.items()) or "no flow reconciled"]
        if self.failed:
            parts.append("failed: " + ", ".join(f"{flow} ({why})" for flow, why in self.failed.items()))
        if self.unsupported:
            parts.append("no reconcile: " + ", ".join(self.unsupported))
        return "; ".join(parts)


class ReconcileIncomplete(TransientError):
    """A flow's reconcile failed; the others ran. The next timer tick tries again."""

    def __init__(self, summary: ReconcileSummary) -> None:
        self.summary = summary
        super().__init__(f"reconcile {summary.run_id}: {summary.detail}")


class Reconciler:
    """Calls `reconcile(now)` of every flow's service that has it (`shared.ports.Reconcilable`)."""

    def __init__(self, *, flows: Mapping[str, object], clock: Clock = utcnow,
                 dead_letters: Callable[[], int] | None = None) -> None:
        """`flows`: flow name -> its service (Ingestor, Retrainer, Promoter); one without `reconcile` is reported.
        `dead_letters`: how many dead letters and poison messages wait for an operator (bounded count), recorded
        on the pass's span as `evergreen.dead_letters` (the dead-letter alert's attribute)."""
        self._flows = flows
        self._clock = clock
        self._dead_letters = dead_letters

    def _waiting(self, run_id: str) -> int | None:
        """The dead letters and poison messages waiting; None (not recorded) without a counter or if it failed."""
        if self._dead_letters is None:
            return None
        try:
            return self._dead_letters()
        except Exception as exc:  # a count for the alert must not fail the pass; the next pass counts again
            log.warning("reconcile run=%s could not count dead letters: %s: %s", run_id, type(exc).__name__, exc)
            return None

    def run(self, *, run_id: str, now: datetime | None = None) -> ReconcileSummary:
        """One pass over every flow; raises ReconcileIncomplete (carrying the summary) if any flow failed."""
        now = now or self._clock()
        redriven: dict[str, int] = {}
        failed: dict[str, str] = {}
        unsupported: list[str] = []
        for flow, service in self._flows.items():
            reconcile = _reconcile_of(service)
            if reconcile is None:
                unsupported.append(flow)
                continue
            try:
                redriven[flow] = len(reconcile.reconcile(now))
            except Exception as exc:  # one flow's failure must not stop the others; reported below
                log.exception("reconcile run=%s flow=%s outcome=failed detail=%s: %s", run_id, flow,
                              type(exc).__name__, exc)
                failed[flow] = f"{type(exc).__name__}: {exc}"
        summary = ReconcileSummary(run_id, redriven, tuple(unsupported), failed)
        annotate({Attr.STUCK: summary.total, Attr.DEAD_LETTERS: self._waiting(run_id)})  # the alerts' attributes
        if failed:
            raise ReconcileIncomplete(summary)
        return summary


def _reconcile_of(service: object) -> Reconcilable | None:
    """The service as a `Reconcilable` if it has a callable `reconcile` (the flows gain it one by one)."""
    return cast(Reconcilable, service) if callable(getattr(service, "reconcile", None)) else None
