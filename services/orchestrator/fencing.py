"""Every effect of an operation fenced by its lease, and the router stamped with who changed it.

`fence_driver` makes each effect method of an operation's driver (starting, stopping or removing
anything, a router change, a teardown) first check that the lock still holds the operation's
lease (`Fence.verify`): a replica that lost its lease stops with `LeaseLost` before its next
effect, whichever code path asks for it. Reads (list, logs, router_config) are left alone.

A lease whose number does not exceed the one on the router's config (Redis lost its counter, as a
restart without persistence does) takes a number above it first (`Fence.renumber_past`).

A router change also carries the lease's fencing number (`Lease.stamp()`, a larger number for
each later lease on the project) as the first line of the nginx.conf it writes:
`# swiftdeploy fence 17 canary-analysis orch-a`. A driver that writes the file itself (the process
runtime) refuses, under a file lock, to replace a config stamped with a larger number: even an
operation that passed its lease check just before its lease ran out cannot undo a newer
operation's router change. The stamps are also the router's history: who changed it, in order.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

from services.orchestrator.drivers.base import RuntimeDriver, read_text
from services.orchestrator.lock import Fence
from swiftdeploy_core.errors import LeaseLost
from swiftdeploy_core.filelock import flock_exclusive

# The driver methods that change something outside Redis.
EFFECTS = (
    "ensure_networks",
    "start_instance",
    "restart_instance",
    "stop_instance",
    "apply_router",
    "remove",
    "teardown",
)
STAMP_PREFIX = "# swiftdeploy fence "
_STAMP = re.compile(r"\A# swiftdeploy fence (\d+)[^\n]*\n")
LOCK_POLL = 0.01


async def fence_driver(driver: RuntimeDriver, fence: Fence, redis: aioredis.Redis) -> RuntimeDriver:
    """`driver` with every effect method checking `fence` first, and router changes stamped.

    When the router's config carries a number this lease's does not exceed, Redis lost the
    counter (a restart without persistence; a newer lease would have replaced this one's lock):
    the lease takes a number above it, so the router is not refused to every later operation."""
    left = fence_number(read_text(driver.nginx_conf))
    if left is not None and left >= fence.lease.fence:
        await fence.renumber_past(redis, left)
    driver.fence_stamp = fence.lease.stamp()
    for name in EFFECTS:
        setattr(driver, name, _checked(getattr(driver, name), fence, redis))
    return driver


def _checked(
    method: Callable[..., Awaitable[Any]], fence: Fence, redis: aioredis.Redis
) -> Callable[..., Awaitable[Any]]:
    @functools.wraps(method)
    async def effect(*args: Any, **kwargs: Any) -> Any:
        await fence.verify(redis)
        return await method(*args, **kwargs)

    return effect


def stamped(conf: str, stamp: str | None) -> str:
    """`conf` with the fencing stamp as its first line (none without a stamp)."""
    return f"{STAMP_PREFIX}{stamp}\n{conf}" if stamp else conf


def unstamped(conf: str | None) -> str | None:
    """`conf` without its fencing stamp line (to compare what it routes)."""
    return _STAMP.sub("", conf, count=1) if conf is not None else None


def fence_number(conf: str | None) -> int | None:
    """The fencing number a config is stamped with, or None."""
    found = _STAMP.match(conf or "")
    return int(found.group(1)) if found else None


def check_newer(live: str | None, stamp: str | None, where: str) -> None:
    """LeaseLost when the live config was written under a larger fencing number than `stamp`'s."""
    mine, theirs = fence_number(f"{STAMP_PREFIX}{stamp}\n" if stamp else None), fence_number(live)
    if mine is not None and theirs is not None and theirs > mine:
        raise LeaseLost(
            f"{where} was changed by a newer operation (fence {theirs}, this one holds {mine}); "
            "this operation stopped before its router change"
        )


@contextlib.asynccontextmanager
async def file_lock(path: Path) -> AsyncIterator[None]:
    """An exclusive lock between processes of this host (flock on `path`), polled so the event loop runs."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        await flock_exclusive(handle, LOCK_POLL)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
