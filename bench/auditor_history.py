"""How much the history's guarantees cost: lines per second, as ratios to a plain append.

baseline      one os.write per line on an O_APPEND file (no chain, no claims, no lock)
chain         the same plus the hash chain (read the last line, encode, hash)
writer        HistoryWriter: chain + Redis claims + flock, fsync off
writer+fsync  HistoryWriter with fsync, one line at a time (each caller waits for its line)
group+fsync   HistoryWriter with fsync, IN_FLIGHT callers at once: lines staged while a write
              is under way share one write and one fsync (group commit, how the auditor runs)

Needs redis-server on PATH; starts its own on a free loopback port. Run briefly:
    /work/.venv/bin/python bench/auditor_history.py [lines]
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import redis.asyncio as aioredis

from services.auditor.chain import GENESIS, encode_line, line_digest
from services.auditor.history import HistoryWriter
from tests.servers import RedisServer


def entry(i: int) -> dict:
    return {
        "timestamp": "2026-11-26T07:00:00.000Z",
        "type": "deploy.step",
        "mode": "stable",
        "step": f"step {i}",
        "detail": "x" * 80,
        "event_id": f"{i:032x}",
    }


def baseline(path: Path, lines: int) -> float:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    started = time.perf_counter()
    for i in range(lines):
        os.write(fd, encode_line(entry(i), GENESIS))
    os.close(fd)
    return time.perf_counter() - started


def chain_only(path: Path, lines: int) -> float:
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
    started = time.perf_counter()
    prev = GENESIS
    for i in range(lines):
        line = encode_line(entry(i), prev)
        os.write(fd, line)
        prev = line_digest(line)
    os.close(fd)
    return time.perf_counter() - started


IN_FLIGHT = 256  # the auditor's default audit_concurrency


async def group(path: Path, lines: int, url: str) -> float:
    client = aioredis.Redis.from_url(url, max_connections=64)
    history = HistoryWriter(path, client, fsync=True)
    slots = asyncio.Semaphore(IN_FLIGHT)

    async def one(i: int) -> None:
        async with slots:
            await history.append(f"group-{i}", entry(i))

    started = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(lines)))
    elapsed = time.perf_counter() - started
    await client.aclose()
    return elapsed


async def writer(path: Path, lines: int, url: str, fsync: bool) -> float:
    client = aioredis.Redis.from_url(url)
    history = HistoryWriter(path, client, fsync=fsync)
    started = time.perf_counter()
    for i in range(lines):
        await history.append(f"{fsync}-{i}", entry(i))
    elapsed = time.perf_counter() - started
    await client.aclose()
    return elapsed


def main() -> None:
    lines = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
    binary = shutil.which("redis-server") or "/usr/bin/redis-server"
    folder = Path(tempfile.mkdtemp(prefix="swiftdeploy-bench-auditor-", dir=os.getcwd()))
    server = RedisServer(binary, folder / "redis").start()
    try:
        url = server.url
        results = {
            "baseline": baseline(folder / "a.jsonl", lines),
            "chain": chain_only(folder / "b.jsonl", lines),
            "writer": asyncio.run(writer(folder / "c.jsonl", lines, url, fsync=False)),
            "writer+fsync": asyncio.run(writer(folder / "d.jsonl", lines, url, fsync=True)),
            "group+fsync": asyncio.run(group(folder / "e.jsonl", lines * 5, url)),
        }
    finally:
        server.stop()
        shutil.rmtree(folder, ignore_errors=True)
    base = results["baseline"]
    print(f"{lines} lines on {folder.parent} (same filesystem as the history would be)")
    print(f"{'case':<14}{'lines/s':>12}{'µs/line':>10}{'× baseline time':>18}")
    for name, seconds in results.items():
        n = lines * 5 if name == "group+fsync" else lines  # more lines: batches need a queue to form
        per_line = seconds / n
        print(f"{name:<14}{1 / per_line:>12.0f}{per_line * 1e6:>10.1f}{per_line / (base / lines):>18.1f}")


if __name__ == "__main__":
    main()
