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

Lines are group-committed: those staged while a write is under way go to the file together, in
staging order, with one `os.write` on an `O_APPEND` descriptor and one fsync (when configured),
after one claim round trip for the whole batch. A failed or short write is truncated back to
where the batch began, so the file never holds a torn line; the error is raised as
`HistoryWriteError` to every line of the batch, and their events stay pending. A crash mid-write
leaves at most a torn last line, cut before the next append; the batch's claims are all
`pending:<offset>`, so a redelivery finds the complete lines and writes only the missing ones.

A torn tail found anyway (power loss mid-write, a hand edit) is never just cut: under the lock its
bytes are moved to a recovery file beside the history (`<name>.torn-<offset>-<time>`), a
`history.recovered` line records the repair (offset, bytes, recovery file), and every event the
history should hold but does not (claim `written` or `pending`, no line in the file) is read again
from the events stream and written once more. See `recover_torn_tail`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

from services.auditor.chain import (
    GENESIS,
    RECOVERED,
    encode_line,
    history_entry,
    iso_utc,
    line_digest,
    parse_iso,
    tail_digest,
)
from swiftdeploy_core.bus import streams
from swiftdeploy_core.bus.events import Event, ModeChanged
from swiftdeploy_core.bus.wire import decode
from swiftdeploy_core.errors import SwiftDeployError
from swiftdeploy_core.filelock import flock_exclusive

log = logging.getLogger("swiftdeploy.auditor.history")

LOCK_POLL_SECONDS = 0.005
TAIL_CHUNK = 8192
WRITTEN = b"written"
PENDING = b"pending:"
# A batch's claims in one round trip: for each key, the earlier claim (`written` or
# `pending:<offset>`), or nil after claiming it fresh with ARGV[1] (`pending:<file size>`) for
# ARGV[2] seconds.
CLAIM_SCRIPT = """
local out = {}
for i, key in ipairs(KEYS) do
  local earlier = redis.call('GET', key)
  if earlier then
    out[i] = earlier
  else
    redis.call('SET', key, ARGV[1], 'EX', ARGV[2])
    out[i] = false
  end
end
return out
"""
# After the write: every written key becomes `written` (ARGV[1] seconds) and ARGV[2] the head.
# KEYS[1] is the head key, the rest the claims.
WRITTEN_SCRIPT = """
for i = 2, #KEYS do redis.call('SET', KEYS[i], 'written', 'EX', ARGV[1]) end
redis.call('SET', KEYS[1], ARGV[2])
return #KEYS - 1
"""

RECOVERY_LOOKBACK_S = 600  # events this much older than the last good line are searched again
_EVENT_ID = re.compile(rb'"event_id":"([^"\\]*)"')
_FIELD = re.compile(rb'"(timestamp|mode)":"([^"\\]*)"')

# Events on the bus from a time (ms since the epoch) on, the audited ones only, oldest first.
Replay = Callable[[int], Awaitable[list[Event]]]


class HistoryWriteError(SwiftDeployError):
    """A history line could not be appended (full disk, unwritable file); nothing was written."""


def history_id(path: Path) -> str:
    """A short stable name for one history file, used in its Redis keys."""
    return hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:16]


CLAIM_TTL_S = 7 * 24 * 3600  # how long an event id's claim is remembered: redeliveries come far sooner
MAX_BATCH = 256  # lines in one group commit: bounds one write, one claim round trip and one fsync


@dataclass
class Staged:
    """A line waiting for the next group commit."""

    event_id: str
    entry: dict[str, Any]
    future: asyncio.Future[bool]


