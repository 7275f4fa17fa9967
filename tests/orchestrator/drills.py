"""Fault drills shared by the self-healing stories of both runtimes: kill an instance while a
steady load flows through nginx, count what failed, and time the restart."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from swiftdeploy_core.bus import streams
from swiftdeploy_core.bus.events import Event, InstanceRestarted
from swiftdeploy_core.project.state import Instance
from tests.eventually import eventually
from tests.orchestration import LoadLoop, Stack


async def restarted_events(stack: Stack) -> list[InstanceRestarted]:
    """The project's `instance.restarted` events in the history so far."""
    found = []
    for _, fields in await stack.redis.xrange(streams.EVENTS):
        if fields[b"type"] == b"instance.restarted":
            payload = Event.from_json(fields[b"event"]).payload
            if isinstance(payload, InstanceRestarted) and payload.project == stack.project:
                found.append(payload)
    return found


@dataclass
class Drill:
    load: LoadLoop
    event: InstanceRestarted
    seconds: float  # the whole load
    restarted_after: float  # from the kill to the instance.restarted event
    back_after: float  # from the kill to the record saying it serves again (answering, not held out)
    failed_after_back: int  # failed requests sent once it was back

    def line(self) -> str:
        return (
            f"{self.load.failed} of {self.load.sent} requests failed in {self.seconds:.1f}s "
            f"({self.load.sent / self.seconds:.0f}/s); restarted after {self.restarted_after:.2f}s, "
            f"serving again after {self.back_after:.2f}s; {dict(self.load.statuses)} {self.load.errors[:3]}"
        )


async def kill_under_load(stack: Stack, kill: Callable[[Instance], Awaitable[None]], rate: float = 100.0) -> Drill:
    """100 req/s through nginx; after 2 s the first stable instance is killed by `kill`; the load
    goes on until the record shows it restarted and answering, and 2 s more."""
    load = LoadLoop(await stack.url(), rate=rate)
    runner = asyncio.create_task(load.run())
    started = time.monotonic()
    try:
        await asyncio.sleep(2)
        record = await stack.record()
        assert record is not None and record.stable is not None
        victim = record.stable.instances[0]
        await kill(victim)
        killed = time.monotonic()

        async def announced() -> InstanceRestarted | None:
            return next((e for e in await restarted_events(stack) if e.instance == victim.name), None)

        event = await eventually(announced, f"an instance.restarted event for {victim.name}", 30, interval=0.05)
        restarted_after = time.monotonic() - killed

        async def back() -> bool:
            now = await stack.record()
            assert now is not None and now.stable is not None
            mine = next(i for i in now.stable.instances if i.name == victim.name)
            return mine.restarts >= 1 and not mine.down

        await eventually(back, f"{victim.name} serving again", 30, interval=0.05)
        await _answering(await stack.url())
        back_after = time.monotonic() - killed
        failed_before = load.failed
        await asyncio.sleep(2)
    finally:
        load.stop()
        await runner
    return Drill(load, event, time.monotonic() - started, restarted_after, back_after, load.failed - failed_before)


async def _answering(url: str) -> None:
    """nginx answers 200 again (one request, not counted in the load)."""
    import aiohttp

    async def ok() -> bool:
        async with aiohttp.ClientSession() as session, session.get(url) as response:
            return response.status == 200

    await eventually(ok, f"{url} answering 200", 30, interval=0.05, ignoring=(aiohttp.ClientError,))


async def status_json(stack: Stack) -> dict:
    shown = await stack.sd("status", "--json")
    assert shown.code == 0, shown.text
    return json.loads(shown.out)
