"""Per-instance health: an aiohttp server with /healthz, /readyz, /metrics, and the metrics it serves.

/healthz: the event loop answers. /readyz: Redis answered recently and the group is joined.
/metrics: Prometheus text from this instance's own registry (handled/failed by type, handler
latency, consumer lag, reclaimed, dead-lettered).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


@dataclass
class WorkerMetrics:
    """The Prometheus metrics of one service instance, in a registry of its own."""

    service: str
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        labels = ["service", "type"]
        r = self.registry
        self.handled = Counter("swiftdeploy_events_handled", "Events handled and acked", labels, registry=r)
        self.failed = Counter("swiftdeploy_events_failed", "Handler attempts that raised", labels, registry=r)
        self.duplicates = Counter(
            "swiftdeploy_events_duplicate", "Deliveries skipped: event id already processed", ["service"], registry=r
        )
        self.latency = Histogram(
            "swiftdeploy_handler_seconds", "Handler latency", labels, buckets=LATENCY_BUCKETS, registry=r
        )
        self.reclaimed = Counter(
            "swiftdeploy_events_reclaimed",
            "Entries reclaimed from idle consumers (XAUTOCLAIM)",
            ["service"],
            registry=r,
        )
        self.dead = Counter(
            "swiftdeploy_events_dead_lettered", "Entries sent to the dead-letter stream", ["service"], registry=r
        )
        self.lag = Gauge(
            "swiftdeploy_consumer_lag", "Entries not yet delivered to the group", ["service", "stream"], registry=r
        )
        self.pending = Gauge(
            "swiftdeploy_consumer_pending", "Entries delivered but not acked", ["service", "stream"], registry=r
        )
        self._children: dict[tuple[str, bool], tuple[Any, Any]] = {}
        self.ready = Gauge(
            "swiftdeploy_ready", "1 when Redis is reachable and the group joined", ["service"], registry=r
        )

    def observe(self, event_type: str, seconds: float, ok: bool) -> None:
        children = self._children.get((event_type, ok))
        if children is None:  # labels() takes a lock and builds a key: once per type, not per event
            counter = (self.handled if ok else self.failed).labels(self.service, event_type)
            children = self._children[(event_type, ok)] = (self.latency.labels(self.service, event_type), counter)
        children[0].observe(seconds)
        children[1].inc()


@dataclass
class HealthServer:
    """The aiohttp server of one instance; `port` is known after `start()`."""

    metrics: WorkerMetrics
    is_ready: Callable[[], bool]
    host: str = "127.0.0.1"
    port: int = 0
    started: float = field(default_factory=time.monotonic)
    _runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/metrics", self._metrics)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        if addresses := self._runner.addresses:  # the bound (host, port): port 0 means "pick one"
            self.port = addresses[0][1]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _healthz(self, _: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "uptime": round(time.monotonic() - self.started, 3)})

    async def _readyz(self, _: web.Request) -> web.Response:
        ready = self.is_ready()
        return web.json_response({"ready": ready}, status=200 if ready else 503)

    async def _metrics(self, _: web.Request) -> web.Response:
        body = generate_latest(self.metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})
