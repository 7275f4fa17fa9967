"""Benchmark: one collector scraping 100 targets every second.

A child process serves 100 workload /metrics endpoints (one aiohttp app on 100 loopback ports;
each body made by the workload's own metrics code from simulated traffic: four routes, 23 latency
buckets each, counters that grow every second, bodies different per target). This process then runs, for the same duration each:

  baseline   the same 100 GETs a second over the same kind of session, bodies read, not parsed
  collector  the collector's own cycle: scrape, parse (prometheus_client), windows, snapshots
  router     the same cycle with router measurement on: the child also appends `--router-rate`
             nginx access-log lines a second (the router template's JSON format, 2 tracks, 2 %
             probes) that the collector tails, and the tracks' figures come from them (60 s window)

and reports CPU as a share of one core (process CPU time / wall time) and the scrape-cycle
P99, with the collector / baseline CPU ratio.

    python bench/collector.py [--targets 100] [--seconds 20] [--interval 1] [--router-rate 200]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from services.collector.router import RouterLog
from services.collector.scrape import Scraper, Target
from services.collector.targets import Project
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


async def write_log(path: Path, rate: float, stop: asyncio.Event) -> None:
    """`rate` access-log lines a second, in nginx's swiftdeploy_json format, written about 10 times
    a second (paced on the clock: a busy loop writes more lines per batch, not fewer in all)."""
    rng, n, start = random.Random(7), 0, time.monotonic()
    with path.open("ab", buffering=0) as log:
        while not stop.is_set():
            lines = []
            for _ in range(int((time.monotonic() - start) * rate) - n):
                n += 1
                track = "canary" if rng.random() < 0.1 else "stable"
                kind = "probe" if n % 50 == 0 else "app"
                status = 500 if rng.random() < 0.01 else 200
                lines.append(json.dumps({
                    "time": "2026-01-01T00:00:00+00:00", "request_id": f"{n:032x}", "remote_addr": "127.0.0.1",
                    "method": "GET", "uri": f"/orders/{n}", "status": status, "bytes_sent": 120,
                    "request_time": 0.012, "upstream": f"app_{track}", "upstream_addr": "127.0.0.1:3000",
                    "upstream_status": str(status), "upstream_response_time": f"{rng.expovariate(100):.3f}",
                    "user_agent": "bench", "msec": round(time.time(), 3), "track": track, "kind": kind, "chaos": "",
                }, separators=(",", ":")))  # fmt: skip
            log.write(("\n".join(lines) + "\n").encode())
            await asyncio.sleep(0.1)


async def serve(count: int, log: Path | None = None, rate: float = 0) -> None:
    """The child: `count` /metrics endpoints; prints their ports as JSON, runs until SIGTERM.
    With `log`, also appends `rate` access-log lines a second to it."""
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
    writer = asyncio.create_task(write_log(log, rate, stop)) if log else None
    await stop.wait()
    if writer:
        await writer
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


async def bench(targets: list[Target], seconds: float, interval: float, log: Path) -> dict[str, dict[str, float]]:
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

    routed = [dataclasses.replace(target, source="router") for target in targets]
    projects = {"bench": Project("bench", "process", log.parent, source="router", router_log=log)}
    async with Scraper(timeout=interval * 0.8) as scraper:
        tracker = Tracker(scraper, window=60)
        failures = 0

        async def router_cycle() -> None:
            nonlocal failures
            report = await tracker.cycle(routed, projects)
            failures += sum(not outcome.ok for outcome in report.outcomes)

        await asyncio.sleep(0 if log.stat().st_size else 1)
        router = await measure(router_cycle, seconds, interval)
        router["failed_scrapes"] = failures
        router["samples"] = sum(len(w.samples) for r in tracker.routers.values() for w in r.tracks.values())
    return {"baseline": baseline, "collector": collector, "router": router}


def router_alone(rate: float, window: float = 60, cycles: int = 120) -> float:
    """CPU seconds per 1 s cycle of router measurement alone (tail, parse, both tracks' figures)
    at `rate` lines a second, once the window is full: no scrapes, no other process involved."""
    folder = Path(tempfile.mkdtemp(prefix="bench-router-"))
    log_path, rng = folder / "access.log", random.Random(3)
    router = RouterLog(log_path)
    spent = 0.0
    try:
        with log_path.open("ab", buffering=0) as log:
            for second in range(int(window) + cycles):
                now = 1_000_000.0 + second
                log.write(b"".join(_line(rng, now - 1 + i / rate) for i in range(int(rate))))
                started = time.process_time()
                router.read()
                for track in ("stable", "canary"):
                    router.figures(track, "1", now, window)
                if second >= window:
                    spent += time.process_time() - started
    finally:
        router.close()
        shutil.rmtree(folder, ignore_errors=True)
    return spent / cycles


def _line(rng: random.Random, at: float) -> bytes:
    track = "canary" if rng.random() < 0.1 else "stable"
    return (json.dumps({
        "time": "2026-01-01T00:00:00+00:00", "request_id": f"{rng.getrandbits(128):032x}", "remote_addr": "127.0.0.1",
        "method": "GET", "uri": "/orders", "status": 500 if rng.random() < 0.01 else 200, "bytes_sent": 120,
        "request_time": 0.012, "upstream": f"app_{track}", "upstream_addr": "127.0.0.1:3000", "upstream_status": "200",
        "upstream_response_time": f"{rng.expovariate(100):.3f}", "user_agent": "bench", "msec": round(at, 3),
        "track": track, "kind": "app", "chaos": "",
    }, separators=(",", ":")) + "\n").encode()  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--interval", type=float, default=1.0)
    parser.add_argument("--router-rate", type=float, default=200, help="access-log lines a second")
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--log", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        asyncio.run(serve(args.serve, args.log, args.router_rate))
        return 0
    folder = Path(tempfile.mkdtemp(prefix="bench-collector-"))
    log = folder / "access.log"
    server = subprocess.Popen(
        [sys.executable, __file__, "--serve", str(args.targets), "--log", str(log), "--router-rate",
         str(args.router_rate)], stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        ports = json.loads(server.stdout.readline())  # type: ignore[union-attr]
        targets = [Target(url=f"http://127.0.0.1:{port}", project="bench") for port in ports]
        results = asyncio.run(bench(targets, args.seconds, args.interval, log))
    finally:
        server.terminate()
        server.wait(timeout=10)
        shutil.rmtree(folder, ignore_errors=True)
    base, coll = results["baseline"], results["collector"]
    print(f"targets={args.targets} interval={args.interval:g}s seconds={args.seconds:g} cores={os.cpu_count()}")
    for name, r in results.items():
        print(f"{name:9s} cpu={r['cpu_share'] * 100:5.1f}% of one core  cycle p50={r['cycle_p50_ms']:6.1f} ms  "
              f"p99={r['cycle_p99_ms']:6.1f} ms  failed={r['failed_scrapes']:.0f}")  # fmt: skip
    print(f"collector/baseline cpu ratio = {coll['cpu_share'] / base['cpu_share']:.2f}")
    routed = results["router"]
    alone = router_alone(args.router_rate)
    print(f"router measurement alone at {args.router_rate:g} req/s, full 60 s window: "
          f"{alone * 1000:.1f} ms of CPU per 1 s cycle ({alone * 100:.1f}% of one core)")  # fmt: skip
    print(f"router on ({args.router_rate:g} lines/s, {routed['samples']:.0f} samples in the window): "
          f"+{(routed['cpu_share'] - coll['cpu_share']) * 100:.1f} points of one core over the collector")  # fmt: skip
    for name, r in results.items():  # per answered scrape: fair when a loaded machine made some time out
        answered = r["cycles"] * args.targets - r["failed_scrapes"]
        print(f"{name:9s} cpu per answered scrape = {r['cpu_seconds'] / max(1, answered) * 1000:.2f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
