"""Run function invocations off the server's event loop, log them like the host, enforce timeouts.

Sync functions run in a thread pool (the worker's `PYTHON_THREADPOOL_THREAD_COUNT`); `async def`
functions run on one dedicated event loop thread, as the worker runs them on its own loop. The
server loop only awaits, so the host keeps answering while a function runs long.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import logging
import os
import threading
import time
import traceback
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from devstack.host.bindings import Binder, InvocationContext, TriggerData
from devstack.host.indexing import FunctionInfo

log = logging.getLogger("Host.Function")

current_invocation: contextvars.ContextVar[tuple[str, str] | None] = contextvars.ContextVar(
    "current_invocation", default=None
)


def default_thread_count() -> int:
    """The Python worker's default pool size (3.9+: min(32, cpus + 4)) unless the setting says otherwise."""
    configured = os.environ.get("PYTHON_THREADPOOL_THREAD_COUNT", "").strip()
    if configured.isdigit() and int(configured) > 0:
        return int(configured)
    return min(32, (os.cpu_count() or 1) + 4)


class InvocationContextFilter(logging.Filter):
    """Tags log records with the function and invocation they were emitted from."""

    def filter(self, record: logging.LogRecord) -> bool:
        current = current_invocation.get()
        record.invocation = f" [Functions.{current[0]} {current[1]}]" if current else ""
        return True


@dataclass(frozen=True)
class InvocationResult:
    invocation_id: str
    succeeded: bool
    value: Any = None
    error: BaseException | None = None
    duration_ms: float = 0.0


class FunctionTimeoutError(TimeoutError):
    """The invocation ran past host.json's functionTimeout."""


class Invoker:
    def __init__(
        self, binder: Binder, *, app_dir: str, threads: int, function_timeout: timedelta | None
    ) -> None:
        self._binder = binder
        self._app_dir = app_dir
        self._timeout = function_timeout.total_seconds() if function_timeout else None
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=threads, thread_name_prefix="function")
        self._loop = asyncio.new_event_loop()
        self._loop_thread = threading.Thread(target=self._loop.run_forever, name="function-loop", daemon=True)
        self._loop_thread.start()
        self._running = 0
        self._idle = threading.Condition()

    @property
    def running(self) -> int:
        return self._running

    async def invoke(self, fn: FunctionInfo, trigger: TriggerData, reason: str) -> InvocationResult:
        """Run one invocation to completion (or timeout) and log it; never raises for function errors."""
        invocation_id = str(uuid.uuid4())
        context = InvocationContext(
            invocation_id=invocation_id, function_name=fn.name, function_directory=self._app_dir
        )
        log.info("Executing 'Functions.%s' (Reason='%s', Id=%s)", fn.name, reason, invocation_id)
        started = time.monotonic()
        with self._idle:
            self._running += 1
        try:
            value = await self._run(fn, trigger, context)
        except BaseException as exc:
            duration = (time.monotonic() - started) * 1000
            if isinstance(exc, FunctionTimeoutError):
                log.error(
                    "Timeout value of %s exceeded by function 'Functions.%s' (Id: '%s'). "
                    "Initiating cancellation.", timedelta(seconds=self._timeout or 0), fn.name, invocation_id,
                )
            else:
                log.error(
                    "Executed 'Functions.%s' (Failed, Id=%s, Duration=%.0fms)\n"
                    "Result: Failure Exception: %s: %s\n%s",
                    fn.name, invocation_id, duration, type(exc).__name__, exc, user_traceback(exc),
                )
            if isinstance(exc, asyncio.CancelledError):
                raise
            if isinstance(exc, FunctionTimeoutError):
                log.error("Executed 'Functions.%s' (Failed, Id=%s, Duration=%.0fms)", fn.name, invocation_id,
                          duration)
            return InvocationResult(invocation_id, False, error=exc, duration_ms=duration)
        finally:
            with self._idle:
                self._running -= 1
                self._idle.notify_all()
        duration = (time.monotonic() - started) * 1000
        log.info("Executed 'Functions.%s' (Succeeded, Id=%s, Duration=%.0fms)", fn.name, invocation_id, duration)
        return InvocationResult(invocation_id, True, value=value, duration_ms=duration)

    async def _run(self, fn: FunctionInfo, trigger: TriggerData, context: InvocationContext) -> Any:
        tag = (fn.name, context.invocation_id)
        loop = asyncio.get_running_loop()
        deadline = None if self._timeout is None else loop.time() + self._timeout

        def remaining() -> float | None:
            return None if deadline is None else max(0.0, deadline - loop.time())

        args, outs = await self._in_pool(tag, lambda: self._binder.arguments(fn, trigger, context), remaining())
        if fn.is_async:
            coroutine = _tagged(tag, fn.func(**args))
            future = asyncio.run_coroutine_threadsafe(coroutine, self._loop)
            value = await _await_with_timeout(future, remaining())
        else:
            value = await self._in_pool(tag, lambda: fn.func(**args), remaining())
        await self._in_pool(tag, lambda: self._binder.write_outputs(fn, outs, value, trigger), remaining())
        return value

    async def _in_pool(self, tag: tuple[str, str], call: Callable[[], Any], timeout: float | None) -> Any:
        def run() -> Any:
            current_invocation.set(tag)
            return call()

        future = self._pool.submit(contextvars.copy_context().run, run)
        return await _await_with_timeout(future, timeout)

    def wait_idle(self, timeout: float) -> bool:
        """Block until no invocation is running (True) or `timeout` passes (False)."""
        with self._idle:
            return self._idle.wait_for(lambda: self._running == 0, timeout)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._loop.call_soon_threadsafe(self._loop.stop)


_HOST_FRAMES = (
    os.path.dirname(__file__),
    os.path.dirname(asyncio.__file__),
    os.path.dirname(concurrent.futures.__file__),
    contextvars.__file__ if hasattr(contextvars, "__file__") else "<contextvars>",
)


def user_traceback(exc: BaseException) -> str:
    """The traceback without the host's own frames, as the worker reports a function's exception."""
    trace = traceback.TracebackException.from_exception(exc)
    frames = [frame for frame in trace.stack if not frame.filename.startswith(_HOST_FRAMES)]
    trace.stack = traceback.StackSummary.from_list(frames)
    return "".join(trace.format()).rstrip()


async def _tagged(tag: tuple[str, str], coroutine: Any) -> Any:
    current_invocation.set(tag)
    return await coroutine


async def _await_with_timeout(future: concurrent.futures.Future[Any], timeout: float | None) -> Any:
    wrapped = asyncio.wrap_future(future)
    try:
        return await asyncio.wait_for(asyncio.shield(wrapped), timeout)
    except TimeoutError as exc:
        # A thread cannot be killed: the sync function keeps running, its result is ignored.
        future.cancel()
        raise FunctionTimeoutError("function timed out") from exc
