"""The notifier as two real replicas on a real Redis, POSTing to a real receiver on loopback:
every matching event arrives exactly once per event id even though the receiver answers 500
twice first, every body is signed with the secret, every outcome is on the bus, and the past from
before the first notifier joined is not sent."""

from __future__ import annotations

import asyncio
import time

import pytest
import redis.asyncio as aioredis

from swiftdeploy_core.bus import streams
from swiftdeploy_core.bus.connection import Bus
from swiftdeploy_core.bus.events import (
    DeployStep,
    Event,
    PromotionBlocked,
    RollbackCompleted,
    Source,
)
from swiftdeploy_core.settings import Settings
from tests.orchestration import ServiceProcess, wait_ready, write_manifest
from tests.webhooks import Receiver

SECRET = "s3cr3t-for-the-notifier-test"
SOURCE = Source(service="test", instance="notifier-test")


@pytest.fixture
async def redis(redis_server):
    client = aioredis.Redis.from_url(redis_server.url)
    yield client
    await client.aclose()


async def publish(redis_url: str, *events: Event) -> None:
    bus = await Bus.connect(Settings(redis_url=redis_url))
    try:
        for event in events:
            await bus.publish(streams.EVENTS, event)
    finally:
        await bus.close()


async def bus_events(redis, kind: str) -> list[Event]:
    found = []
    for _, fields in await redis.xrange(streams.EVENTS):
        event = Event.from_json(fields[b"event"])
        if event.type == kind:
            found.append(event)
    return found


async def test_matching_events_arrive_once_each_signed_after_two_500s(redis_server, redis, tmp_path):
    async with Receiver(SECRET, fail_first=2) as hooks, Receiver(SECRET, status=500) as broken:
        manifest = write_manifest(
            tmp_path, "sdn-hooks",
            notifications=[
                {"url": f"{hooks.url}/hooks/ops", "events": ["rollback.*", "promotion.*"], "secret": "${NOTIFY_SECRET}"},
                {"url": f"{broken.url}/down", "events": ["promotion.blocked"], "format": "slack"},
            ],
        )  # fmt: skip
        env = {"SWIFTDEPLOY_MANIFEST": str(manifest), "NOTIFY_SECRET": SECRET}
        await redis.delete(streams.NOTIFIER_SINCE)  # as on a bus no notifier ever joined
        old = Event(payload=RollbackCompleted(version="0.9.0"), source=SOURCE)
        await publish(redis_server.url, old)  # the retained past, before any notifier started
        replicas = [
            ServiceProcess("notifier", redis_server.url, tmp_path / f"notifier-{i}.log", {**env, "SWIFTDEPLOY_INSTANCE": f"nt-{i}"}).start()
            for i in (1, 2)
        ]  # fmt: skip
        try:
            await wait_ready(redis, "notifier")
            matching = [
                Event(payload=RollbackCompleted(version="1.0.0", reasons=[f"r{i}"]), source=SOURCE) for i in range(6)
            ]
            blocked = Event(payload=PromotionBlocked(reasons=["error rate 50% is above 1%"]), source=SOURCE)
            other = Event(payload=DeployStep(step="router"), source=SOURCE)
            await publish(redis_server.url, *matching, other, blocked, matching[0])  # matching[0] twice: a redelivery
            expected = {e.id for e in [*matching, blocked]}
            deadline = time.monotonic() + 30
            while set(hooks.accepted()) != expected or len(await bus_events(redis, "notification.failed")) < 1:
                assert time.monotonic() < deadline, (
                    f"accepted {hooks.accepted()}, {[p.log()[-2000:] for p in replicas]}"
                )
                await asyncio.sleep(0.1)
            await asyncio.sleep(1.0)  # nothing more may arrive
        finally:
            for process in replicas:
                process.stop()

    assert hooks.accepted() == dict.fromkeys(expected, 1)  # exactly once per event id
    assert all(hooks.tries[i] == 3 for i in expected)  # 500, 500, 200
    assert all(r.signed for r in hooks.received) and all(r.path == "/hooks/ops" for r in hooks.received)
    assert other.id not in hooks.tries  # deploy.step matches no pattern
    assert old.id not in hooks.tries  # older than the first notifier: not news
    assert {r.body["id"] for r in hooks.received} == expected and hooks.received[0].body["summary"]

    sent = await bus_events(redis, "notification.sent")
    assert sorted(e.payload.event_id for e in sent) == sorted(expected)
    assert {(e.payload.attempts, e.payload.status, e.payload.url) for e in sent} == {(3, 200, hooks.url)}
    failed = await bus_events(redis, "notification.failed")
    assert [(e.payload.event_id, e.payload.attempts, e.payload.error) for e in failed] == [(blocked.id, 5, "HTTP 500")]
    assert broken.received[0].body == {"text": "*promotion.blocked* error rate 50% is above 1%"}
    assert not broken.received[0].signed  # no secret configured: sent unsigned
    everything = b"".join(f[b"event"] for _, f in await redis.xrange(streams.EVENTS))
    assert SECRET.encode() not in everything and b"/hooks/ops" not in everything  # no secret or path on the bus
