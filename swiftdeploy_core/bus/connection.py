"""The bus client: publish events on Redis streams, follow them, and ask for a reply.

The entry format is `wire.py`, consumer groups `group.py`; this module is what every process
(client or service) uses to talk on the bus.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, Awaitable, Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from swiftdeploy_core.bus import streams
from swiftdeploy_core.bus.events import Event
from swiftdeploy_core.bus.retry import CONNECTION_ERRORS, Backoff
from swiftdeploy_core.bus.wire import (
    B_CORRELATION,
    B_EVENT,
    B_TYPE,
    _resp,
    decode,
    entry_fields,
    id_ms,
    matches,
    maxlen_for,
    xadd_head,
)
from swiftdeploy_core.errors import ControlPlaneDown, RequestTimeout
from swiftdeploy_core.settings import Settings

log = logging.getLogger("swiftdeploy.bus")

FOLLOW_BLOCK_MS = 1_000
FOLLOW_BATCH = 500
UP_HINT = "; run `swiftdeploy up`"  # the next step, ending every ControlPlaneDown raised here


class BlockingConnection:
    """A connection of its own for blocking reads (XREAD/XREADGROUP BLOCK) that another task can
    wake with CLIENT UNBLOCK. Cancelling a blocked redis-py read is not reliable (the cancel can be
    swallowed and the read hang), so readers stop cooperatively: `wake()`, then they return."""

    def __init__(self, redis: aioredis.Redis) -> None:
        self.main = redis
        self.conn = redis.client()
        self.client_id: int | None = None
        self.closed = False

    async def read(self, op: Callable[[aioredis.Redis], Awaitable[Any]]) -> Any:
        if self.client_id is None:
            self.client_id = await self.conn.client_id()
        try:
            return await op(self.conn)
        except CONNECTION_ERRORS:
            self.client_id = None  # a new connection gets a new id
            raise

    async def wake(self) -> None:
        """Mark closed and unblock a read in progress (it returns as if it timed out)."""
        self.closed = True
        if self.client_id is not None:
            with contextlib.suppress(*CONNECTION_ERRORS, RedisError):
                await self.main.client_unblock(self.client_id)

    async def aclose(self) -> None:
        with contextlib.suppress(*CONNECTION_ERRORS, RedisError):
            await self.conn.aclose()


@dataclass
class _Waiter:
    expect: frozenset[str]
    after_ms: int
    future: asyncio.Future[Event] = field(repr=False)


class Bus:
    """One process's connection to the bus (redis.asyncio underneath)."""

    def __init__(self, settings: Settings, redis: aioredis.Redis) -> None:
        self.settings = settings
        self.redis = redis
        self._waiters: dict[str, list[_Waiter]] = {}
        self._reader: asyncio.Task[None] | None = None
        self._reader_ready: asyncio.Future[None] | None = None
        self._blocking: set[BlockingConnection] = set()

    @classmethod
    async def connect(cls, settings: Settings) -> Bus:
        """Connect and check Redis answers; ControlPlaneDown if it does not."""
        url = resolve_redis_url(settings)
        redis = aioredis.Redis.from_url(url, socket_connect_timeout=2, health_check_interval=0)
        try:
            await redis.ping()
        except (*CONNECTION_ERRORS, RedisError) as exc:
            await redis.aclose()
            raise ControlPlaneDown(f"Redis at {url} is not reachable ({exc}){UP_HINT}") from exc
        return cls(settings, redis)

    async def close(self) -> None:
        """Stop the reply reader and any follower, then close the connections."""
        for blocking in list(self._blocking):
            await blocking.wake()
        if self._reader is not None:
            await asyncio.wait({self._reader}, timeout=1.0)
            # Last resort: redis-py 8 can swallow a cancel that lands just as XREAD is being sent
            # (the task then blocks in the next read, "cancelling" forever): cancel until done.
            for _ in range(20):
                if self._reader.done():
                    break
                self._reader.cancel()
                await asyncio.wait({self._reader}, timeout=0.05)
            if self._reader.done() and not self._reader.cancelled():
                with contextlib.suppress(Exception):
                    self._reader.result()
            self._reader = None
        for waiters in self._waiters.values():
            for waiter in waiters:
                if not waiter.future.done():
                    waiter.future.cancel()
        self._waiters.clear()
        await self.redis.aclose()

    # --- publishing --------------------------------------------------------------------------

    async def publish(self, stream: str, event: Event) -> str:
        """XADD `event` to `stream` (capped at an approximate MAXLEN); returns the entry id."""
        entry_id = await self.redis.xadd(
            stream, entry_fields(event), maxlen=maxlen_for(self.settings, stream), approximate=True
        )
        return decode(entry_id)

    async def publish_many(self, stream: str, events: Collection[Event]) -> list[str]:
        """XADD several events in one round trip; returns their entry ids in order.

        The commands are packed here: redis-py's generic packing costs more than the rest of a
        publish, and batches are how the bus reaches its throughput."""
        if not events:
            return []
        head = [b"XADD", *(arg.encode() for arg in xadd_head(self.settings, stream))]
        blob = b"".join(
            _resp(
                [
                    *head,
                    B_EVENT,
                    e.to_json().encode(),
                    B_TYPE,
                    e.type.encode(),
                    B_CORRELATION,
                    e.correlation_id.encode(),
                ]
            )
            for e in events
        )  # entry_fields, packed here
        pool = self.redis.connection_pool
        conn = await pool.get_connection()  # type: ignore[no-untyped-call]  # redis-py leaves it unannotated
        try:
            await conn.send_packed_command(blob)
            return [decode(await conn.read_response()) for _ in events]
        except BaseException:
            await conn.disconnect()  # replies may be left unread: the connection is not reusable
            raise
        finally:
            await pool.release(conn)

    async def cursor(self, stream: str = streams.EVENTS) -> str:
        """The id of the newest entry of `stream` ("0-0" when empty): a `since` that misses nothing."""
        newest = await self.redis.xrevrange(stream, count=1)
        return decode(newest[0][0]) if newest else "0-0"

    # --- request / reply ---------------------------------------------------------------------

    async def request(self, stream: str, event: Event, expect: Collection[str], timeout: float) -> Event:
        """Publish `event`, then wait for an event on EVENTS with its correlation id and a type
        in `expect`; RequestTimeout after `timeout` seconds."""
        await self._ensure_reader()
        loop = asyncio.get_running_loop()
        waiter = _Waiter(frozenset(expect), 0, loop.create_future())
        self._waiters.setdefault(event.correlation_id, []).append(waiter)
        try:
            async with asyncio.timeout(timeout):
                entry_id = await self.publish(stream, event)
                waiter.after_ms = id_ms(entry_id)
                return await waiter.future
        except TimeoutError:
            raise RequestTimeout(
                f"no {'/'.join(sorted(expect))} for {event.type} on {stream} within {timeout:g}s"
                " (is the service running? `swiftdeploy ps`)"
            ) from None
        finally:
            self._drop_waiter(event.correlation_id, waiter)

    def _drop_waiter(self, correlation_id: str, waiter: _Waiter) -> None:
        waiters = self._waiters.get(correlation_id, [])
        if waiter in waiters:
            waiters.remove(waiter)
        if not waiters:
            self._waiters.pop(correlation_id, None)

    async def _ensure_reader(self) -> None:
        if self._reader is not None and not self._reader.done():
            if self._reader_ready is not None:
                await asyncio.shield(self._reader_ready)
            return
        self._reader_ready = asyncio.get_running_loop().create_future()
        self._reader = asyncio.create_task(self._read_replies(), name="bus-replies")
        await asyncio.shield(self._reader_ready)

    async def _read_replies(self) -> None:
        """One reader per process: XREAD EVENTS, hand each reply to the future waiting for it."""

        def ready() -> None:
            if self._reader_ready is not None and not self._reader_ready.done():
                self._reader_ready.set_result(None)

        async with contextlib.aclosing(self._tail(streams.EVENTS, "$", "reply reader", ready)) as entries:
            async for entry_id, fields in entries:
                self._dispatch(entry_id, fields)

    def _dispatch(self, entry_id: str, fields: dict[bytes | str, bytes | str]) -> None:
        waiters = self._waiters.get(decode(fields.get(B_CORRELATION, b"")))
        if not waiters:
            return
        event_type = decode(fields.get(B_TYPE, b""))
        ms = id_ms(entry_id)
        for waiter in waiters:
            if event_type in waiter.expect and ms >= waiter.after_ms and not waiter.future.done():
                with contextlib.suppress(Exception):
                    waiter.future.set_result(Event.from_json(fields[B_EVENT]))
                return

    # --- following ---------------------------------------------------------------------------

    async def follow(
        self,
        *,
        correlation_id: str | None = None,
        types: Collection[str] | None = None,
        since: str = "$",
        stream: str = streams.EVENTS,
    ) -> AsyncGenerator[Event, None]:
        """Yield events from `stream` after `since` (an entry id, "0" for all, "$" for new ones),
        keeping those with `correlation_id` and a type matching one of the globs in `types`."""
        async with contextlib.aclosing(self._tail(stream, since, "follow")) as entries:
            async for _entry_id, fields in entries:
                event = _select(fields, correlation_id, types)
                if event is not None:
                    yield event

    async def _tail(
        self, stream: str, since: str, what: str, started: Callable[[], None] | None = None
    ) -> AsyncGenerator[tuple[str, dict[bytes | str, bytes | str]], None]:
        """(entry id, fields) of each entry of `stream` after `since` ("$": from now on), on a
        connection of its own, across Redis restarts, until the bus closes. `started` is called
        once the cursor for "$" is known: entries added after that are not missed."""
        blocking = BlockingConnection(self.redis)
        self._blocking.add(blocking)
        backoff = Backoff()
        last = since
        try:
            while not blocking.closed:
                try:
                    if last == "$":
                        last = await self.cursor(stream)
                        if started is not None:
                            started()
                    reply = await blocking.read(_xread(stream, last))
                    backoff.reset()
                except CONNECTION_ERRORS as exc:
                    if blocking.closed:
                        return
                    log.warning("%s lost Redis (%s); retrying", what, exc)
                    await backoff.wait()
                    continue
                for _stream, entries in reply or ():
                    for entry_id, fields in entries:
                        last = decode(entry_id)
                        yield last, fields
        finally:
            self._blocking.discard(blocking)
            await blocking.aclose()


