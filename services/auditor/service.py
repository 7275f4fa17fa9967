"""The auditor service: appends every audit event to the history and renders the report.

Consumes `streams.EVENTS` with the auditor group (each replica takes a share; a redelivered or
duplicated event still gets exactly one line, see `history.py`) and `audit.requested` on its
inbox, answered with `audit.rendered`. Control-plane chatter (ping/pong) and the audit replies
themselves are acknowledged without a line.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from services.auditor.chain import Verification, history_entry, parse_iso, read_entries, verify
from services.auditor.config import AuditorSettings
from services.auditor.history import HistoryWriteError, HistoryWriter
from services.auditor.report import build_report, render_report
from swiftdeploy_core.bus import streams
from swiftdeploy_core.bus.events import (
    EVENT_TYPES,
    PAYLOADS,
    AuditRendered,
    AuditRequested,
    Event,
    ModeChanged,
    Payload,
)
from swiftdeploy_core.bus.wire import B_EVENT, B_TYPE, decode
from swiftdeploy_core.bus.worker import Context, Reject, Retry, ServiceSpec, handler_pairs
from swiftdeploy_core.errors import ManifestError
from swiftdeploy_core.project.manifest import LoadedManifest, load_manifest
from swiftdeploy_core.project.state import RolloutState
from swiftdeploy_core.settings import Settings

NAME = "auditor"
NOT_AUDITED = {"ping.requested", "pong", "audit.requested", "audit.rendered", "metrics.snapshot",
               "policy.replay.requested", "policy.replayed"}  # fmt: skip
AUDITED = tuple(model for kind, model in PAYLOADS.items() if kind not in NOT_AUDITED)
RETRY_FIRST_S = 0.2
RETRY_MAX_S = 5.0
ERROR_EVERY_S = 30.0
# The mode another replica set is read again after this long; this replica's own changes apply
# at once. Without it, every line would wait for a Redis round trip in turn.
MODE_FRESH_S = 0.05

log = logging.getLogger("swiftdeploy.auditor")


@dataclass
class Place:
    """Where this auditor writes: the project, its folder, the history and the default report."""

    project: str
    root: Path
    history: Path
    report: Path

    @classmethod
    def from_settings(cls, settings: AuditorSettings) -> Place:
        loaded: LoadedManifest | None = None
        try:
            loaded = load_manifest(settings.manifest)
        except ManifestError as exc:
            log.warning("no usable manifest (%s); writing history.jsonl in %s", exc, Path.cwd())
        root = loaded.root if loaded else Path.cwd()
        history = loaded.resolve(loaded.manifest.paths.history) if loaded else root / "history.jsonl"
        report = loaded.resolve(loaded.manifest.paths.report) if loaded else root / "audit_report.md"
        if settings.audit_history is not None:
            history = settings.audit_history if settings.audit_history.is_absolute() else root / settings.audit_history
        return cls(loaded.manifest.project if loaded else "unknown", root, history, report)


class Auditor:
    """The handlers, sharing one writer per process."""

    def __init__(self, settings: AuditorSettings) -> None:
        self.settings = settings
        self.place = Place.from_settings(settings)
        self.writer: HistoryWriter | None = None
        self._order = asyncio.Lock()
        self._mode: tuple[str, float] | None = None  # (mode, when read): see mode_now

    async def start(self, ctx: Context) -> None:
        redis = ctx.bus.redis

        async def replay(since_ms: int) -> list[Event]:
            return await audited_events(redis, since_ms)

        self.writer = HistoryWriter(self.place.history, redis, fsync=self.settings.audit_fsync,
                                    claim_ttl=self.settings.audit_claim_ttl, replay=replay)  # fmt: skip
        await self.writer.recover_torn_tail()  # a tail torn while no auditor ran
        log.info(
            "auditor writing %s (fsync %s) for project %s",
            self.place.history,
            "on" if self.settings.audit_fsync else "off",
            self.place.project,
        )

    async def mode_now(self, event: Event, ctx: Context) -> str:
        """The serving mode when `event` happened: the last `mode.changed` in stream order, else
        the rollout record's, else stable. A `mode.changed` moves it (and its line shows the new mode)."""
        key = streams.audit_mode_key(self.place.project)
        if isinstance(event.payload, ModeChanged):
            await ctx.bus.redis.set(key, event.payload.mode)
            self._mode = (event.payload.mode, time.monotonic())
            return event.payload.mode
        if self._mode is not None and time.monotonic() - self._mode[1] < MODE_FRESH_S:
            return self._mode[0]
        known = await ctx.bus.redis.get(key)
        if known:
            mode = decode(known)
        else:
            raw = await ctx.bus.redis.get(streams.rollout_key(self.place.project))
            try:
                mode = RolloutState.model_validate_json(raw).mode if raw else "stable"
            except ValidationError:
                mode = "stable"
        self._mode = (mode, time.monotonic())
        return mode

    async def record(self, payload: Payload, event: Event, ctx: Context) -> None:
        """Append one line; while the file cannot take it, keep the entry pending and retry.

        Handlers run side by side so their lines can share a group commit, but each takes its
        mode and its place in the batch one at a time, in the order the worker started them
        (stream order): the lock is fair."""
        assert self.writer is not None
        async with self._order:
            entry = history_entry(event, await self.mode_now(event, ctx))
            line = self.writer.stage(event.id, entry)
        deadline = time.monotonic() + self.settings.audit_write_patience
        delay, last_logged = RETRY_FIRST_S, 0.0
        while True:
            try:
                await asyncio.shield(line)
                return
            except HistoryWriteError as exc:
                if time.monotonic() - last_logged >= ERROR_EVERY_S:
                    log.error("! %s; event %s (%s) stays pending and is retried", exc, event.id, event.type)
                    last_logged = time.monotonic()
                if time.monotonic() + delay > deadline:
                    raise Retry(str(exc)) from exc
            await asyncio.sleep(delay)
            delay = min(RETRY_MAX_S, delay * 2)
            line = self.writer.stage(event.id, entry)

    async def render(self, request: AuditRequested, event: Event, ctx: Context) -> None:
        """`audit.requested`: verify the chain, render the report (unless only verifying), reply."""
        try:
            since = parse_iso(request.since) if request.since else None
        except ValueError:
            raise Reject(f"since {request.since!r} is not an ISO-8601 time") from None
        head = await self.writer.head() if self.writer else None
        verification = await asyncio.to_thread(verify, self.place.history, head)
        path = self.place.history
        if not request.verify:
            path = self._out(request.out)
            markdown = await asyncio.to_thread(self._markdown, since, verification)
            await asyncio.to_thread(_write_atomically, path, markdown)
        await ctx.emit(AuditRendered(path=str(path), lines=verification.lines, chain_ok=verification.ok,
                                     first_bad_line=verification.first_bad_line, problem=verification.problem,
                                     repairs=list(verification.repairs)),
                       cause=event)  # fmt: skip

    def _out(self, out: str | None) -> Path:
        if not out:
            return self.place.report
        path = Path(out)
        return path if path.is_absolute() else self.place.root / path

    def _markdown(self, since: datetime | None, verification: Verification) -> str:
        entries = read_entries(self.place.history, since)
        report = build_report(
            entries, project=self.place.project, history_path=self.place.history, verification=verification, since=since
        )
        return render_report(report)


