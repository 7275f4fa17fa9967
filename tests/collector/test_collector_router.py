"""Traffic measured at the router: nginx's own per-request log, tailed by the collector.

The unit stories: the tail follows appends, torn lines, rotation and truncation; only application
requests count; percentiles are exact (nearest rank) and memory is capped. The real story: two
services that are not ours behind a real nginx, a real Prometheus scraping their own /metrics.
The collector's router figures equal what the test computes itself from the same log lines, and
agree within 5 % with the services' own figures as Prometheus measures them.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from pathlib import Path

import aiohttp
import pytest

from services.collector.router import LogTail, RouterLog, RouterWindow, Sample, nearest_rank, parse_line
from services.collector.scrape import Scraper, Target
from services.collector.targets import Project
from services.collector.tracking import Tracker
from tests.servers import NotOursService, PrometheusServer, require_binary, split_router


def line(track: str = "stable", status: int = 200, upstream: str = "0.120", kind: str = "app", msec: float = 100.0):
    entry = {"msec": msec, "track": track, "status": status, "upstream_response_time": upstream,
             "request_time": 0.5, "kind": kind}  # fmt: skip
    return (json.dumps(entry, separators=(",", ":")) + "\n").encode()


def test_the_tail_reads_appends_waits_for_torn_lines_and_follows_rotation_and_truncation(tmp_path):
    log = tmp_path / "access.log"
    tail = LogTail(log)
    assert tail.read_lines() == [] and not tail.opened  # nginx has not written yet
    log.write_bytes(line(msec=1) + line(msec=2)[:10])
    assert len(tail.read_lines()) == 1  # the torn second line waits
    with log.open("ab") as f:
        f.write(line(msec=2)[10:] + line(msec=3))
    assert [json.loads(x)["msec"] for x in tail.read_lines()] == [2, 3]
    log.rename(tmp_path / "access.log.1")  # logrotate: move, then nginx reopens (USR1)
    with (tmp_path / "access.log.1").open("ab") as f:
        f.write(line(msec=4))  # written to the old file before the reopen
    log.write_bytes(line(msec=5))
    assert [json.loads(x)["msec"] for x in tail.read_lines()] == [4, 5]
    log.write_bytes(b"")  # copytruncate: the same file, now shorter than what was read
    assert tail.read_lines() == []
    with log.open("ab") as f:
        f.write(line(msec=6))
    assert [json.loads(x)["msec"] for x in tail.read_lines()] == [6]


def test_a_long_log_seen_first_is_read_from_its_last_bytes_only(tmp_path):
    log = tmp_path / "access.log"
    log.write_bytes(b"".join(line(msec=i) for i in range(1000)))
    lines = LogTail(log, start_bytes=1000).read_lines()
    assert 0 < len(lines) < 20 and json.loads(lines[-1])["msec"] == 999  # whole lines only


def test_probes_scrapes_and_chaos_calls_never_count_and_latency_falls_back_to_nginx_own_time():
    assert parse_line(line(kind="probe")) is None
    assert parse_line(line(kind="scrape")) is None
    assert parse_line(line(kind="chaos")) is None
    assert parse_line(b'{"kind":"app","msec":') is None  # torn
    assert parse_line(line(track="canary", status=503, upstream="0.100, 0.020")) == (
        "canary", Sample(at=100.0, status=503, latency=pytest.approx(0.12)),
    )  # fmt: skip
    assert parse_line(line(upstream="-")) == ("stable", Sample(at=100.0, status=200, latency=0.5))  # router chaos


def test_router_figures_are_exact_over_the_left_open_window_with_4xx_apart():
    window = RouterWindow()
    for i in range(1, 201):
        window.add(Sample(at=float(i), status=500 if i % 10 == 0 else 404 if i % 25 == 0 else 200, latency=i / 1000))
    found = window.figures(end=200.0, window=100.0)  # (100, 200]: samples 101..200
    assert found.samples == 100 and found.request_rate == 1.0
    assert found.error_rate == 0.1 and found.client_error_rate == 0.02  # 125 and 175
    assert (found.p50_seconds, found.p90_seconds, found.p99_seconds) == (0.150, 0.190, 0.199)
    assert nearest_rank([], 0.99) is None
    empty = RouterWindow().figures(end=1.0, window=1.0)
    assert (empty.samples, empty.request_rate, empty.error_rate, empty.p99_seconds) == (0, 0.0, None, None)


def test_memory_is_capped_and_the_window_then_says_what_it_covers():
    window = RouterWindow(max_samples=50)
    for i in range(1, 101):
        window.add(Sample(at=float(i), status=200, latency=0.01))
    found = window.figures(end=100.0, window=100.0)
    assert found.samples == 50 and found.window == 49.0  # samples 51..100 cover 49 s


def test_a_new_version_on_a_track_starts_with_an_empty_window(tmp_path):
    log = tmp_path / "access.log"
    log.write_bytes(line(track="canary", msec=10))
    router = RouterLog(log)
    router.read()
    assert router.figures("canary", "2.0.0", end=11, window=5).samples == 1
    assert not router.covered("canary", end=15, window=5)  # watched since 11: no figures before 16
    assert router.covered("canary", end=16, window=5)
    assert router.figures("canary", "2.1.0", end=17, window=5).samples == 0
    assert not router.covered("canary", end=17, window=5)


# --- the real story ----------------------------------------------------------------------------

WINDOW = 25.0
TRAFFIC_SECONDS = 15
RATE = 40  # requests per second through nginx


def independent_figures(log: Path, track: str, start: float, end: float) -> tuple[int, float, float]:
    """(requests, error rate, P99 seconds) from the raw log lines, by the test's own reading."""
    latencies, errors = [], 0
    for raw in log.read_text().splitlines():
        entry = json.loads(raw)
        if entry["uri"] in ("/healthz", "/metrics", "/chaos") or entry["track"] != track:
            continue
        if not start < entry["msec"] <= end:
            continue
        latencies.append(sum(float(t) for t in entry["upstream_response_time"].split(",")))
        errors += entry["status"] >= 500
    latencies.sort()
    return len(latencies), errors / len(latencies), latencies[math.ceil(0.99 * len(latencies)) - 1]


