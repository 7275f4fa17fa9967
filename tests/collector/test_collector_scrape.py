"""Scraping real HTTP /metrics endpoints served by a tiny prometheus_client app on loopback."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from services.collector.scrape import LineCache, MetricNames, Scraper, Target, parse
from tests.servers import free_port

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class TinyApp:
    """The metrics a workload exposes, with knobs a test turns."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("http_requests", "requests", ["method", "path", "status_code"], registry=self.registry)
        self.latency = Histogram("http_request_duration_seconds", "latency", ["method", "path"], registry=self.registry)
        self.chaos = Gauge("chaos_active", "chaos", registry=self.registry)

    async def metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(self.registry), content_type="text/plain")


async def hang(request: web.Request) -> web.Response:
    await asyncio.sleep(3600)
    raise AssertionError("unreachable")


async def test_a_scrape_keeps_request_counters_latency_buckets_and_the_chaos_gauge(serve):
    app = TinyApp()
    app.requests.labels("GET", "/", "200").inc(7)
    app.requests.labels("GET", "/", "500").inc(2)
    app.latency.labels("GET", "/").observe(0.3)
    app.chaos.set(2)
    url = await serve(app.metrics)

    before = time.time()
    async with Scraper(timeout=1.0) as scraper:
        outcome = await scraper.scrape(Target(url=url, project="app", track="canary"))

    assert outcome.ok and before <= outcome.at <= time.time()
    route = (("method", "GET"), ("path", "/"))
    assert outcome.scrape.requests == {(*route, ("status_code", "200")): 7.0, (*route, ("status_code", "500")): 2.0}
    assert outcome.scrape.buckets[(route, 0.25)] == 0 and outcome.scrape.buckets[(route, 0.5)] == 1
    assert outcome.scrape.buckets[(route, float("inf"))] == 1
    assert outcome.scrape.chaos == 2


async def test_a_hung_target_costs_only_its_own_timeout(serve):
    app = TinyApp()
    live = [await serve(app.metrics) for _ in range(5)]
    hung = await serve(hang)
    targets = [Target(url=url, project="app") for url in [hung, *live]]

    async with Scraper(timeout=0.5) as scraper:
        started = time.perf_counter()
        outcomes = await scraper.scrape_all(targets)
        elapsed = time.perf_counter() - started

    stuck, *others = outcomes
    assert not stuck.ok and stuck.error == "no answer within 0.5s"
    assert all(o.ok and o.duration < 0.25 for o in others), [o.duration for o in others]
    assert elapsed < 0.8  # the cycle ends with the timeout, well inside a 1 s interval


async def test_broken_targets_say_what_went_wrong(serve):
    async def fails(request: web.Request) -> web.Response:
        return web.Response(status=500, text="boom")

    async def garbage(request: web.Request) -> web.Response:
        return web.Response(text='http_requests_total{method="GET" 12\n')

    targets = [Target(url=await serve(fails), project="app"), Target(url=await serve(garbage), project="app"),
               Target(url=f"http://127.0.0.1:{free_port()}", project="app")]  # fmt: skip
    async with Scraper(timeout=1.0) as scraper:
        refused, unparsable, closed = await scraper.scrape_all(targets)

    assert refused.error == "HTTP 500 Internal Server Error"
    assert unparsable.error.startswith("unparsable /metrics")
    assert closed.error.startswith("cannot connect")


def test_a_target_url_may_name_its_metrics_path_or_not():
    assert Target(url="http://10.0.0.1:8000", project="p").metrics_url == "http://10.0.0.1:8000/metrics"
    assert Target(url="http://h:1/metrics", project="p").metrics_url == "http://h:1/metrics"


def test_parse_ignores_what_the_figures_do_not_need():
    scrape = parse("# TYPE process_cpu_seconds_total counter\nprocess_cpu_seconds_total 3.5\n", at=12.0)
    assert scrape.at == 12.0 and not scrape.requests and not scrape.buckets and scrape.chaos is None


def test_scrapes_health_probes_and_chaos_calls_are_not_application_traffic():
    text = "\n".join(
        [
            'http_requests_total{method="GET",path="/",status_code="200"} 7',
            'http_requests_total{method="GET",path="/metrics",status_code="200"} 90',
            'http_requests_total{method="GET",path="/healthz",status_code="200"} 40',
            'http_requests_total{method="POST",path="/chaos",status_code="400"} 2',
            'http_request_duration_seconds_bucket{method="GET",path="/",status_code="200",le="+Inf"} 7',
            'http_request_duration_seconds_bucket{method="GET",path="/metrics",status_code="200",le="+Inf"} 90',
        ]
    )
    scrape = parse(text, at=1.0)
    assert sum(scrape.requests.values()) == 7
    assert sum(scrape.buckets.values()) == 7


def test_a_service_with_its_own_metric_names_is_read_in_the_seed_vocabulary():
    names = MetricNames(requests="svc_requests_total", latency="svc_latency_seconds", status_label="code",
                        path_label="route")  # fmt: skip
    text = (
        "# TYPE svc_requests_total counter\n"
        'svc_requests_total{code="200",route="/orders"} 90\n'
        'svc_requests_total{code="500",route="/orders"} 10\n'
        'svc_requests_total{code="200",route="/healthz"} 50\n'
        "# TYPE svc_latency_seconds histogram\n"
        'svc_latency_seconds_bucket{route="/orders",le="0.1"} 60\n'
        'svc_latency_seconds_bucket{route="/orders",le="+Inf"} 100\n'
        'http_requests_total{status_code="200",path="/"} 7\n'  # the seed's names: not this service's
    )
    scrape = LineCache(names).parse(text, at=1.0)
    assert scrape.requests == {
        (("path", "/orders"), ("status_code", "200")): 90.0,
        (("path", "/orders"), ("status_code", "500")): 10.0,
    }  # the health probes' series is left out, as for the seed's /healthz
    assert scrape.buckets == {((("path", "/orders"),), 0.1): 60.0, ((("path", "/orders"),), math.inf): 100.0}
