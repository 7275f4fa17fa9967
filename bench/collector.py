"""Benchmark: one collector scraping 100 targets every second.

A child process serves 100 workload /metrics endpoints (one aiohttp app on 100 loopback ports;
each body made by the workload's own metrics code from simulated traffic: four routes, 23 latency
buckets each, counters that grow every second, bodies different per target). This process then runs, for the same duration each:

  baseline   the same 100 GETs a second over the same kind of session, bodies read, not parsed
  collector  the collector's own cycle: scrape, parse (prometheus_client), windows, snapshots

and reports CPU as a share of one core (process CPU time / wall time) and the scrape-cycle
P99, with the collector / baseline CPU ratio.

    python bench/collector.py [--targets 100] [--seconds 20] [--interval 1]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from services.collector.scrape import Scraper, Target
from services.collector.tracking import Tracker
from workload.metrics import Metrics

# Per target and second: (method, path, status, requests, mean latency in seconds).
TRAFFIC = (("GET", "/", 200, 20.0, 0.008), ("GET", "/", 500, 0.2, 0.002), ("GET", "/healthz", 200, 0.2, 0.001),
           ("GET", "/metrics", 200, 1.0, 0.002))  # fmt: skip


class FakeWorkload:
    """The workload's own metrics code (same families, labels and buckets), fed simulated traffic."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.metrics = Metrics("stable", lambda: 0)
        self.simulated = 0
        self.body = b""

    def exposition(self, second: int) -> bytes:
        while self.simulated < second:
            self.simulated += 1
            for method, path, status, rate, mean in TRAFFIC:
                for _ in range(int(rate) + (self.rng.random() < rate % 1)):
                    self.metrics.stats.observe(method, path, status, self.rng.expovariate(1 / mean))
            self.body = b""
        if not self.body:
            self.body = self.metrics.exposition()
        return self.body


async def serve(count: int) -> None:
    """The child: `count` /metrics endpoints; prints their ports as JSON, runs until SIGTERM."""
    started = time.monotonic()
    app = web.Application()
    runner = web.AppRunner(app, access_log=None)
    workloads: dict[int, FakeWorkload] = {}

    async def metrics(request: web.Request) -> web.Response:
        port = request.transport.get_extra_info("sockname")[1]  # type: ignore[union-attr]
        workload = workloads.setdefault(port, FakeWorkload(port))
        return web.Response(body=workload.exposition(int(time.monotonic() - started)), content_type="text/plain")

    app.router.add_get("/metrics", metrics)
    await runner.setup()
    sites = [web.TCPSite(runner, "127.0.0.1", 0) for _ in range(count)]
    for site in sites:
        await site.start()
    ports = [site._server.sockets[0].getsockname()[1] for site in sites]  # type: ignore[union-attr]
    print(json.dumps(ports), flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await runner.cleanup()


async def measure(cycle, seconds: float, interval: float) -> dict[str, float]:
    """Run `cycle` on a fixed schedule; CPU share of one core and cycle-time percentiles."""
    durations: list[float] = []
    await cycle()  # warm: connections opened, first parse
    cpu0, wall0 = time.process_time(), time.monotonic()
    for tick in range(int(seconds / interval)):
        await asyncio.sleep(max(0.0, wall0 + tick * interval - time.monotonic()))
        started = time.perf_counter()
        await cycle()
        durations.append(time.perf_counter() - started)
    cpu, wall = time.process_time() - cpu0, time.monotonic() - wall0
    durations.sort()
    return {
        "cpu_share": cpu / wall,
        "cpu_seconds": cpu,
        "cycle_p50_ms": statistics.median(durations) * 1000,
        "cycle_p99_ms": durations[min(len(durations) - 1, int(len(durations) * 0.99))] * 1000,
        "cycles": len(durations),
    }


async def bench(targets: list[Target], seconds: float, interval: float) -> dict[str, dict[str, float]]:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        timeout = aiohttp.ClientTimeout(total=interval * 0.8)

        raw_failures = 0

        async def fetch(target: Target) -> None:
            nonlocal raw_failures
            try:
                async with session.get(target.metrics_url, timeout=timeout) as response:
                    await response.read()
            except (TimeoutError, aiohttp.ClientError):
                raw_failures += 1

        async def raw_cycle() -> None:
            await asyncio.gather(*(fetch(target) for target in targets))

        baseline = await measure(raw_cycle, seconds, interval)
        baseline["failed_scrapes"] = raw_failures

    async with Scraper(timeout=interval * 0.8) as scraper:
        tracker = Tracker(scraper, window=60)
        failures = 0

        async def collector_cycle() -> None:
            nonlocal failures
            report = await tracker.cycle(targets)
            failures += sum(not outcome.ok for outcome in report.outcomes)

        collector = await measure(collector_cycle, seconds, interval)
        collector["failed_scrapes"] = failures
    return {"baseline": baseline, "collector": collector}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--interval", type=float, default=1.0)
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        asyncio.run(serve(args.serve))
        return 0
    server = subprocess.Popen(
        [sys.executable, __file__, "--serve", str(args.targets)], stdout=subprocess.PIPE, text=True
    )
    try:
        ports = json.loads(server.stdout.readline())  # type: ignore[union-attr]
        targets = [Target(url=f"http://127.0.0.1:{port}", project="bench") for port in ports]
        results = asyncio.run(bench(targets, args.seconds, args.interval))
    finally:
        server.terminate()
        server.wait(timeout=10)
    base, coll = results["baseline"], results["collector"]
    print(f"targets={args.targets} interval={args.interval:g}s seconds={args.seconds:g} cores={os.cpu_count()}")
    for name, r in results.items():
        print(f"{name:9s} cpu={r['cpu_share'] * 100:5.1f}% of one core  cycle p50={r['cycle_p50_ms']:6.1f} ms  "
              f"p99={r['cycle_p99_ms']:6.1f} ms  failed={r['failed_scrapes']:.0f}")  # fmt: skip
    print(f"collector/baseline cpu ratio = {coll['cpu_share'] / base['cpu_share']:.2f}")
    for name, r in results.items():  # per answered scrape: fair when a loaded machine made some time out
        answered = r["cycles"] * args.targets - r["failed_scrapes"]
        print(f"{name:9s} cpu per answered scrape = {r['cpu_seconds'] / max(1, answered) * 1000:.2f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
