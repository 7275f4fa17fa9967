"""Two orchestrator replicas, Redis paused past the lease: never two operations' effects on one project.

Two real `python -m services.orchestrator` processes (leases of 1.5 s) share a redis-server with
the real gatekeeper; the project runs on the process runtime with real nginx and workloads. A
canary walks many steps, each an analysis tick that either replica's loop may take; slow requests
in flight through nginx keep every router reload draining for about a second, so a tick is
mid-operation most of the time. Three times, while an operation holds the project (and a command
arrives for it), Redis is stopped with SIGSTOP for longer than the lease, then continued.

What the test reads is what the resources say, not what the orchestrators log: every version of
nginx.conf (polled from disk, stamped with the fencing number of the operation that wrote it),
every version of the rollout record (its `fence`), and the events on the bus. Neither the router's
nor the record's fencing numbers ever go back (no older operation's effect lands after a newer
one's), both replicas changed the project, the replica that lost its lease stopped with LeaseLost
before its next effect, no step was taken twice, and nginx ends serving exactly what the record says.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest
import redis.asyncio as aioredis

from services.orchestrator import fencing
from services.orchestrator.drivers import make_driver
from swiftdeploy_core.bus import streams, wire
from swiftdeploy_core.bus.events import Event
from swiftdeploy_core.project.manifest import load_manifest
from swiftdeploy_core.project.router import served_split
from tests.eventually import eventually
from tests.orchestration import (
    ServiceProcess,
    cli,
    gatekeeper_process,
    wait_for_phase,
    wait_ready,
    write_manifest,
    write_policies,
    write_snapshot,
)
from tests.servers import require_binary

PROJECT = "sdo-fence"
LEASE = 1.5
PAUSE = LEASE + 2.0  # Redis stopped well past the lease
ROUNDS = 3
STEPS = list(range(4, 100, 4))  # 24 steps: the canary is still walking after every round
LAG = 0.1  # how late the router poll may see a change (it reads the file every 5 ms)
SLOW = 4.5  # seconds each canary answer takes: a reload drains for about that long, past the pause


@dataclass
class Seen:
    """One change, as the test saw it: when (unix time), under which fencing number, what."""

    at: float
    fence: int | None
    detail: str
    current: int = 0  # record writes: the newest lease taken before it, in Redis's order


@dataclass
class Watch:
    """The project's history from the resources themselves: every version of nginx.conf (polled
    from disk), and from Redis's MONITOR, in Redis's own order, every lease taken (the fencing
    counter's INCR, which only runs when the lock was taken) and every write of the rollout record."""

    conf: Path
    redis_url: str
    router: list[Seen] = field(default_factory=list)
    leases: list[Seen] = field(default_factory=list)  # lease N taken at `at`
    record: list[Seen] = field(default_factory=list)  # a record write; `detail` names the lease then current
    _stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def run_router(self) -> None:
        last = None
        while not self._stop.is_set():
            text = self.conf.read_text() if self.conf.exists() else None
            if text and text != last:
                last = text
                stamp = text.splitlines()[0]
                weight = served_split(text).canary_weight
                self.router.append(Seen(time.time(), fencing.fence_number(text), f"{weight}% {stamp}"))
            await asyncio.sleep(0.005)

    async def run_monitor(self) -> None:
        client = aioredis.Redis.from_url(self.redis_url)
        try:
            async with client.monitor() as monitor:
                async for seen in monitor.listen():
                    self.saw(seen["time"], seen["command"])
        finally:
            await client.aclose()

    def saw(self, at: float, command: str) -> None:
        name, _, rest = command.partition(" ")
        key = rest.split(" ", 1)[0]
        if name.lower() == "incr" and key == streams.fence_key(PROJECT):
            self.leases.append(Seen(at, len(self.leases) + 1, "taken"))
        elif name.lower() == "set" and key == streams.rollout_key(PROJECT):
            found = re.search(r'"fence":\s*(\d+)', rest)
            phase = re.search(r'"phase":\s*"(\w+)"', rest)
            fence = int(found.group(1)) if found else None
            self.record.append(Seen(at, fence, phase.group(1) if phase else "?", current=len(self.leases)))

    def current_at(self, at: float) -> int:
        """The newest lease taken before `at`."""
        return max((lease.fence or 0 for lease in self.leases if lease.at < at), default=0)

    def stop(self) -> None:
        self._stop.set()


async def slow_requests(url: str, stop: asyncio.Event) -> None:
    """Requests to the canary that take SLOW seconds each, so old nginx workers drain slowly."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15)) as session:
        while not stop.is_set():
            with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError):
                async with session.get(url, headers={"X-Canary": "always"}) as response:
                    await response.read()
            await asyncio.sleep(0.05)


async def holder(redis: aioredis.Redis) -> dict | None:
    raw = await redis.get(streams.lock_key(PROJECT))
    return json.loads(raw) if raw else None


def never_back(seen: list[Seen]) -> list[str]:
    """Every place where a fencing number is smaller than one seen before it."""
    problems, highest = [], 0
    for before, entry in zip([None, *seen], seen, strict=False):
        if entry.fence is None:
            continue
        if entry.fence < highest:
            problems.append(f"fence {entry.fence} ({entry.detail}) after {highest} (previous: {before})")
        highest = max(highest, entry.fence)
    return problems


@pytest.mark.slow
async def test_two_replicas_with_redis_paused_past_the_lease_never_interleave_on_one_project(make_redis, tmp_path):
    require_binary("nginx")
    server = make_redis(appendonly=False)
    root = tmp_path / "project"
    manifest = write_manifest(
        root, PROJECT, canary={"steps": STEPS, "interval": 0.6, "failure_limit": 3, "no_data": "hold"}
    )
    write_policies(root)
    env = {"SWIFTDEPLOY_OPERATION_LEASE": str(LEASE)}
    gatekeeper = gatekeeper_process(server.url, root, tmp_path).start()
    replicas = {
        name: ServiceProcess("orchestrator", server.url, tmp_path / f"{name}.log", {**env, "SWIFTDEPLOY_INSTANCE": name}).start()
        for name in ("orch-a", "orch-b")
    }  # fmt: skip
    redis = aioredis.Redis.from_url(server.url, socket_timeout=0.5)
    loaded = load_manifest(manifest)
    driver = make_driver(loaded.manifest, loaded.root)
    watch = Watch(driver.nginx_conf, server.url)
    stop_load = asyncio.Event()
    tasks: list[asyncio.Task] = []
    try:
        for name in ("gatekeeper", "orchestrator"):
            await wait_ready(redis, name)
        await eventually(lambda: _beats(redis, "orchestrator", 2), "both replicas' heartbeats", 20)
        tasks += [asyncio.create_task(watch.run_router()), asyncio.create_task(watch.run_monitor())]
        assert (await cli(server.url, "deploy", "--manifest", str(manifest), timeout=90)).code == 0
        url = (await wait_for_phase(redis, PROJECT, "stable")).router_url
        assert (await cli(server.url, "promote", "canary", "--manifest", str(manifest), timeout=90)).code == 0
        await write_snapshot(redis, PROJECT, "2.0.0", error_rate=0.0)  # a healthy canary: each tick steps on
        slow = await cli(server.url, "chaos", "slow", "--duration", str(SLOW), "--manifest", str(manifest))
        assert slow.code == 0, slow.text
        tasks += [asyncio.create_task(slow_requests(url, stop_load)) for _ in range(4)]

        paused_holders = []
        for _ in range(ROUNDS):
            await asyncio.sleep(1.5)
            held = await eventually(lambda: holder(redis), "an operation holding the project", 20, interval=0.01)
            command = asyncio.create_task(  # a command arrives for the project as well
                cli(server.url, "chaos", "slow", "--duration", str(SLOW), "--manifest", str(manifest), timeout=60)
            )
            server.process.send_signal(signal.SIGSTOP)
            await asyncio.sleep(PAUSE)
            server.process.send_signal(signal.SIGCONT)
            paused_holders.append(held)
            await command
        record = await wait_for_phase(redis, PROJECT, "progressing", "canary_complete", timeout=20)
        assert record.step > 0
        # A tick may hold the project longer than a command waits (its reload drains slow requests),
        # and on a starved machine a 1.5 s lease can run out with Redis running: both are refused
        # safely, and retried here as a user would.
        for _ in range(5):
            rolled = await cli(server.url, "rollback", "--manifest", str(manifest), timeout=60)
            if rolled.code == 0 or not ("stopped before its next step" in rolled.text or "in progress" in rolled.text):
                break
        assert rolled.code == 0, rolled.text
        final = await wait_for_phase(redis, PROJECT, "stable", timeout=30)
        await asyncio.sleep(0.5)  # the pollers see the last versions
    finally:
        stop_load.set()
        watch.stop()
        with contextlib.suppress(Exception):
            server.process.send_signal(signal.SIGCONT)
        for task in tasks[1:2]:
            task.cancel()  # the monitor reads until cancelled
        await asyncio.gather(*tasks, return_exceptions=True)
        for process in (*replicas.values(), gatekeeper):
            process.stop()
        await driver.teardown()
        await driver.close()

    logs = {name: process.log() for name, process in replicas.items()}
    history = sorted(
        [("lease", s) for s in watch.leases]
        + [("router", s) for s in watch.router]
        + [("record", s) for s in watch.record],
        key=lambda pair: pair[1].at,
    )
    print(
        "history:", *(f"{s.at:.3f} {kind:6} {s.fence} {s.detail} {s.current or ''}" for kind, s in history), sep="\n  "
    )
    print("paused while held by:", paused_holders)

    # Every record write was made under the newest lease (Redis's own order): none by an older one.
    stale_writes = [w for w in watch.record if w.fence is None or w.fence != w.current]
    assert watch.record and stale_writes == [], stale_writes
    # Every router change was made under the lease current then (the poll sees it up to LAG late),
    # and the router's fencing numbers never go back.
    stale_routes = [r for r in watch.router if r.fence is None or r.fence < watch.current_at(r.at - LAG)]
    assert stale_routes == [] and never_back(watch.router) == [], stale_routes
    # Both replicas changed the router (the stamps name the holder).
    owners = {s.detail.split()[-1] for s in watch.router}
    assert {"orch-a", "orch-b"} <= owners, owners
    # An operation whose lease ran out while Redis was stopped stopped before its next effect
    # (LeaseLost, logged with its fencing number), and a newer lease took the project after it.
    lost = {int(n) for log in logs.values() for n in re.findall(r"\(fence (\d+)\) was lost", log)}
    assert lost, "no operation lost its lease while Redis was stopped"
    assert all(number < len(watch.leases) for number in lost)
    # No step was taken twice: the steps of canary.weight_changed strictly increase.
    steps = [e.payload.step for e in await _events(server.url, "canary.weight_changed")]
    assert steps == sorted(set(steps)), steps
    # nginx ends serving exactly what the record says: stable only.
    assert final.canary is None
    assert served_split(driver.nginx_conf.read_text()).canary_weight == 0


async def _beats(redis: aioredis.Redis, service: str, count: int) -> bool:
    return len([key async for key in redis.scan_iter(streams.health_key(service, "*"))]) >= count


async def _events(redis_url: str, kind: str) -> list[Event]:
    client = aioredis.Redis.from_url(redis_url)
    try:
        entries = await client.xrange(streams.EVENTS)
    finally:
        await client.aclose()
    return [Event.model_validate_json(f[wire.B_EVENT]) for _, f in entries if f.get(wire.B_TYPE) == kind.encode()]
