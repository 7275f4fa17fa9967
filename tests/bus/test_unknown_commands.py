"""A command a service cannot handle (no handler, or a newer client's type it cannot decode) is
dead-lettered with its reason, and the client that sent it hears that reason at once."""

from __future__ import annotations

import asyncio
import json
import time
import uuid

import pytest

from swiftdeploy_core.bus import streams
from swiftdeploy_core.bus.connection import Bus
from swiftdeploy_core.bus.events import AuditRequested, DeployStep, Event, Source
from swiftdeploy_core.bus.runner import running
from swiftdeploy_core.bus.wire import FIELD_CORRELATION, FIELD_EVENT, FIELD_TYPE
from swiftdeploy_core.bus.worker import Context, ServiceSpec
from swiftdeploy_core.errors import RequestRejected
from swiftdeploy_core.settings import Settings
from tests.eventually import eventually

CLI = Source(service="cli", instance="newer-client")
INBOX = streams.ORCHESTRATOR_INBOX


async def on_step(payload: DeployStep, event: Event, ctx: Context) -> None:
    pass


def settings(redis_url: str) -> Settings:
    return Settings(redis_url=redis_url, block_ms=100, lease_ms=600, shutdown_grace=2.0)


@pytest.fixture
async def bus(redis_url: str):
    bus = await Bus.connect(settings(redis_url))
    yield bus
    await bus.close()


async def acked_all(bus: Bus, stream: str) -> bool:
    [group] = await bus.redis.xinfo_groups(stream)
    return bool(group["lag"] == 0 and group["pending"] == 0)


async def dead_letters(bus: Bus) -> list[dict[bytes, bytes]]:
    return [fields for _, fields in await bus.redis.xrange(streams.DEAD_LETTER)]


async def test_a_command_without_a_handler_ends_the_clients_wait_with_the_reason(redis_url: str, bus: Bus) -> None:
    spec = ServiceSpec(name="orchestrator", streams=[INBOX], handlers={DeployStep: on_step})
    async with running(spec, settings(redis_url)):
        command = Event(payload=AuditRequested(), source=CLI)  # a real type, sent to the wrong service
        started = time.monotonic()
        with pytest.raises(RequestRejected, match=r"orchestrator refused audit\.requested: no handler for it"):
            await bus.request(INBOX, command, expect={"audit.rendered"}, timeout=8)
        assert time.monotonic() - started < 3  # answered, not timed out
    [dead] = await dead_letters(bus)
    assert dead[b"type"] == b"audit.requested" and dead[b"attempts"] == b"1"
    assert dead[b"error"] == b"orchestrator has no handler for audit.requested"


async def test_a_newer_clients_command_type_is_refused_quickly_and_kept_in_the_dead_letters(
    redis_url: str, bus: Bus
) -> None:
    correlation = uuid.uuid4().hex
    newer = {  # what a newer client puts on the wire: a command type this service never heard of
        "id": uuid.uuid4().hex, "type": "deploy.dry_run_requested", "correlation_id": correlation,
        "source": CLI.model_dump(), "timestamp": "2026-01-01T00:00:00Z",
        "payload": {"type": "deploy.dry_run_requested", "manifest": {}},
    }  # fmt: skip
    spec = ServiceSpec(name="orchestrator", streams=[INBOX], handlers={DeployStep: on_step})
    async with running(spec, settings(redis_url)):
        since = await bus.cursor()
        started = time.monotonic()
        await bus.redis.xadd(
            INBOX,
            {FIELD_EVENT: json.dumps(newer), FIELD_TYPE: "deploy.dry_run_requested", FIELD_CORRELATION: correlation},
        )
        replies = bus.follow(correlation_id=correlation, since=since)
        reply = await asyncio.wait_for(anext(replies), 8)  # a timeout here is the bug
        await replies.aclose()
        waited = time.monotonic() - started
    assert reply.type == "command.rejected" and waited < 3
    assert reply.payload.command == "deploy.dry_run_requested"
    assert reply.payload.reason == "orchestrator does not know the event type deploy.dry_run_requested"
    assert reply.causation_id == newer["id"] and reply.source.service == "orchestrator"
    [dead] = await dead_letters(bus)
    assert dead[b"error"] == b"orchestrator does not know the event type deploy.dry_run_requested"
    assert json.loads(dead[b"event"]) == newer


async def test_an_unhandled_fact_on_a_shared_stream_is_acked_quietly(redis_url: str, bus: Bus) -> None:
    """Only an inbox's entries are requests: facts on EVENTS that a service ignores are no error."""
    spec = ServiceSpec(name="orchestrator", streams=[streams.EVENTS], handlers={DeployStep: on_step})
    async with running(spec, settings(redis_url)):
        await bus.publish(streams.EVENTS, Event(payload=AuditRequested(), source=CLI))
        await eventually(lambda: acked_all(bus, streams.EVENTS), "the audit.requested fact acked")
    assert await dead_letters(bus) == []
    assert [e.type for e in [Event.from_json(f[b"event"]) for _, f in await bus.redis.xrange(streams.EVENTS)]] == [
        "audit.requested"
    ]
