"""The service base in-process against a real redis-server: handlers, acks, retries, dead letters."""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis

from swiftdeploy_core.bus import streams
from swiftdeploy_core.bus.connection import Bus
from swiftdeploy_core.bus.events import DeployStep, Event, PingRequested, Source
from swiftdeploy_core.bus.runner import running
from swiftdeploy_core.bus.worker import Context, Handler, Reject, ServiceSpec
from swiftdeploy_core.settings import Settings
from tests.eventually import eventually

CLI = Source(service="cli", instance="test")
INBOX = streams.ORCHESTRATOR_INBOX
COUNTS = "test:counts"


def fast_settings(redis_url: str, **extra) -> Settings:
    base = dict(redis_url=redis_url, block_ms=100, lease_ms=600, max_deliveries=3, shutdown_grace=2.0)
    return Settings(**{**base, **extra})


def step(name: str) -> Event:
    return Event(payload=DeployStep(step=name), source=CLI)


async def count_once(payload: DeployStep, event: Event, ctx: Context) -> None:
    ctx.on_commit("HINCRBY", COUNTS, payload.step, 1)


def spec(handler: Handler[DeployStep] = count_once) -> ServiceSpec:
    return ServiceSpec(name="orchestrator", streams=[INBOX], handlers={DeployStep: handler})


@pytest.fixture
async def bus(redis_url: str):
    bus = await Bus.connect(fast_settings(redis_url))
    yield bus
    await bus.close()


async def counts(redis: aioredis.Redis) -> dict[str, int]:
    return {k.decode(): int(v) for k, v in (await redis.hgetall(COUNTS)).items()}


async def test_every_service_answers_ping_with_pong(redis_url: str, bus: Bus) -> None:
    async with running(spec(), fast_settings(redis_url, instance="orch-1")):
        ping = Event(payload=PingRequested(service="orchestrator"), source=CLI)
        reply = await bus.request(INBOX, ping, expect={"pong"}, timeout=3)
    assert reply.payload.service == "orchestrator" and reply.payload.instance == "orch-1"
    assert reply.causation_id == ping.id


async def test_events_are_handled_and_acked_and_duplicates_apply_once(redis_url: str, bus: Bus) -> None:
    events = [step(f"e{i}") for i in range(300)]
    await bus.publish_many(INBOX, events)
    await bus.publish_many(INBOX, events[:50])  # the same event ids delivered a second time
    async with running(spec(), fast_settings(redis_url)):
        await eventually(lambda: _acked_all(bus), "every entry acked")
    assert await counts(bus.redis) == {f"e{i}": 1 for i in range(300)}


async def test_a_side_effect_free_service_skips_the_lookup_and_its_commit_drops_the_repeats(
    redis_url: str, bus: Bus
) -> None:
    handled: list[str] = []

    async def pure(payload: DeployStep, event: Event, ctx: Context) -> None:
        handled.append(event.id)
        await count_once(payload, event, ctx)

    events = [step(f"e{i}") for i in range(200)]
    await bus.publish_many(INBOX, events)
    await bus.publish_many(INBOX, events[:30])  # the same event ids delivered a second time
    service = ServiceSpec(name="orchestrator", streams=[INBOX], handlers={DeployStep: pure}, side_effect_free=True)
    async with running(service, fast_settings(redis_url)) as worker:
        await eventually(lambda: _acked_all(bus), "every entry acked")
        duplicates = worker.metrics.duplicates.labels("orchestrator")._value.get()
    assert await counts(bus.redis) == {f"e{i}": 1 for i in range(200)}
    assert len(handled) == 230  # nothing looked up: the repeats ran, and their writes were dropped
    assert duplicates == 30


async def _acked_all(bus: Bus) -> bool:
    groups = await bus.redis.xinfo_groups(INBOX)
    return bool(groups) and groups[0]["lag"] == 0 and groups[0]["pending"] == 0


