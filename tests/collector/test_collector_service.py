"""The collector service end to end: real Redis, real workload processes, a hung static target.

A rollout record names a stable and a canary workload; the manifest adds a target that accepts
connections and never answers. The service publishes a snapshot per track each interval on the
metrics stream (never the audit stream), keeps the latest ones and the host stats under keys that
expire, reports a stopped workload once, its return once, and a chaos injected by plain HTTP.
"""

from __future__ import annotations

import asyncio
import itertools
import time

import aiohttp
import redis.asyncio as aioredis
from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest

from services.collector.service import CollectorMetrics, build_spec, ticks
from swiftdeploy_core.bus import streams
from swiftdeploy_core.bus.events import Event, HostStats, MetricsSnapshot
from swiftdeploy_core.bus.runner import running
from swiftdeploy_core.project.state import Instance, Phase, RolloutState, TrackState
from swiftdeploy_core.settings import Settings
from tests.eventually import eventually
from tests.servers import free_port

INTERVAL = 0.5


async def hung_server() -> tuple[web.AppRunner, str]:
    async def hang(request: web.Request) -> web.Response:
        await asyncio.sleep(3600)
        raise AssertionError("unreachable")

    app = web.Application()
    app.router.add_get("/metrics", hang)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, f"http://127.0.0.1:{port}"


def record(stable, canary, root: str) -> RolloutState:
    def track(name: str, workload, version: str) -> TrackState:
        instance = Instance(id=str(workload.port), name=f"app-{name}", track=name, version=version, url=workload.url)
        return TrackState(track=name, version=version, image="app:x", weight=50, instances=[instance])

    return RolloutState(project="app", phase=Phase.progressing, runtime="process", root=root,
                        stable=track("stable", stable, "1.0"), canary=track("canary", canary, "2.0"))  # fmt: skip


async def events_of(client: aioredis.Redis, stream: str) -> list[Event]:
    return [Event.from_json(fields[b"event"]) for _, fields in await client.xrange(stream)]


async def wait_for(predicate, timeout: float = 10.0, what: str = "the collector's output") -> None:
    await eventually(predicate, what, timeout, interval=0.1)


