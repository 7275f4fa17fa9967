"""Waiting for an HTTP health endpoint, shared by both drivers."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

import aiohttp

from services.orchestrator.drivers.base import InstanceFailed

POLL = 0.05


async def wait_http_ok(
    url: str, timeout: float, *, name: str, alive: Callable[[], str | None] = lambda: None
) -> None:
    """Poll `url` until it answers 200. `alive` returns why the instance stopped (or None)."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:
        while time.monotonic() < deadline:
            reason = alive()
            if reason is not None:
                raise InstanceFailed(name, f"{name} {reason} before it became healthy")
            with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError, OSError):
                async with session.get(url) as response:
                    if response.status == 200:
                        return
                    last = f"HTTP {response.status}"
            await asyncio.sleep(POLL)
    raise InstanceFailed(name, f"{name} did not become healthy within {timeout:g}s ({url}: {last})")
