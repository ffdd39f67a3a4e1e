"""Request faults: make a fraction of Azure ML calls answer 429, 5xx, or hang past the client's timeout.

One mechanism for retry tests and chaos runs. A rule matches calls by method and a path substring and
hits each matching call with probability `fraction` (drawn from its own `random.Random(seed)`, so one
seed and one sequence of calls always give the same faults), at most `times` times (then it is removed;
no `times` means until cleared). Admin routes (Bearer token required, like every route):

- `POST /_emulator/request-faults` `{"fault": "throttle"|"error"|"hang", "method": "PUT"|"*",
  "pathContains": "/data/", "fraction": 0.2, "seed": 7, "times": 3, "retryAfter": 1, "status": 503,
  "hangSeconds": 30, "then": "process"|"abort"}`; `GET` lists the rules (with how often each fired),
  `DELETE` clears them.
- `throttle` answers 429 with `Retry-After` (ARM's TooManyRequests); `error` answers `status` (500 by
  default) with an ARM error body; `hang` waits `hangSeconds` and then either processes the request
  (`process`: the change happens but the client has given up, a lost reply) or answers 500 without
  doing anything (`abort`).
- `/_emulator/throttle` (GET, POST `{"method", "pathContains", "times", "retryAfter"}`, DELETE) is the
  same mechanism restricted to `throttle` rules (kept for the retention tests).

Emulator-only routes (`/_emulator/...`) and the token endpoint are never faulted.
"""

from __future__ import annotations

import random
import secrets
import threading
import weakref
from dataclasses import dataclass
from typing import Any

from devstack.aml.emulator import Emulator
from devstack.aml.errors import ArmError, bad_request
from devstack.aml.web import Call, Reply, Router

KIND = "emulatorRequestFault"
FAULTS = ("throttle", "error", "hang")
THENS = ("process", "abort")
EXEMPT_PREFIX = "/_emulator/"

_rngs: weakref.WeakKeyDictionary[Emulator, dict[str, random.Random]] = weakref.WeakKeyDictionary()
_rng_lock = threading.Lock()


@dataclass(frozen=True)
class Injection:
    """What to do to one call."""

    fault: str
    rule_id: str
    status: int = 500
    retry_after: int = 1
    hang_seconds: float = 0.0
    then: str = "process"

    def error(self) -> ArmError:
        """The ARM error this call answers with (for `hang`, the answer after an `abort`)."""
        if self.fault == "throttle":
            return ArmError(429, "TooManyRequests", "The request is being throttled. Retry after the given time.",
                            headers={"Retry-After": str(self.retry_after)})
        if self.fault == "hang":
            return ArmError(500, "InternalServerError", "The request timed out in the service (injected hang).")
        return ArmError(self.status, "InternalServerError",
                        f"The service failed to process the request (injected {self.status}).")


def register(r: Router) -> None:
    """`/_emulator/request-faults` and its throttle-only view `/_emulator/throttle`."""
    r.add("GET", "/_emulator/request-faults", list_faults)
    r.add("POST", "/_emulator/request-faults", add_fault)
    r.add("DELETE", "/_emulator/request-faults", clear_faults)
    r.add("GET", "/_emulator/throttle", list_throttles)
    r.add("POST", "/_emulator/throttle", add_throttle)
    r.add("DELETE", "/_emulator/throttle", clear_throttles)


def _rng(emu: Emulator, rule: dict[str, Any]) -> random.Random:
    with _rng_lock:
        per_emulator = _rngs.setdefault(emu, {})
        if rule["id"] not in per_emulator:
            per_emulator[rule["id"]] = random.Random(int(rule.get("seed", 0)))
        return per_emulator[rule["id"]]


def _matches(rule: dict[str, Any], method: str, path: str) -> bool:
    return rule["method"] in ("*", method) and str(rule["pathContains"]).lower() in path.lower()


def decide(emu: Emulator, method: str, path: str) -> Injection | None:
    """The fault for this call, if a rule hits it (and count the hit); None for a normal answer."""
    if path.lower().startswith(EXEMPT_PREFIX):
        return None
    with emu.store.read() as tx:
        rules = [row.body for row in tx.rows(KIND, newest_first=False)]
    for rule in rules:
        if not _matches(rule, method, path) or _rng(emu, rule).random() >= float(rule.get("fraction", 1.0)):
            continue
        if not _count_hit(emu, rule["id"]):
            continue  # used up by a concurrent call
        return Injection(
            fault=rule["fault"], rule_id=rule["id"], status=int(rule.get("status", 500)),
            retry_after=int(rule.get("retryAfter", 1)), hang_seconds=float(rule.get("hangSeconds", 0)),
            then=str(rule.get("then", "process")),
        )
    return None


