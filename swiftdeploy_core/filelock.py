"""An exclusive lock between processes of one host, for asyncio code."""

from __future__ import annotations

import asyncio
import fcntl
from typing import IO


async def flock_exclusive(file: int | IO[str], poll: float) -> None:
    """Take flock(LOCK_EX) on `file`, polling every `poll` seconds so the event loop runs while
    another process holds it. Closing the file (or LOCK_UN) releases it."""
    while True:
        try:
            fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            await asyncio.sleep(poll)
