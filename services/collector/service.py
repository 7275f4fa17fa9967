"""The collector service: one background loop that scrapes every target each interval and publishes.

Each tick: learn the targets (rollout records + the manifest's static ones), scrape them all,
then publish one `metrics.snapshot` per track on the capped metrics stream, keep the latest
snapshot per track and the host stats per project in Redis with a TTL of a few intervals (stale
figures expire rather than linger), and put the edges (`target.down`/`target.up`,
`chaos.detected`) on the events stream. Ticks run on a fixed schedule; a slow tick skips the
ticks it overran instead of bunching them up.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.metrics_core import Metric

from services.collector.scrape import Scraper
from services.collector.targets import Discovery, Project, discover
from services.collector.tracking import CycleReport, Tracker
from swiftdeploy_core.bus import streams
from swiftdeploy_core.bus.events import HostStats
from swiftdeploy_core.bus.retry import redis_errors
from swiftdeploy_core.bus.worker import Context, ServiceSpec
from swiftdeploy_core.errors import BusError
from swiftdeploy_core.project.host import DataRoots, host_stats
from swiftdeploy_core.project.manifest import CollectorSpec, LoadedManifest, load_manifest
from swiftdeploy_core.settings import Settings

NAME = "collector"
TIMEOUT_SHARE = 0.8  # of the interval: a scrape gives up before the next tick is due
TTL_INTERVALS = 3  # the latest snapshot and host stats outlive this many missed ticks, no more
MIN_TTL_S = 5.0

log = logging.getLogger("swiftdeploy.collector")


@dataclass(frozen=True)
class Config:
    """How often to scrape and over what window, from the collector's manifest if it has one."""

    interval: float
    window: float
    manifest: LoadedManifest | None = None

    @property
    def timeout(self) -> float:
        return self.interval * TIMEOUT_SHARE

    @property
    def ttl_ms(self) -> int:
        return math.ceil(max(self.interval * TTL_INTERVALS, MIN_TTL_S) * 1000)

    @classmethod
    def from_settings(cls, settings: Settings) -> Config:
        """The manifest at `settings.manifest` when there is one (ManifestError if it is broken)."""
        if not settings.manifest.exists():
            defaults = CollectorSpec()
            return cls(defaults.interval, defaults.window)
        loaded = load_manifest(settings.manifest)
        spec = loaded.manifest.collector
        return cls(spec.interval, spec.window, loaded)


