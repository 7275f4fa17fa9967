"""The collector agrees with a real Prometheus scraping the same live workloads.

Three real `python -m workload` processes take paced traffic: one healthy, one answering every
request with an injected 500, one slowed by 0.3 s. A real Prometheus (Debian's) and the collector
scrape them every second. At the collector's evaluation time, Prometheus' answers for the same
window match the collector's: P99 within 2 %, error rate within 0.5 points, and, fed the very
samples Prometheus stored, to nine digits. Then the healthy workload is restarted (its counters
reset): on a window holding the reset the maths still equals PromQL's on the same samples, and the
live collector's rate never goes negative and never spikes.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict

import aiohttp
import pytest

from services.collector.scrape import BUCKETS, REQUESTS, Scraper, Target
from services.collector.tracking import CycleReport, Tracker
from services.collector.window import Scrape, TargetWindow, figures, labels_of
from tests.servers import PrometheusServer, require_binary

WINDOW = 10  # seconds
INTERVAL = 1.0
APP = 'path!~"/metrics|/healthz|/chaos"'  # application traffic only, as the collector counts it
P99 = f"histogram_quantile(0.99, sum by (le) (rate(http_request_duration_seconds_bucket{{{APP}}}[{WINDOW}s])))"
ERRORS = f'sum(rate(http_requests_total{{status_code=~"5..",{APP}}}[{WINDOW}s])) / sum(rate(http_requests_total{{{APP}}}[{WINDOW}s]))'
RATE = f"sum(rate(http_requests_total{{{APP}}}[{WINDOW}s]))"


async def paced(session: aiohttp.ClientSession, url: str, per_second: float, stop: asyncio.Event) -> None:
    """GET `url` at a fixed pace (not one after another: slow answers must not slow the pace)."""
    pending: set[asyncio.Task] = set()
    start, n = time.monotonic(), 0
    while not stop.is_set() and n < 10_000:
        n += 1
        await asyncio.sleep(max(0.0, start + n / per_second - time.monotonic()))
        task = asyncio.create_task(_get(session, url))
        pending.add(task)
        task.add_done_callback(pending.discard)
    await asyncio.gather(*pending)


async def _get(session: aiohttp.ClientSession, url: str) -> None:
    try:
        async with session.get(url, timeout=aiohttp.ClientTimeout(total=5)) as response:
            await response.read()
    except (TimeoutError, aiohttp.ClientError):
        pass  # the restarted workload refuses for a moment; that is part of the story


async def collect(tracker: Tracker, targets: list[Target], seconds: float) -> list[CycleReport]:
    """Cycle the collector every INTERVAL for `seconds`, on a fixed schedule."""
    reports, start = [], time.monotonic()
    for tick in range(int(seconds / INTERVAL)):
        await asyncio.sleep(max(0.0, start + tick * INTERVAL - time.monotonic()))
        reports.append(await tracker.cycle(targets))
    return reports


async def figures_from_prometheus_samples(prom, session, targets: list[Target], at_ms: int):
    """The collector's maths on exactly the samples Prometheus holds for the window."""
    scrapes: dict[str, dict[float, dict]] = defaultdict(lambda: defaultdict(lambda: {"r": {}, "b": {}}))
    for name, kind in ((REQUESTS, "r"), (BUCKETS, "b")):
        for series in await prom.query(session, f"{name}{{{APP}}}[{WINDOW}s]", at_ms):
            labels = {k: v for k, v in series["metric"].items() if k not in ("__name__", "instance", "job")}
            key = labels_of(labels) if kind == "r" else (labels_of(labels), float(labels["le"]))
            for ts, value in series["values"]:
                scrapes[series["metric"]["instance"]][ts][kind][key] = float(value)
    windows = []
    for _instance, by_time in scrapes.items():
        window = TargetWindow()
        for ts in sorted(by_time):
            # Seconds since the evaluation time, as Prometheus counts in whole milliseconds: float
            # seconds since 1970 would cost the last digits of each interval.
            at = (round(ts * 1000) - at_ms) / 1000
            window.add(Scrape(at=at, requests=by_time[ts]["r"], buckets=by_time[ts]["b"]))
        windows.append(window)
    assert len(windows) == len(targets)
    return figures(windows, end=0.0, window=WINDOW)


async def compare(prom, session, report: CycleReport, targets: list[Target], plateau: bool) -> None:
    at_ms = int(report.at * 1000)
    (snapshot,) = report.snapshots
    p99, error_rate, rate = [await prom.scalar(session, e, at_ms) for e in (P99, ERRORS, RATE)]
    assert p99 is not None and error_rate is not None
    # The collector's maths on Prometheus' own samples: the same numbers.
    same = await figures_from_prometheus_samples(prom, session, targets, at_ms)
    assert same.p99_seconds == pytest.approx(p99, rel=1e-9)
    assert same.error_rate == pytest.approx(error_rate, rel=1e-9)
    assert same.request_rate == pytest.approx(rate, rel=1e-9)
    # The live collector, scraping on its own schedule. Across a restart each scraper loses the
    # requests between its last scrape and the kill, up to an interval's worth: only the P99 and
    # the rate are compared there.
    assert snapshot.p99_latency_ms == pytest.approx(p99 * 1000, rel=0.02)
    assert snapshot.request_rate == pytest.approx(rate, rel=0.02 if plateau else 0.15)
    if plateau:
        assert abs(snapshot.error_rate - error_rate) < 0.005


async def test_collector_matches_prometheus_on_live_workloads_through_a_restart(make_workload, tmp_path):
    binary = require_binary("prometheus")
    healthy, failing, slow = make_workload(), make_workload(), make_workload()
    targets = [Target(url=w.url, project="app", track="canary") for w in (healthy, failing, slow)]
    prom = PrometheusServer(binary, tmp_path).start([w.url for w in (healthy, failing, slow)])
    stop = asyncio.Event()
    try:
        async with aiohttp.ClientSession() as session, Scraper(timeout=0.8) as scraper:
            await prom.scraping(session, len(targets))
            for workload, chaos in (
                (failing, {"mode": "error", "rate": 1.0}),
                (slow, {"mode": "slow", "duration": 0.3}),
            ):
                async with session.post(f"{workload.url}/chaos", json=chaos) as response:
                    assert response.status == 200
            traffic = [asyncio.create_task(paced(session, f"{w.url}/", rate, stop))
                       for w, rate in ((healthy, 30), (failing, 4), (slow, 2))]  # fmt: skip
            tracker = Tracker(scraper, window=WINDOW)

            steady = await collect(tracker, targets, 3 + WINDOW + 1)  # warm up, then a full window
            healthy.stop()
            restart = asyncio.get_running_loop().run_in_executor(None, healthy.start)
            after = await collect(tracker, targets, WINDOW - 2)  # the window now holds the reset
            await restart
            await asyncio.sleep(1.5)  # Prometheus has stored its last scrape before these times
            await compare(prom, session, steady[-1], targets, plateau=True)
            await compare(prom, session, after[-1], targets, plateau=False)

            plateau = steady[-1].snapshots[0].request_rate
            rates = [r.snapshots[0].request_rate for r in after]
            assert all(0 < rate <= plateau * 1.15 for rate in rates), (plateau, rates)
            stop.set()
            await asyncio.gather(*traffic)
    finally:
        stop.set()
        prom.stop()
