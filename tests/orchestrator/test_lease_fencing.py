"""One operation per project, fenced: an orchestrator whose lease ran out while Redis was paused
(SIGSTOP) never writes the record or moves the router after another replica took the project.

Two replicas' operations run interleaved on one real redis-server, each with its own runtime
(the in-memory FakeDriver) and its own Redis connection, as two processes would."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from services.orchestrator import fencing, lock, phases
from services.orchestrator.rollout import RecordStore
from swiftdeploy_core.bus import streams
from swiftdeploy_core.errors import LeaseLost
from swiftdeploy_core.project.manifest import load_manifest
from swiftdeploy_core.project.state import Phase
from tests.orchestration import write_manifest, write_snapshot
from tests.orchestrator.conftest import PROJECT, given
from tests.orchestrator.fakes import FakeDriver, FakeHarness, harness

LEASE = 1.0


async def test_a_lease_refused_on_renewal_stops_the_operation_before_its_next_effect(make_redis, tmp_path: Path):
    server = make_redis()
    redis = aioredis.Redis.from_url(server.url)
    async with lock.holding(redis, PROJECT, "promote-canary", "orch-a", lease=LEASE) as fence:
        await redis.delete(streams.lock_key(PROJECT))  # taken from under it (an operator, an expiry)
        await lock.acquire(redis, PROJECT, "rollback", "orch-b")
        await asyncio.sleep(LEASE * lock.RENEW_SHARE + 0.2)  # the next renewal is refused
        with pytest.raises(LeaseLost, match=r"another holder has it\); promote-canary stopped before its next step"):
            fence.check()
    await redis.aclose()


async def test_a_replica_that_lost_its_lease_while_redis_was_paused_cannot_write_or_route(make_redis, tmp_path: Path):
    server = make_redis()
    loaded = load_manifest(write_manifest(tmp_path / "p", PROJECT, canary={"steps": [10, 25, 50]}))
    # A short timeout notices the paused Redis; not so short that a busy machine fails the set-up.
    clients = [aioredis.Redis.from_url(server.url, socket_timeout=1.0) for _ in range(2)]
    a, b = (
        harness(loaded, FakeDriver(PROJECT, tmp_path / f"state-{n}"), RecordStore(c), FakeHarness)
        for n, c in zip("ab", clients)
    )
    await given(a, Phase.progressing, step=0)
    await write_snapshot(clients[0], PROJECT, "2.0.0", error_rate=0.0)
    writes: list[str] = []

    async with lock.holding(clients[0], PROJECT, "canary-analysis", "orch-a", lease=LEASE) as fence_a:
        a.fence = fence_a
        await phases.advance(a)  # an effect while the lease is good: step 0 -> 1
        writes.append(f"a step {a.record.step}")
        a.driver.calls.clear()

        server.process.send_signal(signal.SIGSTOP)  # Redis paused past the lease
        await asyncio.sleep(LEASE + 0.5)
        server.process.send_signal(signal.SIGCONT)

        fence_b = await lock.acquire(clients[1], PROJECT, "rollback", "orch-b", wait=2.0)
        b.record = await b.store.load(PROJECT)
        b.fence = lock.Fence(fence_b, LEASE)
        await b.save(phase=Phase.rolling_back, last_reasons=["requested by operator"])
        writes.append("b rolling_back")

        started = time.monotonic()
        with pytest.raises(LeaseLost):
            await phases.advance(a)  # replica a wakes up and tries its next tick
        assert time.monotonic() - started < 1.0
    stored = await b.store.load(PROJECT)
    assert stored is not None and (stored.phase, stored.step) == (Phase.rolling_back, 1)  # b's write stands
    assert a.driver.calls == []  # a moved nothing at its router after it lost the lease
    assert writes == ["a step 1", "b rolling_back"]
    for client in clients:
        await client.aclose()


async def test_every_effect_of_a_fenced_driver_checks_the_lease_first(make_redis, tmp_path: Path):
    server = make_redis()
    redis = aioredis.Redis.from_url(server.url)
    driver = FakeDriver(PROJECT, tmp_path / "state")
    async with lock.holding(redis, PROJECT, "teardown", "orch-a", lease=LEASE) as fence:
        await fencing.fence_driver(driver, fence, redis)
        assert driver.fence_stamp == f"{fence.lease.fence} teardown orch-a"
        await redis.delete(streams.lock_key(PROJECT))
        taken = await lock.acquire(redis, PROJECT, "deploy", "orch-b")
        assert taken.fence == fence.lease.fence + 1  # a later lease always gets a larger number
        for effect in (driver.teardown(), driver.stop_instance("x"), driver.ensure_networks([])):
            with pytest.raises(LeaseLost, match=r"another holder has it"):
                await effect
        assert await driver.list_objects() == []  # reads are not effects: still answered
    assert driver.calls == []
    await redis.aclose()


async def test_a_router_stamped_before_redis_lost_the_fencing_counter_is_not_refused_for_ever(make_redis, tmp_path):
    server = make_redis()
    redis = aioredis.Redis.from_url(server.url)
    driver = FakeDriver(PROJECT, tmp_path / "state")
    driver.nginx_conf.parent.mkdir(parents=True)
    driver.nginx_conf.write_text(fencing.stamped("events {}\n", "40 canary-analysis orch-a"))  # counter since lost
    async with lock.holding(redis, PROJECT, "deploy", "orch-b", lease=LEASE) as fence:
        assert fence.lease.fence == 1
        await fencing.fence_driver(driver, fence, redis)
        assert (fence.lease.fence, driver.fence_stamp) == (41, "41 deploy orch-b")
        fencing.check_newer(driver.nginx_conf.read_text(), driver.fence_stamp, "the router")  # not refused
    assert (await lock.acquire(redis, PROJECT, "rollback", "orch-a")).fence == 42  # and later leases go on from it
    await redis.aclose()
