#!/usr/bin/env python3
"""Benchmark: gatekeeper decisions per second and their latency, through the bus and engine-only.

- engine only (the baseline): `EmbeddedEngine.evaluate` called in a loop in this process;
- through the bus: a real redis-server on a free loopback port, one gatekeeper replica as its own
  process (`python -m services.gatekeeper`, embedded engine, default settings and logging), and
  this process as the client sending `decision.requested` and waiting for `decision.made`:
  latency with one request at a time, throughput with many in flight.

The inputs are a fixed mix of canary and infra inputs (about one in four denied, like an
analysis during a bad canary). Figures vary with the machine's load; the ratios against the
baseline measured in the same run are what to compare.

Usage: python bench/gatekeeper.py [--seconds 4] [--inflight 64]
       GK_RUNNER=wrapper.py python bench/gatekeeper.py   # run the gatekeeper through a wrapper (a profiler)
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import policies  # noqa: E402
from services.gatekeeper.embedded import EmbeddedEngine  # noqa: E402
from swiftdeploy_core import streams  # noqa: E402
from swiftdeploy_core.bus import Bus  # noqa: E402
from swiftdeploy_core.events import DecisionRequested, Event, PingRequested, Source  # noqa: E402
from swiftdeploy_core.settings import Settings  # noqa: E402
from tests.servers import RedisServer  # noqa: E402

MANIFEST = (ROOT / "manifest.yaml").read_text()


def inputs(n: int = 1000) -> list[tuple[str, dict]]:
    rng = random.Random(7)
    out = []
    for i in range(n):
        if i % 2:
            out.append(("infra", {"disk_free_gb": rng.uniform(8, 200), "cpu_load": rng.uniform(0, 2.2)}))
        else:
            bad = rng.random() < 0.2
            out.append(("canary", {
                "error_rate": rng.uniform(0.02, 0.5) if bad else rng.uniform(0, 0.009),
                "p99_latency_ms": rng.uniform(50, 480), "requests": rng.randint(20, 5000),
            }))  # fmt: skip
    return out


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def summary(name: str, count: int, elapsed: float, latencies: list[float]) -> dict:
    return {
        "name": name,
        "per_s": count / elapsed,
        "p50_ms": percentile(latencies, 0.50) * 1000,
        "p99_ms": percentile(latencies, 0.99) * 1000,
        "mean_ms": statistics.fmean(latencies) * 1000,
    }


async def engine_only(seconds: float) -> dict:
    engine = EmbeddedEngine(policies.default_dir())
    work = inputs()
    await engine.evaluate(*work[0])
    latencies, started, cpu_before, i = [], time.perf_counter(), time.process_time(), 0
    while time.perf_counter() - started < seconds:
        domain, document = work[i % len(work)]
        t = time.perf_counter()
        await engine.evaluate(domain, document)
        latencies.append(time.perf_counter() - t)
        i += 1
    row = summary("engine only (embedded, in process)", i, time.perf_counter() - started, latencies)
    row["cpu_ms"] = (time.process_time() - cpu_before) * 1000 / i
    return row


async def ask(bus: Bus, domain: str, document: dict) -> float:
    event = Event(payload=DecisionRequested(domain=domain, input=document), source=Source(service="bench", instance="bench"))
    t = time.perf_counter()
    await bus.request(streams.GATEKEEPER_INBOX, event, expect={"decision.made"}, timeout=10)
    return time.perf_counter() - t


async def through_bus_sequential(bus: Bus, seconds: float) -> dict:
    work, latencies, started, i = inputs(), [], time.perf_counter(), 0
    while time.perf_counter() - started < seconds:
        latencies.append(await ask(bus, *work[i % len(work)]))
        i += 1
    return summary("through the bus, one at a time", i, time.perf_counter() - started, latencies)


async def through_bus_concurrent(bus: Bus, seconds: float, inflight: int, gatekeeper: psutil.Process) -> dict:
    work, latencies, counter = inputs(), [], iter(range(10**9))
    deadline = time.perf_counter() + seconds

    async def client() -> None:
        while time.perf_counter() < deadline:
            latencies.append(await ask(bus, *work[next(counter) % len(work)]))

    cpu_before, calls_before, started = cpu_seconds(gatekeeper), await redis_calls(bus), time.perf_counter()
    await asyncio.gather(*(client() for _ in range(inflight)))
    row = summary(f"through the bus, {inflight} in flight", len(latencies), time.perf_counter() - started, latencies)
    row["cpu_ms"] = (cpu_seconds(gatekeeper) - cpu_before) * 1000 / len(latencies)
    row["redis_calls"] = (await redis_calls(bus) - calls_before) / len(latencies)
    return row


async def redis_calls(bus: Bus) -> int:
    """Commands Redis has executed so far (INFO commandstats), by every client."""
    stats = await bus.redis.info("commandstats")
    return sum(int(value["calls"]) for value in stats.values())


def cpu_seconds(process: psutil.Process) -> float:
    times = process.cpu_times()
    return times.user + times.system


async def wait_for_gatekeeper(bus: Bus, process: subprocess.Popen) -> None:
    for _ in range(100):
        if process.poll() is not None:
            raise SystemExit(f"the gatekeeper exited with {process.returncode}")
        ping = Event(payload=PingRequested(service="gatekeeper"), source=Source(service="bench", instance="bench"))
        try:
            await bus.request(streams.GATEKEEPER_INBOX, ping, expect={"pong"}, timeout=0.5)
            return
        except Exception:  # noqa: BLE001 - not up yet
            await asyncio.sleep(0.1)
    raise SystemExit("the gatekeeper did not answer a ping")


async def bus_runs(redis_url: str, project: Path, seconds: float, inflight: int) -> list[dict]:
    env = {**os.environ, "REDIS_URL": redis_url, "SWIFTDEPLOY_MANIFEST": str(project / "manifest.yaml"), "PYTHONPATH": str(ROOT)}
    log = open(project / "gatekeeper.log", "w")  # noqa: SIM115 - closed below
    command = [sys.executable, "-m", "services.gatekeeper"]
    if os.environ.get("GK_RUNNER"):  # e.g. a profiling wrapper
        command = [sys.executable, os.environ["GK_RUNNER"]]
    process = subprocess.Popen(command, cwd=project, env=env, stdout=log, stderr=log)
    bus = await Bus.connect(Settings(redis_url=redis_url))
    try:
        await wait_for_gatekeeper(bus, process)
        for domain, document in inputs()[:200]:  # warm up
            await ask(bus, domain, document)
        sequential = await through_bus_sequential(bus, seconds)
        return [sequential, await through_bus_concurrent(bus, seconds, inflight, psutil.Process(process.pid))]
    finally:
        await bus.close()
        process.terminate()
        process.wait(timeout=10)
        log.close()


def table(rows: list[dict], baseline: dict) -> str:
    """Wall-clock figures, the CPU one decision costs the deciding process (on a core of its own a
    replica decides at most 1000 / CPU-ms times a second, whatever else the machine runs), and the
    Redis commands one decision costs (every client: request, reads, acks, replies)."""
    lines = [
        "| run | decisions/s | P50 ms | P99 ms | vs engine only | CPU ms / decision | decisions/s per free core | Redis commands / decision |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in rows:
        cpu, calls = row.get("cpu_ms"), row.get("redis_calls")
        lines.append(
            f"| {row['name']} | {row['per_s']:,.0f} | {row['p50_ms']:.2f} | {row['p99_ms']:.2f} | "
            f"{row['per_s'] / baseline['per_s']:.2f}x | {_or_dash(cpu, '.3f')} | {_or_dash(cpu and 1000 / cpu, ',.0f')} | "
            f"{_or_dash(calls, '.1f')} |"
        )
    return "\n".join(lines)


def _or_dash(value: float | None, spec: str) -> str:
    return format(value, spec) if value else "-"


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=4.0, help="length of each run")
    parser.add_argument("--inflight", type=int, default=64, help="requests in flight in the throughput run")
    args = parser.parse_args()

    baseline = await engine_only(args.seconds)
    with tempfile.TemporaryDirectory(prefix="swiftdeploy-bench-") as tmp:
        project = Path(tmp)
        (project / "manifest.yaml").write_text(MANIFEST)
        policies.write_default_policies(project)
        redis = RedisServer(shutil.which("redis-server") or "/usr/bin/redis-server", project / "redis").start()
        try:
            rows = await bus_runs(redis.url, project, args.seconds, args.inflight)
        finally:
            redis.stop()
    print(table([baseline, *rows], baseline))
    print(f"\n{os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f} at the end; {args.seconds:g} s per run")


if __name__ == "__main__":
    asyncio.run(main())
