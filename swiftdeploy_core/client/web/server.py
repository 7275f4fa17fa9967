"""`swiftdeploy dashboard`: an aiohttp server with one bus feed, fanned out to browsers by SSE.

One `Feed` per server follows `streams.EVENTS` and `streams.METRICS`, folds each event into the
`LiveModel` and hands the resulting update to every connected browser's queue (`Hub`); the rollout
record and instance health are re-read when an event says the rollout moved (and every
`HEALTH_EVERY_S` for health), once per server, never per browser. Bound anywhere but loopback,
every request needs `?token=<random>` (printed with the URL). Actions (promote canary, continue a
paused canary, promote stable, rollback) exist only with `--allow-actions`; they are sent as the CLI sends them
(`cli.common.send_command`) and need the `X-SwiftDeploy-Action` header, which a cross-site form
cannot send.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import ipaddress
import json
import logging
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from importlib import resources
from typing import TYPE_CHECKING, Any

import jinja2
from aiohttp import web

from swiftdeploy_core.bus import streams
from swiftdeploy_core.bus.events import (
    AnyPayload,
    AuditRequested,
    CanaryRequested,
    Event,
    PromotionRequested,
    RollbackRequested,
    Source,
)
from swiftdeploy_core.bus.wire import B_EVENT, decode
from swiftdeploy_core.client.cli.common import client_source, send_command
from swiftdeploy_core.client.cli.rollout import CANARY_END, CONTINUE_END, PROMOTE_END, ROLLBACK_END, as_data
from swiftdeploy_core.client.status_probe import probe_health
from swiftdeploy_core.client.web.model import OUTCOMES, QUIET, LiveModel, Update, rollout_view
from swiftdeploy_core.errors import SwiftDeployError
from swiftdeploy_core.project.manifest import LoadedManifest
from swiftdeploy_core.project.state import RolloutState
from swiftdeploy_core.settings import Settings

if TYPE_CHECKING:
    from swiftdeploy_core.bus.connection import Bus

HEALTH_EVERY_S = 2.0
KEEPALIVE_S = 15.0
QUEUE_SIZE = 1000  # a browser this far behind is dropped; its EventSource reconnects to a snapshot
PRELOAD_EVENTS = 300
PRELOAD_METRICS = 2000
ACTION_TIMEOUT_S = 120.0
ACTION_HEADER = "X-SwiftDeploy-Action"
FEED_STOP_S = 1.0
# Events after which the record is not re-read (they do not move the rollout).
NO_REFRESH = QUIET | {"decision.made", "decision.requested", "status.checked", "notification.sent"}

log = logging.getLogger("swiftdeploy.dashboard")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Hub:
    """The browsers' queues; `publish` hands one update to all of them."""

    def __init__(self) -> None:
        self.queues: set[asyncio.Queue[Update]] = set()

    def publish(self, update: Update | None) -> None:
        if update is None:
            return
        for queue in list(self.queues):
            try:
                queue.put_nowait(update)
            except asyncio.QueueFull:
                self.queues.discard(queue)  # too slow: dropped; it reconnects and gets a snapshot


def _decode(fields: dict[bytes | str, bytes | str]) -> Event | None:
    with contextlib.suppress(ValueError, KeyError):
        return Event.from_json(fields[B_EVENT])
    return None


@dataclass
class Feed:
    """The server's one view of the bus."""

    bus: Bus
    model: LiveModel
    hub: Hub
    source: Source
    moved: asyncio.Event = field(default_factory=asyncio.Event)

    async def preload(self) -> tuple[str, str]:
        """The retained past (the charts' history, recent events); the cursors to follow from."""
        cursors = []
        for stream, count in ((streams.EVENTS, PRELOAD_EVENTS), (streams.METRICS, PRELOAD_METRICS)):
            entries = await self.bus.redis.xrevrange(stream, count=count) or []
            for _entry_id, fields in reversed(entries):
                event = _decode(fields or {})
                if event is not None:
                    self.model.apply(event)
            cursors.append(decode(entries[0][0]) if entries else "0-0")
        await self.refresh()
        return cursors[0], cursors[1]

    async def follow(self, stream: str, since: str) -> None:
        async for event in self.bus.follow(since=since, stream=stream):
            self.hub.publish(self.model.apply(event))
            if event.type not in NO_REFRESH:
                self.moved.set()
            if event.type in OUTCOMES:
                await self.verify()

    async def verify(self) -> None:
        """Ask the auditor to verify the history's chain (no report is written); its
        `audit.rendered` reaches the page through `follow`."""
        request = Event(payload=AuditRequested(verify=True), source=self.source)
        await self.bus.publish(streams.AUDITOR_INBOX, request)

    async def refresh(self) -> None:
        raw = await self.bus.redis.get(streams.rollout_key(self.model.project))
        record = RolloutState.model_validate_json(raw) if raw else None
        health = await probe_health([i.url for i in record.instances()]) if record else {}
        self.hub.publish(self.model.set_rollout(rollout_view(record, health)))

    async def refresh_loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.moved.wait(), HEALTH_EVERY_S)
            self.moved.clear()
            try:
                await self.refresh()
            except (SwiftDeployError, OSError, ValueError) as exc:
                log.warning("refresh failed: %s", exc)

    async def run(self) -> None:
        events_from, metrics_from = await self.preload()
        await self.verify()
        await asyncio.gather(
            self.follow(streams.EVENTS, events_from), self.follow(streams.METRICS, metrics_from), self.refresh_loop()
        )