async def history(
    bus: Bus,
    *,
    since: str = "0",
    correlation_id: str | None = None,
    types: Collection[str] | None = None,
    stream: str = streams.EVENTS,
) -> AsyncGenerator[Event, None]:
    """The retained events of `stream` after `since` up to now (XRANGE in pages), filtered."""
    start = "-" if since in ("0", "0-0", "-") else f"({since}"
    while True:
        page = await bus.redis.xrange(stream, min=start, max="+", count=FOLLOW_BATCH) or []
        for _entry_id, fields in page:
            event = _select(fields, correlation_id, types)
            if event is not None:
                yield event
        if len(page) < FOLLOW_BATCH:
            return
        start = f"({decode(page[-1][0])}"


def _xread(stream: str, cursor: str) -> Callable[[aioredis.Redis], Awaitable[Any]]:
    """One blocking XREAD page of `stream` after `cursor`."""
    return lambda c: c.xread({stream: cursor}, count=FOLLOW_BATCH, block=FOLLOW_BLOCK_MS)


def _select(
    fields: Mapping[bytes | str, bytes | str] | None, correlation_id: str | None, types: Collection[str] | None
) -> Event | None:
    if fields is None:  # an entry deleted since it was listed
        return None
    if correlation_id is not None and decode(fields.get(B_CORRELATION, b"")) != correlation_id:
        return None
    if not matches(decode(fields.get(B_TYPE, b"")), types):
        return None
    try:
        return Event.from_json(fields[B_EVENT])
    except (KeyError, ValueError):
        return None  # a malformed entry: the consumers dead-letter it; followers skip it


def resolve_redis_url(settings: Settings) -> str:
    """REDIS_URL if set, else the URL of the control plane `swiftdeploy up` started here."""
    if settings.redis_url:
        return settings.redis_url
    from swiftdeploy_core.client.controlplane import running_redis_url  # avoids an import cycle

    url = running_redis_url(settings)
    if url is None:
        raise ControlPlaneDown(f"no REDIS_URL and no control plane running here{UP_HINT}")
    return url
