"""What a service's code sees: its spec (`ServiceSpec`), the `Context` a handler gets, and the
control-flow exceptions (`Retry`, `Reject`) that only the worker turns into pending or dead-letter.

Re-exported by `swiftdeploy_core.bus.worker`, which is where services import them from.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import Any

from swiftdeploy_core.bus import streams
from swiftdeploy_core.bus.connection import Bus
from swiftdeploy_core.bus.events import AnyPayload, Event, Pong, Source
from swiftdeploy_core.bus.wire import xadd_args
from swiftdeploy_core.settings import Settings

EMIT_NAMESPACE = uuid.UUID("5d1f0c4e-8a3b-4c0e-9e57-1b2f6a7c9d10")

Handler = Callable[[Event, "Context"], Awaitable[None]]


class Retry(Exception):
    """Raised by a handler: leave the entry pending and try again later (counts as an attempt)."""


class Reject(Exception):
    """Raised by a handler: the entry can never succeed; dead-letter it now with this error."""


@dataclass
class Context:
    """What a handler or background loop gets: settings, the bus, who it is, and the event."""

    settings: Settings
    bus: Bus
    source: Source
    event: Event | None = None  # the event being handled; None in background loops
    commands: list[tuple[Any, ...]] = field(default_factory=list)
    stopping: asyncio.Event | None = None  # set when the service shuts down (background loops may watch it)
    _emitted: int = 0

    async def emit(
        self,
        payload: AnyPayload,
        cause: Event | None = None,
        stream: str = streams.EVENTS,
        correlation_id: str | None = None,
    ) -> Event:
        """Publish a fact. Caused by the event being handled, its id is derived from the cause,
        so a redelivered event re-emits the same ids and consumers drop the repeats. Without a
        cause it starts a new correlation, or continues `correlation_id`."""
        event = self._new_event(payload, cause, stable_id=True, correlation_id=correlation_id)
        await self.bus.publish(stream, event)
        return event

    async def request(
        self,
        stream: str,
        payload: AnyPayload,
        expect: Collection[str],
        cause: Event | None = None,
        timeout: float | None = None,
    ) -> Event:
        """Send a request to `stream` and wait for the reply (RequestTimeout after `timeout`)."""
        event = self._new_event(payload, cause, stable_id=False)
        return await self.bus.request(stream, event, expect, timeout or self.settings.request_timeout)

    def emit_on_commit(self, payload: AnyPayload, cause: Event | None = None, stream: str = streams.EVENTS) -> Event:
        """Like `emit`, but the worker writes the event in the script that acks the event being
        handled: published exactly once with the ack, and no Redis round trip of its own (the
        reply of a side-effect-free service goes out this way)."""
        event = self._new_event(payload, cause, stable_id=True)
        self.on_commit("XADD", *xadd_args(self.settings, stream, event))
        return event

    def on_commit(self, *command: Any) -> None:
        """Queue a Redis write (e.g. "HINCRBY", key, field, 1) to run atomically with this event's
        ack, at most once per event id, even if the event is delivered twice."""
        if self.event is None:
            raise RuntimeError("on_commit needs an event being handled")
        self.commands.append(tuple(c.decode() if isinstance(c, bytes) else str(c) for c in command))

    def _new_event(
        self, payload: AnyPayload, cause: Event | None, stable_id: bool, correlation_id: str | None = None
    ) -> Event:
        if cause is None:
            correlation: dict[str, Any] = {"correlation_id": correlation_id} if correlation_id else {}
            return Event(payload=payload, source=self.source, **correlation)
        if stable_id and self.event is not None and cause.id == self.event.id:
            self._emitted += 1
            name = f"{cause.id}:{self._emitted}:{payload.model_dump_json()}"
            return cause.caused(payload, self.source, id=uuid.uuid5(EMIT_NAMESPACE, name).hex)
        return cause.caused(payload, self.source)


@dataclass
class ServiceSpec:
    """One service: its name, the streams its group consumes, and its handlers."""

    name: str
    streams: list[str]
    handlers: dict[str, Handler]
    background: Sequence[Callable[[Context], Awaitable[None]]] = ()
    on_start: Callable[[Context], Awaitable[None]] | None = None
    on_stop: Callable[[Context], Awaitable[None]] | None = None
    concurrency: int = 1  # handlers in flight at once; 1 keeps each stream's order
    # Handlers write only through `ctx.on_commit` (and emit only stable ids): running one twice
    # does no harm, because the commit drops a repeat's writes atomically. The worker then skips
    # looking up processed ids before handling, one Redis round trip per batch fewer.
    side_effect_free: bool = False
    # The level of the "← done" line per job (retries and failures log higher). A service whose
    # jobs are many and already on record as events lowers it, so logs carry what is news.
    done_log_level: int = logging.INFO
    metrics: Sequence[Any] = ()  # prometheus_client Collectors served on the instance's /metrics

    def all_streams(self) -> list[str]:
        """The declared streams plus the service's inbox (where pings arrive)."""
        inbox = streams.INBOXES.get(self.name)
        names = list(dict.fromkeys(self.streams))
        return [*names, inbox] if inbox and inbox not in names else names


async def answer_ping(event: Event, ctx: Context) -> None:
    """Built in: `ping.requested` (for this service or any) gets a `pong` back."""
    wanted = getattr(event.payload, "service", None)
    if wanted in (None, ctx.source.service):
        await ctx.emit(Pong(service=ctx.source.service, instance=ctx.source.instance), cause=event)
