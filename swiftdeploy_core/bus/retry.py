"""Retrying against Redis: which errors mean "Redis went away", and the backoff between tries."""

from __future__ import annotations

import asyncio
import contextlib

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

# Errors meaning "Redis went away": callers back off and retry instead of crashing.
CONNECTION_ERRORS = (RedisConnectionError, RedisTimeoutError, ConnectionError, OSError)
RECONNECT_MIN_S = 0.05
RECONNECT_MAX_S = 2.0


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
