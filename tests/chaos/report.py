"""The tally the chaos tests keep, and the summary line `pytest` and `python -m devstack chaos` print.

Per flow: schedules run, schedules converged, and the first few that did not (flow, schedule, what
differed from the fault-free end state). A schedule is counted once, however often hypothesis
replays it while shrinking.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

SHOWN = 3  # non-converging schedules listed per flow in the summary (the failing test lists them all)


@dataclass
class FlowTally:
    schedules: dict[str, bool] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)

    @property
    def run(self) -> int:
        return len(self.schedules)

    @property
    def converged(self) -> int:
        return sum(self.schedules.values())


_LOCK = threading.Lock()
TALLY: dict[str, FlowTally] = {}


def record(flow: str, schedule: str, problems: list[str]) -> None:
    """Count one schedule of `flow`; `problems` empty means it converged."""
    with _LOCK:
        tally = TALLY.setdefault(flow, FlowTally())
        if schedule in tally.schedules:
            return
        tally.schedules[schedule] = not problems
        if problems:
            tally.failures.append(f"{schedule}: {problems[0]}" + (f" (+{len(problems) - 1} more)"
                                                                  if len(problems) > 1 else ""))


def _percent(converged: int, run: int) -> str:
    return f"{100.0 * converged / run:.1f} %" if run else "n/a"


def summary_lines() -> list[str]:
    """One line per flow, then the totals: `chaos: 8 flows, 1,234 schedules, 1,234 converged (100.0 %)`."""
    with _LOCK:
        tallies = dict(TALLY)
    lines = []
    for flow, tally in tallies.items():
        lines.append(f"  {flow:<48} {tally.run:>6,} schedules {tally.converged:>6,} converged "
                     f"({_percent(tally.converged, tally.run)})")
        lines += [f"      not converged: {failure}" for failure in tally.failures[:SHOWN]]
        if len(tally.failures) > SHOWN:
            lines.append(f"      … and {len(tally.failures) - SHOWN} more")
    run = sum(t.run for t in tallies.values())
    converged = sum(t.converged for t in tallies.values())
    flows = sum(1 for name in tallies if not name.startswith("stall: "))
    stalls = len(tallies) - flows
    lines.append(f"chaos: {flows} flows" + (f" + {stalls} stall scenarios" if stalls else "")
                 + f", {run:,} schedules, {converged:,} converged ({_percent(converged, run)})")
    return lines