REPLAY_PAGE = 1000


async def audited_events(redis: Any, since_ms: int) -> list[Event]:
    """The audited events still on the events stream from `since_ms` on, in stream order."""
    found: list[Event] = []
    start = f"{max(0, since_ms)}-0"
    while True:
        page = await redis.xrange(streams.EVENTS, min=start, max="+", count=REPLAY_PAGE)
        for _, fields in page:
            kind = fields.get(B_TYPE, b"").decode()
            if kind in NOT_AUDITED or kind not in EVENT_TYPES:
                continue
            with contextlib.suppress(ValueError):
                found.append(Event.from_json(fields[B_EVENT]))
        if len(page) < REPLAY_PAGE:
            return found
        start = "(" + page[-1][0].decode()


def _write_atomically(path: Path, text: str) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.name}.tmp")
        temporary.write_text(text, encoding="utf-8")
        temporary.replace(path)
    except OSError as exc:
        raise Retry(f"cannot write the report {path}: {exc.strerror or exc}") from exc


def build_spec(settings: Settings) -> ServiceSpec:
    """The auditor as the worker runs it."""
    auditor_settings = AuditorSettings.from_settings(settings)
    auditor = Auditor(auditor_settings)
    return ServiceSpec(
        name=NAME,
        streams=[streams.EVENTS, streams.AUDITOR_INBOX],
        handlers=handler_pairs(*((model, auditor.record) for model in AUDITED), (AuditRequested, auditor.render)),
        on_start=auditor.start,
        concurrency=auditor_settings.audit_concurrency,
    )
