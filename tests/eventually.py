"""Waiting in tests: poll a condition until a deadline, and fail naming what was awaited.

    await eventually(lambda: acked_all(bus), "every entry acked")          # async checks
    eventually_sync(lambda: log.exists(), "the service's log file", 10)     # plain ones

The check may be sync or async (its result is awaited when it is awaitable); the first truthy
result is returned. `ignoring` lists exceptions that mean "not yet" (a server still starting);
any other exception fails the test at once. At the deadline: AssertionError
"timed out after 5s waiting for <what> (last: <the check's last result or error>)"; `what` may be
a function, called then (to name the state that was last seen).
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, overload

T = TypeVar("T")
INTERVAL_S = 0.02
TIMEOUT_S = 5.0


@overload
async def eventually(
    check: Callable[[], Awaitable[T]],
    what: str | Callable[[], str],
    timeout: float = ...,
    *,
    interval: float = ...,
    ignoring: tuple[type[BaseException], ...] = ...,
) -> T: ...


@overload
async def eventually(
    check: Callable[[], T],
    what: str | Callable[[], str],
    timeout: float = ...,
    *,
    interval: float = ...,
    ignoring: tuple[type[BaseException], ...] = ...,
) -> T: ...


async def eventually(
    check: Callable[[], Any],
    what: str | Callable[[], str],
    timeout: float = TIMEOUT_S,
    *,
    interval: float = INTERVAL_S,
    ignoring: tuple[type[BaseException], ...] = (),
) -> Any:
    """Poll `check` every `interval` until it returns something truthy (returned), or fail."""
    deadline = _Deadline(what, timeout)
    while True:
        last: object
        try:
            result = check()
            last = await result if inspect.isawaitable(result) else result
            if last:
                return last
        except ignoring as exc:
            last = exc
        deadline.check(last)
        await asyncio.sleep(interval)


def eventually_sync(
    check: Callable[[], T],
    what: str | Callable[[], str],
    timeout: float = TIMEOUT_S,
    *,
    interval: float = INTERVAL_S,
    ignoring: tuple[type[BaseException], ...] = (),
) -> T:
    """`eventually` for code outside an event loop (blocking sleeps)."""
    deadline = _Deadline(what, timeout)
    while True:
        last: object
        try:
            result = check()
            if result:
                return result
            last = result
        except ignoring as exc:
            last = exc
        deadline.check(last)
        time.sleep(interval)


class _Deadline:
    """When to give up, and the message then (naming what was awaited and what was seen last)."""

    def __init__(self, what: str | Callable[[], str], timeout: float) -> None:
        self.what, self.timeout = what, timeout
        self.at = time.monotonic() + timeout

    def check(self, last: object) -> None:
        """Fail once the time is up; `last` is the check's last result (or ignored error)."""
        if time.monotonic() < self.at:
            return
        what = self.what if isinstance(self.what, str) else self.what()
        shown = repr(last)
        raise AssertionError(f"timed out after {self.timeout:g}s waiting for {what} (last: {shown[:300]})")
