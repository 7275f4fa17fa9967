"""The service base: a worker that consumes a service's streams through its consumer group.

A service is a `ServiceSpec` (name, streams, a handler table keyed by payload class) run by
`run(spec)`. The worker reads in batches (XREADGROUP), skips event ids already processed, runs
the handler, and acks only after it succeeded, atomically with the id's "processed" mark and the
handler's queued writes (`ctx.on_commit`). A failing entry is retried in-process with backoff and
dead-lettered after `settings.max_deliveries` attempts; a dead replica's entries are reclaimed
with XAUTOCLAIM after `settings.lease_ms`. SIGTERM/SIGINT: stop reading, finish and ack what is
in flight, exit 0 within `settings.shutdown_grace` (one deadline from the stop request, see
`shut_down`), and log one summary line: "shutdown ◆ N complete ◆ N failed ◆ N retried ◆ N ongoing".

The worker's own duties (heartbeat, reclaim, keepalive) and the spec's background loops run under
one guard: a loop that fails is logged, backed off and started again; a lost consumer group
(NOGROUP: Redis restarted empty or was flushed) is joined again first.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from swiftdeploy_core.bus import logs, streams
from swiftdeploy_core.bus.connection import BlockingConnection, Bus
from swiftdeploy_core.bus.events import PAYLOADS, Event, Source
from swiftdeploy_core.bus.group import Commit, Entry, Group
from swiftdeploy_core.bus.handlers import (
    AnyHandler,
    Context,
    Handler,
    Reject,
    Retry,
    ServiceSpec,
    answer_ping,
    handler_pairs,
)
from swiftdeploy_core.bus.health import HealthServer, WorkerMetrics
from swiftdeploy_core.bus.retry import Backoff, guarded, redis_errors
from swiftdeploy_core.bus.wire import B_EVENT, B_TYPE, decode
from swiftdeploy_core.errors import BusError, BusLost
from swiftdeploy_core.settings import Settings

log = logging.getLogger("swiftdeploy.worker")

HEARTBEAT_INTERVAL_S = 1.0
HEARTBEAT_TTL_S = 5  # `ps` calls an instance healthy while its heartbeat key lives
COMMIT_EVERY_S = 0.05  # a batch of slow handlers still acks at least this often
RETRY_BASE_S = 0.05
RETRY_MAX_S = 2.0
CLOSING_S = 0.5  # of the grace (at most half of it): kept for the final acks, on_stop and the health key
__all__ = ["Context", "Handler", "Reject", "Retry", "ServiceSpec", "Worker", "answer_ping", "handler_pairs"]


@dataclass
class _Outcome:
    commit: Commit | None = None
    error: str | None = None
    reject: bool = False


class Worker:
    """Runs one `ServiceSpec` in this process: `start()`, `run()`, `stop()`."""

    def __init__(self, spec: ServiceSpec, settings: Settings, bus: Bus) -> None:
        self.spec, self.settings, self.bus = spec, settings, bus
        self.source = Source(service=spec.name, instance=settings.instance)
        self.group = Group(bus, spec.name, settings.instance)
        self.streams = spec.all_streams()
        self.handlers: dict[str, AnyHandler] = spec.handler_table()
        self.metrics = WorkerMetrics(spec.name)
        for collector in spec.metrics:  # a service's own metrics, beside the worker's
            self.metrics.registry.register(collector)
        self.health = HealthServer(self.metrics, self.is_ready, settings.health_host, settings.health_port)
        self.stopping = asyncio.Event()
        self.joined = False
        self.redis_ok = False
        self._slots = asyncio.Semaphore(max(1, spec.concurrency))
        self._inflight: dict[str, Entry] = {}  # entry.key -> entry, kept alive against reclaim
        self._tasks: set[asyncio.Task[Any]] = set()
        self._retries: set[asyncio.Task[Any]] = set()
        self._loops: list[asyncio.Task[Any]] = []  # heartbeat, reclaim, keepalive: end on `stopping`
        self._background: list[asyncio.Task[Any]] = []  # the spec's loops: cancelled on stop
        self._commits: list[Commit] = []
        self._flush_lock = asyncio.Lock()
        self._flushed = time.monotonic()
        self._reader = BlockingConnection(bus.redis)  # XREADGROUP BLOCK holds its own connection
        self._deadline: float | None = None  # loop time by which shutdown ends (set on the stop request)
        self._running = 0  # handlers executing right now
        self.tally = {"complete": 0, "failed": 0, "retried": 0, "ongoing": 0}  # for the summary line

    def context(self, event: Event | None = None) -> Context:
        return Context(self.settings, self.bus, self.source, event, stopping=self.stopping)

    def is_ready(self) -> bool:
        return self.joined and self.redis_ok and not self.stopping.is_set()

    # --- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        await self.health.start()
        await self._join()
        if self.spec.on_start is not None:
            with redis_errors(f"{self.spec.name} starting"):  # a Redis outage here: start is retried
                await self.spec.on_start(self.context())
        for loop in (self._heartbeat, self._reclaim_loop, self._keepalive_loop):
            self._loops.append(asyncio.create_task(self._guard(loop.__name__, loop), name=loop.__name__))
        for i, fn in enumerate(self.spec.background):
            name = getattr(fn, "__name__", f"background-{i}")
            task = asyncio.create_task(self._guard(name, self._with_context(fn)), name=name)
            self._background.append(task)
        log.info("%s started: consuming %s as %s (health %s)", self.spec.name, ", ".join(self.streams),
                 self.settings.instance, self.health.url)  # fmt: skip

    async def run(self) -> None:
        """Consume until `stop()` is requested."""
        backoff = Backoff()
        while not self.stopping.is_set():
            try:
                if not self.joined:
                    await self._join()
                # At most a batch per read, so replicas share a burst (a service handling many at once
                # takes no more than its free slots either).
                free = (
                    min(self.settings.batch_size, self._free_slots())
                    if self.spec.concurrency > 1
                    else self.settings.batch_size
                )
                batch = await self.group.read(self._reader, self.streams, max(1, free), self.settings.block_ms)
                self.redis_ok = True
                backoff.reset()
            except BusLost as exc:
                await self._lost_redis(exc, backoff)
                continue
            except BusError as exc:  # GroupMissing: Redis came back without our group
                log.warning("read failed (%s); joining the group again", exc)
                self.joined = False
                await backoff.wait()
                continue
            await self._process_safely(batch, backoff)

    async def _process_safely(self, batch: list[Entry], backoff: Backoff) -> None:
        """A batch that fails for an unexpected reason is released for a retry, never lost."""
        try:
            await self._process(batch)
        except BusLost as exc:
            await self._lost_redis(exc, backoff)
            await self._release([e for e in batch if e.key in self._inflight])
        except Exception:
            log.exception("processing a batch failed; releasing it to be taken again")
            await self._release([e for e in batch if e.key in self._inflight])
            await backoff.wait()

    def request_stop(self) -> None:
        if not self.stopping.is_set():
            log.info("%s stopping: no new reads, finishing in-flight work", self.spec.name)
            self._deadline = asyncio.get_running_loop().time() + self.settings.shutdown_grace
            self.stopping.set()
            self._waking = asyncio.ensure_future(self._reader.wake())  # end a blocked read now

    async def shut_down(self, runner: asyncio.Task[None] | None = None) -> None:
        """Stop: no new reads; in-flight handlers finish until the deadline (`shutdown_grace` after
        the stop request) less a closing reserve, then are cancelled (their entries released for a
        live replica); the finished ones are acked; on_stop; one summary line. All by the deadline."""
        self.request_stop()
        assert self._deadline is not None
        closing = min(CLOSING_S, self.settings.shutdown_grace / 2)
        for task in [*self._background, *self._retries]:
            task.cancel()  # a waiting retry releases its entry as it ends
        working = {t for t in (runner, *self._tasks, *self._retries, *self._background) if t is not None}
        if working:
            _, late = await asyncio.wait(working, timeout=self._left(self._deadline - closing))
            self.tally["ongoing"] = self._running
            for task in late:
                task.cancel()  # handlers still running: their entries stay pending, reclaimable
            if late:
                await asyncio.wait(late, timeout=self._left(self._deadline - closing / 2))
        await asyncio.shield(self._close())
        log.info("shutdown ◆ %(complete)d complete ◆ %(failed)d failed ◆ %(retried)d retried ◆ %(ongoing)d ongoing",
                 self.tally, extra={"shutdown": dict(self.tally)})  # fmt: skip

    async def stop(self) -> None:
        """`shut_down` without a `run()` task of ours to wait for."""
        await self.shut_down()

    def _left(self, until: float) -> float:
        return max(0.0, until - asyncio.get_running_loop().time())

    async def _close(self) -> None:
        """The closing writes, each bounded by what is left of the deadline."""
        assert self._deadline is not None
        steps: list[tuple[str, Callable[[], Awaitable[Any]]]] = [
            ("final acks", self._flush),
            ("releasing unfinished entries", lambda: self._release(list(self._inflight.values()))),
        ]
        on_stop = self.spec.on_stop
        if on_stop is not None:
            steps.append(("on_stop", lambda: on_stop(self.context())))
        steps.append(("health key", self._forget_health))
        if self._loops:  # they notice `stopping` within a beat
            steps.append(("background duties", lambda: asyncio.wait(self._loops)))
        for what, step in steps:
            try:
                await asyncio.wait_for(step(), timeout=self._left(self._deadline))
            except Exception as exc:  # shutting down: say what was skipped, and go on
                log.warning("shutdown: %s skipped (%s)", what, type(exc).__name__ if not str(exc) else exc)
        for task in self._loops:
            task.cancel()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._reader.aclose(), timeout=max(0.05, self._left(self._deadline)))
        await self.health.stop()

    async def _forget_health(self) -> None:
        with redis_errors("deleting the health key"):
            await self.bus.redis.delete(streams.health_key(self.spec.name, self.settings.instance))

    async def _join(self) -> None:
        await self.group.join(self.streams)
        self.joined = self.redis_ok = True
        self.metrics.ready.labels(self.spec.name).set(1)

    async def _lost_redis(self, exc: BaseException, backoff: Backoff) -> None:
        if self.redis_ok:
            log.warning("lost Redis (%s); reconnecting with backoff", exc)
        self.redis_ok = False
        self.metrics.ready.labels(self.spec.name).set(0)
        await backoff.wait()

    def _free_slots(self) -> int:
        return max(0, self.spec.concurrency - len(self._tasks))

    async def _guard(self, name: str, loop: Callable[[], Awaitable[None]]) -> None:
        await guarded(name, loop, self.stopping, on_group_lost=self._rejoin, log=log)

    def _with_context(self, fn: Callable[[Context], Awaitable[None]]) -> Callable[[], Awaitable[None]]:
        """A spec's background loop as the guard runs it: a fresh context on each (re)start."""

        async def loop() -> None:
            await fn(self.context())

        return loop

    async def _rejoin(self) -> None:
        """XGROUP CREATE ... MKSTREAM again (BUSYGROUP: someone already did); the next read uses it."""
        try:
            await self._join()
            log.warning("%s joined its group again (Redis had lost it)", self.spec.name)
        except BusError as exc:
            self.joined = False  # run() tries again before its next read
            log.warning("joining the group again failed (%s); retrying", exc)

    # --- one batch ---------------------------------------------------------------------------

    async def _process(self, batch: list[Entry]) -> None:
        if not batch:
            return
        events = [self._parse(entry) for entry in batch]
        ids = [e.id for e in events if isinstance(e, Event)]
        seen = set()
        if ids and not self.spec.side_effect_free:
            flags = await self._retrying(lambda: self.group.seen(ids))
            seen = {i for i, s in zip(ids, flags) if s}
        for entry in batch:
            self._inflight[entry.key] = entry
        for n, (entry, event) in enumerate(zip(batch, events)):
            if self.stopping.is_set() and not isinstance(event, str):
                await self._release(batch[n:])  # taken, not started: hand over to a live replica
                break
            if isinstance(event, str):
                await self._dead_letter(entry, event, 1, self.group.refusal(entry, event, self.source))
            elif event.id in seen:
                self.metrics.duplicates.labels(self.spec.name).inc()
                self._commits.append(Commit(entry, failed=entry.reclaimed))
            elif event.type not in self.handlers:
                if entry.stream == self.spec.inbox():  # a command nobody here can run: say so
                    reason = f"{self.spec.name} has no handler for {event.type}"
                    await self._dead_letter(
                        entry, reason, 1, self.group.refusal(entry, "no handler for it", self.source, event)
                    )
                else:  # a fact on a shared stream this service does not care about
                    self._commits.append(Commit(entry, failed=entry.reclaimed))
            elif self.spec.concurrency == 1:
                await self._attempt(entry, event, 1)
                if time.monotonic() - self._flushed > COMMIT_EVERY_S:
                    await self._flush()  # slow handlers: do not hold finished acks for the batch
            else:
                await self._slots.acquire()
                self._spawn(self._attempt(entry, event, 1, slot_held=True))
        await self._flush()

    async def _release(self, entries: list[Entry]) -> None:
        """Mark entries as idle for a whole lease, so the next reclaim by any replica takes them."""
        if not entries:
            return
        by_stream: dict[str, list[str]] = {}
        for entry in entries:
            self._inflight.pop(entry.key, None)
            by_stream.setdefault(entry.stream, []).append(entry.entry_id)
        with contextlib.suppress(BusError):
            for stream, ids in by_stream.items():
                await self.group.release(stream, ids, self.settings.lease_ms)
        log.info("released %d taken but unfinished entr%s for another replica", len(entries),
                 "y" if len(entries) == 1 else "ies")  # fmt: skip

    def _parse(self, entry: Entry) -> Event | str:
        raw = entry.fields.get(B_EVENT)
        if raw is None:
            return f"malformed entry: no 'event' field (fields: {sorted(k.decode() for k in entry.fields)})"
        kind = decode(entry.fields.get(B_TYPE, b""))
        if kind and kind not in PAYLOADS:  # a newer client's type, most likely
            return f"{self.spec.name} does not know the event type {kind}"
        try:
            return Event.from_json(raw)
        except ValueError as exc:
            return f"malformed event: {str(exc).splitlines()[0]} ({len(raw)} bytes)"

    def _spawn(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _attempt(self, entry: Entry, event: Event, attempt: int, slot_held: bool = False) -> None:
        """Run the handler once; queue the commit, schedule a retry, or dead-letter."""
        try:
            if slot_held:
                outcome = await self._call(entry, event)
            else:
                async with self._slots:
                    outcome = await self._call(entry, event)
        finally:
            if slot_held:
                self._slots.release()
        if outcome.commit is not None:
            self.tally["complete"] += 1
            outcome.commit.failed = attempt > 1 or entry.reclaimed
            self._commits.append(outcome.commit)
            if self.spec.concurrency > 1 or attempt > 1:  # a retry is not part of a batch's flush
                await self._flush()
            return
        await self._failed(entry, event, attempt, outcome)

    async def _call(self, entry: Entry, event: Event) -> _Outcome:
        ctx = self.context(event)
        handler = self.handlers[event.type]
        started = time.perf_counter()
        self._running += 1
        with logs.event_context(event.id, event.type, event.correlation_id):
            if log.isEnabledFor(logging.DEBUG):
                logs.job(log, logs.START, f"{event.type} {event.id}", logging.DEBUG)
            try:
                await handler(event.payload, event, ctx)
            except Reject as exc:
                return self._observe(event, started, _Outcome(error=f"rejected: {exc}", reject=True))
            except Retry as exc:
                return self._observe(event, started, _Outcome(error=f"retry requested: {exc}"))
            except Exception as exc:  # a handler bug must not stop the service
                return self._observe(event, started, _Outcome(error=f"{type(exc).__name__}: {exc}"))
            finally:
                self._running -= 1
            outcome = _Outcome(commit=Commit(entry, event.id, ctx.commands))
            return self._observe(event, started, outcome)

    def _observe(self, event: Event, started: float, outcome: _Outcome) -> _Outcome:
        seconds = time.perf_counter() - started
        self.metrics.observe(event.type, seconds, outcome.commit is not None)
        if outcome.commit is not None and log.isEnabledFor(self.spec.done_log_level):
            logs.job(log, logs.DONE, f"{event.type} {event.id} {seconds * 1000:.1f}ms", self.spec.done_log_level,
                     duration_ms=round(seconds * 1000, 3))  # fmt: skip
        return outcome

    async def _failed(self, entry: Entry, event: Event, attempt: int, outcome: _Outcome) -> None:
        error = outcome.error or "failed"
        attempts = await self._retrying(lambda: self.group.record_failure(entry))
        with logs.event_context(event.id, event.type, event.correlation_id):
            if outcome.reject or attempts >= self.settings.max_deliveries:
                logs.job(
                    log, logs.FAILED, f"{event.type} {event.id}: {error}", logging.ERROR, error=error, attempt=attempts
                )
                await self._dead_letter(entry, error, attempts)
                return
            logs.job(
                log, logs.RETRY, f"{event.type} {event.id}: {error}", logging.WARNING, error=error, attempt=attempts
            )
        self.tally["retried"] += 1
        task = asyncio.create_task(self._retry_later(entry, event, attempts))
        self._retries.add(task)
        task.add_done_callback(self._retries.discard)

    async def _retry_later(self, entry: Entry, event: Event, attempts: int) -> None:
        try:
            await asyncio.sleep(min(RETRY_MAX_S, RETRY_BASE_S * 2**attempts))
        except asyncio.CancelledError:
            await asyncio.shield(self._release([entry]))  # stopping: a live replica takes it over
            raise
        await self._attempt(entry, event, attempts + 1)

    async def _dead_letter(self, entry: Entry, error: str, attempts: int, reply: Event | None = None) -> None:
        await self._retrying(lambda: self.group.dead_letter(entry, error, attempts, reply))
        self._inflight.pop(entry.key, None)
        self.tally["failed"] += 1
        self.metrics.dead.labels(self.spec.name).inc()
        log.error("dead-lettered %s from %s after %d attempt(s): %s", entry.entry_id, entry.stream, attempts, error)

    async def _flush(self) -> None:
        """Group commit: ack everything finished so far in one atomic script call."""
        async with self._flush_lock:
            if not self._commits:
                return
            commits, self._commits = self._commits, []
            self._flushed = time.monotonic()
            duplicates, broken = await self._retrying(lambda: self.group.commit(commits), hard=True)
            if duplicates:  # handled again, writes dropped: a repeat nobody looked up beforehand
                self.metrics.duplicates.labels(self.spec.name).inc(duplicates)
            for c in commits:
                self._inflight.pop(c.entry.key, None)
                if c.entry.key in broken:  # acked, but its writes were refused: say so, loudly
                    await self._dead_letter(c.entry, f"commit refused: {broken[c.entry.key]}", 1)

    async def _retrying(self, op: Callable[[], Awaitable[Any]], hard: bool = False) -> Any:
        """Run a Redis operation until it succeeds; Redis going away only delays it.
        `hard` operations (commits) keep trying during shutdown too, within the grace."""
        backoff = Backoff()
        while True:
            try:
                result = await op()
                self.redis_ok = True
                return result
            except BusLost as exc:
                if self.stopping.is_set() and not hard:
                    raise
                await self._lost_redis(exc, backoff)

    # --- background duties -------------------------------------------------------------------

    async def _heartbeat(self) -> None:
        key = streams.health_key(self.spec.name, self.settings.instance)
        started = time.time()
        while True:
            beat = {
                "service": self.spec.name, "instance": self.settings.instance, "pid": os.getpid(),
                "host": socket.gethostname(), "health_url": self.health.url, "ready": self.is_ready(),
                "started": started, "at": time.time(), "streams": self.streams,
            }  # fmt: skip
            with contextlib.suppress(BusError), redis_errors("heartbeat"):
                await self.bus.redis.set(key, json.dumps(beat), ex=HEARTBEAT_TTL_S)
                for stream, (lag, pending) in (await self.group.backlog(self.streams)).items():
                    self.metrics.lag.labels(self.spec.name, stream).set(lag)
                    self.metrics.pending.labels(self.spec.name, stream).set(pending)
            if await self._pause(HEARTBEAT_INTERVAL_S):
                return

    async def _pause(self, seconds: float) -> bool:
        """Sleep `seconds` or until stopping; True when the worker is stopping."""
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self.stopping.wait(), seconds)
        return self.stopping.is_set()

    def _reclaim_interval(self) -> float:
        return min(5.0, max(0.1, self.settings.lease_ms / 4000))

    async def _reclaim_loop(self) -> None:
        """Take over entries idle longer than the lease: their consumer died or hung."""
        last_trim = 0.0
        while not await self._pause(self._reclaim_interval()):
            with contextlib.suppress(BusLost):  # Redis away: the next pass; a lost group: the guard
                for stream in self.streams:
                    await self._reclaim(stream)
                if time.monotonic() - last_trim > 60:
                    await self.group.forget_old()
                    last_trim = time.monotonic()

    async def _reclaim(self, stream: str) -> None:
        while not self.stopping.is_set():
            entries = await self.group.claim_idle(stream, self.settings.lease_ms, self.settings.batch_size)
            entries = [e for e in entries if e.key not in self._inflight]
            if not entries:
                return
            self.metrics.reclaimed.labels(self.spec.name).inc(len(entries))
            log.warning("reclaimed %d idle entr%s from %s", len(entries), "y" if len(entries) == 1 else "ies", stream)
            fresh = []
            for entry, delivered in zip(entries, await self.group.deliveries(entries)):
                if delivered > self.settings.max_deliveries + 1:
                    await self._dead_letter(
                        entry, f"delivered {delivered} times and never acked (its consumer kept dying)", delivered
                    )
                else:
                    fresh.append(entry)
            await self._process_safely(fresh, Backoff())

    async def _keepalive_loop(self) -> None:
        """Entries still being handled get their idle time reset, so no replica reclaims them."""
        while not await self._pause(self.settings.lease_ms / 3000):
            by_stream: dict[str, list[str]] = {}
            for entry in list(self._inflight.values()):
                by_stream.setdefault(entry.stream, []).append(entry.entry_id)
            with contextlib.suppress(BusLost):
                for stream, ids in by_stream.items():
                    await self.group.keepalive(stream, ids)
