"""Render `bench/results/latest.json` as the README's markdown table (the Performance section).

    python -m bench.readme_table [path/to/latest.json]

Prints the machine line, one row per benchmark (its ratio, goal, whether this run met it, its notes),
then each benchmark's figures. Every number comes from the file; nothing is typed by hand.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from bench.report import RESULTS_DIR


def _cell(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def render(doc: dict[str, Any]) -> str:
    """The markdown: a line naming the run (commit, machine, quick or full), then the table."""
    machine = doc.get("machine", {})
    lines = [f"Run of commit `{doc.get('commit', '?')}` at {doc.get('at', '?')} "
             f"({'quick' if doc.get('quick') else 'full'} sizes) on {machine.get('cpus', '?')} CPU(s), "
             f"Python {machine.get('python', '?')}, {machine.get('platform', '?')}.",
             "",
             "| benchmark | ratio | what the ratio is | goal | met | notes |",
             "|---|---:|---|---|---|---|"]
    for b in doc.get("benchmarks", []):
        ratio = "-" if b.get("ratio") is None else f"{b['ratio']:,.3g}"
        met = "-" if b.get("met") is None else ("yes" if b["met"] else "**no**")
        lines.append(f"| {_cell(b['name'])} | {ratio} | {_cell(b.get('ratio_name', ''))} | {_cell(b.get('goal', ''))}"
                     f" | {met} | {_cell(b.get('notes', ''))} |")
    figured = [b for b in doc.get("benchmarks", []) if b.get("figures")]
    if figured:
        lines += ["", "Figures behind the ratios:", ""]
        lines += [f"- **{b['name']}**: " + ", ".join(f"{k} {v}" for k, v in b["figures"].items()) for b in figured]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    path = Path(args[0]) if args else RESULTS_DIR / "latest.json"
    print(render(json.loads(path.read_text(encoding="utf-8"))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
