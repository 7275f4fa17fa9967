"""Per-instance health and logs: /healthz, /readyz, /metrics, JSON log lines with correlation ids."""

from __future__ import annotations

import json
import logging

import aiohttp

from swiftdeploy_core.bus import logs, streams
from swiftdeploy_core.bus.connection import Bus
from swiftdeploy_core.bus.events import DeployStep, Event, Source
from swiftdeploy_core.bus.runner import running
from swiftdeploy_core.bus.worker import Context, ServiceSpec
from swiftdeploy_core.settings import Settings
from tests.eventually import eventually

CLI = Source(service="cli", instance="test")


async def test_health_ready_and_metrics_describe_the_instance(redis_url: str) -> None:
    async def fail_once_per_event(payload: DeployStep, event: Event, ctx: Context) -> None:
        if payload.step == "bad":
            raise RuntimeError("no")

    settings = Settings(redis_url=redis_url, block_ms=100, max_deliveries=1, instance="orch-h")
    spec = ServiceSpec(name="orchestrator", streams=[streams.ORCHESTRATOR_INBOX],
                       handlers={DeployStep: fail_once_per_event})  # fmt: skip
    bus = await Bus.connect(settings)
    await bus.publish_many(
        streams.ORCHESTRATOR_INBOX, [Event(payload=DeployStep(step=s), source=CLI) for s in ("ok", "ok2", "bad")]
    )
    async with running(spec, settings) as worker, aiohttp.ClientSession() as http:
        await eventually(lambda: worker.metrics.dead.labels("orchestrator")._value.get() >= 1, "the bad event dead")
        async with http.get(f"{worker.health.url}/healthz") as r:
            assert r.status == 200 and (await r.json())["status"] == "ok"
        async with http.get(f"{worker.health.url}/readyz") as r:
            assert r.status == 200
        async with http.get(f"{worker.health.url}/metrics") as r:
            text = await r.text()
        beat = json.loads(await bus.redis.get(streams.health_key("orchestrator", "orch-h")))
    await bus.close()
    assert 'swiftdeploy_events_handled_total{service="orchestrator",type="deploy.step"} 2.0' in text
    assert 'swiftdeploy_events_failed_total{service="orchestrator",type="deploy.step"} 1.0' in text
    assert 'swiftdeploy_events_dead_lettered_total{service="orchestrator"} 1.0' in text
    assert "swiftdeploy_handler_seconds_bucket" in text and "swiftdeploy_consumer_lag" in text
    assert beat["ready"] is True and beat["health_url"] == worker.health.url


def test_log_lines_are_json_with_the_events_correlation_id(capsys) -> None:
    logs.configure(Settings(log_level="DEBUG"), "gatekeeper")
    log = logging.getLogger("swiftdeploy.worker")
    with logs.event_context("e1", "decision.requested", "c1"):
        logs.job(log, logs.DONE, "decision.requested e1 1.0ms", duration_ms=1.0)
    log.info("outside")
    first, second = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert first["marker"] == "←" and first["correlation_id"] == "c1" and first["event_id"] == "e1"
    assert first["service"] == "gatekeeper" and first["duration_ms"] == 1.0
    assert "correlation_id" not in second and second["message"] == "outside"
