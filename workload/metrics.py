"""The workload's Prometheus metrics, held in one registry per app.

Request counts and latencies are kept in plain dicts by `RequestStats` and turned into metric
families only when `/metrics` is scraped: the hot path is a dict update, and the exposition has
exactly the contract's names (no `_created` series).
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString
from quart import Quart, Response, g, request

# Fine between 0.1 s and 1 s so that a 500 ms P99 is measurable, and up to 10 s for slow chaos.
BUCKETS: tuple[float, ...] = (
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5,
    0.6, 0.7, 0.8, 0.9, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0,
)  # fmt: skip
# The `le` label of each bucket, +Inf last, spelled as Prometheus' Go clients spell it.
LE_LABELS: tuple[str, ...] = tuple(
    floatToGoString(bound)  # type: ignore[no-untyped-call]  # prometheus_client.utils has no annotations
    for bound in (*BUCKETS, float("inf"))
)
UNMATCHED_PATH = "<unmatched>"  # every URL that matches no route: random URLs add no series
OTHER_METHOD = "OTHER"
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

Labels = tuple[str, str, str]  # method, path, status_code


class RequestStats:
    """Counts and latency buckets per (method, path, status_code). Used from one event loop."""

    def __init__(self) -> None:
        self.counts: dict[Labels, int] = {}
        self.buckets: dict[Labels, list[int]] = {}
        self.sums: dict[Labels, float] = {}

    def observe(self, method: str, path: str, status: int, seconds: float) -> None:
        labels = (method if method in KNOWN_METHODS else OTHER_METHOD, path, str(status))
        counts = self.buckets.get(labels)
        if counts is None:
            counts = self.buckets[labels] = [0] * (len(BUCKETS) + 1)
            self.counts[labels] = 0
            self.sums[labels] = 0.0
        counts[bisect_left(BUCKETS, seconds)] += 1  # le is inclusive: 0.1 s lands in le="0.1"
        self.counts[labels] += 1
        self.sums[labels] += seconds


class WorkloadCollector(Collector):
    """Turns `RequestStats` and the app's state into the contract's metric families."""

    def __init__(self, stats: RequestStats, started: float, mode: str, chaos: Callable[[], int]) -> None:
        self.stats = stats
        self.started = started
        self.mode = mode
        self.chaos = chaos

    def collect(self) -> Iterator[Metric]:
        names = ("method", "path", "status_code")
        requests = CounterMetricFamily("http_requests", "HTTP requests answered.", labels=names)
        latency = HistogramMetricFamily(
            "http_request_duration_seconds", "Time to answer an HTTP request.", labels=names
        )
        for labels, count in sorted(self.stats.counts.items()):
            requests.add_metric(list(labels), count)
            latency.add_metric(list(labels), _cumulative(self.stats.buckets[labels]), self.stats.sums[labels])
        yield requests
        yield latency
        yield _gauge("app_uptime_seconds", "Seconds since the app started.", time.monotonic() - self.started)
        yield _gauge("app_mode", "Deployment mode: 0 stable, 1 canary.", 1 if self.mode == "canary" else 0)
        yield _gauge("chaos_active", "Active chaos: 0 none, 1 slow, 2 error.", self.chaos())


def _cumulative(counts: list[int]) -> list[tuple[str, float]]:
    total = 0
    out: list[tuple[str, float]] = []
    for le, count in zip(LE_LABELS, counts):
        total += count
        out.append((le, total))
    return out


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)


class Metrics:
    """One app's registry and request statistics."""

    def __init__(self, mode: str, chaos: Callable[[], int], started: float | None = None) -> None:
        self.stats = RequestStats()
        self.started = time.monotonic() if started is None else started
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(WorkloadCollector(self.stats, self.started, mode, chaos))

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


def instrument(app: Quart, metrics: Metrics) -> None:
    """Register the request-metrics middleware; call it before any other hook so that the time
    measured includes every later hook (chaos latency among them)."""

    @app.before_request
    async def _start_timer() -> None:
        g.metrics_started = time.perf_counter()

    @app.after_request
    async def _observe(response: Response) -> Response:
        started = g.get("metrics_started")
        if started is not None:
            rule = request.url_rule
            path = rule.rule if rule is not None else UNMATCHED_PATH
            metrics.stats.observe(request.method, path, response.status_code, time.perf_counter() - started)
        return response
