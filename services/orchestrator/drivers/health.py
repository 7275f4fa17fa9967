"""Waiting for an HTTP health endpoint, shared by both drivers."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable

import aiohttp

from services.orchestrator.drivers.base import InstanceFailed

POLL = 0.05


async def wait_http_ok(
    url: str, timeout: float, *, name: str, alive: Callable[[], Awaitable[str | None]] | None = None
) -> None:
    """Poll `url` until it answers 200. `alive`, asked before each poll, says why the instance
    stopped (or None while it runs)."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:
        while time.monotonic() < deadline:
            reason = await alive() if alive is not None else None
            if reason is not None:
                raise InstanceFailed(name, f"{name} {reason} before it became healthy")
            with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError, OSError):
                async with session.get(url) as response:
                    if response.status == 200:
                        return
                    last = f"HTTP {response.status}"
            await asyncio.sleep(POLL)
    raise InstanceFailed(name, f"{name} did not become healthy within {timeout:g}s ({url}: {last})")