@dataclass
class HistoryWriter:
    """Appends entries to one history file; safe across coroutines, processes and redeliveries."""

    path: Path
    redis: aioredis.Redis
    fsync: bool = True
    claim_ttl: int = CLAIM_TTL_S
    max_batch: int = MAX_BATCH
    replay: Replay | None = None  # where lost events are read again after a torn tail

    def __post_init__(self) -> None:
        self.path = Path(self.path)
        self._id = history_id(self.path)
        self._lock = asyncio.Lock()
        self._staged: list[Staged] = []
        self._flusher: asyncio.Future[None] | None = None
        self._claim = self.redis.register_script(CLAIM_SCRIPT)
        self._written = self.redis.register_script(WRITTEN_SCRIPT)

    @property
    def head_key(self) -> str:
        return streams.audit_head_key(self._id)

    async def head(self) -> str | None:
        """The digest of the last line this history's writers appended, if Redis remembers it."""
        value = await self.redis.get(self.head_key)
        return decode(value) if value else None

    async def append(self, event_id: str, entry: dict[str, Any]) -> bool:
        """Append one line for `event_id` unless it is already there. True when a line was written.

        Group commit: lines staged while a write is in progress go to the file together, with
        one write and one fsync, in the order they were staged. The caller returns only once its
        line is durable. Shielded: a cancelled caller (shutdown) never interrupts a write
        halfway; the batch finishes in the background and the event is acknowledged on its
        redelivery.
        """
        return await asyncio.shield(self.stage(event_id, entry))

    def stage(self, event_id: str, entry: dict[str, Any]) -> asyncio.Future[bool]:
        """Queue a line without waiting (callers that must keep an order stage in that order);
        the future resolves once the batch holding it is durable, or fails with its error."""
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._staged.append(Staged(event_id, entry, future))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.ensure_future(self._flush_staged())
        return future

    async def _flush_staged(self) -> None:
        """Write what is staged, batch after batch, until nothing is left."""
        while self._staged:
            batch, self._staged = self._staged[: self.max_batch], self._staged[self.max_batch :]
            try:
                written = await self._append_batch(batch)
            except BaseException as exc:  # every waiter learns what happened to its line
                for item in batch:
                    if not item.future.done():
                        item.future.set_exception(exc)
                if not isinstance(exc, Exception):
                    raise
                continue
            for item, done in zip(batch, written):
                if not item.future.done():
                    item.future.set_result(done)

    async def _append_batch(self, batch: list[Staged]) -> list[bool]:
        """One claim round trip, one write and one fsync for the whole batch."""
        keys = [streams.audit_claim_key(self._id, item.event_id) for item in batch]
        async with self._locked() as fd:
            await self._recover(fd)
            pending = PENDING + str(os.fstat(fd).st_size).encode()
            claims = await self._claim(keys=keys, args=[pending, self.claim_ttl])
            todo: list[int] = []
            seen: set[str] = set()
            for n, (item, claim) in enumerate(zip(batch, claims)):
                if item.event_id in seen or claim == WRITTEN:
                    log.info("= %s is already in the history (a redelivery); no new line", item.event_id)
                elif claim is not None and await self._written_before(fd, keys[n], item.event_id, claim, pending):
                    log.info("= %s was written before its writer stopped; no new line", item.event_id)
                else:
                    todo.append(n)
                seen.add(item.event_id)
            if todo:
                entries = [batch[n].entry for n in todo]
                if self.fsync:  # an fsync can take milliseconds: keep it off the event loop
                    digest = await asyncio.to_thread(_append_lines, fd, self.path, entries, True)
                else:
                    digest = _append_lines(fd, self.path, entries, False)
                await self._written(keys=[self.head_key, *(keys[n] for n in todo)], args=[self.claim_ttl, digest])
            wrote = set(todo)
            return [n in wrote for n in range(len(batch))]

    async def _written_before(self, fd: int, key: str, event_id: str, claim: bytes, pending: bytes) -> bool:
        """A `pending:<offset>` claim from an attempt that stopped: is its line there?"""
        offset = int(claim[len(PENDING) :] or 0)
        if await asyncio.to_thread(_contains_event, fd, event_id, offset):
            await self.redis.set(key, WRITTEN, ex=self.claim_ttl)
            return True
        await self.redis.set(key, pending, ex=self.claim_ttl)
        return False

    async def _write(self, fd: int, key: str, entry: dict[str, Any]) -> None:
        """Append `entry` (under the lock) and confirm it: claim `written`, the head moved on."""
        if self.fsync:  # an fsync can take milliseconds: keep it off the event loop
            digest = await asyncio.to_thread(_append_lines, fd, self.path, [entry], True)
        else:
            digest = _append_lines(fd, self.path, [entry], False)
        await self._written(keys=[self.head_key, key], args=[self.claim_ttl, digest])

    async def recover_torn_tail(self) -> TornTail | None:
        """Repair a torn last line now (the auditor does this at start); None when there was none."""
        async with self._locked() as fd:
            return await self._recover(fd)

    async def _recover(self, fd: int) -> TornTail | None:
        """Under the lock: move a torn tail aside, record the repair, write its events again."""
        if not _is_torn(fd):  # the common case, two syscalls: no thread hop on every append
            return None
        torn = await asyncio.to_thread(_move_torn_tail, fd, self.path)
        if torn is None:
            return None
        log.warning(
            "! %s ended with a torn line (bytes %d..%d); moved it to %s and writing its events again from the bus",
            self.path, torn.offset, torn.offset + torn.size, torn.recovery_file,
        )  # fmt: skip
        await self._write(fd, streams.audit_claim_key(self._id, torn.line_id), torn.entry())
        if self.replay is None:
            log.error("! no bus to replay from: the torn line's events are only in %s", torn.recovery_file)
            return torn
        since = torn.since_ms - RECOVERY_LOOKBACK_S * 1000
        present = await asyncio.to_thread(_event_ids, fd)
        rewritten: list[str] = []
        mode = torn.mode_before
        for event in await self.replay(since):
            if event.id in present:  # at or before the last good line: its mode is mode_before's
                continue
            if isinstance(event.payload, ModeChanged):
                mode = event.payload.mode
            key = streams.audit_claim_key(self._id, event.id)
            if event.id not in torn.event_ids and await self.redis.get(key) is None:
                continue  # nobody has taken it yet: its own delivery writes it
            await self._write(fd, key, history_entry(event, torn.mode_of.get(event.id, mode)))
            present.add(event.id)
            rewritten.append(event.id)
        missing = [i for i in torn.event_ids if i not in present]
        log.warning("! torn tail of %s recovered: %d event%s written again (%s)%s", self.path, len(rewritten),
                    "" if len(rewritten) == 1 else "s", ", ".join(rewritten) or "none",
                    f"; NOT on the bus any more: {', '.join(missing)} (see {torn.recovery_file})" if missing else "")  # fmt: skip
        return torn

    @contextlib.asynccontextmanager
    async def _locked(self) -> AsyncIterator[int]:
        async with self._lock:
            fd = _open(self.path)
            try:
                await flock_exclusive(fd, LOCK_POLL_SECONDS)
                yield fd
            finally:
                os.close(fd)  # closing the descriptor releases the flock


