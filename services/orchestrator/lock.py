"""One operation at a time per deployment: a Redis lease lock with an owner and a start time.

The lease expires on its own when its holder dies (so a killed orchestrator never wedges a
project); a live holder renews it. Release and renewal only touch the lock if it is still ours.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime

import redis.asyncio as aioredis

from swiftdeploy_core.bus import streams
from swiftdeploy_core.errors import OperationInProgress

DEFAULT_LEASE = 30.0
POLL = 0.05

_RELEASE = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"
_RENEW = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) end return 0"


@dataclass(frozen=True)
class Lease:
    project: str
    operation: str
    owner: str
    since: datetime
    token: str

    def value(self) -> str:
        return json.dumps(
            {
                "operation": self.operation,
                "owner": self.owner,
                "since": self.since.isoformat(),
                "token": self.token,
                "host": socket.gethostname(),
                "pid": os.getpid(),
            }
        )


async def acquire(
    redis: aioredis.Redis, project: str, operation: str, owner: str, *, wait: float = 0.0,
    lease: float = DEFAULT_LEASE,
) -> Lease:  # fmt: skip
    """Take the project's lock, waiting up to `wait` seconds; OperationInProgress if it stays held."""
    mine = Lease(project, operation, owner, datetime.now(UTC), uuid.uuid4().hex)
    deadline = time.monotonic() + wait
    while True:
        if await redis.set(streams.lock_key(project), mine.value(), nx=True, px=int(lease * 1000)):
            return mine
        holder = await redis.get(streams.lock_key(project))
        if holder and _holder_died(holder):
            await redis.eval(_RELEASE, 1, streams.lock_key(project), holder)
            continue
        if time.monotonic() >= deadline:
            raise OperationInProgress(describe(holder) if holder else "another operation just finished; try again")
        await asyncio.sleep(POLL)


async def release(redis: aioredis.Redis, lease: Lease) -> None:
    await redis.eval(_RELEASE, 1, streams.lock_key(lease.project), lease.value())


async def renew(redis: aioredis.Redis, lease: Lease, seconds: float = DEFAULT_LEASE) -> bool:
    return bool(await redis.eval(_RENEW, 1, streams.lock_key(lease.project), lease.value(), int(seconds * 1000)))


def _holder_died(raw: bytes | str) -> bool:
    """A lease held by a process of this host that no longer exists need not run out first."""
    try:
        held = json.loads(raw)
        if held.get("host") != socket.gethostname() or not isinstance(held.get("pid"), int):
            return False
        os.kill(held["pid"], 0)
        return False
    except ProcessLookupError:
        return True
    except (ValueError, TypeError, PermissionError, OSError):
        return False


def describe(raw: bytes | str) -> str:
    """`operation promote-canary in progress since 12:03:01 (owner host-123)`."""
    try:
        held = json.loads(raw)
        since = datetime.fromisoformat(held["since"]).strftime("%H:%M:%S")
        return f"operation {held['operation']} in progress since {since} (owner {held['owner']})"
    except (ValueError, KeyError, TypeError):
        return "another operation is in progress"


@contextlib.asynccontextmanager
async def holding(
    redis: aioredis.Redis, project: str, operation: str, owner: str, *, wait: float = 0.0,
    lease: float = DEFAULT_LEASE,
) -> AsyncIterator[Lease]:  # fmt: skip
    """Hold the lock for the body, renewing it every third of the lease; always release."""
    held = await acquire(redis, project, operation, owner, wait=wait, lease=lease)
    keeper = asyncio.create_task(_keep(redis, held, lease))
    try:
        yield held
    finally:
        keeper.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await keeper
        await asyncio.shield(release(redis, held))


async def _keep(redis: aioredis.Redis, held: Lease, lease: float) -> None:
    while True:
        await asyncio.sleep(lease / 3)
        with contextlib.suppress(Exception):
            await renew(redis, held, lease)
