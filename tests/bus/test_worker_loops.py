"""The worker's background duties survive what Redis does to them: a flushed (or restarted empty)
Redis loses the consumer group, and the worker joins again and keeps reclaiming and handling."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

from swiftdeploy_core.bus import streams
from swiftdeploy_core.bus.connection import Bus
from swiftdeploy_core.bus.events import DeployStep, Event, Source
from swiftdeploy_core.bus.runner import running
from swiftdeploy_core.bus.wire import entry_fields
from swiftdeploy_core.bus.worker import Context, ServiceSpec, Worker
from swiftdeploy_core.settings import Settings
from tests.eventually import eventually

CLI = Source(service="cli", instance="test")
INBOX = streams.ORCHESTRATOR_INBOX
GROUP = streams.group("orchestrator")
HANDLED = "test:handled"


async def count(payload: DeployStep, event: Event, ctx: Context) -> None:
    ctx.on_commit("SADD", HANDLED, payload.step)


def settings(redis_url: str) -> Settings:
    return Settings(redis_url=redis_url, block_ms=100, lease_ms=600, shutdown_grace=2.0, instance="survivor")


@pytest.fixture
async def bus(redis_url: str):
    bus = await Bus.connect(settings(redis_url))
    yield bus
    await bus.close()


async def handled(bus: Bus) -> set[str]:
    return {m.decode() for m in await bus.redis.smembers(HANDLED)}


async def flush_for(bus: Bus, seconds: float) -> None:
    """FLUSHALL again and again: every loop of the worker meets a Redis without its group."""
    until = time.monotonic() + seconds
    while time.monotonic() < until:
        await bus.redis.flushall()
        await asyncio.sleep(0.03)


async def test_after_flushall_the_worker_rejoins_reclaims_and_handles_new_entries(
    redis_url: str, bus: Bus, caplog: pytest.LogCaptureFixture
) -> None:
    spec = ServiceSpec(name="orchestrator", streams=[INBOX], handlers={DeployStep: count})
    caplog.set_level(logging.WARNING, "swiftdeploy.worker")
    async with running(spec, settings(redis_url)) as worker:
        await flush_for(bus, 1.5)
        await eventually(lambda: group_exists(bus), "the worker to create its group again")
        # A replica takes entries and dies without acking them: the survivor must reclaim them.
        taken = await ghost_takes(bus, [f"orphan{i}" for i in range(5)])
        assert len(taken) == 5
        await eventually(lambda: handled_all(bus, {f"orphan{i}" for i in range(5)}), "the orphans reclaimed", 10)
        await bus.publish(INBOX, Event(payload=DeployStep(step="fresh"), source=CLI))
        await eventually(lambda: handled_all(bus, {"fresh"}), "a new entry handled", 5)
        assert all(not task.done() for task in worker._loops)  # heartbeat, reclaim, keepalive: all alive
    assert worker.metrics.reclaimed.labels("orchestrator")._value.get() >= 5


async def test_a_failing_loop_is_logged_backed_off_and_restarted(
    redis_url: str, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[float] = []
    original = Worker._reclaim

    async def flaky(self: Worker, stream: str) -> None:
        calls.append(time.monotonic())
        if len(calls) <= 2:
            raise RuntimeError("reclaim exploded")
        await original(self, stream)

    monkeypatch.setattr(Worker, "_reclaim", flaky)
    caplog.set_level(logging.WARNING, "swiftdeploy.worker")
    spec = ServiceSpec(name="orchestrator", streams=[INBOX], handlers={DeployStep: count})
    async with running(spec, settings(redis_url)):
        await eventually(lambda: len(calls) >= 4, "the reclaim loop to run again after failing twice", 10)
    failures = [r.getMessage() for r in caplog.records if "reclaim exploded" in r.getMessage()]
    assert failures == [
        "background loop _reclaim_loop failed (RuntimeError: reclaim exploded); restarting in 0.2s",
        "background loop _reclaim_loop failed (RuntimeError: reclaim exploded); restarting in 0.4s",
    ]  # logged with the traceback, and the pause grows between restarts
    assert all(r.exc_info for r in caplog.records if "reclaim exploded" in r.getMessage())


async def ghost_takes(bus: Bus, steps: list[str]) -> list[bytes]:
    """Add entries and read them as consumer "ghost" in one transaction (the live worker, blocked
    in its read, is served only after it): the ghost then "dies" holding them."""
    async with bus.redis.pipeline(transaction=True) as pipe:
        for step in steps:
            pipe.xadd(INBOX, entry_fields(Event(payload=DeployStep(step=step), source=CLI)))
        pipe.xreadgroup(GROUP, "ghost", {INBOX: ">"}, count=len(steps))
        *_, taken = await pipe.execute()
    return [entry_id for entry_id, _ in taken[0][1]]


async def group_exists(bus: Bus) -> bool:
    return bool(await bus.redis.exists(INBOX)) and any(
        g["name"].decode() == GROUP for g in await bus.redis.xinfo_groups(INBOX)
    )


async def handled_all(bus: Bus, wanted: set[str]) -> bool:
    return wanted <= await handled(bus)
