"""A service's consumer group as one replica uses it: join, read, reclaim, commit, dead-letter.

The worker (`worker.py`) drives these operations; this module holds the Redis side of them (each
raising the bus's error families, see `retry.redis_errors`), in particular the commit script that acks, marks processed and applies a handler's writes atomically.
"""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

from redis.exceptions import ResponseError
from redis.typing import EncodableT, FieldT

from swiftdeploy_core.bus import streams
from swiftdeploy_core.bus.connection import BlockingConnection, Bus
from swiftdeploy_core.bus.events import CommandRejected, Event, Source
from swiftdeploy_core.bus.retry import mapped
from swiftdeploy_core.bus.wire import (
    B_CORRELATION,
    B_EVENT,
    B_TYPE,
    FIELD_EVENT,
    FIELD_TYPE,
    decode,
    entry_fields,
    maxlen_for,
)

# Acks entries, records their event ids as processed and applies the handlers' queued writes, all
# atomically, and only for event ids not processed before (a reclaimed duplicate is acked without
# its writes). ARGV[1] is JSON (one argument: packing thousands of small ones is slow in redis-py):
# {"g": group, "t": now_ms, "e": [[stream, entry_id, event_id or "", had_failures, [[cmd...]...]]]}
COMMIT_SCRIPT = """
local batch = cjson.decode(ARGV[1])
local group, now, dups = batch.g, batch.t, 0
local marks, acks, done, broken = {}, {}, {}, {}
for _, e in ipairs(batch.e) do
  local stream, entry, eid = e[1], e[2], e[3]
  local fresh = eid == '' or not (done[eid] or redis.call('ZSCORE', KEYS[1], eid))
  if fresh then
    for _, cmd in ipairs(e[5]) do
      local reply = redis.pcall(unpack(cmd))
      if type(reply) == 'table' and reply.err then  -- a bad write: report it, never poison the batch
        broken[#broken + 1] = {stream .. '/' .. entry, cmd[1] .. ': ' .. reply.err}
        break
      end
    end
    if eid ~= '' then
      done[eid] = true
      marks[#marks + 1] = now
      marks[#marks + 1] = eid
    end
  else
    dups = dups + 1
  end
  acks[stream] = acks[stream] or {}
  table.insert(acks[stream], entry)
  if e[4] then redis.call('HDEL', KEYS[2], stream .. '/' .. entry) end
end
for i = 1, #marks, 2000 do
  redis.call('ZADD', KEYS[1], unpack(marks, i, math.min(i + 1999, #marks)))
end
for stream, ids in pairs(acks) do redis.call('XACK', stream, group, unpack(ids)) end
return {dups, cjson.encode(broken)}
"""
# Which of the event ids in ARGV[1] (a JSON list, for the same reason) are in KEYS[1], the
# processed set: 1 or 0 each, in order. ZMSCORE with one argument an id costs the replica ~3 µs
# an id to pack in redis-py; one JSON argument a whole batch, a tenth of that.
SEEN_SCRIPT = """
local out = {}
for i, id in ipairs(cjson.decode(ARGV[1])) do
  out[i] = redis.call('ZSCORE', KEYS[1], id) and 1 or 0
end
return out
"""
PROCESSED_RETENTION_MS = 6 * 3600 * 1000  # how long an event id is remembered as processed
REFUSALS = uuid.UUID("7c0e3a52-4f1b-4d8e-a6c3-2b9d5e8f1a04")  # namespace of `refusal` ids


@dataclass
class Entry:
    """One stream entry as a consumer got it."""

    stream: str
    entry_id: str
    fields: dict[bytes, bytes]
    reclaimed: bool = False

    @property
    def key(self) -> str:
        return f"{self.stream}/{self.entry_id}"


@dataclass
class Commit:
    """What to write when an entry is done: ack, mark `event_id` processed, run `commands`."""

    entry: Entry
    event_id: str = ""
    commands: list[tuple[Any, ...]] = field(default_factory=list)
    failed: bool = False  # attempts failed before: clear its failure count


