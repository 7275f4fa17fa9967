"""The append-only, hash-chained history writer: exactly one line per event id.

Two auditor replicas may receive the same event (redelivery, a reclaimed pending entry, a
duplicate publish). Everything that decides whether and where a line goes happens under one
lock: an in-process asyncio lock plus `fcntl.flock` on the history file, so replicas on one host
take turns. Under the lock the Redis claim key for the event says what happened before:

- absent: nobody tried; mark `pending:<file size>` and append;
- `written`: the line is there; nothing to do;
- `pending:<offset>`: an earlier attempt stopped between claim and confirmation (a crash, a full
  disk); the file from that offset is searched for the event id, and the line appended only if
  it is not there.

A line is written with one `os.write` on an `O_APPEND` descriptor and flushed (fsync when
configured). A failed or short write is truncated back to where the line began, so the file never
holds a torn line; the error is raised as `HistoryWriteError` and the event stays pending.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import logging
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

from services.auditor.chain import GENESIS, encode_line, line_digest, tail_digest
from swiftdeploy_core.bus import streams
from swiftdeploy_core.errors import SwiftDeployError

log = logging.getLogger("swiftdeploy.auditor.history")

LOCK_POLL_SECONDS = 0.005
TAIL_CHUNK = 8192
WRITTEN = b"written"
PENDING = b"pending:"
# The claim in one round trip: returns the earlier claim (`written` or `pending:<offset>`), or
# nil after claiming the event fresh with ARGV[1] (`pending:<file size>`) for ARGV[2] seconds.
CLAIM_SCRIPT = """
local earlier = redis.call('GET', KEYS[1])
if earlier then return earlier end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
return nil
"""


class HistoryWriteError(SwiftDeployError):
    """A history line could not be appended (full disk, unwritable file); nothing was written."""


def history_id(path: Path) -> str:
    """A short stable name for one history file, used in its Redis keys."""
    return hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:16]


CLAIM_TTL_S = 7 * 24 * 3600  # how long an event id's claim is remembered: redeliveries come far sooner


@dataclass
class HistoryWriter:
    """Appends entries to one history file; safe across coroutines, processes and redeliveries."""

    path: Path
    redis: aioredis.Redis
    fsync: bool = True
    claim_ttl: int = CLAIM_TTL_S

    def __post_init__(self) -> None:
        self.path = Path(self.path)
        self._id = history_id(self.path)
        self._lock = asyncio.Lock()
        self._inflight: set[asyncio.Task] = set()
        self._claim = self.redis.register_script(CLAIM_SCRIPT)

    @property
    def head_key(self) -> str:
        return streams.audit_head_key(self._id)

    async def head(self) -> str | None:
        """The digest of the last line this history's writers appended, if Redis remembers it."""
        value = await self.redis.get(self.head_key)
        return value.decode() if value else None

    async def append(self, event_id: str, entry: dict[str, Any]) -> bool:
        """Append one line for `event_id` unless it is already there. True when a line was written.

        Shielded: a cancelled caller (shutdown) never interrupts a write halfway; the append
        finishes in the background and the event is acknowledged on its redelivery.
        """
        task = asyncio.ensure_future(self._append(event_id, entry))
        self._inflight.add(task)
        task.add_done_callback(self._inflight.discard)
        return await asyncio.shield(task)

    async def _append(self, event_id: str, entry: dict[str, Any]) -> bool:
        key = streams.audit_claim_key(self._id, event_id)
        async with self._locked() as fd:
            pending = PENDING + str(os.fstat(fd).st_size).encode()
            claim = await self._claim(keys=[key], args=[pending, self.claim_ttl])  # one round trip
            if claim == WRITTEN:
                log.info("= %s is already in the history (a redelivery); no new line", event_id)
                return False
            if claim is not None:  # pending from an attempt that stopped: is its line there?
                offset = int(claim[len(PENDING) :] or 0)
                if await asyncio.to_thread(_contains_event, fd, event_id, offset):
                    log.info("= %s was written before its writer stopped; no new line", event_id)
                    await self.redis.set(key, WRITTEN, ex=self.claim_ttl)
                    return False
                await self.redis.set(key, pending, ex=self.claim_ttl)
            if self.fsync:  # an fsync can take milliseconds: keep it off the event loop
                digest = await asyncio.to_thread(_append_line, fd, self.path, entry, True)
            else:
                digest = _append_line(fd, self.path, entry, False)
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.set(key, WRITTEN, ex=self.claim_ttl)
                pipe.set(self.head_key, digest)
                await pipe.execute()
            return True

    @contextlib.asynccontextmanager
    async def _locked(self) -> AsyncIterator[int]:
        async with self._lock:
            fd = _open(self.path)
            try:
                while True:
                    try:
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                        break
                    except BlockingIOError:
                        await asyncio.sleep(LOCK_POLL_SECONDS)
                yield fd
            finally:
                os.close(fd)  # closing the descriptor releases the flock


def _open(path: Path) -> int:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        raise HistoryWriteError(f"cannot open the history {path}: {exc.strerror or exc}") from exc


def _append_line(fd: int, path: Path, entry: dict[str, Any], fsync: bool) -> str:
    """Chain `entry` to the file's last line and append it whole, or leave the file as it was."""
    size = _drop_torn_tail(fd, path)
    prev = _last_digest(fd, size)
    line = encode_line(entry, prev)
    try:
        written = os.write(fd, line)
        if written != len(line):
            raise OSError(f"short write ({written} of {len(line)} bytes)")
        if fsync:
            os.fsync(fd)
    except OSError as exc:
        _truncate(fd, size, path)
        reason = exc.strerror or str(exc)
        raise HistoryWriteError(f"cannot append to the history {path}: {reason}") from exc
    return line_digest(line)


def _truncate(fd: int, size: int, path: Path) -> None:
    try:
        os.ftruncate(fd, size)
    except OSError as exc:  # pragma: no cover - the file became unwritable mid-line
        log.error("! could not cut a partial line from %s back to %d bytes: %s", path, size, exc)


def _drop_torn_tail(fd: int, path: Path) -> int:
    """Cut an unterminated last line (left by a crash mid-write, never acknowledged); new size."""
    size = os.fstat(fd).st_size
    if size == 0 or os.pread(fd, 1, size - 1) == b"\n":
        return size
    tail = _read_tail(fd, size)
    keep = size - len(tail) + tail_digest(tail)[1]
    log.warning("! %s ended with a torn line; cutting it (bytes %d..%d)", path, keep, size)
    _truncate(fd, keep, path)
    return keep


def _read_tail(fd: int, size: int) -> bytes:
    """Enough of the file's end to hold its last complete line and the newline before it."""
    chunk = TAIL_CHUNK
    while True:
        start = max(0, size - chunk)
        data = os.pread(fd, size - start, start)
        if start == 0 or data.count(b"\n") >= 2:
            return data
        chunk *= 4


def _last_digest(fd: int, size: int) -> str:
    return GENESIS if size == 0 else tail_digest(_read_tail(fd, size))[0]


def _contains_event(fd: int, event_id: str, offset: int) -> bool:
    """Does the file hold a line for `event_id` at or after `offset` (the whole file if it shrank)?"""
    size = os.fstat(fd).st_size
    start = offset if offset <= size else 0
    needle = f'"event_id":"{event_id}"'.encode()
    with os.fdopen(os.dup(fd), "rb") as handle:
        handle.seek(start)
        return any(needle in line for line in handle)
