"""The embedded Redis killed with SIGKILL mid-canary, on a plane `swiftdeploy up` started (the
process runtime: real nginx and workload processes, the four real services, the real CLI): the
supervisor has it back on its port within 5 s, the canary finishes with nginx equal to the
record, `ps` counts the restart, and every audited event on the bus is in the history once."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from pathlib import Path

import psutil
import redis.asyncio as aioredis

from services.auditor.chain import RECOVERED, verify
from services.auditor.service import NOT_AUDITED
from services.orchestrator.drivers import make_driver
from swiftdeploy_core.bus import streams
from swiftdeploy_core.client.controlplane import STATE_FILE
from swiftdeploy_core.project.manifest import load_manifest
from tests.orchestration import CliResult, LoadLoop, write_manifest, write_policies
from tests.servers import REPO_ROOT

PROJECT = "sdr-supervised"


async def sd(root: Path, *args: str, timeout: float = 120) -> CliResult:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SWIFTDEPLOY_") and k != "REDIS_URL"}
    env.update(PYTHONPATH=str(REPO_ROOT), SWIFTDEPLOY_LOG_JSON="false", SWIFTDEPLOY_AUDIT_FSYNC="false",
               SWIFTDEPLOY_REQUIRE_SERVERS=os.environ.get("SWIFTDEPLOY_REQUIRE_SERVERS", ""))  # fmt: skip
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "swiftdeploy_core", *args, cwd=root, env=env,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    return CliResult(proc.returncode or 0, out.decode(), err.decode())


def plane(root: Path) -> dict:
    return json.loads((root / ".swiftdeploy" / STATE_FILE).read_text())


async def answers(url: str) -> bool:
    client = aioredis.Redis.from_url(url, socket_timeout=0.3, socket_connect_timeout=0.3)
    try:
        return bool(await client.ping())
    except (aioredis.RedisError, OSError):
        return False
    finally:
        await client.aclose()


async def rollout(url: str) -> dict:
    client = aioredis.Redis.from_url(url)
    try:
        raw = await client.get(streams.rollout_key(PROJECT))
        return json.loads(raw) if raw else {}
    finally:
        await client.aclose()


async def test_the_embedded_redis_killed_mid_canary_is_back_in_5s_and_nothing_is_lost(tmp_path: Path) -> None:
    root = tmp_path / "project"
    path = write_manifest(root, PROJECT, canary={"steps": [10, 20, 30, 40, 50, 60, 70, 80, 90], "interval": 0.5,
                                                 "failure_limit": 10},
                          collector={"interval": 0.5, "window": 4})  # fmt: skip  # figures within seconds
    write_policies(root, min_requests=0)
    nginx_url = f"http://127.0.0.1:{load_manifest(path).manifest.nginx.port}/"
    started = await sd(root, "up", "--timeout", "90")
    assert started.code == 0, started.text
    load: LoadLoop | None = None
    runner: asyncio.Task | None = None
    try:
        url = plane(root)["redis_url"]
        assert (await sd(root, "deploy")).code == 0
        load = LoadLoop(nginx_url, rate=50)
        runner = asyncio.create_task(load.run())
        await asyncio.sleep(2)  # the collector sees traffic on stable first
        promoted = await sd(root, "promote", "canary")
        assert promoted.code == 0, promoted.text
        deadline = time.monotonic() + 60
        while (await rollout(url)).get("step", 0) < 2:
            assert time.monotonic() < deadline, await rollout(url)
            await asyncio.sleep(0.05)

        before = plane(root)
        psutil.Process(before["redis_pid"]).kill()
        killed = time.monotonic()
        while not await answers(url) or plane(root)["redis_pid"] == before["redis_pid"]:
            assert time.monotonic() - killed < 5, "the embedded Redis was not back within 5 s"
            await asyncio.sleep(0.05)
        back_in = time.monotonic() - killed
        print(f"redis back {back_in:.2f}s after kill -9")

        deadline = time.monotonic() + 90
        while (record := await rollout(url)).get("phase") not in ("canary_complete", "stable", "failed"):
            assert time.monotonic() < deadline, record
            await asyncio.sleep(0.1)
        assert record["phase"] == "canary_complete", record
        assert record["canary"]["weight"] == 90
        loaded = load_manifest(path)
        conf = await make_driver(loaded.manifest, loaded.root).router_config()
        assert "90%   app_canary" in conf, conf

        listed = await sd(root, "ps", "--json")
        rows = [json.loads(line) for line in listed.out.splitlines()]
        (redis_row,) = [r for r in rows if r["service"] == "redis"]
        assert redis_row["restarts"] == 1 and redis_row["status"] == "healthy"
        assert listed.code == 0, listed.text

        # Every audited event on the bus is in the history exactly once.
        history = root / "history.jsonl"
        client = aioredis.Redis.from_url(url)
        try:
            deadline = time.monotonic() + 60
            while True:
                on_bus = {json.loads(f[b"event"])["id"] for _, f in await client.xrange(streams.EVENTS)
                          if f[b"type"].decode() not in NOT_AUDITED}  # fmt: skip
                lines = [json.loads(raw) for raw in history.read_bytes().splitlines()]
                ids = [line["event_id"] for line in lines if line["type"] != RECOVERED]
                if on_bus <= set(ids) or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.2)
        finally:
            await client.aclose()
        assert on_bus - set(ids) == set(), f"{len(on_bus - set(ids))} events missing from the history"
        assert len(ids) == len(set(ids)), "an event has two lines"
        assert verify(history).ok
        print(f"{len(on_bus)} events on the bus, {len(ids)} history lines; {load.sent} requests, {load.failed} failed")
    finally:
        if load is not None and runner is not None:
            load.stop()
            await runner
        await sd(root, "teardown")
        await sd(root, "down")