ActionBuilder = Callable[[LoadedManifest], tuple[AnyPayload, dict[str, int]]]
ACTIONS: dict[str, ActionBuilder] = {
    "canary": lambda loaded: (
        CanaryRequested(manifest=as_data(loaded), manifest_sha256=loaded.sha256, root=str(loaded.root)),
        CANARY_END,
    ),
    "continue": lambda loaded: (
        CanaryRequested(manifest=as_data(loaded), manifest_sha256=loaded.sha256, root=str(loaded.root), resume=True),
        CONTINUE_END,
    ),
    "promote": lambda loaded: (PromotionRequested(project=loaded.manifest.project), PROMOTE_END),
    "rollback": lambda loaded: (
        RollbackRequested(project=loaded.manifest.project, reason="requested from the dashboard"),
        ROLLBACK_END,
    ),
}


@dataclass
class Dashboard:
    """The web app around one feed."""

    settings: Settings
    loaded: LoadedManifest
    bus: Bus
    allow_actions: bool = False
    token: str | None = None
    hub: Hub = field(default_factory=Hub)

    def __post_init__(self) -> None:
        self.model = LiveModel(self.loaded.manifest.project, self.allow_actions)
        self.feed = Feed(self.bus, self.model, self.hub, client_source(self.settings))
        loader = jinja2.PackageLoader("swiftdeploy_core.client.web", "templates")
        self.templates = jinja2.Environment(loader=loader, autoescape=True)

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self.check_token])
        app.router.add_get("/", self.page)
        app.router.add_get("/static/{name}", self.static)
        app.router.add_get("/api/state", self.state)
        app.router.add_get("/api/stream", self.stream)
        app.router.add_post("/api/actions/{name}", self.action)
        app.cleanup_ctx.append(self._feed)
        return app

    async def _feed(self, app: web.Application) -> AsyncIterator[None]:
        task = asyncio.create_task(self.feed.run(), name="dashboard-feed")
        yield
        task.cancel()
        # Bounded: a cancel can be swallowed by a blocking read; closing the bus (after the app)
        # unblocks its readers, and the task ends then.
        await asyncio.wait({task}, timeout=FEED_STOP_S)

    @web.middleware
    async def check_token(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        if self.token is not None and not hmac.compare_digest(request.query.get("token", ""), self.token):
            return web.Response(status=403, text="a valid ?token= is required (printed when the dashboard started)\n")
        return await handler(request)

    async def page(self, request: web.Request) -> web.Response:
        html = self.templates.get_template("dashboard.html.j2").render(
            project=self.model.project, token=self.token or "", actions=self.allow_actions
        )
        return web.Response(text=html, content_type="text/html")

    async def static(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        files = resources.files("swiftdeploy_core.client.web") / "static"
        path = files / name
        if "/" in name or name.startswith(".") or not path.is_file():
            raise web.HTTPNotFound()
        kind = "application/javascript" if name.endswith(".js") else "text/css"
        return web.Response(body=path.read_bytes(), content_type=kind)

    async def state(self, request: web.Request) -> web.Response:
        return web.json_response(self.model.snapshot())

    async def stream(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await response.prepare(request)
        queue: asyncio.Queue[Update] = asyncio.Queue(QUEUE_SIZE)
        self.hub.queues.add(queue)
        try:
            await self._send(response, self.model.snapshot())
            while True:
                try:
                    update = await asyncio.wait_for(queue.get(), KEEPALIVE_S)
                except TimeoutError:
                    if queue not in self.hub.queues:
                        break  # dropped as too slow: the browser reconnects to a fresh snapshot
                    await response.write(b": keep-alive\n\n")
                    continue
                await self._send(response, update)
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            self.hub.queues.discard(queue)
        return response

    @staticmethod
    async def _send(response: web.StreamResponse, update: Update) -> None:
        await response.write(f"data: {json.dumps(update, default=str)}\n\n".encode())

    async def action(self, request: web.Request) -> web.Response:
        if not self.allow_actions:
            return web.json_response({"error": "actions are disabled: start with --allow-actions"}, status=403)
        if request.headers.get(ACTION_HEADER) != "1":
            return web.json_response({"error": f"the {ACTION_HEADER}: 1 header is required"}, status=400)
        builder = ACTIONS.get(request.match_info["name"])
        if builder is None:
            return web.json_response({"error": f"unknown action; one of {', '.join(ACTIONS)}"}, status=404)
        payload, ends = builder(self.loaded)
        try:
            outcome = await send_command(
                payload, streams.ORCHESTRATOR_INBOX, settings=self.settings, outcomes=ends,
                timeout=ACTION_TIMEOUT_S, progress=False,
            )  # fmt: skip
        except SwiftDeployError as exc:
            return web.json_response({"exit_code": exc.exit_code, "message": str(exc)}, status=502)
        return web.json_response(_outcome(outcome.to_json()))


def _outcome(data: dict[str, Any]) -> dict[str, Any]:
    return {k: data[k] for k in ("ok", "exit_code", "result", "message")}


def new_token(host: str) -> str | None:
    """A random token when the dashboard is reachable from other hosts; None on loopback."""
    return None if is_loopback(host) else secrets.token_urlsafe(18)
