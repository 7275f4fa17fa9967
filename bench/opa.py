#!/usr/bin/env python3
"""Benchmark: a decision through the bus with `policy.engine: opa` against the same OPA asked directly.

One OPA process (the project's stand-in, `tests/bin/opa run --server`, listening on a loopback
port and on a unix socket at once) serves the default policies. Each round, for each transport
(HTTP, unix socket), one decision at a time, the three kinds taken in turn request by request,
in a rotating order (this machine's load changes faster than a run of a thousand requests):

- direct (the baseline): this process POSTs `/v1/data/<domain>` with `{"input": ...}` over one
  pooled keep-alive aiohttp session, the request the gatekeeper makes;
- engine: `OpaEngine.evaluate` in this process (the gatekeeper's client code, no bus);
- through the bus: a real redis-server and one gatekeeper process (`python -m services.gatekeeper`,
  manifest `policy.engine: opa`, default settings and logging) asked `decision.requested`, waiting
  for `decision.made`.

The figure is the ratio of the P50s, bus / direct, on each transport (target <= 2). The stand-in
is slower than a real OPA (Python and regopy in place of Go), so the ratio, not the absolute, is
what to compare; the medians of interleaved rounds because this machine's speed drifts.

Usage: python bench/opa.py [--requests 1000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import policies  # noqa: E402
from bench.gatekeeper import ask, inputs, percentile, wait_for_gatekeeper  # noqa: E402
from services.gatekeeper.decide import engine_input  # noqa: E402
from services.gatekeeper.opa import OpaEngine  # noqa: E402
from swiftdeploy_core.bus import streams  # noqa: E402
from swiftdeploy_core.bus.connection import Bus  # noqa: E402
from swiftdeploy_core.bus.events import DecisionMade, DecisionRequested, Event, Source  # noqa: E402
from swiftdeploy_core.project import opa as opa_api  # noqa: E402
from swiftdeploy_core.settings import Settings  # noqa: E402
from tests.servers import RedisServer, free_port  # noqa: E402

WARM_UP = 100


async def wait_for_opa(url: str, process: subprocess.Popen) -> None:
    async with opa_api.session(url, 1.0) as http:
        for _ in range(200):
            if process.poll() is not None:
                raise SystemExit(f"the stand-in OPA exited with {process.returncode}")
            try:
                async with http.get(opa_api.base_url(url) + "/health") as resp:
                    if resp.status == 200:
                        return
            except OSError:
                pass
            await asyncio.sleep(0.05)
    raise SystemExit(f"the stand-in OPA did not answer on {url}")


async def interleaved(url: str, folder: Path, bus: Bus, requests: int) -> dict[str, list[float]]:
    """Seconds per decision of each kind, taken in turn so that the three see the same machine
    (its load changes faster than a run of a thousand requests), the order rotated each time
    (what runs just after a bus request shares the cores with the gatekeeper finishing up)."""
    work = inputs()
    base = opa_api.base_url(url)
    opa = OpaEngine(url, 5.0, folder)
    timings: dict[str, list[float]] = {"direct": [], "engine": [], "bus": []}

    async def direct(domain: str, document: dict) -> None:  # POST /v1/data/<domain>, one keep-alive session
        async with http.post(f"{base}/v1/data/{domain}", data=json.dumps({"input": engine_input(document)}),
                             headers={"Content-Type": "application/json"}) as resp:  # fmt: skip
            answer = await resp.read()
        assert resp.status == 200 and b"allow" in answer, (resp.status, answer[:200])

    async def engine(domain: str, document: dict) -> None:  # the gatekeeper's client code, drift checks included
        verdict = await opa.evaluate(domain, document)
        assert not any("policy engine" in r for r in verdict.reasons), verdict

    async def through_bus(domain: str, document: dict) -> None:  # -> the gatekeeper process -> OPA -> decision.made
        await ask(bus, domain, document)

    kinds = [("direct", direct), ("engine", engine), ("bus", through_bus)]
    try:
        async with opa_api.session(url, 5.0) as http:
            for i in range(requests + WARM_UP):
                domain, document = work[i % len(work)]
                for kind, run in kinds[i % 3 :] + kinds[: i % 3]:
                    started = time.perf_counter()
                    await run(domain, document)
                    if i >= WARM_UP:
                        timings[kind].append(time.perf_counter() - started)
    finally:
        await opa.close()
    return timings


async def check_engine(bus: Bus) -> None:
    """The gatekeeper decides with OPA (not the embedded engine a broken manifest would fall back to)."""
    request = Event(payload=DecisionRequested(domain="infra", input={"disk_free_gb": 50, "cpu_load": 0.5}),
                    source=Source(service="bench", instance="bench"))  # fmt: skip
    made = await bus.request(streams.GATEKEEPER_INBOX, request, expect={"decision.made"}, timeout=10)
    assert isinstance(made.payload, DecisionMade) and made.payload.engine == "opa", made.payload


def start_gatekeeper(project: Path, redis_url: str, opa_url: str) -> subprocess.Popen:
    env = {**os.environ, "REDIS_URL": redis_url, "SWIFTDEPLOY_MANIFEST": str(project / "manifest.yaml"),
           "SWIFTDEPLOY_OPA_URL": opa_url, "PYTHONPATH": str(ROOT)}  # fmt: skip
    log = open(project / f"gatekeeper-{'unix' if opa_api.is_unix(opa_url) else 'http'}.log", "a")
    return subprocess.Popen([sys.executable, "-m", "services.gatekeeper"], cwd=project, env=env, stdout=log, stderr=log)


async def rounds(project: Path, redis: RedisServer, urls: dict[str, str], args: argparse.Namespace) -> list[dict]:
    """Per round and transport: P50 and P99 (ms) of direct, engine and bus."""
    out: list[dict] = []
    for _ in range(args.rounds):
        for name, url in urls.items():
            # One gatekeeper at a time (two would share the group and split the requests),
            # started for each turn with the transport's URL.
            process = start_gatekeeper(project, redis.url, url)
            bus = await Bus.connect(Settings(redis_url=redis.url))
            try:
                await wait_for_gatekeeper(bus, process)
                await check_engine(bus)
                timings = await interleaved(url, project / "policies", bus, args.requests)
            finally:
                await bus.close()
                process.terminate()
                process.wait(10)
            out.append({"transport": name, **{kind: quantiles(t) for kind, t in timings.items()}})
    return out


def quantiles(timings: list[float]) -> tuple[float, float]:
    """P50 and P99 in ms."""
    return percentile(timings, 0.5) * 1000, percentile(timings, 0.99) * 1000


def report(results: list[dict], args: argparse.Namespace) -> str:
    lines = [
        f"Medians of {args.rounds} interleaved rounds, {args.requests} decisions one at a time each "
        f"(after {WARM_UP} to warm up), against one stand-in OPA process:",
        "",
        "| transport | direct P50 ms (baseline) | `OpaEngine` in process P50 ms | through the bus P50 ms | "
        "bus / direct at P50 | direct P99 ms | bus P99 ms |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    detail = []
    for name in dict.fromkeys(r["transport"] for r in results):
        same = [r for r in results if r["transport"] == name]
        med = {k: statistics.median(r[k][0] for r in same) for k in ("direct", "engine", "bus")}
        p99 = {k: statistics.median(r[k][1] for r in same) for k in ("direct", "bus")}
        lines.append(
            f"| {name} | {med['direct']:.2f} | {med['engine']:.2f} | {med['bus']:.2f} | "
            f"**{med['bus'] / med['direct']:.2f}** | {p99['direct']:.2f} | {p99['bus']:.2f} |"
        )
        ratios = ", ".join(f"{r['bus'][0] / r['direct'][0]:.2f}" for r in same)
        detail.append(f"- {name}: bus / direct at P50 in each round: {ratios}")
    return "\n".join(
        [*lines, "", *detail, "", f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f} at the end"]
    )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1000, help="decisions per run")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; the table shows medians")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="swiftdeploy-bench-") as tmp:
        project = Path(tmp)
        manifest = yaml.safe_load((ROOT / "manifest.yaml").read_text())
        manifest["policy"] = {"engine": "opa", "opa": "external"}
        (project / "manifest.yaml").write_text(yaml.safe_dump(manifest))
        policies.write_default_policies(project)
        port, sock = free_port(), project / "opa.sock"
        urls = {"HTTP": f"http://127.0.0.1:{port}", "unix socket": f"unix://{sock}"}
        opa_log = open(project / "opa.log", "w")
        opa = subprocess.Popen(
            [sys.executable, str(ROOT / "tests" / "bin" / "opa"), "run", "--server", "--addr", f"127.0.0.1:{port}",
             "--addr", f"unix://{sock}", "--ignore", "schemas", "--disable-telemetry", str(project / "policies")],
            stdout=opa_log, stderr=opa_log,
        )  # fmt: skip
        redis = RedisServer(shutil.which("redis-server") or "/usr/bin/redis-server", project / "redis").start()
        try:
            for url in urls.values():
                await wait_for_opa(url, opa)
            results = await rounds(project, redis, urls, args)
        finally:
            redis.stop()
            opa.terminate()
            opa.wait(10)
            opa_log.close()
    print(report(results, args))


if __name__ == "__main__":
    asyncio.run(main())
