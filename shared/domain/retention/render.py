"""The dry run's table: what a plan would do, then what it spared and why (plain text, no I/O)."""

from __future__ import annotations

from collections.abc import Sequence

from shared.domain.retention.planner import RetentionPlan


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(c) for c in col) for col in zip(header, *rows, strict=True)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()

    return [line(header), line(["-" * w for w in widths]), *(line(r) for r in rows)]


def render_plan_table(plan: RetentionPlan) -> str:
    """The dry run's output: what would be done (kind, target, reason, rule), then what was spared and why."""
    out = [f"Retention plan at {plan.now.isoformat()}: {len(plan.actions)} action(s)"]
    if plan.actions:
        rows = [
            (a.kind.value + (f"->{a.tier.value}" if a.tier else ""), str(a.target), a.reason, a.rule)
            for a in plan.actions
        ]
        out += _table(("KIND", "TARGET", "REASON", "RULE"), rows)
    else:
        out.append("Nothing to retire.")
    if plan.suspended:
        out.append("")
        out.append(f"Suspended (fail closed): {len(plan.suspended)} rule(s)")
        out += [f"  {s}" for s in plan.suspended]
    out.append("")
    out.append(f"Protected: {len(plan.protected)} asset(s) a rule selected but retention spared")
    if plan.protected:
        out += _table(("TARGET", "WHY"), [(str(p.target), p.reason) for p in plan.protected])
    return "\n".join(out) + "\n"
