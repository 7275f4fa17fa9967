"""One shutdown deadline: `shutdown_grace` is the whole budget from the stop request to the end,
and the end is one summary line (complete, failed, retried, still running)."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

from swiftdeploy_core.bus import streams
from swiftdeploy_core.bus.connection import Bus
from swiftdeploy_core.bus.events import DeployStep, Event, Source
from swiftdeploy_core.bus.runner import running
from swiftdeploy_core.bus.worker import Context, ServiceSpec
from swiftdeploy_core.settings import Settings
from tests.eventually import eventually

CLI = Source(service="cli", instance="test")
INBOX = streams.ORCHESTRATOR_INBOX
GROUP = streams.group("orchestrator")
GRACE = 1.5


@pytest.mark.parametrize("concurrency", [1, 4])
async def test_a_slow_handler_does_not_hold_the_worker_past_the_grace(
    redis_url: str, caplog: pytest.LogCaptureFixture, concurrency: int
) -> None:
    started = asyncio.Event()

    async def handle(payload: DeployStep, event: Event, ctx: Context) -> None:
        if payload.step == "slow":
            started.set()
            await asyncio.sleep(60)  # a handler stuck on something far slower than the grace

    settings = Settings(redis_url=redis_url, block_ms=100, lease_ms=20_000, shutdown_grace=GRACE)
    spec = ServiceSpec(name="orchestrator", streams=[INBOX], handlers={DeployStep: handle}, concurrency=concurrency)
    caplog.set_level(logging.INFO, "swiftdeploy.worker")
    bus = await Bus.connect(settings)
    try:
        async with running(spec, settings):
            await bus.publish_many(INBOX, [Event(payload=DeployStep(step=s), source=CLI) for s in ("quick", "slow")])
            await eventually(started.is_set, "the slow handler to start")
            stopping_at = time.monotonic()
        took = time.monotonic() - stopping_at
        [pending] = await bus.redis.xpending_range(INBOX, GROUP, "-", "+", 10)
    finally:
        await bus.close()
    assert took < GRACE + 0.2, f"shutdown took {took:.2f}s with a {GRACE}s grace"
    summaries = [r.getMessage() for r in caplog.records if r.getMessage().startswith("shutdown ◆")]
    assert summaries == ["shutdown ◆ 1 complete ◆ 0 failed ◆ 0 retried ◆ 1 ongoing"]
    # The unfinished entry stays pending, released: idle a whole lease, so a live replica takes it now.
    assert pending["time_since_delivered"] >= 20_000