async def test_a_handler_that_always_fails_is_dead_lettered_while_others_flow(redis_url: str, bus: Bus) -> None:
    tries: list[str] = []

    async def fragile(payload: DeployStep, event: Event, ctx: Context) -> None:
        if payload.step == "poison":
            tries.append(event.id)
            raise ValueError("disk on fire")
        await count_once(payload, event, ctx)

    await bus.publish(INBOX, step("poison"))
    await bus.publish_many(INBOX, [step(f"ok{i}") for i in range(100)])
    async with running(spec(fragile), fast_settings(redis_url)):
        await eventually(lambda: _acked_all(bus), "every entry acked")
    assert len(await counts(bus.redis)) == 100
    assert len(tries) == 3  # settings.max_deliveries
    [(_, dead)] = await bus.redis.xrange(streams.DEAD_LETTER)
    assert dead[b"error"] == b"ValueError: disk on fire" and dead[b"attempts"] == b"3"
    assert Event.from_json(dead[b"event"]).payload.step == "poison"


async def test_reject_dead_letters_at_once(redis_url: str, bus: Bus) -> None:
    async def refuse(payload: DeployStep, event: Event, ctx: Context) -> None:
        raise Reject("bad manifest")

    await bus.publish(INBOX, step("x"))
    async with running(spec(refuse), fast_settings(redis_url)):
        await eventually(lambda: _acked_all(bus), "every entry acked")
    [(_, dead)] = await bus.redis.xrange(streams.DEAD_LETTER)
    assert dead[b"error"] == b"rejected: bad manifest" and dead[b"attempts"] == b"1"


async def test_malformed_entries_are_dead_lettered_and_the_loop_keeps_going(redis_url: str, bus: Bus) -> None:
    await bus.redis.xadd(INBOX, {"event": "{not json"})
    await bus.redis.xadd(INBOX, {"something": "else"})
    await bus.redis.xadd(
        INBOX, {"event": '{"source": {"service": "a", "instance": "b"}, "payload": {"type": "no.such"}}'}
    )
    await bus.publish(INBOX, step("fine"))
    async with running(spec(), fast_settings(redis_url)):
        await eventually(lambda: _acked_all(bus), "every entry acked")
    dead = await bus.redis.xrange(streams.DEAD_LETTER)
    assert [d[b"error"].split(b":")[0] for _, d in dead] == [b"malformed event", b"malformed entry", b"malformed event"]
    assert await counts(bus.redis) == {"fine": 1}


async def test_a_dead_consumers_entries_are_reclaimed_after_the_lease(redis_url: str, bus: Bus) -> None:
    await bus.redis.xgroup_create(INBOX, streams.group("orchestrator"), id="0", mkstream=True)
    await bus.publish_many(INBOX, [step(f"r{i}") for i in range(20)])
    taken = await bus.redis.xreadgroup(streams.group("orchestrator"), "ghost", {INBOX: ">"}, count=20)
    assert len(taken[0][1]) == 20  # the ghost took them all, then "died"
    async with running(spec(), fast_settings(redis_url, lease_ms=300)) as worker:
        await eventually(lambda: _acked_all(bus), "every entry acked")
        assert worker.metrics.reclaimed.labels("orchestrator")._value.get() == 20
    assert await counts(bus.redis) == {f"r{i}": 1 for i in range(20)}


async def test_a_write_redis_refuses_is_dead_lettered_and_the_rest_of_the_batch_commits(
    redis_url: str, bus: Bus
) -> None:
    async def sloppy(payload: DeployStep, event: Event, ctx: Context) -> None:
        if payload.step == "typo":
            ctx.on_commit("HINCRBYY", COUNTS, "typo", 1)  # not a Redis command
        else:
            await count_once(payload, event, ctx)

    await bus.publish_many(INBOX, [step("a"), step("typo"), step("b")])
    async with running(spec(sloppy), fast_settings(redis_url)):
        await eventually(lambda: _acked_all(bus), "every entry acked")
        await eventually(lambda: _dead_count(bus, 1), "one dead letter")
    assert await counts(bus.redis) == {"a": 1, "b": 1}
    [(_, dead)] = await bus.redis.xrange(streams.DEAD_LETTER)
    assert dead[b"error"].startswith(b"commit refused: ") and b"HINCRBYY" in dead[b"error"].upper()


async def _dead_count(bus: Bus, n: int) -> bool:
    return await bus.redis.xlen(streams.DEAD_LETTER) == n
