#!/usr/bin/env python3
"""Benchmark: gatekeeper decisions per second and their latency, through the bus and engine-only.

- engine only (the baseline): `EmbeddedEngine.evaluate` called in a loop in this process;
- through the bus: a real redis-server on a free loopback port, one gatekeeper replica as its own
  process (`python -m services.gatekeeper`, embedded engine, default settings and logging), and
  this process as the client sending `decision.requested` and waiting for `decision.made`:
  latency with one request at a time; latency at paced offered loads (`--rates`, open loop:
  requests start on a fixed schedule whether or not earlier ones were answered, so a replica
  that falls behind shows as latency, not as a lower request rate); throughput with many in flight.

CPU is measured per process and per thread: the gatekeeper's event loop and its Rego thread run in
parallel, so on free cores a replica decides at most 1000 / (its busiest thread's CPU ms) a second.

The inputs are a fixed mix of canary and infra inputs (about one in four denied, like an
analysis during a bad canary). Figures vary with the machine's load; the ratios against the
baseline measured in the same run are what to compare.

Usage: python bench/gatekeeper.py [--seconds 4] [--rates 500,1000] [--inflight 64] [--rounds 3]
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
from dataclasses import dataclass
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import policies  # noqa: E402
from services.gatekeeper.embedded import EmbeddedEngine  # noqa: E402
from swiftdeploy_core.bus import streams  # noqa: E402
from swiftdeploy_core.bus.connection import Bus  # noqa: E402
from swiftdeploy_core.bus.events import DecisionRequested, Event, PingRequested, Source  # noqa: E402
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
    me = psutil.Process()
    latencies, started, cpu_before, threads_before, i = (
        [],
        time.perf_counter(),
        time.process_time(),
        thread_seconds(me),
        0,
    )
    while time.perf_counter() - started < seconds:
        domain, document = work[i % len(work)]
        t = time.perf_counter()
        await engine.evaluate(domain, document)
        latencies.append(time.perf_counter() - t)
        i += 1
    row = summary("engine only (embedded, in process, one at a time)", i, time.perf_counter() - started, latencies)
    row["cpu_ms"] = (time.process_time() - cpu_before) * 1000 / i
    row["thread_ms"] = busiest(threads_before, thread_seconds(me)) * 1000 / i
    await engine.close()
    return row


async def ask(bus: Bus, domain: str, document: dict, since: float | None = None) -> float:
    """Seconds from `since` (default: now) until the decision arrived."""
    event = Event(
        payload=DecisionRequested(domain=domain, input=document), source=Source(service="bench", instance="bench")
    )
    t = time.perf_counter() if since is None else since
    await bus.request(streams.GATEKEEPER_INBOX, event, expect={"decision.made"}, timeout=10)
    return time.perf_counter() - t


@dataclass
class Meter:
    """CPU used by the gatekeeper (in all and by its busiest thread), this client and Redis, and
    the commands Redis ran, between two snapshots."""

    bus: Bus
    gatekeeper: psutil.Process
    redis: psutil.Process

    async def snapshot(self) -> dict:
        return {
            "gatekeeper": cpu_seconds(self.gatekeeper),
            "threads": thread_seconds(self.gatekeeper),
            "client": time.process_time(),
            "redis": cpu_seconds(self.redis),
            "calls": await redis_calls(self.bus),
        }

    async def per_decision(self, before: dict, count: int) -> dict:
        after = await self.snapshot()
        return {
            "cpu_ms": (after["gatekeeper"] - before["gatekeeper"]) * 1000 / count,
            "thread_ms": busiest(before["threads"], after["threads"]) * 1000 / count,
            "client_ms": (after["client"] - before["client"]) * 1000 / count,
            "redis_ms": (after["redis"] - before["redis"]) * 1000 / count,
            "redis_calls": (after["calls"] - before["calls"]) / count,
        }


async def through_bus_sequential(bus: Bus, seconds: float, meter: Meter) -> dict:
    work, latencies, started, i = inputs(), [], time.perf_counter(), 0
    before = await meter.snapshot()
    while time.perf_counter() - started < seconds:
        latencies.append(await ask(bus, *work[i % len(work)]))
        i += 1
    row = summary("through the bus, one at a time", i, time.perf_counter() - started, latencies)
    return row | await meter.per_decision(before, i)


async def through_bus_paced(bus: Bus, seconds: float, rate: float, meter: Meter) -> dict:
    """Requests start every 1/rate s on a fixed schedule; latency counts from the scheduled start,
    so a client or replica that falls behind cannot hide it (no coordinated omission)."""
    work, latencies, tasks = inputs(), [], []
    count, started = int(seconds * rate), time.perf_counter()

    async def one(i: int, due: float) -> None:
        latencies.append(await ask(bus, *work[i % len(work)], since=due))

    before = await meter.snapshot()
    for i in range(count):
        due = started + i / rate
        await asyncio.sleep(max(0.0, due - time.perf_counter()))  # yields even when behind
        tasks.append(asyncio.create_task(one(i, due)))
    await asyncio.gather(*tasks)
    row = summary(f"through the bus, {rate:,.0f}/s offered", count, time.perf_counter() - started, latencies)
    return row | await meter.per_decision(before, count)


async def through_bus_concurrent(bus: Bus, seconds: float, inflight: int, meter: Meter) -> dict:
    work, latencies, counter = inputs(), [], iter(range(10**9))
    deadline = time.perf_counter() + seconds

    async def client() -> None:
        while time.perf_counter() < deadline:
            latencies.append(await ask(bus, *work[next(counter) % len(work)]))

    before, started = await meter.snapshot(), time.perf_counter()
    await asyncio.gather(*(client() for _ in range(inflight)))
    row = summary(f"through the bus, {inflight} in flight", len(latencies), time.perf_counter() - started, latencies)
    return row | await meter.per_decision(before, len(latencies))


async def redis_calls(bus: Bus) -> int:
    """Commands Redis has executed so far (INFO commandstats), by every client."""
    stats = await bus.redis.info("commandstats")
    return sum(int(value["calls"]) for value in stats.values())


def cpu_seconds(process: psutil.Process) -> float:
    times = process.cpu_times()
    return times.user + times.system


def thread_seconds(process: psutil.Process) -> dict[int, float]:
    return {t.id: t.user_time + t.system_time for t in process.threads()}


def busiest(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU seconds of the thread that used the most between two `thread_seconds`."""
    return max(after[t] - before.get(t, 0.0) for t in after)