def _count_hit(emu: Emulator, rule_id: str) -> bool:
    """Record one hit; False when the rule is gone (its `times` were used up meanwhile)."""
    with emu.store.write() as tx:
        current = tx.get(KIND, rule_id)
        if current is None:
            return False
        body = {**current.body, "fired": int(current.body.get("fired", 0)) + 1}
        times = body.get("times")
        if times is not None:
            body["times"] = int(times) - 1
            if body["times"] <= 0:
                tx.delete(KIND, rule_id)
                return True
        tx.put(KIND, rule_id, body)
    return True


# ---------------------------------------------------------------- admin routes


def _number(body: dict[str, Any], key: str, default: float, *, low: float, high: float | None = None) -> float:
    value = body.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or value < low or (
        high is not None and value > high
    ):
        bounds = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise bad_request(f"'{key}' must be a number {bounds}.")
    return float(value)


def _int(body: dict[str, Any], key: str, default: int | None, *, low: int) -> int | None:
    value = body.get(key, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise bad_request(f"'{key}' must be a whole number of at least {low}.")
    return value


def parse_rule(body: Any, *, default_times: int | None = None) -> dict[str, Any]:
    """Validate an admin body into a stored rule; raises a 400 ArmError naming the bad field."""
    if not isinstance(body, dict):
        raise bad_request("The body must be a JSON object.")
    fault = str(body.get("fault", "throttle")).lower()
    if fault not in FAULTS:
        raise bad_request(f"'fault' must be one of {', '.join(FAULTS)}.")
    then = str(body.get("then", "process")).lower()
    if then not in THENS:
        raise bad_request(f"'then' must be one of {', '.join(THENS)}.")
    path = body.get("pathContains", "")
    if not isinstance(path, str):
        raise bad_request("'pathContains' must be a string.")
    status = _int(body, "status", 500, low=500)
    if status is None or status > 599:
        raise bad_request("'status' must be a 5xx status.")
    return {
        "id": secrets.token_hex(8),
        "fault": fault,
        "method": str(body.get("method") or "*").upper(),
        "pathContains": path,
        "fraction": _number(body, "fraction", 1.0, low=0.0, high=1.0),
        "seed": _int(body, "seed", 0, low=0),
        "times": _int(body, "times", default_times, low=1),
        "retryAfter": _int(body, "retryAfter", 1, low=0),
        "status": status,
        "hangSeconds": _number(body, "hangSeconds", 30.0, low=0.0),
        "then": then,
        "fired": 0,
    }


def _store(emu: Emulator, rule: dict[str, Any]) -> Reply:
    with emu.store.write() as tx:
        tx.put(KIND, rule["id"], rule)
    return Reply(201, rule)


def _list(emu: Emulator, only: str | None) -> Reply:
    with emu.store.read() as tx:
        rules = [r.body for r in tx.rows(KIND, newest_first=False)]
    return Reply(200, {"value": [r for r in rules if only is None or r["fault"] == only]})


def _clear(emu: Emulator, only: str | None) -> Reply:
    with emu.store.write() as tx:
        doomed = [r.name for r in tx.rows(KIND, newest_first=False) if only is None or r.body["fault"] == only]
        for name in doomed:
            tx.delete(KIND, name)
    with _rng_lock:
        for name in doomed:
            _rngs.get(emu, {}).pop(name, None)
    return Reply(200, {"removed": len(doomed)})


def list_faults(emu: Emulator, call: Call) -> Reply:
    return _list(emu, None)


def add_fault(emu: Emulator, call: Call) -> Reply:
    return _store(emu, parse_rule(call.body))


def clear_faults(emu: Emulator, call: Call) -> Reply:
    return _clear(emu, None)


def list_throttles(emu: Emulator, call: Call) -> Reply:
    return _list(emu, "throttle")


def add_throttle(emu: Emulator, call: Call) -> Reply:
    """`{"method": "PUT"|"*", "pathContains": "/data/x", "times": 2, "retryAfter": 1}`: next matches get 429."""
    body = call.body if isinstance(call.body, dict) else {}
    return _store(emu, parse_rule({**body, "fault": "throttle"}, default_times=1))


def clear_throttles(emu: Emulator, call: Call) -> Reply:
    return _clear(emu, "throttle")
