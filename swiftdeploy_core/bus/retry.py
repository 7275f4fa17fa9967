"""Redis errors at the boundary, and retrying: `redis_errors()` maps what redis-py raises to the
bus's error families (keeping the cause), `Backoff` paces the tries after "Redis went away", and
`guarded()` restarts a background loop that failed.

    with redis_errors("reading the rollout records"):
        raw = await redis.get(key)
    # BusLost: connection refused/reset/timed out (retry later) · GroupMissing: NOGROUP, the
    # consumer group is gone (join again) · BusError: any other refusal (a bug or a bad write)

Nothing outside this module catches a redis-py exception; callers catch the families above.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import ParamSpec, TypeVar

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from swiftdeploy_core.errors import BusError, BusLost, GroupMissing

# What redis-py raises when Redis went away (it lets some socket errors through unwrapped).
CONNECTION_ERRORS = (RedisConnectionError, RedisTimeoutError, ConnectionError, OSError)
RECONNECT_MIN_S = 0.05
RECONNECT_MAX_S = 2.0
LOOP_RESTART_MIN_S = 0.2  # a failed background loop starts again after this, doubling each time
LOOP_RESTART_MAX_S = 10.0
LOOP_HEALTHY_S = 30.0  # a loop that ran this long before failing starts from the shortest pause
P = ParamSpec("P")
T = TypeVar("T")


@contextlib.contextmanager
def redis_errors(doing: str = "talking to Redis") -> Iterator[None]:
    """Raise redis-py's errors inside the block as BusLost, GroupMissing or BusError, from the cause."""
    try:
        yield
    except CONNECTION_ERRORS as exc:
        raise BusLost(f"{doing}: Redis went away ({_one_line(exc)})") from exc
    except ResponseError as exc:
        if str(exc).startswith(("NOGROUP", "UNBLOCKED the stream key no longer exists")):
            raise GroupMissing(f"{doing}: the consumer group is gone ({_one_line(exc)})") from exc
        raise BusError(f"{doing}: Redis refused ({_one_line(exc)})") from exc
    except RedisError as exc:
        raise BusError(f"{doing}: {_one_line(exc)}") from exc


def mapped(doing: str) -> Callable[[Callable[P, Awaitable[T]]], Callable[P, Awaitable[T]]]:
    """Decorate an async function that talks to Redis: its body runs inside `redis_errors(doing)`."""

    def decorate(fn: Callable[P, Awaitable[T]]) -> Callable[P, Awaitable[T]]:
        @functools.wraps(fn)
        async def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
            with redis_errors(doing):
                return await fn(*args, **kwargs)

        return wrapper

    return decorate


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


async def guarded(
    name: str,
    loop: Callable[[], Awaitable[None]],
    stopping: asyncio.Event,
    *,
    on_group_lost: Callable[[], Awaitable[None]],
    log: logging.Logger,
) -> None:
    """Run a background loop until it returns or `stopping` is set. When it fails: log it (with
    the traceback unless it is a bus error), call `on_group_lost` if the failure was NOGROUP,
    back off (LOOP_RESTART_MIN_S doubling to LOOP_RESTART_MAX_S) and start the loop again."""
    backoff = Backoff(LOOP_RESTART_MIN_S, LOOP_RESTART_MAX_S)
    while not stopping.is_set():
        started = time.monotonic()
        try:
            await loop()
            return
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if stopping.is_set():
                return
            if time.monotonic() - started > LOOP_HEALTHY_S:
                backoff.reset()
            log.error("background loop %s failed (%s: %s); restarting in %.1fs", name, type(exc).__name__, exc,
                      backoff.delay, exc_info=not isinstance(exc, BusError))  # fmt: skip
            if isinstance(exc, GroupMissing):
                await on_group_lost()
        await backoff.wait(until=stopping)


class Backoff:
    """Exponential backoff between reconnect attempts; `reset()` after a success."""

    def __init__(self, low: float = RECONNECT_MIN_S, high: float = RECONNECT_MAX_S) -> None:
        self.low, self.high, self.delay = low, high, low

    async def wait(self, until: asyncio.Event | None = None) -> None:
        """Sleep the current delay (cut short when `until` is set), then double it."""
        if until is None:
            await asyncio.sleep(self.delay)
        else:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(until.wait(), self.delay)
        self.delay = min(self.high, self.delay * 2)

    def reset(self) -> None:
        self.delay = self.low