async def wait_for_gatekeeper(bus: Bus, process: subprocess.Popen) -> None:
    for _ in range(100):
        if process.poll() is not None:
            raise SystemExit(f"the gatekeeper exited with {process.returncode}")
        ping = Event(payload=PingRequested(service="gatekeeper"), source=Source(service="bench", instance="bench"))
        try:
            await bus.request(streams.GATEKEEPER_INBOX, ping, expect={"pong"}, timeout=0.5)
            return
        except Exception:
            await asyncio.sleep(0.1)
    raise SystemExit("the gatekeeper did not answer a ping")


async def bus_runs(redis: RedisServer, project: Path, args: argparse.Namespace) -> list[dict]:
    redis_url = redis.url
    env = {
        **os.environ,
        "REDIS_URL": redis_url,
        "SWIFTDEPLOY_MANIFEST": str(project / "manifest.yaml"),
        "PYTHONPATH": str(ROOT),
    }
    log = open(project / "gatekeeper.log", "w")
    command = [sys.executable, "-m", "services.gatekeeper"]
    if os.environ.get("GK_RUNNER"):  # e.g. a profiling wrapper
        command = [sys.executable, os.environ["GK_RUNNER"]]
    process = subprocess.Popen(command, cwd=project, env=env, stdout=log, stderr=log)
    bus = await Bus.connect(Settings(redis_url=redis_url))
    try:
        await wait_for_gatekeeper(bus, process)
        for domain, document in inputs()[:200]:  # warm up
            await ask(bus, domain, document)
        meter = Meter(bus, psutil.Process(process.pid), psutil.Process(redis.process.pid))
        rounds = []
        for _ in range(args.rounds):
            rounds.append([
                await engine_only(args.seconds),
                await through_bus_sequential(bus, args.seconds, meter),
                *[await through_bus_paced(bus, args.seconds, rate, meter) for rate in args.rates],
                await through_bus_concurrent(bus, args.seconds, args.inflight, meter),
            ])  # fmt: skip
        return rounds
    finally:
        await bus.close()
        process.terminate()
        process.wait(timeout=10)
        log.close()