def _open(path: Path) -> int:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        raise HistoryWriteError(f"cannot open the history {path}: {exc.strerror or exc}") from exc


def _append_lines(fd: int, path: Path, entries: list[dict[str, Any]], fsync: bool) -> str:
    """Chain `entries` to the file's last line and append them in one write, or leave the file as
    it was; returns the digest of the last line written."""
    size = _drop_torn_tail(fd, path)
    prev = _last_digest(fd, size)
    lines = []
    for entry in entries:
        line = encode_line(entry, prev)
        lines.append(line)
        prev = line_digest(line)
    blob = b"".join(lines)
    try:
        written = os.write(fd, blob)
        if written != len(blob):
            raise OSError(f"short write ({written} of {len(blob)} bytes)")
        if fsync:
            os.fsync(fd)
    except OSError as exc:
        _truncate(fd, size, path)
        reason = exc.strerror or str(exc)
        raise HistoryWriteError(f"cannot append to the history {path}: {reason}") from exc
    return prev


def _truncate(fd: int, size: int, path: Path) -> None:
    try:
        os.ftruncate(fd, size)
    except OSError as exc:  # pragma: no cover - the file became unwritable mid-line
        log.error("! could not cut a partial line from %s back to %d bytes: %s", path, size, exc)


@dataclass(frozen=True)
class TornTail:
    """A torn last line moved aside: where it began, how long it was, where its bytes are now."""

    offset: int
    size: int
    recovery_file: Path
    since_ms: int  # the last good line's (or the fragment's) time: replay from a while before it
    mode_before: str  # the serving mode on the last good line
    event_ids: tuple[str, ...]  # event ids legible in the fragment
    mode_of: dict[str, str]  # their modes, when legible too

    @property
    def line_id(self) -> str:
        return f"recovered:{self.offset}:{self.recovery_file.name}"

    def entry(self) -> dict[str, Any]:
        """The history line that records this repair."""
        return {"timestamp": iso_utc(datetime.now(UTC)), "type": RECOVERED, "mode": self.mode_before,
                "offset": self.offset, "bytes": self.size, "recovery_file": self.recovery_file.name,
                "event_ids": list(self.event_ids), "event_id": self.line_id}  # fmt: skip


