#!/usr/bin/env python3
"""Benchmark: does the history keep up with a gatekeeper at full speed?

A real redis-server on a free loopback port, one gatekeeper replica and one auditor replica as
their own processes (default settings: fsync on), and this process driving decisions through the
bus as fast as the gatekeeper answers them (64 in flight) for `--seconds`. Every decision is an
event the auditor must write. Each second the auditor's lag is sampled: events on the bus not yet
in history.jsonl. After the load stops, the time the history needs to catch up is measured.

Two runs in the same script, the same load:
- baseline: `SWIFTDEPLOY_AUDIT_CONCURRENCY=1`, one line, one write and one fsync at a time (the
  auditor before group commit);
- group commit: the default (lines that arrive together share one write and one fsync).

Usage: python bench/auditor_lag.py [--seconds 30] [--inflight 64]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from gatekeeper import ask, inputs, wait_for_gatekeeper  # noqa: E402

from swiftdeploy_core.bus import streams  # noqa: E402
from swiftdeploy_core.bus.connection import Bus  # noqa: E402
from swiftdeploy_core.settings import Settings  # noqa: E402
from tests.servers import RedisServer, require_binary  # noqa: E402

MANIFEST = (ROOT / "manifest.yaml").read_text()


def lines_in(path: Path) -> int:
    try:
        with path.open("rb") as handle:
            return sum(chunk.count(b"\n") for chunk in iter(lambda: handle.read(1 << 20), b""))
    except FileNotFoundError:
        return 0


async def auditor_lag(bus: Bus) -> int:
    """Events on the bus the auditor has not yet written: its group's lag (entries not yet read)
    plus its pending entries (read, line not yet durable, so not acknowledged)."""
    for group in await bus.redis.xinfo_groups(streams.EVENTS):
        if group["name"].decode() == streams.group("auditor"):
            return int(group.get("lag") or 0) + int(group["pending"])
    return int(await bus.redis.xlen(streams.EVENTS))  # the group is not there yet: nothing read


async def one_run(name: str, folder: Path, seconds: float, inflight: int, **auditor_env: str) -> dict:
    folder.mkdir()
    (folder / "manifest.yaml").write_text(MANIFEST)
    redis = RedisServer(require_binary("redis-server"), folder / "redis").start()
    env = {**os.environ, "REDIS_URL": redis.url, "SWIFTDEPLOY_MANIFEST": str(folder / "manifest.yaml"),
           "PYTHONPATH": str(ROOT), "SWIFTDEPLOY_STREAM_MAXLEN": "10000000"}  # fmt: skip
    logs = [open(folder / f"{s}.log", "w") for s in ("gatekeeper", "auditor")]
    gatekeeper = subprocess.Popen([sys.executable, "-m", "services.gatekeeper"], cwd=folder, env=env,
                                  stdout=logs[0], stderr=logs[0])  # fmt: skip
    auditor = subprocess.Popen([sys.executable, "-m", "services.auditor"], cwd=folder,
                               env={**env, **auditor_env}, stdout=logs[1], stderr=logs[1])  # fmt: skip
    history = folder / "history.jsonl"
    bus = await Bus.connect(Settings(redis_url=redis.url))
    try:
        await wait_for_gatekeeper(bus, gatekeeper)
        work = inputs()
        decisions, lags = 0, []
        stop = time.perf_counter() + seconds

        async def client(k: int) -> None:
            nonlocal decisions
            i = k
            while time.perf_counter() < stop:
                await ask(bus, *work[i % len(work)])
                decisions += 1
                i += inflight

        async def sampler() -> None:
            while time.perf_counter() < stop:
                await asyncio.sleep(1.0)
                lags.append(await auditor_lag(bus))

        started = time.perf_counter()
        await asyncio.gather(sampler(), *(client(k) for k in range(inflight)))
        elapsed = time.perf_counter() - started
        total = int(await bus.redis.xlen(streams.EVENTS))
        caught_up = time.perf_counter()
        while await auditor_lag(bus) > 0 and time.perf_counter() - caught_up < 600:
            await asyncio.sleep(0.1)
        catch_up = time.perf_counter() - caught_up
        return {
            "name": name,
            "decisions_per_s": decisions / elapsed,
            "events": total,  # decisions plus start-up chatter
            "lag_max": max(lags, default=0),
            "lag_end": lags[-1] if lags else 0,
            "catch_up_s": catch_up,
            "lines_per_s": lines_in(history) / (elapsed + catch_up),
        }
    finally:
        await bus.close()
        for process in (gatekeeper, auditor):
            process.terminate()
            process.wait(timeout=15)
        for log in logs:
            log.close()
        redis.stop()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--inflight", type=int, default=64)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="swiftdeploy-bench-lag-", dir=ROOT) as tmp:
        runs = [
            await one_run("baseline: one line, one fsync at a time", Path(tmp) / "a", args.seconds, args.inflight,
                          SWIFTDEPLOY_AUDIT_CONCURRENCY="1"),
            await one_run("group commit (default)", Path(tmp) / "b", args.seconds, args.inflight),
        ]  # fmt: skip
    print(f"{args.seconds:g} s of decisions at the gatekeeper's full speed ({args.inflight} in flight), fsync on")
    print()
    print("| auditor | decisions/s | events | lag max (events) | lag at the end | catch-up s | history lines/s |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in runs:
        print(f"| {r['name']} | {r['decisions_per_s']:,.0f} | {r['events']:,} | {r['lag_max']:,} | {r['lag_end']:,} | "
              f"{r['catch_up_s']:.1f} | {r['lines_per_s']:,.0f} |")  # fmt: skip


if __name__ == "__main__":
    asyncio.run(main())
