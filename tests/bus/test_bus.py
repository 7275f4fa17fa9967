"""The bus client against a real redis-server: publish, follow, request/reply, errors."""

from __future__ import annotations

import asyncio

import pytest

from swiftdeploy_core.bus import streams
from swiftdeploy_core.bus.connection import Bus
from swiftdeploy_core.bus.events import DeployStep, Event, PingRequested, Pong, Source
from swiftdeploy_core.bus.wire import matches
from swiftdeploy_core.errors import ControlPlaneDown, RequestTimeout
from swiftdeploy_core.settings import Settings
from tests.servers import free_port

CLI = Source(service="cli", instance="test")


def step(name: str, correlation_id: str | None = None) -> Event:
    extra = {"correlation_id": correlation_id} if correlation_id else {}
    return Event(payload=DeployStep(step=name), source=CLI, **extra)


@pytest.fixture
async def bus(redis_url: str):
    bus = await Bus.connect(Settings(redis_url=redis_url, stream_maxlen=1000))
    yield bus
    await bus.close()


async def test_connect_to_nothing_says_the_control_plane_is_down() -> None:
    with pytest.raises(ControlPlaneDown, match="not reachable"):
        await Bus.connect(Settings(redis_url=f"redis://127.0.0.1:{free_port()}/0"))


async def test_published_events_come_back_from_follow_in_order(bus: Bus) -> None:
    since = await bus.cursor()
    sent = [step(f"s{i}") for i in range(5)]
    for event in sent:
        await bus.publish(streams.EVENTS, event)
    got = []
    async for event in bus.follow(since=since):
        got.append(event)
        if len(got) == 5:
            break
    assert [e.id for e in got] == [e.id for e in sent]
    assert got[0] == sent[0]


async def test_follow_filters_by_correlation_id_and_type_globs(bus: Bus) -> None:
    since = await bus.cursor()
    mine = step("mine")
    await bus.publish(streams.EVENTS, step("other"))
    await bus.publish(streams.EVENTS, Event(payload=PingRequested(), source=CLI, correlation_id=mine.correlation_id))
    await bus.publish(streams.EVENTS, mine)
    follower = bus.follow(correlation_id=mine.correlation_id, types=["deploy.*"], since=since)
    first = await asyncio.wait_for(follower.__anext__(), 2)
    await follower.aclose()
    assert first.id == mine.id


async def test_streams_are_capped_near_their_maxlen(bus: Bus) -> None:
    await bus.publish_many(streams.EVENTS, [step(str(i)) for i in range(3000)])
    assert await bus.redis.xlen(streams.EVENTS) < 2000  # approximate MAXLEN 1000


async def test_a_request_gets_the_reply_with_its_correlation_id(bus: Bus) -> None:
    request = Event(payload=PingRequested(service="x"), source=CLI)

    async def answer() -> None:
        async for event in bus.follow(stream=streams.GATEKEEPER_INBOX, since="0"):
            await bus.publish(streams.EVENTS, step("noise"))  # unrelated traffic first
            await bus.publish(streams.EVENTS, event.caused(Pong(service="x", instance="1"), CLI))
            return

    responder = asyncio.create_task(answer())
    reply = await bus.request(streams.GATEKEEPER_INBOX, request, expect={"pong"}, timeout=3)
    await responder
    assert reply.type == "pong" and reply.causation_id == request.id


async def test_a_request_nobody_answers_times_out_with_a_clear_error(bus: Bus) -> None:
    request = Event(payload=PingRequested(service="nobody"), source=CLI)
    with pytest.raises(RequestTimeout, match=r"no pong for ping\.requested"):
        await bus.request(streams.AUDITOR_INBOX, request, expect={"pong"}, timeout=0.2)


def test_type_globs() -> None:
    assert matches("deploy.step", ["deploy.*"]) and matches("x", None)
    assert not matches("canary.started", ["deploy.*", "pong"])
