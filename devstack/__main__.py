"""`python -m devstack up|down|status|demo|test|env|bench|chaos` — the one entry point of the local stack.

The Make targets are thin aliases of these commands, so a user without make (on Windows) runs the
same thing. Run with any Python 3.11: the first step creates `.venv` (or refreshes it when the
requirements changed) and re-runs itself inside it.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
VENV = REPO_ROOT / ".venv"
VENV_PYTHON = VENV / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
REQUIREMENTS = (REPO_ROOT / "requirements.txt", REPO_ROOT / "requirements-dev.txt")
STATE_DIR = REPO_ROOT / ".devstack"


def _requirements_hash() -> str:
    h = hashlib.sha256()
    for path in REQUIREMENTS:
        h.update(path.read_bytes())
    return h.hexdigest()


def ensure_venv(argv: list[str]) -> None:
    """Create or refresh .venv from the pinned requirements, then re-exec inside it."""
    stamp = VENV / ".evergreen-requirements"
    wanted = _requirements_hash()
    if not VENV_PYTHON.exists():
        print(f"creating {VENV} (Python {sys.version.split()[0]})", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    if not stamp.exists() or stamp.read_text().strip() != wanted:
        print("installing Python dependencies into .venv (requirements-dev.txt)", flush=True)
        subprocess.run([str(VENV_PYTHON), "-m", "pip", "install", "-q", "--upgrade", "pip"], check=True)
        subprocess.run([str(VENV_PYTHON), "-m", "pip", "install", "-q", "-r", str(REQUIREMENTS[1])], check=True)
        stamp.write_text(wanted)
    if Path(sys.prefix).resolve() != VENV.resolve():
        os.execv(str(VENV_PYTHON), [str(VENV_PYTHON), "-m", "devstack", *argv])


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="python -m devstack", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("up", help="start the local stack in the background; writes .devstack/env")
    sub.add_parser("down", help="stop the stack started by `up`")
    sub.add_parser("status", help="show which pieces of the stack are running")
    sub.add_parser("env", help="print .devstack/env as shell exports")
    demo = sub.add_parser("demo", help="the end-to-end demo on the local stack (starts and stops it)")
    demo.add_argument("--keep", action="store_true", help="leave the stack running afterwards")
    bench = sub.add_parser("bench", help="run the benchmarks in bench/ (they print numbers; bench/results/latest.json)")
    bench.add_argument("--quick", action="store_true", help="reduced sizes (about 2 minutes in all)")
    bench.add_argument("--only", help="comma-separated benchmark modules, e.g. bench_burst,bench_overhead")
    bench.add_argument("--results", type=Path, help="where to write the results (default bench/results/latest.json)")
    chaos = sub.add_parser("chaos", help="the fault-injection harness (tests/chaos) with a larger random budget")
    chaos.add_argument("--examples", type=int, default=200, help="random multi-fault schedules per flow")
    test = sub.add_parser("test", help="run every test (pytest); extra arguments go to pytest")
    test.add_argument("pytest_args", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)

    ensure_venv(argv)
    from devstack import cli

    return int(cli.run(args, STATE_DIR))


if __name__ == "__main__":
    raise SystemExit(main())