class CollectorMetrics:
    """The collector's own Prometheus metrics."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.scrape_seconds = Histogram(
            "swiftdeploy_collector_scrape_seconds", "Time to fetch and parse one target's /metrics",
            ["result"], buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5), registry=r,
        )  # fmt: skip
        self.cycle_seconds = Histogram(
            "swiftdeploy_collector_cycle_seconds", "Time of one whole scrape cycle (all targets)",
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10), registry=r,
        )  # fmt: skip
        self.failures = Counter(
            "swiftdeploy_collector_scrape_failures", "Scrapes that failed", ["project", "track"], registry=r
        )
        self.targets = Gauge(
            "swiftdeploy_collector_targets", "Targets by state after the last cycle", ["project", "track", "state"],
            registry=r,
        )  # fmt: skip

    def collect(self) -> Iterable[Metric]:
        return self.registry.collect()

    def observe(self, report: CycleReport, cycle_seconds: float) -> None:
        self.cycle_seconds.observe(cycle_seconds)
        counts: dict[tuple[str, str, str], int] = {}
        for outcome in report.outcomes:
            target = outcome.target
            self.scrape_seconds.labels("ok" if outcome.ok else "failed").observe(outcome.duration)
            if not outcome.ok:
                self.failures.labels(target.project, target.track).inc()
            key = (target.project, target.track, "up" if outcome.ok else "down")
            counts[key] = counts.get(key, 0) + 1
        self.targets.clear()
        for labels, count in counts.items():
            self.targets.labels(*labels).set(count)


class Collector:
    """One collector's state across ticks: the tracker, the last targets, where data lives."""

    def __init__(self, ctx: Context, config: Config, scraper: Scraper, metrics: CollectorMetrics) -> None:
        self.ctx = ctx
        self.config = config
        self.tracker = Tracker(scraper, config.window)
        self.metrics = metrics
        self.roots = DataRoots()
        self.found = Discovery()

    async def tick(self) -> CycleReport:
        started = time.perf_counter()
        await self._discover()
        report = await self.tracker.cycle(self.found.targets, self.found.projects)
        hosts = {name: await self._host(project) for name, project in self.found.projects.items()}
        self.metrics.observe(report, time.perf_counter() - started)
        try:
            with redis_errors("publishing this tick's figures"):
                await self._publish(report, hosts)
        except BusError as exc:  # keep the windows: the next tick publishes again
            log.warning("could not publish this tick's figures: %s", exc)
        return report

    async def _discover(self) -> None:
        try:
            with redis_errors("reading the rollout records"):
                self.found = await discover(self.ctx.bus.redis, self.config.manifest)
        except BusError as exc:
            log.warning("could not read the rollout records (%s); keeping the last %d targets",
                        exc, len(self.found.targets))  # fmt: skip

    async def _host(self, project: Project) -> HostStats:
        return host_stats(await self.roots.for_runtime(project.runtime, project.root))

    async def _publish(self, report: CycleReport, hosts: dict[str, HostStats]) -> None:
        redis, ttl = self.ctx.bus.redis, self.config.ttl_ms
        taken = datetime.now(UTC)
        for event in report.events:
            await self.ctx.emit(event)
        async with redis.pipeline(transaction=False) as pipe:
            for snapshot in report.snapshots:
                snapshot = snapshot.model_copy(update={"host": hosts.get(snapshot.project), "at": taken})
                await self.ctx.emit(snapshot, stream=streams.METRICS)
                pipe.set(
                    streams.latest_snapshot_key(snapshot.project, snapshot.track), snapshot.model_dump_json(), px=ttl
                )
            for project, stats in hosts.items():
                pipe.set(streams.host_stats_key(project), stats.model_dump_json(), px=ttl)
            await pipe.execute()


async def ticks(interval: float, stopping: asyncio.Event | None = None) -> AsyncIterator[int]:
    """Yield on a fixed schedule until `stopping` is set; ticks a slow body overran are skipped."""
    stopping = stopping or asyncio.Event()
    start, n = time.monotonic(), 0
    while not stopping.is_set():
        yield n
        n = max(n + 1, math.ceil((time.monotonic() - start) / interval))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopping.wait(), max(0.0, start + n * interval - time.monotonic()))


def scrape_loop(config: Config, metrics: CollectorMetrics) -> Callable[[Context], Awaitable[None]]:
    async def loop(ctx: Context) -> None:
        async with Scraper(timeout=config.timeout) as scraper:
            collector = Collector(ctx, config, scraper, metrics)
            log.info("collecting every %gs over %gs windows", config.interval, config.window)
            # Ends on the worker's stop flag, not only on cancellation: a cancel that lands inside
            # a Redis call can surface as a connection error, which a tick survives.
            async for _ in ticks(config.interval, ctx.stopping):
                await collector.tick()

    loop.__name__ = "scrape_loop"
    return loop


def build_spec(settings: Settings, metrics: CollectorMetrics | None = None) -> ServiceSpec:
    """The collector as the worker runs it: no handlers of its own, one scrape loop."""
    config = Config.from_settings(settings)
    metrics = metrics or CollectorMetrics()
    return ServiceSpec(
        name=NAME,
        streams=[streams.COLLECTOR_INBOX],
        handlers={},
        background=[scrape_loop(config, metrics)],
        metrics=[metrics],
    )
