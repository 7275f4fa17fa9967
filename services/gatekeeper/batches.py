"""A thread of its own for blocking calls, handed work in batches.

`BatchingThread.call(fn, *args)` runs `fn` on the thread and returns its result to the awaiting
coroutine. Calls made in the same loop iteration, or while the thread is busy, go over together:
one hand-over to the thread and one back per batch, not per call. Each hand-over wakes a sleeping
thread, and on a virtual machine a cross-CPU wake-up costs about as much CPU as a Redis round trip.

With `inline_below` set, a lone call (nothing else queued, thread idle) runs on the event loop
itself when calls last took less than that: the common case of a decision now and then is then
answered without two wake-ups, while a burst still goes to the thread, and so does any call after
a slow one, so the loop is never blocked for long twice in a row.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import math
import time
from collections.abc import Callable
from typing import Any, TypeVar, TypeVarTuple

from swiftdeploy_core.errors import PolicyEngineError

Call = tuple[Callable[..., Any], tuple[Any, ...], asyncio.Future[Any]]
Args = TypeVarTuple("Args")
Result = TypeVar("Result")


class BatchingThread:
    """One worker thread; calls run in the order they were made."""

    def __init__(self, name: str, inline_below: float = 0.0) -> None:
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
        self._queued: list[Call] = []
        self._busy = False
        self._closed = False
        self._inline_below = inline_below
        self._last_cost = math.inf  # seconds per call in the last batch; unknown before the first

    async def call(self, fn: Callable[[*Args], Result], *args: *Args) -> Result:
        if self._closed:
            raise PolicyEngineError("policy engine closed")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Result] = loop.create_future()
        self._queued.append((fn, args, future))
        if not self._busy:
            self._busy = True
            loop.call_soon(self._dispatch, loop)  # after the other calls made in this iteration
        return await future

    def close(self) -> None:
        """Queued calls fail; the call running now finishes on its own."""
        self._closed = True
        for _, _, future in self._queued:
            if not future.done():
                future.set_exception(PolicyEngineError("policy engine closed"))
        self._queued = []
        self._executor.shutdown(wait=False, cancel_futures=True)

    def _dispatch(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._closed:
            return
        batch, self._queued = self._queued, []
        if len(batch) == 1 and self._last_cost < self._inline_below:
            self._finish(loop, batch, _run_all(batch))
            return
        job = self._executor.submit(_run_all, batch)
        job.add_done_callback(lambda done: _call_back(loop, self._finished, batch, done))

    def _finished(
        self, loop: asyncio.AbstractEventLoop, batch: list[Call], done: concurrent.futures.Future[Any]
    ) -> None:
        if done.cancelled():
            self._finish(loop, batch, ([PolicyEngineError("policy engine closed")] * len(batch), 0.0))
        else:
            self._finish(loop, batch, done.result())

    def _finish(self, loop: asyncio.AbstractEventLoop, batch: list[Call], ran: tuple[list[Any], float]) -> None:
        outcomes, self._last_cost = ran
        for (_, _, future), outcome in zip(batch, outcomes):
            if future.done():  # its caller gave up (cancelled)
                continue
            if isinstance(outcome, BaseException):
                future.set_exception(outcome)
            else:
                future.set_result(outcome)
        if self._queued and not self._closed:
            self._dispatch(loop)
        else:
            self._busy = False


def _run_all(batch: list[Call]) -> tuple[list[Any], float]:
    """Every call's result, or the exception it raised, and the seconds each call took on average."""
    started = time.perf_counter()
    outcomes: list[Any] = []
    for fn, args, _ in batch:
        try:
            outcomes.append(fn(*args))
        except Exception as exc:
            outcomes.append(exc)
    return outcomes, (time.perf_counter() - started) / len(batch)


def _call_back(loop: asyncio.AbstractEventLoop, fn: Callable[..., None], *args: Any) -> None:
    with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting any more
        loop.call_soon_threadsafe(fn, loop, *args)
