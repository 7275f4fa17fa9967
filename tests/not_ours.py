"""A service that is not SwiftDeploy's workload: `python -m tests.not_ours` (PORT, HOST, VERSION).

Health on `/status` (and `/healthz`, the path the orchestrator probes until the manifest can name
another), no `/chaos`, and no `/metrics` unless `METRICS=1`. Every other path answers after a
latency drawn uniformly from [LATENCY_MIN, LATENCY_MAX] seconds, with a 500 for a share
`FAIL_RATE` of requests. With `METRICS=1` it exports its own request counter and a latency
histogram with 5 ms buckets (fine enough that Prometheus' interpolated P99 is within a few % of
the exact one), counting application requests only.
"""

from __future__ import annotations

import asyncio
import os
import random

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

BUCKETS = tuple(round(0.005 * i, 3) for i in range(1, 201))  # 5 ms .. 1 s


def build_app() -> web.Application:
    version = os.environ.get("VERSION", "0.0.0")
    fail_rate = float(os.environ.get("FAIL_RATE", "0"))
    low, high = float(os.environ.get("LATENCY_MIN", "0.01")), float(os.environ.get("LATENCY_MAX", "0.05"))
    registry = CollectorRegistry()
    requests = Counter("svc_requests", "Application requests", ["code"], registry=registry)
    latency = Histogram("svc_latency_seconds", "Application latency", buckets=BUCKETS, registry=registry)
    for code in ("200", "500"):
        requests.labels(code)  # both series from the start: Prometheus sees each counter begin at 0

    async def status(_: web.Request) -> web.Response:
        return web.json_response({"ok": True, "version": version})

    async def metrics(_: web.Request) -> web.Response:
        return web.Response(body=generate_latest(registry), content_type="text/plain")

    async def serve(_: web.Request) -> web.Response:
        with latency.time():
            await asyncio.sleep(random.uniform(low, high))
            code = 500 if random.random() < fail_rate else 200
        requests.labels(str(code)).inc()
        return web.json_response({"version": version}, status=code)

    app = web.Application()
    app.router.add_get("/status", status)
    app.router.add_get("/healthz", status)
    if os.environ.get("METRICS") == "1":
        app.router.add_get("/metrics", metrics)
    app.router.add_route("*", "/{tail:.*}", serve)
    return app


if __name__ == "__main__":
    web.run_app(
        build_app(), host=os.environ.get("HOST", "127.0.0.1"), port=int(os.environ["PORT"]), print=None,
        access_log=None,
    )  # fmt: skip