def table(rows: list[dict], baseline: dict) -> str:
    """Wall-clock figures, then the CPU one decision costs: the gatekeeper in all and its busiest
    thread (what bounds a replica on free cores), this client, Redis, and Redis commands (every
    client's: request, reads, acks, replies)."""
    lines = [
        "| run | decisions/s | P50 ms | P99 ms | vs engine only | gatekeeper CPU ms | busiest thread ms | "
        "replica decisions/s on free cores | client CPU ms | Redis CPU ms | Redis commands |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in rows:
        busiest = row.get("thread_ms")
        lines.append(
            f"| {row['name']} | {row['per_s']:,.0f} | {row['p50_ms']:.2f} | {row['p99_ms']:.2f} | "
            f"{row['per_s'] / baseline['per_s']:.2f}x | {_or_dash(row.get('cpu_ms'), '.3f')} | {_or_dash(busiest, '.3f')} | "
            f"{_or_dash(busiest and 1000 / busiest, ',.0f')} | {_or_dash(row.get('client_ms'), '.3f')} | "
            f"{_or_dash(row.get('redis_ms'), '.3f')} | {_or_dash(row.get('redis_calls'), '.1f')} |"
        )
    return "\n".join(lines)


def _or_dash(value: float | None, spec: str) -> str:
    return format(value, spec) if value else "-"


def medians(rounds: list[list[dict]]) -> list[dict]:
    """Each run's figures as the median over the rounds (this machine's speed drifts by tens of
    percent from one minute to the next; the median of interleaved rounds is what to quote)."""
    out = []
    for same in zip(*rounds):
        row: dict = {"name": same[0]["name"]}
        for key in same[0]:
            if key != "name":
                row[key] = statistics.median(r[key] for r in same)
        out.append(row)
    return out


def spread(rounds: list[list[dict]]) -> str:
    lines = []
    for same in zip(*rounds):
        per_s = ", ".join(f"{r['per_s']:,.0f}" for r in same)
        p99 = ", ".join(f"{r['p99_ms']:.1f}" for r in same)
        lines.append(f"- {same[0]['name']}: decisions/s {per_s}; P99 ms {p99}")
    return "\n".join(lines)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=4.0, help="length of each run")
    parser.add_argument(
        "--rates",
        type=lambda text: [float(r) for r in text.split(",")],
        default=[500.0, 1000.0],
        help="offered decisions/s of the paced runs, comma-separated (default 500,1000: half the target, the target)",
    )
    parser.add_argument("--inflight", type=int, default=64, help="requests in flight in the throughput run")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of every run; the table shows medians")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="swiftdeploy-bench-") as tmp:
        project = Path(tmp)
        (project / "manifest.yaml").write_text(MANIFEST)
        policies.write_default_policies(project)
        redis = RedisServer(shutil.which("redis-server") or "/usr/bin/redis-server", project / "redis").start()
        try:
            rounds = await bus_runs(redis, project, args)
        finally:
            redis.stop()
    rows = medians(rounds)
    print(f"Medians of {args.rounds} rounds, each run {args.seconds:g} s:\n")
    print(table(rows, rows[0]))
    print(f"\nEach round:\n{spread(rounds)}")
    print(f"\n{os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f} at the end")


if __name__ == "__main__":
    asyncio.run(main())
