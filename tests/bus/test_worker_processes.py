"""Service replicas as real processes against a real redis-server: kill -9, Redis restarts, SIGTERM.

Run as a module (`python -m tests.bus.test_worker_processes <delay_s>`) this file is a probe service:
an orchestrator whose `deploy.step` handler counts each event id once, atomically with its ack.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from swiftdeploy_core.bus import streams
from swiftdeploy_core.bus.events import DeployStep, Event, Source
from swiftdeploy_core.bus.runner import run
from swiftdeploy_core.bus.wire import entry_fields
from swiftdeploy_core.bus.worker import Context, ServiceSpec
from swiftdeploy_core.settings import Settings
from tests.eventually import eventually_sync

INBOX = streams.ORCHESTRATOR_INBOX
GROUP = streams.group("orchestrator")
COUNTS = "test:counts"
STARTED = "test:started"
ROOT = Path(__file__).resolve().parents[2]
CLI = Source(service="cli", instance="test")


def probe_spec(delay: float) -> ServiceSpec:
    async def count_once(payload: DeployStep, event: Event, ctx: Context) -> None:
        if delay >= 1:  # a stuck handler: say it started (faster ones are counted when done)
            await ctx.bus.redis.set(STARTED, event.id)
        if delay:
            await asyncio.sleep(delay)
        ctx.on_commit("HINCRBY", COUNTS, event.id, 1)

    return ServiceSpec(name="orchestrator", streams=[INBOX], handlers={DeployStep: count_once})


# --- helpers -------------------------------------------------------------------------------------


def child_env(redis_url: str, instance: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SWIFTDEPLOY_")}
    env.update(REDIS_URL=redis_url, SWIFTDEPLOY_INSTANCE=instance, SWIFTDEPLOY_LEASE_MS="1000",
               SWIFTDEPLOY_BLOCK_MS="200", SWIFTDEPLOY_LOG_LEVEL="INFO", PYTHONPATH=str(ROOT))  # fmt: skip
    return {**env, **extra}


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Callable[..., subprocess.Popen]]:
    """Start a service process (`module` under `python -m`); every one is killed at the end."""
    procs: list[subprocess.Popen] = []

    def start(
        redis_url: str, instance: str, module: str = "tests.bus.test_worker_processes", *args: str, **extra: str
    ) -> subprocess.Popen:
        log = open(tmp_path / f"{instance}.log", "wb")
        proc = subprocess.Popen([sys.executable, "-m", module, *args], cwd=ROOT, stdout=log,
                                stderr=subprocess.STDOUT, env=child_env(redis_url, instance, **extra))  # fmt: skip
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def publish(client: redis.Redis, events: list[Event]) -> None:
    """XADD in chunks; a chunk that hits a Redis outage is sent again (same ids: handled once)."""
    for i in range(0, len(events), 500):
        chunk = events[i : i + 500]
        while True:
            try:
                pipe = client.pipeline(transaction=False)
                for event in chunk:
                    pipe.xadd(INBOX, entry_fields(event))
                pipe.execute()
                break
            except redis.ConnectionError:
                time.sleep(0.1)


def wait_for(check: Callable[[], object], timeout: float, what: str) -> None:
    """Poll across Redis restarts: a refused connection means "not yet"."""
    eventually_sync(check, what, timeout, interval=0.05, ignoring=(redis.ConnectionError,))


def joined(client: redis.Redis, consumers: int) -> bool:
    return client.exists(INBOX) and len(client.xinfo_consumers(INBOX, GROUP)) >= consumers


def all_settled(client: redis.Redis) -> bool:
    group = client.xinfo_groups(INBOX)[0]
    return group["lag"] == 0 and group["pending"] == 0


def steps(n: int) -> list[Event]:
    return [Event(payload=DeployStep(step=str(i)), source=CLI) for i in range(n)]


def assert_each_handled_once(client: redis.Redis, events: list[Event]) -> None:
    counts = {k.decode(): int(v) for k, v in client.hgetall(COUNTS).items()}
    assert set(counts) == {e.id for e in events}, "lost or invented events"
    assert set(counts.values()) == {1}, "an event took effect twice"


# --- stories -------------------------------------------------------------------------------------


@pytest.mark.slow
def test_kill_9_of_one_of_two_replicas_loses_nothing_and_doubles_nothing(redis_url: str, spawn) -> None:
    client = redis.Redis.from_url(redis_url)
    victim = spawn(redis_url, "replica-1", "tests.bus.test_worker_processes", "0.0002")
    spawn(redis_url, "replica-2", "tests.bus.test_worker_processes", "0.0002")
    wait_for(lambda: joined(client, 2), 15, "both replicas in the group")
    events = steps(10_000)
    publish(client, events[:4000])
    wait_for(lambda: client.hlen(COUNTS) >= 2000, 30, "work to be under way")
    victim.kill()  # SIGKILL: no chance to ack what it holds
    victim.wait()
    held = client.xpending_range(INBOX, GROUP, "-", "+", 10_000, consumername="replica-1")
    publish(client, events[4000:])
    wait_for(lambda: all_settled(client), 60, "every entry acked")
    assert_each_handled_once(client, events)
    if held:  # what the dead replica held was reclaimed by the live one
        assert not client.xpending_range(INBOX, GROUP, "-", "+", 10, consumername="replica-1")


@pytest.mark.slow
def test_redis_restart_mid_stream_services_reconnect_and_finish(make_redis, spawn) -> None:
    server = make_redis(appendonly=True)
    client = redis.Redis.from_url(server.url)
    replicas = [spawn(server.url, f"replica-{i}", "tests.bus.test_worker_processes", "0.0005") for i in (1, 2)]
    wait_for(lambda: joined(client, 2), 15, "both replicas in the group")
    events = steps(4000)
    publish(client, events[:2000])
    wait_for(lambda: client.hlen(COUNTS) >= 500, 30, "work to be under way")
    server.stop(kill=True)  # AOF with appendfsync always: what Redis acknowledged survives
    time.sleep(1.0)
    server.start()
    publish(client, events[2000:])
    wait_for(lambda: all_settled(client) and client.hlen(COUNTS) == 4000, 60, "processing to resume and complete")
    assert_each_handled_once(client, events)
    assert all(p.poll() is None for p in replicas), "a service crashed when Redis went away"


@pytest.mark.parametrize("service", ["orchestrator", "collector", "gatekeeper", "auditor", "notifier"])
def test_sigterm_each_service_exits_0_within_5s(redis_url: str, spawn, service: str) -> None:
    client = redis.Redis.from_url(redis_url)
    proc = spawn(redis_url, f"{service}-1", f"services.{service}")
    wait_for(lambda: client.exists(streams.health_key(service, f"{service}-1")), 15, f"{service} heartbeat")
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=5) == 0
    assert time.monotonic() - started < 5
    assert not client.exists(streams.health_key(service, f"{service}-1")), "heartbeat left behind"
    assert client.xinfo_groups(streams.INBOXES[service])[0]["pending"] == 0


def test_sigterm_mid_batch_finishes_what_started_and_hands_over_the_rest(redis_url: str, spawn) -> None:
    client = redis.Redis.from_url(redis_url)
    first = spawn(redis_url, "slow-1", "tests.bus.test_worker_processes", "0.1", SWIFTDEPLOY_LEASE_MS="20000")
    wait_for(lambda: joined(client, 1), 15, "the replica in the group")
    events = steps(40)
    publish(client, events)
    wait_for(lambda: client.hlen(COUNTS) >= 3, 10, "work to be under way")  # 0.1 s per event
    first.send_signal(signal.SIGTERM)
    assert first.wait(timeout=5) == 0
    handled = client.hlen(COUNTS)
    assert handled < 40, "the whole batch ran: SIGTERM did not stop it"
    # What it took but did not start is released: a fresh replica takes it without waiting a lease.
    spawn(redis_url, "slow-2", "tests.bus.test_worker_processes", "0", SWIFTDEPLOY_LEASE_MS="20000")
    wait_for(lambda: all_settled(client), 15, "the other replica to finish the rest")
    assert_each_handled_once(client, events)


def test_sigterm_with_a_stuck_handler_exits_within_the_grace_and_sums_up(redis_url: str, spawn, tmp_path: Path) -> None:
    client = redis.Redis.from_url(redis_url)
    stuck = spawn(redis_url, "stuck-1", "tests.bus.test_worker_processes", "60", SWIFTDEPLOY_SHUTDOWN_GRACE="1.5")
    wait_for(lambda: joined(client, 1), 15, "the replica in the group")
    publish(client, steps(1))
    wait_for(lambda: client.exists(STARTED), 10, "the handler to be under way")
    started = time.monotonic()
    stuck.send_signal(signal.SIGTERM)
    assert stuck.wait(timeout=5) == 0
    assert time.monotonic() - started < 1.5 + 0.5  # the grace, plus the interpreter's own exit
    lines = [json.loads(line) for line in (tmp_path / "stuck-1.log").read_text().splitlines()]
    assert [x["message"] for x in lines if x["message"].startswith("shutdown ◆")] == [
        "shutdown ◆ 0 complete ◆ 0 failed ◆ 0 retried ◆ 1 ongoing"
    ]
    assert client.xinfo_groups(INBOX)[0]["pending"] == 1  # still there, for a live replica


if __name__ == "__main__":
    run(probe_spec(float(sys.argv[1]) if len(sys.argv) > 1 else 0.0), Settings())