def _is_torn(fd: int) -> bool:
    size = os.fstat(fd).st_size
    return size > 0 and os.pread(fd, 1, size - 1) != b"\n"


def _move_torn_tail(fd: int, path: Path) -> TornTail | None:
    """Move an unterminated last line to a recovery file beside the history and cut it off."""
    if not _is_torn(fd):
        return None
    size = os.fstat(fd).st_size
    tail = _read_tail(fd, size)
    keep = size - len(tail) + tail_digest(tail)[1]
    fragment = os.pread(fd, size - keep, keep)
    good = tail[: len(tail) - len(fragment)].rstrip(b"\n").rsplit(b"\n", 1)[-1]
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    recovery = path.with_name(f"{path.name}.torn-{keep}-{stamp}")
    with open(recovery, "wb") as handle:  # the bytes are kept before they leave the history
        handle.write(fragment)
        handle.flush()
        os.fsync(handle.fileno())
    _truncate(fd, keep, path)
    fields = dict((k.decode(), v.decode()) for k, v in _FIELD.findall(good)) if good else {}
    seen = dict((k.decode(), v.decode()) for k, v in _FIELD.findall(fragment))
    times = [t for t in (fields.get("timestamp"), seen.get("timestamp")) if t]
    since = min((_ms(t) for t in times), default=0)
    ids = tuple(dict.fromkeys(i.decode() for i in _EVENT_ID.findall(fragment)))
    modes = {i: seen["mode"] for i in ids if "mode" in seen}
    return TornTail(keep, size - keep, recovery, since, fields.get("mode", "stable"), ids, modes)


def _ms(text: str) -> int:
    try:
        return int(parse_iso(text).timestamp() * 1000)
    except ValueError:
        return 0


def _event_ids(fd: int) -> set[str]:
    """The event id of every line in the file (the envelope's id is the line's last `event_id`)."""
    ids = set()
    with os.fdopen(os.dup(fd), "rb") as handle:
        handle.seek(0)
        for line in handle:
            found = _EVENT_ID.findall(line)
            if found:
                ids.add(found[-1].decode())
    return ids


def _drop_torn_tail(fd: int, path: Path) -> int:
    """The file's size, after cutting an unterminated tail that `_recover` did not see (it always
    runs first under the same lock, so this only guards the format); logged loudly."""
    size = os.fstat(fd).st_size
    if not _is_torn(fd):
        return size
    tail = _read_tail(fd, size)
    keep = size - len(tail) + tail_digest(tail)[1]
    log.error("! %s ended with a torn line after recovery ran; cutting it (bytes %d..%d)", path, keep, size)
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
