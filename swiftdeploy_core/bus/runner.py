"""Running a worker: the entrypoint of `python -m services.<name>` (signals, waiting for Redis, one
shutdown deadline) and `running()` for tests and benchmarks."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import sys
import threading
from collections.abc import AsyncIterator

from swiftdeploy_core.bus import logs
from swiftdeploy_core.bus.connection import Bus
from swiftdeploy_core.bus.handlers import ServiceSpec
from swiftdeploy_core.bus.retry import Backoff
from swiftdeploy_core.bus.worker import Worker
from swiftdeploy_core.errors import BusLost, ControlPlaneDown
from swiftdeploy_core.settings import Settings

log = logging.getLogger("swiftdeploy.worker")

__all__ = ["run", "running", "serve"]
# Past the grace the process exits anyway (a stuck event loop cannot hold it): what was taken and
# not acked stays pending in Redis, where a live replica reclaims it.
WATCHDOG_MARGIN_S = 0.8
BUS_CLOSE_S = 0.3  # closing the bus's own connections, after the worker's deadline


async def serve(spec: ServiceSpec, settings: Settings) -> int:
    """Connect (waiting for Redis if needed), run the worker until a signal, stop cleanly."""
    stop_requested = asyncio.Event()
    loop = asyncio.get_running_loop()
    worker: Worker | None = None

    def on_signal() -> None:
        stop_requested.set()
        if worker is not None:
            worker.request_stop()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal)
    bus = await _connect_until(settings, stop_requested)
    if bus is None:
        return 0
    worker = Worker(spec, settings, bus)
    if stop_requested.is_set():
        worker.request_stop()
    try:
        await _start_until(worker, stop_requested)
        # What start-up allocated (modules, schemas, the compiled policies) lives as long as the
        # process: keep it out of the cyclic collector, whose full passes over it took ~20 ms.
        gc.freeze()
        runner = asyncio.create_task(worker.run())
        await worker.stopping.wait()
        _watchdog(settings.shutdown_grace + WATCHDOG_MARGIN_S)
        await worker.shut_down(runner)  # ends by the deadline the stop request set
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(bus.close(), BUS_CLOSE_S)
    log.info("%s stopped", spec.name)
    return 0


def _watchdog(seconds: float) -> None:
    """Exit 0 after `seconds` even if the loop is stuck: what was taken and not acked stays
    pending in Redis, where a live replica reclaims it."""

    def hard_exit() -> None:
        log.warning("shutdown did not finish in %.1fs; exiting anyway", seconds)
        logging.shutdown()
        os._exit(0)

    timer = threading.Timer(seconds, hard_exit)
    timer.daemon = True
    timer.start()


async def _connect_until(settings: Settings, stop: asyncio.Event) -> Bus | None:
    """Services may start before Redis (compose, `up`): wait for it, unless told to stop."""
    backoff = Backoff(0.1, 5.0)
    while not stop.is_set():
        try:
            return await Bus.connect(settings)
        except ControlPlaneDown as exc:
            log.warning("waiting for Redis: %s", exc)
            await backoff.wait(until=stop)
    return None


async def _start_until(worker: Worker, stop: asyncio.Event) -> None:
    backoff = Backoff(high=5.0)
    while not stop.is_set():
        try:
            await worker.start()
            return
        except BusLost as exc:
            await worker.health.stop()
            log.warning("start failed, Redis unreachable (%s); retrying", exc)
            await backoff.wait(until=stop)


@contextlib.asynccontextmanager
async def running(spec: ServiceSpec, settings: Settings) -> AsyncIterator[Worker]:
    """Run a worker inside this event loop (tests, benchmarks); stops it cleanly on exit."""
    bus = await Bus.connect(settings)
    worker = Worker(spec, settings, bus)
    await worker.start()
    task = asyncio.create_task(worker.run())
    try:
        yield worker
    finally:
        await worker.shut_down(task)
        await bus.close()


def run(spec: ServiceSpec, settings: Settings | None = None) -> None:
    """The entrypoint of `python -m services.<name>`: run until SIGTERM/SIGINT, then exit 0."""
    settings = settings or Settings()
    logs.configure(settings, spec.name)
    sys.exit(asyncio.run(serve(spec, settings)))