async def traffic(session: aiohttp.ClientSession, url: str) -> None:
    """Paced application requests, plus health probes and scrapes through nginx (not counted)."""
    start, tasks = time.monotonic(), []
    for n in range(RATE * TRAFFIC_SECONDS):
        await asyncio.sleep(max(0.0, start + n / RATE - time.monotonic()))
        path = "/healthz" if n % 10 == 3 else "/metrics" if n % 10 == 7 else f"/orders/{n}"
        tasks.append(asyncio.create_task(session.get(f"{url}{path}").__aenter__()))
    for response in await asyncio.gather(*tasks):
        await response.read()
        response.release()


def promql_p99(instance: str) -> str:
    return f'histogram_quantile(0.99, sum by (le) (rate(svc_latency_seconds_bucket{{instance="{instance}"}}[{WINDOW:g}s])))'


def promql_errors(instance: str) -> str:
    return (f'sum(rate(svc_requests_total{{instance="{instance}",code="500"}}[{WINDOW:g}s])) / '
            f'sum(rate(svc_requests_total{{instance="{instance}"}}[{WINDOW:g}s]))')  # fmt: skip


async def test_router_figures_equal_the_log_lines_and_agree_with_the_services_own_metrics(tmp_path):
    prometheus = require_binary("prometheus")
    # Latencies large against the few ms nginx and the service's event loop add to the service's
    # own timing, on a busy machine.
    latency = {"METRICS": "1", "LATENCY_MIN": "0.2", "LATENCY_MAX": "0.6"}
    stable = NotOursService({**latency, "VERSION": "1.0.0", "FAIL_RATE": "0"}, tmp_path / "stable.log").start()
    canary = NotOursService({**latency, "VERSION": "2.0.0", "FAIL_RATE": "0.2"}, tmp_path / "canary.log").start()
    plan, router = split_router(tmp_path / "nginx", stable.port, canary.port, canary_weight=40)
    prom = PrometheusServer(prometheus, tmp_path).start([stable.url, canary.url])
    project = Project("p", "process", tmp_path, source="router", router_log=Path(plan.access_log))
    targets = [
        Target(stable.url, "p", "stable", "1.0.0", "router"),
        Target(canary.url, "p", "canary", "2.0.0", "router"),
    ]
    try:
        async with aiohttp.ClientSession() as session, Scraper(timeout=0.8) as scraper:
            await prom.scraping(session, 2)
            await asyncio.sleep(1.5)  # a scrape before the first request: the counters start at 0
            tracker = Tracker(scraper, window=WINDOW)
            watched = (await tracker.cycle(targets, {"p": project})).at  # figures once a window is watched
            # Traffic starts well inside the window, after Prometheus' first sample in it: both
            # windows then hold every request, and the counters' increases are exact.
            await asyncio.sleep(3)
            await traffic(session, plan.url)
            # Prometheus has scraped the last requests, and the collector watched a whole window.
            await asyncio.sleep(max(2.5, watched + WINDOW + 0.5 - time.time()))
            report = await tracker.cycle(targets, {"p": project})
            at_ms = int(report.at * 1000)
            for snapshot in report.snapshots:
                service = stable if snapshot.track == "stable" else canary
                n, error_rate, p99 = independent_figures(Path(plan.access_log), snapshot.track,
                                                         report.at - WINDOW, report.at)  # fmt: skip
                print(snapshot.track, n, error_rate, p99, snapshot)
                assert snapshot.source == "router" and snapshot.samples == n and snapshot.requests == n
                assert snapshot.error_rate == error_rate and snapshot.p99_latency_ms == p99 * 1000  # exact
                assert snapshot.targets_up == 1  # it answered its scrape
                instance = service.url.removeprefix("http://")
                prom_p99 = await prom.scalar(session, promql_p99(instance), at_ms)
                prom_errors = await prom.scalar(session, promql_errors(instance), at_ms)
                print(f"{snapshot.track}: router P99 {p99 * 1000:.2f} ms vs Prometheus {prom_p99 * 1000:.2f} ms; "
                      f"error rate {error_rate:.4f} vs {prom_errors:.4f}")  # fmt: skip
                assert snapshot.p99_latency_ms == pytest.approx(prom_p99 * 1000, rel=0.05)
                assert snapshot.error_rate == pytest.approx(prom_errors, rel=0.05, abs=1e-12)
            canary_share = report.snapshots[0].requests / sum(s.requests for s in report.snapshots)
            assert 0.3 < canary_share < 0.5  # the 40 % split, and no probe or scrape among them
    finally:
        prom.stop()
        router.stop()
        stable.stop()
        canary.stop()
