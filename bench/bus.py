#!/usr/bin/env python3
"""Bus benchmark: events/s publish -> handle -> ack with 1 and 2 replicas, request/reply latency,
and `redis-benchmark` XADD on the same machine as the baseline.

Usage: /work/.venv/bin/python bench/bus.py [--events 40000] [--requests 2000] [--batch 200] [--profile DIR]
Starts its own redis-server on a free loopback port and stops everything it started.
The replicas are real processes (`python bench/bus.py serve`), consuming through the group.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from swiftdeploy_core.bus import streams  # noqa: E402
from swiftdeploy_core.bus.connection import Bus  # noqa: E402
from swiftdeploy_core.bus.events import DeployStep, Event, PingRequested, Source  # noqa: E402
from swiftdeploy_core.bus.runner import run  # noqa: E402
from swiftdeploy_core.bus.worker import Context, ServiceSpec  # noqa: E402
from swiftdeploy_core.settings import Settings  # noqa: E402
from tests.servers import RedisServer  # noqa: E402

INBOX = streams.ORCHESTRATOR_INBOX
COUNTER = "bench:handled"
CLI = Source(service="bench", instance="bench")


def bench_spec() -> ServiceSpec:
    async def handle(payload: DeployStep, event: Event, ctx: Context) -> None:
        ctx.on_commit("INCR", COUNTER)  # an effect applied once, atomically with the ack

    return ServiceSpec(name="orchestrator", streams=[INBOX], handlers={DeployStep: handle})


def child_env(url: str, instance: str, batch: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SWIFTDEPLOY_")}
    env.update(REDIS_URL=url, SWIFTDEPLOY_INSTANCE=instance, SWIFTDEPLOY_LOG_LEVEL="WARNING",
               SWIFTDEPLOY_BATCH_SIZE=str(batch), SWIFTDEPLOY_STREAM_MAXLEN="1000000", PYTHONPATH=str(ROOT))  # fmt: skip
    return env


def start(args: list[str], env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, *args], cwd=ROOT, env=env, stdout=subprocess.DEVNULL)


PROFILE: Path | None = None  # --profile DIR: each replica sampled by py-spy while it consumes


def profile(pid: int, name: str) -> subprocess.Popen:
    """py-spy sampling `pid` (pip install py-spy) into PROFILE/replica-<name>.txt, collapsed stacks."""
    assert PROFILE is not None
    out = PROFILE / f"replica-{name}.txt"
    spy = subprocess.Popen([shutil.which("py-spy") or "py-spy", "record", "--pid", str(pid), "--format", "raw",
                            "--rate", "500", "--output", str(out)], stdout=subprocess.DEVNULL)  # fmt: skip
    time.sleep(1.0)  # attached before the first event
    return spy


async def wait_joined(bus: Bus, stream: str, group: str, consumers: int) -> None:
    while True:
        if await bus.redis.exists(stream):
            with_group = [g for g in await bus.redis.xinfo_groups(stream) if g["name"].decode() == group]
            if with_group and with_group[0]["consumers"] >= consumers:
                return
        await asyncio.sleep(0.1)


async def throughput(url: str, replicas: int, events: int, batch: int) -> tuple[float, float]:
    """Events/s from the first XADD until every event is handled and acked, and the replicas'
    CPU time per event in microseconds (what the machine's load does not change much)."""
    procs = [start([__file__, "serve"], child_env(url, f"bench-{i}", batch)) for i in range(replicas)]
    bus = await Bus.connect(Settings(redis_url=url, stream_maxlen=1_000_000))
    try:
        await bus.redis.delete(INBOX, COUNTER, streams.processed_key("orchestrator"))
        await wait_joined(bus, INBOX, streams.group("orchestrator"), replicas)
        payloads = [Event(payload=DeployStep(step=str(i)), source=CLI) for i in range(events)]
        cpu = [psutil.Process(p.pid) for p in procs]
        spies = [profile(p.pid, f"{replicas}-{i}") for i, p in enumerate(procs)] if PROFILE else []
        cpu_before = sum(sum(p.cpu_times()[:2]) for p in cpu)
        started = time.perf_counter()
        for i in range(0, events, 1000):
            await bus.publish_many(INBOX, payloads[i : i + 1000])
        while int(await bus.redis.get(COUNTER) or 0) < events:
            await asyncio.sleep(0.005)
        elapsed = time.perf_counter() - started
        for spy in spies:
            spy.send_signal(signal.SIGINT)  # py-spy writes its profile on SIGINT
            spy.wait(30)
        cpu_used = sum(sum(p.cpu_times()[:2]) for p in cpu) - cpu_before
        group = (await bus.redis.xinfo_groups(INBOX))[0]
        assert group["pending"] == 0 and group.get("lag", 0) == 0, group
        return events / elapsed, cpu_used / events * 1e6
    finally:
        await bus.close()
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(10)


async def request_reply(url: str, requests: int) -> tuple[float, float, float]:
    """P50, P99, max of a ping request answered by a real gatekeeper process, in ms."""
    proc = start(["-m", "services.gatekeeper"], child_env(url, "bench-gk", 100))
    bus = await Bus.connect(Settings(redis_url=url))
    try:
        await wait_joined(bus, streams.GATEKEEPER_INBOX, streams.group("gatekeeper"), 1)
        timings = []
        for i in range(requests + 50):
            ping = Event(payload=PingRequested(service="gatekeeper"), source=CLI)
            started = time.perf_counter()
            await bus.request(streams.GATEKEEPER_INBOX, ping, {"pong"}, timeout=5)
            if i >= 50:  # warm-up
                timings.append((time.perf_counter() - started) * 1000)
        cuts = statistics.quantiles(timings, n=100)
        return cuts[49], cuts[98], max(timings)
    finally:
        await bus.close()
        proc.terminate()
        proc.wait(10)


def redis_benchmark_xadd(port: int, events: int) -> float:
    """Baseline: XADD requests/s from redis-benchmark, pipelined (-P 100), 1 client."""
    binary = shutil.which("redis-benchmark")
    if binary is None:
        raise SystemExit("redis-benchmark is not installed (Debian package redis-tools)")
    out = subprocess.run([binary, "-p", str(port), "-n", str(events), "-c", "1", "-P", "100", "--csv",
                          "XADD", "bench:baseline", "MAXLEN", "~", "1000000", "*", "event", "x" * 400],
                         capture_output=True, text=True, check=True).stdout  # fmt: skip
    return float(re.findall(r'"([\d.]+)"', out.splitlines()[-1])[0])


async def main(args: argparse.Namespace) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="swiftdeploy-bench-"))
    server = RedisServer(shutil.which("redis-server") or "/usr/bin/redis-server", workdir).start()
    try:
        baseline = redis_benchmark_xadd(server.port, args.events)
        one, one_cpu = await throughput(server.url, 1, args.events, args.batch)
        two, two_cpu = await throughput(server.url, 2, args.events, args.batch)
        p50, p99, worst = await request_reply(server.url, args.requests)
    finally:
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"machine: {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}; {args.events} events, batch {args.batch}")
    print(f"baseline redis-benchmark XADD (-P 100, 1 client): {baseline:,.0f} req/s")
    print(
        f"publish->handle->ack, 1 replica : {one:,.0f} events/s ({one / baseline:.2f} of baseline); "
        f"replica CPU {one_cpu:.0f} us/event"
    )
    print(
        f"publish->handle->ack, 2 replicas: {two:,.0f} events/s ({two / baseline:.2f} of baseline); "
        f"replicas CPU {two_cpu:.0f} us/event"
    )
    print(f"request/reply ping ({args.requests}): P50 {p50:.2f} ms, P99 {p99:.2f} ms, max {worst:.2f} ms")


if __name__ == "__main__":
    if sys.argv[1:2] == ["serve"]:
        run(bench_spec(), Settings())
    else:
        parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
        parser.add_argument("--events", type=int, default=40_000)
        parser.add_argument("--requests", type=int, default=2_000)
        parser.add_argument("--batch", type=int, default=200)
        parser.add_argument("--profile", type=Path, help="write py-spy profiles of the replicas here")
        parsed = parser.parse_args()
        PROFILE = parsed.profile
        asyncio.run(main(parsed))
