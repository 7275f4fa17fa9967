"""One operation at a time per deployment: the Redis lease lock, against a real redis-server."""

from __future__ import annotations

import asyncio
import json
import re

import pytest
import redis.asyncio as aioredis

from services.orchestrator import lock
from swiftdeploy_core.bus import streams
from swiftdeploy_core.errors import OperationInProgress


@pytest.fixture
async def redis(redis_url: str):
    client = aioredis.Redis.from_url(redis_url)
    yield client
    await client.aclose()


async def test_a_second_command_is_told_which_operation_holds_the_project_since_when_and_by_whom(redis):
    async with lock.holding(redis, "shop", "promote-canary", "orch-a"):
        with pytest.raises(OperationInProgress) as caught:
            await lock.acquire(redis, "shop", "deploy", "orch-b")
    assert re.fullmatch(
        r"operation promote-canary in progress since \d\d:\d\d:\d\d \(owner orch-a\)", str(caught.value)
    )


async def test_the_lock_is_released_after_the_operation_and_other_projects_are_independent(redis):
    async with lock.holding(redis, "shop", "deploy", "orch-a"):
        async with lock.holding(redis, "blog", "deploy", "orch-a"):
            pass
    held = await lock.acquire(redis, "shop", "rollback", "orch-b")
    await lock.release(redis, held)
    assert await redis.get(streams.lock_key("shop")) is None


async def test_a_waiting_command_gets_the_lock_when_the_holder_finishes(redis):
    async def hold_briefly() -> None:
        async with lock.holding(redis, "shop", "canary-analysis", "orch-a"):
            await asyncio.sleep(0.2)

    holder = asyncio.create_task(hold_briefly())
    await asyncio.sleep(0.05)
    async with lock.holding(redis, "shop", "rollback", "orch-b", wait=2.0) as mine:
        assert mine.operation == "rollback"
    await holder


async def test_an_expired_lease_frees_the_project_and_release_never_frees_someone_elses(redis):
    stale = await lock.acquire(redis, "shop", "deploy", "orch-a", lease=0.1)
    await asyncio.sleep(0.2)
    fresh = await lock.acquire(redis, "shop", "deploy", "orch-b")
    await lock.release(redis, stale)  # the old holder's late release must not drop orch-b's lock
    assert json.loads(await redis.get(streams.lock_key("shop")))["owner"] == "orch-b"
    await lock.release(redis, fresh)


async def test_a_lock_left_by_a_dead_local_process_is_taken_over_at_once(redis):
    held = await lock.acquire(redis, "shop", "promote-canary", "orch-dead")
    value = json.loads(held.value())
    value["pid"] = 2**22 + 12345  # no such process
    await redis.set(streams.lock_key("shop"), json.dumps(value), px=30_000)
    taken = await lock.acquire(redis, "shop", "recover", "orch-new")
    assert taken.owner == "orch-new"
