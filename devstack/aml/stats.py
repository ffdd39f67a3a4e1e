"""Request counters and a compute hold: what benchmarks read and set at the emulator.

- `GET /_emulator/stats`: the Azure ML calls this process has answered since it started (or since
  the last `DELETE`), in all, by method and by resource kind (`data`, `jobs`, `codes`, …: the
  path segment after the workspace, or after `/providers/…/` for other ARM routes), e.g.
  `{"total": 12, "byMethod": {"GET": 8, "PUT": 4}, "byKind": {"data": 4, "jobs": 2, …}}`.
  Emulator-only routes (`/_emulator/…`), the token endpoint and `/discovery` are not counted.
- `DELETE /_emulator/stats`: start counting again from zero.
- `POST /_emulator/compute` `{"hold": true}`: jobs are still accepted, named and stored as Azure ML
  would, but none is run: they stay queued. A benchmark that counts submissions (thousands of
  jobs) then does not spend the machine's CPU running them. `{"hold": false}` runs new ones again
  (held ones stay queued); `GET` shows the flag.

Counts live in memory (one emulator process); they are not part of the workspace's state.
"""

from __future__ import annotations

import re
import threading
import weakref
from collections import Counter
from dataclasses import dataclass, field

from devstack.aml.emulator import Emulator
from devstack.aml.errors import bad_request
from devstack.aml.web import Call, Reply, Router

_IN_WORKSPACE = re.compile(r"/workspaces/[^/]+/([^/]+)", re.IGNORECASE)
_IN_PROVIDER = re.compile(r"/providers/[^/]+/([^/]+)", re.IGNORECASE)
_UNCOUNTED = ("/_emulator/", "/msi/token", "/discovery")


@dataclass
class _Counts:
    lock: threading.Lock = field(default_factory=threading.Lock)
    by_method: Counter[str] = field(default_factory=Counter)
    by_kind: Counter[str] = field(default_factory=Counter)
    hold: bool = False


_state: weakref.WeakKeyDictionary[Emulator, _Counts] = weakref.WeakKeyDictionary()
_state_lock = threading.Lock()


def _counts(emu: Emulator) -> _Counts:
    with _state_lock:
        return _state.setdefault(emu, _Counts())


def register(r: Router) -> None:
    """`/_emulator/stats` (GET, DELETE) and `/_emulator/compute` (GET, POST)."""
    r.add("GET", "/_emulator/stats", get_stats)
    r.add("DELETE", "/_emulator/stats", reset_stats)
    r.add("GET", "/_emulator/compute", get_compute)
    r.add("POST", "/_emulator/compute", set_compute)


def kind_of(path: str) -> str:
    """The resource kind a path names (`data`, `jobs`, …), `other` when it names none."""
    found = _IN_WORKSPACE.search(path) or _IN_PROVIDER.search(path)
    return found.group(1).lower() if found else "other"


def count(emu: Emulator, method: str, path: str) -> None:
    """Count one answered Azure ML call (emulator-only routes are not counted)."""
    if path.lower().startswith(_UNCOUNTED):
        return
    counts = _counts(emu)
    with counts.lock:
        counts.by_method[method.upper()] += 1
        counts.by_kind[kind_of(path)] += 1


def held(emu: Emulator) -> bool:
    """Whether submitted jobs are to stay queued instead of running."""
    return _counts(emu).hold


def get_stats(emu: Emulator, call: Call) -> Reply:
    counts = _counts(emu)
    with counts.lock:
        return Reply(200, {"total": sum(counts.by_method.values()), "byMethod": dict(counts.by_method),
                           "byKind": dict(counts.by_kind)})


def reset_stats(emu: Emulator, call: Call) -> Reply:
    counts = _counts(emu)
    with counts.lock:
        counts.by_method.clear()
        counts.by_kind.clear()
    return Reply(204, None)


def get_compute(emu: Emulator, call: Call) -> Reply:
    return Reply(200, {"hold": held(emu)})


def set_compute(emu: Emulator, call: Call) -> Reply:
    """Raises a 400 ArmError when the body has no boolean `hold`."""
    hold = call.body.get("hold") if isinstance(call.body, dict) else None
    if not isinstance(hold, bool):
        raise bad_request('POST /_emulator/compute takes {"hold": true|false}')
    _counts(emu).hold = hold
    return Reply(200, {"hold": hold})
