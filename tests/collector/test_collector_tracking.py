"""Between cycles the collector remembers each target: edges are reported once, tracks summed."""

from __future__ import annotations

import pytest
from aiohttp import web

from services.collector.scrape import Scraper, Target
from services.collector.targets import Project
from services.collector.tracking import Tracker
from tests.collector.test_collector_router import line
from tests.collector.test_collector_scrape import TinyApp


class Switchable(TinyApp):
    """A TinyApp that can stop answering (503) without closing its port."""

    answering = True

    async def metrics(self, request: web.Request) -> web.Response:
        if not self.answering:
            return web.Response(status=503, text="down")
        return await super().metrics(request)


def types(report) -> list[str]:
    return [event.type for event in report.events]


async def test_a_target_that_stops_answering_is_reported_down_once_and_up_once(serve):
    app = Switchable()
    target = Target(url=await serve(app.metrics), project="app")
    async with Scraper(timeout=1.0) as scraper:
        tracker = Tracker(scraper, window=30)
        assert types(await tracker.cycle([target])) == []  # first sight, answering: nothing to say
        app.answering = False
        down = await tracker.cycle([target])
        assert types(down) == ["target.down"] and down.events[0].error == "HTTP 503 Service Unavailable"
        assert types(await tracker.cycle([target])) == []  # still down: not repeated
        app.answering = True
        assert types(await tracker.cycle([target])) == ["target.up"]
        assert types(await tracker.cycle([target])) == []


async def test_a_chaos_change_is_detected_once_even_when_injected_behind_our_back(serve):
    app = TinyApp()
    target = Target(url=await serve(app.metrics), project="app", track="canary")
    async with Scraper(timeout=1.0) as scraper:
        tracker = Tracker(scraper, window=30)
        assert types(await tracker.cycle([target])) == []
        app.chaos.set(2)  # e.g. `curl -X POST /chaos` straight at the instance
        (event,) = (await tracker.cycle([target])).events
        assert (event.type, event.previous, event.current, event.track) == ("chaos.detected", "none", "error", "canary")
        report = await tracker.cycle([target])
        assert types(report) == [] and report.snapshots[0].chaos == "error"
        app.chaos.set(0)
        (event,) = (await tracker.cycle([target])).events
        assert (event.previous, event.current) == ("error", "none")


async def test_a_chaos_already_active_at_first_sight_is_reported(serve):
    app = TinyApp()
    app.chaos.set(1)
    target = Target(url=await serve(app.metrics), project="app", track="canary")
    async with Scraper(timeout=1.0) as scraper:
        (event,) = (await Tracker(scraper, window=30).cycle([target])).events
    assert (event.previous, event.current) == ("none", "slow")


async def test_snapshots_are_one_per_project_and_track(serve):
    apps = [TinyApp() for _ in range(3)]
    urls = [await serve(app.metrics) for app in apps]
    targets = [
        Target(url=urls[0], project="app", track="stable", version="1.0"),
        Target(url=urls[1], project="app", track="stable", version="1.0"),
        Target(url=urls[2], project="app", track="canary", version="2.0"),
    ]
    async with Scraper(timeout=1.0) as scraper:
        tracker = Tracker(scraper, window=30)
        report = await tracker.cycle(targets)
        stable, canary = sorted(report.snapshots, key=lambda s: s.track, reverse=True)
        assert (stable.track, stable.version, stable.targets_up, stable.targets) == (
            "stable",
            "1.0",
            2,
            sorted(urls[:2]),
        )
        assert (canary.track, canary.version, canary.targets_up) == ("canary", "2.0", 1)
        assert stable.request_rate is None and stable.p99_latency_ms is None  # one scrape: no data yet

        # The canary goes away: so do its window and its snapshot.
        report = await tracker.cycle(targets[:2])
        assert [s.track for s in report.snapshots] == ["stable"]
        assert set(tracker.states) == set(urls[:2])


async def test_the_figures_follow_the_traffic_between_scrapes(serve):
    app = TinyApp()
    ok, failed = app.requests.labels("GET", "/", "200"), app.requests.labels("GET", "/", "500")
    latency = app.latency.labels("GET", "/")  # series at zero: a series needs two samples for a rate
    target = Target(url=await serve(app.metrics), project="app")
    async with Scraper(timeout=1.0) as scraper:
        tracker = Tracker(scraper, window=30)
        await tracker.cycle([target])
        ok.inc(90)
        failed.inc(10)
        for _ in range(100):
            latency.observe(0.01)
        (snapshot,) = (await tracker.cycle([target])).snapshots
    assert snapshot.requests > 0 and snapshot.error_rate == pytest.approx(0.1)
    assert 0 < snapshot.p99_latency_ms <= 10


async def test_a_new_instance_at_a_removed_ones_address_starts_with_an_empty_window(serve):
    # Docker hands a removed container's bridge IP to the next one: the broken canary's errors
    # must not be judged as the healthy canary's that took its address.
    broken, healthy = TinyApp(), TinyApp()
    current = {"app": broken}

    async def metrics(request: web.Request) -> web.Response:
        return await current["app"].metrics(request)

    url = await serve(metrics)
    failed = broken.requests.labels("GET", "/", "500")
    async with Scraper(timeout=1.0) as scraper:
        tracker = Tracker(scraper, window=30)
        await tracker.cycle([Target(url=url, project="app", track="canary", instance="c1")])
        failed.inc(50)
        (snapshot,) = (await tracker.cycle([Target(url=url, project="app", track="canary", instance="c1")])).snapshots
        assert snapshot.error_rate == 1.0

        current["app"] = healthy
        ok = healthy.requests.labels("GET", "/", "200")
        replaced = Target(url=url, project="app", track="canary", instance="c2")
        await tracker.cycle([replaced])
        ok.inc(20)
        (snapshot,) = (await tracker.cycle([replaced])).snapshots
    assert snapshot.requests > 0 and snapshot.error_rate == 0.0  # requests: increase() extrapolates, as PromQL does


def test_a_new_canary_at_a_removed_ones_address_gets_a_new_router_window(tmp_path):
    # The demo's second canary: the same version, and docker gave it the broken one's IP.
    log = tmp_path / "access.log"
    log.write_bytes(b"".join(line(track="canary", status=500, msec=100.0 + n / 10) for n in range(20)))
    tracker = Tracker(Scraper(timeout=1.0), window=5)
    tracker.follow({"p": Project("p", "process", tmp_path, source="router", router_log=log)})
    url = "http://172.18.0.5:3000"
    tracker.sync([Target(url, "p", "canary", "1.1.0", "router", instance="broken")])
    tracker.routers["p"].read()
    tracker.snapshots(end=96.0)  # watched from here on
    (broken,) = tracker.snapshots(end=102.0)
    assert broken.error_rate == 1.0

    tracker.sync([Target(url, "p", "canary", "1.1.0", "router", instance="healthy")])
    (replaced,) = tracker.snapshots(end=102.5)
    assert replaced.error_rate is None  # a new window, not the broken canary's errors
