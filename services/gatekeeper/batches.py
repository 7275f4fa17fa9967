"""A thread of its own for blocking calls, handed work in batches.

`BatchingThread.call(fn, *args)` runs `fn` on the thread and returns its result to the awaiting
coroutine. Calls made while the thread is busy queue up and go over together when it is free:
one hand-over to the thread and one back per batch, not per call. Each hand-over wakes a sleeping
thread, and on a virtual machine a cross-CPU wake-up costs about as much CPU as a Redis round trip.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
from collections.abc import Callable
from typing import Any

from swiftdeploy_core.errors import PolicyEngineError

Call = tuple[Callable[..., Any], tuple[Any, ...], asyncio.Future[Any]]


class BatchingThread:
    """One worker thread; calls run in the order they were made."""

    def __init__(self, name: str) -> None:
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
        self._queued: list[Call] = []
        self._busy = False
        self._closed = False

    async def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        if self._closed:
            raise PolicyEngineError("policy engine closed")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._queued.append((fn, args, future))
        if not self._busy:
            self._hand_over(loop)
        return await future

    def close(self) -> None:
        """Queued calls fail; the call running now finishes on its own."""
        self._closed = True
        for _, _, future in self._queued:
            if not future.done():
                future.set_exception(PolicyEngineError("policy engine closed"))
        self._queued = []
        self._executor.shutdown(wait=False, cancel_futures=True)

    def _hand_over(self, loop: asyncio.AbstractEventLoop) -> None:
        batch, self._queued = self._queued, []
        self._busy = True
        job = self._executor.submit(_run_all, batch)
        job.add_done_callback(lambda done: _call_back(loop, self._finished, batch, done))

    def _finished(self, loop: asyncio.AbstractEventLoop, batch: list[Call], done: concurrent.futures.Future[Any]) -> None:
        outcomes = done.result() if not done.cancelled() else [PolicyEngineError("policy engine closed")] * len(batch)
        for (_, _, future), outcome in zip(batch, outcomes):
            if future.done():  # its caller gave up (cancelled)
                continue
            if isinstance(outcome, BaseException):
                future.set_exception(outcome)
            else:
                future.set_result(outcome)
        self._busy = False
        if self._queued and not self._closed:
            self._hand_over(loop)


def _run_all(batch: list[Call]) -> list[Any]:
    """On the thread: every call's result, or the exception it raised."""
    outcomes: list[Any] = []
    for fn, args, _ in batch:
        try:
            outcomes.append(fn(*args))
        except Exception as exc:  # noqa: BLE001 - handed back to its caller
            outcomes.append(exc)
    return outcomes


def _call_back(loop: asyncio.AbstractEventLoop, fn: Callable[..., None], *args: Any) -> None:
    with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting any more
        loop.call_soon_threadsafe(fn, loop, *args)
