"""Fault injection at every port call: the proxy the chaos harness (`tests/chaos`) wraps the ports in.

One `FaultInjector` numbers every port call of a run globally (k = 0, 1, 2, … in call order, whatever
port it lands on), so one schedule ("lose the reply of call 17") can hit any call of any flow. At a
scheduled call k it does one of three things:

- `FAIL`: raise the port's transient error before the call takes effect (a 503, a timeout);
- `LOST_REPLY`: let the call take effect, then raise the same error (the reply was lost);
- `CRASH`: let the call take effect, then raise `ProcessCrash`, a `BaseException` that no service
  handler catches. The process is dead from then on: every later call through any proxy of the same
  injector raises `ProcessCrash` without an index or effect (threads of a dead process do nothing)
  until the platform calls `restart()` and builds new services.

Every call is logged (`calls`) with whether it took effect and what it returned, so the harness can
count side effects. A call that returns an iterator is drained at the call (the memory adapters
snapshot their state there too), so the effect and the fault happen at one point in time.

Test infrastructure for the in-memory adapters: the deployed app never imports it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, TypeVar, cast

from shared.errors import TransientError

T = TypeVar("T")

ErrorFactory = Callable[[str], BaseException]


class FaultKind(StrEnum):
    FAIL = "fail"
    LOST_REPLY = "lost_reply"
    CRASH = "crash"


class ProcessCrash(BaseException):  # a crash, not an error: no `except Exception` may swallow it
    """The process died at an injected point; only the platform (the harness) catches it, and restarts."""


@dataclass(frozen=True)
class Fault:
    """One scheduled fault: what happens at global port call `at`."""

    at: int
    kind: FaultKind

    def __str__(self) -> str:
        return f"{self.kind.value}@{self.at}"


@dataclass(frozen=True)
class Call:
    """One port call as it happened: its index, where it went, and whether it took effect."""

    index: int
    port: str
    method: str
    args: tuple[Any, ...]
    kwargs: Mapping[str, Any]
    took_effect: bool
    result: Any = None
    error: str = ""
    fault: FaultKind | None = None


def default_error(what: str) -> BaseException:
    return TransientError(what)


def port_methods(protocol: type) -> frozenset[str]:
    """The public methods a Protocol declares (what a proxy of that port intercepts and numbers)."""
    return frozenset(name for name, value in vars(protocol).items() if not name.startswith("_") and callable(value))


class FaultInjector:
    """Numbers the port calls of one run and injects the scheduled faults (thread-safe)."""

    def __init__(self, faults: Iterable[Fault] = ()) -> None:
        self._faults: dict[int, FaultKind] = {}
        for fault in faults:
            self._faults.setdefault(fault.at, fault.kind)
        self._lock = threading.Lock()
        self._next = 0
        self._dead = False
        self.calls: list[Call] = []

    @property
    def count(self) -> int:
        """How many port calls were numbered so far."""
        with self._lock:
            return self._next

    @property
    def dead(self) -> bool:
        with self._lock:
            return self._dead

    def restart(self) -> None:
        """The platform started a new process: calls go through again."""
        with self._lock:
            self._dead = False

    def wrap(self, port: T, name: str, methods: Iterable[str], *, error: ErrorFactory = default_error) -> T:
        """A proxy of `port` that numbers (and may fault) the calls of `methods`; other attributes pass through.

        `error` makes the port's own transient error (what its Azure adapter raises for a 503 or a timeout).
        """
        return cast(T, _Proxy(port, name, frozenset(methods), error, self))

    def call(self, port: str, target: Callable[..., Any], method: str, args: tuple[Any, ...],
             kwargs: dict[str, Any], error: ErrorFactory) -> Any:
        """Make one numbered call of `target`, injecting the fault scheduled at its index (see module docstring).

        Raises the port's error (FAIL, LOST_REPLY), `ProcessCrash` (CRASH, or any call of a dead process),
        or whatever the call itself raised.
        """
        with self._lock:
            if self._dead:
                raise ProcessCrash(f"{port}.{method} called by a process that has died")
            index = self._next
            self._next += 1
            fault = self._faults.get(index)
        what = f"call {index} {port}.{method}"
        if fault is FaultKind.FAIL:
            self._log(Call(index, port, method, args, kwargs, took_effect=False, error="injected", fault=fault))
            raise error(f"injected fault: {what} failed")
        try:
            result = target(*args, **kwargs)
            streamed = isinstance(result, Iterator)
            if streamed:
                result = list(result)
        except Exception as exc:
            self._log(Call(index, port, method, args, kwargs, took_effect=False, error=f"{type(exc).__name__}: {exc}"))
            raise
        self._log(Call(index, port, method, args, kwargs, took_effect=True, result=result, fault=fault))
        if fault is FaultKind.LOST_REPLY:
            raise error(f"injected fault: the reply of {what} was lost")
        if fault is FaultKind.CRASH:
            with self._lock:
                self._dead = True
            raise ProcessCrash(f"injected fault: the process died at {what}")
        return iter(result) if streamed else result

    def _log(self, call: Call) -> None:
        with self._lock:
            self.calls.append(call)


class _Proxy:
    def __init__(self, port: Any, name: str, methods: frozenset[str], error: ErrorFactory,
                 injector: FaultInjector) -> None:
        self._port = port
        self._name = name
        self._methods = methods
        self._error = error
        self._injector = injector

    def __getattr__(self, attribute: str) -> Any:
        value = getattr(self._port, attribute)
        if attribute not in self._methods or not callable(value):
            return value

        def numbered(*args: Any, **kwargs: Any) -> Any:
            return self._injector.call(self._name, value, attribute, args, kwargs, self._error)

        return numbered

    def __repr__(self) -> str:
        return f"<faulty {self._name}: {self._port!r}>"