async def test_the_service_publishes_per_track_and_reports_edges(redis_url, make_workload, tmp_path):
    stable, canary = make_workload(mode="stable", version="1.0"), make_workload(mode="canary", version="2.0")
    runner, hung = await hung_server()
    (tmp_path / "manifest.yaml").write_text(
        'services: {name: app, image: "app:1", port: 3000, version: "1.0"}\n'
        'nginx: {image: "nginx:1", port: 8080}\nnetwork: {name: app-net}\nruntime: process\n'
        f'collector: {{interval: {INTERVAL}, window: 5, targets: ["{hung}"]}}\n'
    )
    settings = Settings(redis_url=redis_url, manifest=tmp_path / "manifest.yaml", stream_maxlen=1000)
    client = aioredis.Redis.from_url(redis_url)
    await client.set(streams.rollout_key("app"), record(stable, canary, str(tmp_path)).model_dump_json())
    metrics = CollectorMetrics()
    try:
        async with running(build_spec(settings, metrics), settings) as worker, aiohttp.ClientSession() as http:
            await asyncio.sleep(6 * INTERVAL)
            async with http.get(f"{worker.health.url}/metrics") as response:
                own = await response.text()  # the collector's own figures, on the instance's /metrics
            assert "swiftdeploy_collector_cycle_seconds_count" in own and "swiftdeploy_events_handled" in own
            async with http.post(f"{canary.url}/chaos", json={"mode": "error", "rate": 0.5}) as response:
                assert response.status == 200
            await asyncio.get_running_loop().run_in_executor(None, stable.stop)
            await wait_for(lambda: _has(client, "target.down", stable.url))
            await asyncio.get_running_loop().run_in_executor(None, stable.start)
            await wait_for(lambda: _has(client, "target.up", stable.url))
            await wait_for(lambda: _has(client, "chaos.detected", canary.url))
            for _ in range(20):  # application traffic: scrapes and probes alone are no data
                async with http.get(f"{canary.url}/") as response:
                    await response.read()
            # A new series has a rate from its second scrape on: a busy machine may need more than two intervals.
            await wait_for(lambda: _canary_rate(client))

            latest = MetricsSnapshot.model_validate_json(await client.get(streams.latest_snapshot_key("app", "canary")))
            ttl = await client.pttl(streams.latest_snapshot_key("app", "canary"))
            host = HostStats.model_validate_json(await client.get(streams.host_stats_key("app")))
    finally:
        await runner.cleanup()

    snapshots = [e.payload for e in await events_of(client, streams.METRICS)]
    events = await events_of(client, streams.EVENTS)
    await client.aclose()

    # Per track, every interval, on the metrics stream only; the hung target did not slow them.
    by_track = {t: [s for s in snapshots if s.track == t] for t in ("stable", "canary")}
    assert len(by_track["canary"]) >= 8 and len(by_track["stable"]) >= 8
    assert not any(e.type == "metrics.snapshot" for e in events)
    stamps = [e.timestamp.timestamp() for e in await _metric_events(redis_url) if e.payload.track == "canary"]
    gaps = [b - a for a, b in itertools.pairwise(stamps)]
    assert sorted(gaps)[int(len(gaps) * 0.9)] < INTERVAL * 1.5, gaps  # a busy machine may delay a few
    assert latest.version == "2.0" and latest.request_rate is not None and latest.host is not None
    assert 0 < ttl <= 5000  # a few intervals (at least 5 s): stale figures expire
    assert host.path == str(tmp_path.resolve()) and host.cpu_count >= 1

    # Edges: once each, not every tick.
    down = [e.payload for e in events if e.type == "target.down"]
    assert [(d.url, d.track) for d in down if d.url == stable.url] == [(stable.url, "stable")]
    assert [d.url for d in down if d.url == hung].count(hung) == 1  # the hung target, once
    assert [e.payload.url for e in events if e.type == "target.up"] == [stable.url]
    (chaos,) = [e.payload for e in events if e.type == "chaos.detected"]
    assert (chaos.target, chaos.previous, chaos.current) == (canary.url, "none", "error")

    # The collector's own metrics.
    assert metrics.registry.get_sample_value("swiftdeploy_collector_targets", {"project": "app", "track": "stable", "state": "down"}) == 1  # the hung one  # fmt: skip
    assert metrics.registry.get_sample_value("swiftdeploy_collector_scrape_failures_total", {"project": "app", "track": "stable"}) >= 3  # fmt: skip
    served = CollectorRegistry()  # what a health server's registry does with them
    served.register(metrics)
    assert b"swiftdeploy_collector_cycle_seconds_count" in generate_latest(served)


async def _canary_rate(client: aioredis.Redis) -> bool:
    raw = await client.get(streams.latest_snapshot_key("app", "canary"))
    return raw is not None and MetricsSnapshot.model_validate_json(raw).request_rate is not None


async def _has(client: aioredis.Redis, kind: str, url: str) -> bool:
    return any(e.type == kind and getattr(e.payload, "url", getattr(e.payload, "target", None)) == url
               for e in await events_of(client, streams.EVENTS))  # fmt: skip


async def _metric_events(redis_url: str) -> list[Event]:
    client = aioredis.Redis.from_url(redis_url)
    try:
        return await events_of(client, streams.METRICS)
    finally:
        await client.aclose()


async def test_ticks_keep_their_schedule_and_skip_what_a_slow_tick_overran():
    started, seen = time.monotonic(), []
    async for n in ticks(0.1):
        seen.append((n, round(time.monotonic() - started, 2)))
        if n == 1:
            await asyncio.sleep(0.25)  # overruns ticks 2 and 3
        if len(seen) == 4:
            break
    assert [n for n, _ in seen] == [0, 1, 4, 5]
    assert all(abs(at - n * 0.1) < 0.05 for n, at in seen), seen
