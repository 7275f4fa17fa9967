"""One operation at a time per deployment: a Redis lease lock with an owner and a start time.

The lease expires on its own when its holder dies (so a killed orchestrator never wedges a
project); a live holder renews it. Release and renewal only touch the lock if it is still ours.

A holder whose renewal fails (Redis away, or the lease already another's) must not go on as if it
still held it: the `Fence` it holds says so. Its operation checks the fence before each effect
(`check`, local: the lease may have run out since the last successful renewal) and every record
write is conditional on the lock still holding the lease's value (`fenced_set`, one script), so a
replica that lost its lease cannot write even if it does not know yet.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import socket
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime

import redis.asyncio as aioredis

from swiftdeploy_core.bus import streams
from swiftdeploy_core.errors import LeaseLost, OperationInProgress

log = logging.getLogger("swiftdeploy.orchestrator.lock")

DEFAULT_LEASE = 30.0
POLL = 0.05

# Take the lock (SET NX PX) and, only if taken, the next fencing number, in one step: a number is
# never handed to a holder that did not get the lock, and a later holder always gets a larger one.
_ACQUIRE = (
    "if redis.call('set', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return redis.call('incr', KEYS[2]) end return 0"
)
_RELEASE = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"
_RENEW = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) end return 0"
# SET KEYS[2] to ARGV[2] only while the lock KEYS[1] still holds the lease's value ARGV[1]: 1 when
# written, 0 when another lease holds the lock, -1 when no lease does (ours ran out).
_FENCED_SET = (
    "local held = redis.call('get', KEYS[1]) if held == ARGV[1] then redis.call('set', KEYS[2], ARGV[2]) return 1 end"
    " if held then return 0 end return -1"
)
# While the lock KEYS[1] holds ARGV[1]: the fencing counter KEYS[2] moved past ARGV[2] (at least), and
# the holder's new number returned; 0 when the lock is not the holder's.
_RENUMBER = (
    "if redis.call('get', KEYS[1]) ~= ARGV[1] then return 0 end"
    " local n = math.max(tonumber(redis.call('get', KEYS[2]) or '0'), tonumber(ARGV[2])) + 1"
    " redis.call('set', KEYS[2], n) return n"
)
RENEW_SHARE = 1 / 3  # renew every third of the lease
KEEPER_STOP_S = 1.0  # how long the end of an operation waits for its renewal task to stop


@dataclass(frozen=True)
class Lease:
    project: str
    operation: str
    owner: str
    since: datetime
    token: str
    fence: int = 0  # the fencing number: larger for every later lease on the project
    # time.monotonic() just before the request that took the lock: Redis started the TTL no earlier
    taken_at: float = dataclasses.field(default=0.0, compare=False)

    def stamp(self) -> str:
        """`17 promote-canary orch-a`: who holds which fencing number (written beside effects)."""
        return f"{self.fence} {self.operation} {self.owner}"

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


class Fence:
    """A held lease as its operation sees it: still ours, or lost (then every effect stops)."""

    def __init__(self, lease: Lease, seconds: float) -> None:
        self.lease = lease
        self.seconds = seconds
        # The lease cannot have outlived this: counted from before the request that took it (Redis
        # starts the TTL when it serves it, which is no earlier), never from when the reply came.
        self.valid_until = (lease.taken_at or time.monotonic()) + seconds
        self.lost_reason: str | None = None

    @property
    def operation(self) -> str:
        return self.lease.operation

    def renewed(self, at: float) -> None:
        self.valid_until = at + self.seconds

    def lose(self, reason: str) -> None:
        self.lost_reason = self.lost_reason or reason

    def check(self) -> None:
        """LeaseLost unless the lease is certainly still ours (before any effect)."""
        if self.lost_reason is None and time.monotonic() >= self.valid_until:
            self.lose(f"it could not be renewed for {self.seconds:g} s")
        if self.lost_reason is not None:
            raise LeaseLost(
                f"the lease on {self.lease.project} (fence {self.lease.fence}) was lost ({self.lost_reason}); "
                f"{self.lease.operation} stopped before its next step"
            )

    async def fenced_set(self, redis: aioredis.Redis, key: str, value: str) -> None:
        """SET `key` only while the lock holds this lease; LeaseLost (and nothing written) if not."""
        self.check()
        written = await redis.eval(_FENCED_SET, 2, streams.lock_key(self.lease.project), key, self.lease.value(), value)
        if written != 1:
            self.lose("another holder has it" if written == 0 else "it ran out in Redis")
            self.check()

    async def renumber_past(self, redis: aioredis.Redis, floor: int) -> None:
        """Take a fencing number above `floor` (a number left on a resource by a lease from before
        Redis lost its counter), while the lock still holds this lease; LeaseLost if it does not."""
        self.check()
        keys = (streams.lock_key(self.lease.project), streams.fence_key(self.lease.project))
        number = int(await redis.eval(_RENUMBER, 2, *keys, self.lease.value(), floor))
        if not number:
            self.lose("another holder has it")
            self.check()
        self.lease = dataclasses.replace(self.lease, fence=number)

    async def verify(self, redis: aioredis.Redis) -> None:
        """Before an effect outside Redis (the router, the runtime): the lock still holds this lease."""
        self.check()
        held = await redis.get(streams.lock_key(self.lease.project))
        if held != self.lease.value().encode():
            self.lose("another holder has it" if held else "it ran out in Redis")
            self.check()


async def acquire(
    redis: aioredis.Redis, project: str, operation: str, owner: str, *, wait: float = 0.0,
    lease: float = DEFAULT_LEASE,
) -> Lease:  # fmt: skip
    """Take the project's lock, waiting up to `wait` seconds; OperationInProgress if it stays held."""
    mine = Lease(project, operation, owner, datetime.now(UTC), uuid.uuid4().hex)
    deadline = time.monotonic() + wait
    keys = (streams.lock_key(project), streams.fence_key(project))
    while True:
        asked = time.monotonic()
        taken = await redis.eval(_ACQUIRE, 2, *keys, mine.value(), int(lease * 1000))
        if taken:
            return dataclasses.replace(mine, fence=int(taken), taken_at=asked)
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
) -> AsyncIterator[Fence]:  # fmt: skip
    """Hold the lock for the body, renewing it every third of the lease; always release."""
    held = await acquire(redis, project, operation, owner, wait=wait, lease=lease)
    fence = Fence(held, lease)
    keeper = asyncio.create_task(_keep(redis, fence))
    try:
        yield fence
    finally:
        keeper.cancel()
        # Bounded: a cancel that lands inside a redis-py command can be swallowed, and an unbounded
        # wait here would hold the lease (and the command) until the lease ran out.
        await asyncio.wait({keeper}, timeout=KEEPER_STOP_S)
        with contextlib.suppress(Exception):  # a lost lease is not ours to release; Redis may be away
            await asyncio.shield(release(redis, held))


async def _keep(redis: aioredis.Redis, fence: Fence) -> None:
    """Renew every third of the lease; a refused renewal loses the lease for good, a failed one
    leaves it valid only until the last renewal's lease runs out (`Fence.check`)."""
    while fence.lost_reason is None:
        await asyncio.sleep(fence.seconds * RENEW_SHARE)
        started = time.monotonic()
        try:
            if await asyncio.wait_for(renew(redis, fence.lease, fence.seconds), fence.seconds * RENEW_SHARE):
                fence.renewed(started)
            else:
                fence.lose("another holder has it")
        except Exception as exc:  # Redis away: try again next time, while the lease lasts
            log.warning("could not renew the lease on %s: %r", fence.lease.project, exc)