def _entries(reply: Any, reclaimed: bool = False) -> list[Entry]:
    out = []
    for stream, items in reply or ():
        for entry_id, fields in items:
            if fields is not None:  # a trimmed entry still in the PEL comes back without fields
                out.append(Entry(decode(stream), decode(entry_id), fields, reclaimed))
    return out


class Group:
    """One service's consumer group as seen by one consumer (a replica)."""

    def __init__(self, bus: Bus, service: str, consumer: str) -> None:
        self.bus, self.service, self.consumer = bus, service, consumer
        self.name = streams.group(service)
        self.processed = streams.processed_key(service)
        self.failures = streams.delivery_count_key(service)
        self._commit = bus.redis.register_script(COMMIT_SCRIPT)
        self._seen = bus.redis.register_script(SEEN_SCRIPT)

    @mapped("joining the consumer group")
    async def join(self, names: Collection[str]) -> None:
        """XGROUP CREATE ... MKSTREAM from the start of each stream; BUSYGROUP means joined."""
        for stream in names:
            try:
                await self.bus.redis.xgroup_create(stream, self.name, id="0", mkstream=True)
            except ResponseError as exc:  # the group exists: joined (any other refusal is an error)
                if "BUSYGROUP" not in str(exc):
                    raise
            # Visible in XINFO CONSUMERS at once (a blocking read on an empty stream does not add it).
            await self.bus.redis.xgroup_createconsumer(stream, self.name, self.consumer)

    @mapped("reading the group")
    async def read(
        self, blocking: BlockingConnection, names: Collection[str], count: int, block_ms: int
    ) -> list[Entry]:
        reply = await blocking.read(
            lambda c: c.xreadgroup(self.name, self.consumer, {s: ">" for s in names}, count=count, block=block_ms)
        )
        return _entries(reply)

    @mapped("reclaiming idle entries")
    async def claim_idle(self, stream: str, min_idle_ms: int, count: int) -> list[Entry]:
        """XAUTOCLAIM every entry idle longer than `min_idle_ms` (a dead replica's work)."""
        claimed: list[Entry] = []
        start = "0-0"
        while True:
            reply = await self.bus.redis.xautoclaim(
                stream, self.name, self.consumer, min_idle_ms, start_id=start, count=count
            )
            start = decode(reply[0])
            claimed += _entries([(stream, reply[1])], reclaimed=True)
            if start == "0-0" or len(claimed) >= count:
                return claimed

    @mapped("counting deliveries")
    async def deliveries(self, entries: Collection[Entry]) -> list[int]:
        """How many times each entry was delivered to a consumer of the group."""
        pipe = self.bus.redis.pipeline(transaction=False)
        for e in entries:
            pipe.xpending_range(e.stream, self.name, min=e.entry_id, max=e.entry_id, count=1)
        replies = await pipe.execute()
        return [int(r[0]["times_delivered"]) if r else 0 for r in replies]

    @mapped("keeping entries alive")
    async def keepalive(self, stream: str, entry_ids: Collection[str]) -> None:
        """Reset the idle time of entries still being worked on, so nobody reclaims them."""
        if entry_ids:
            await self.bus.redis.xclaim(stream, self.name, self.consumer, 0, list(entry_ids), justid=True)

    @mapped("releasing entries")
    async def release(self, stream: str, entry_ids: Collection[str], idle_ms: int) -> None:
        """Give entries up: keep them pending but idle for `idle_ms`, so XAUTOCLAIM takes them now."""
        if entry_ids:
            await self.bus.redis.xclaim(stream, self.name, self.consumer, 0, list(entry_ids), idle=idle_ms, justid=True)

    @mapped("looking up processed ids")
    async def seen(self, event_ids: list[str]) -> list[bool]:
        """Which of `event_ids` were already processed by this service."""
        if not event_ids:
            return []
        flags = await self._seen(keys=[self.processed], args=[json.dumps(event_ids)])
        return [flag == 1 for flag in flags]

    @mapped("committing")
    async def commit(self, commits: Collection[Commit]) -> tuple[int, dict[str, str]]:
        """Apply, mark and ack `commits` atomically. Returns how many were duplicates, and the
        entries (by key) whose queued writes Redis refused, with its error."""
        entries = [[c.entry.stream, c.entry.entry_id, c.event_id, c.failed, c.commands]  # tuples dump as arrays
                   for c in commits]  # fmt: skip
        batch = json.dumps({"g": self.name, "t": int(time.time() * 1000), "e": entries})
        dups, broken = await self._commit(keys=[self.processed, self.failures], args=[batch])
        return int(dups), {decode(k): decode(err) for k, err in json.loads(broken or "[]") or []}

    @mapped("counting a failure")
    async def record_failure(self, entry: Entry) -> int:
        """Count one failed attempt at `entry`; returns the attempts so far."""
        return int(await self.bus.redis.hincrby(self.failures, entry.key, 1))

    @mapped("dead-lettering")
    async def dead_letter(self, entry: Entry, error: str, attempts: int, reply: Event | None = None) -> None:
        """Move `entry` to the dead-letter stream with `error`, then ack it, and publish `reply`
        (the sender's answer) on EVENTS: one transaction."""
        fields: dict[FieldT, EncodableT] = {
            "service": self.service, "stream": entry.stream, "entry_id": entry.entry_id,
            "error": error, "attempts": str(attempts), "consumer": self.consumer,
            FIELD_TYPE: decode(entry.fields.get(B_TYPE, b"")),
            FIELD_EVENT: decode(entry.fields.get(B_EVENT, b"")),
        }  # fmt: skip
        async with self.bus.redis.pipeline(transaction=True) as pipe:
            pipe.xadd(
                streams.DEAD_LETTER, fields, maxlen=maxlen_for(self.bus.settings, streams.DEAD_LETTER), approximate=True
            )
            if reply is not None:
                pipe.xadd(
                    streams.EVENTS, entry_fields(reply), maxlen=maxlen_for(self.bus.settings, streams.EVENTS),
                    approximate=True,
                )  # fmt: skip
            pipe.xack(entry.stream, self.name, entry.entry_id)
            pipe.hdel(self.failures, entry.key)
            await pipe.execute()

    def refusal(self, entry: Entry, reason: str, source: Source, event: Event | None = None) -> Event | None:
        """The `command.rejected` that answers an entry of this service's inbox it cannot handle,
        so the sender's wait ends with `reason` (None: not an inbox entry, or no one to answer).
        Its id is derived from the entry: a redelivery refuses with the same event."""
        correlation_id = decode(entry.fields.get(B_CORRELATION, b""))
        if entry.stream != streams.INBOXES.get(self.service) or not correlation_id:
            return None
        command = event.type if event else decode(entry.fields.get(B_TYPE, b"")) or "unknown"
        return Event.of(
            CommandRejected(command=command, reason=reason), source, correlation_id=correlation_id,
            id=uuid.uuid5(REFUSALS, entry.key).hex, causation_id=event.id if event else _event_id(entry),
        )  # fmt: skip

    @mapped("forgetting old ids")
    async def forget_old(self) -> None:
        """Drop processed ids older than the retention (a duplicate cannot come that late)."""
        cutoff = int(time.time() * 1000) - PROCESSED_RETENTION_MS
        await self.bus.redis.zremrangebyscore(self.processed, "-inf", cutoff)

    @mapped("reading the backlog")
    async def backlog(self, names: Collection[str]) -> dict[str, tuple[int, int]]:
        """Per stream: (entries not yet delivered to the group, entries delivered but not acked)."""
        out: dict[str, tuple[int, int]] = {}
        for stream in names:
            for info in await self.bus.redis.xinfo_groups(stream):
                if decode(info.get("name")) == self.name:
                    out[stream] = (int(info.get("lag") or 0), int(info.get("pending") or 0))
        return out


def _event_id(entry: Entry) -> str | None:
    """The envelope id of an entry that could not be decoded as an event, if it has one."""
    with contextlib.suppress(ValueError, TypeError, AttributeError):
        found = json.loads(entry.fields.get(B_EVENT, b"")).get("id")
        return found if isinstance(found, str) else None
    return None
