"""A decision request the gatekeeper must refuse is answered with the refusal, not a timeout:
an input nested deeper than the user-input bound (but within what the bus decodes) published
straight on the real bus gets `command.rejected` naming the field, at once."""

from __future__ import annotations

import json
import time
from pathlib import Path

import policies
from services.gatekeeper.embedded import EmbeddedEngine
from services.gatekeeper.service import build_spec
from swiftdeploy_core.bus import streams
from swiftdeploy_core.bus.connection import Bus
from swiftdeploy_core.bus.events import CommandRejected, DecisionRequested, Event, Source
from swiftdeploy_core.bus.runner import running
from swiftdeploy_core.settings import Settings

CLI = Source(service="cli", instance="test")


async def test_a_too_deep_input_is_refused_to_its_requester(redis_url: str, tmp_path: Path) -> None:
    policies.write_default_policies(tmp_path)
    settings = Settings(redis_url=redis_url, block_ms=100, shutdown_grace=2.0)
    deep = {"cpu_load": 1, "nested": json.loads("[" * 40 + "]" * 40)}
    bus = await Bus.connect(settings)
    try:
        async with running(build_spec(settings, EmbeddedEngine(policies.project_dir(tmp_path))), settings):
            request = Event(payload=DecisionRequested(domain="infra", input=deep), source=CLI)
            started = time.monotonic()
            reply = await bus.request(streams.GATEKEEPER_INBOX, request,
                                      expect={"decision.made", "command.rejected"}, timeout=5)  # fmt: skip
            assert isinstance(reply.payload, CommandRejected)
            assert reply.payload.command == "decision.requested"
            assert reply.payload.reason.startswith("input.nested[0][0]")
            assert reply.payload.reason.endswith("nested more than 32 levels deep")
            assert time.monotonic() - started < 2
            healthy = Event(payload=DecisionRequested(domain="infra", input={"cpu_load": 0.1, "disk_free_gb": 50}),
                            source=CLI)  # fmt: skip
            made = await bus.request(streams.GATEKEEPER_INBOX, healthy, expect={"decision.made"}, timeout=5)
            assert made.payload.allow
    finally:
        await bus.close()
