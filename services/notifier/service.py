"""The notifier service: every event on `streams.EVENTS` whose type matches a `notifications[]`
entry of the manifest is POSTed to its URL, signed, retried with backoff.

Replicas share the `swiftdeploy:group:notifier` consumer group, so each event is handled by one
replica. Delivery is at-least-once: the event id travels as `X-SwiftDeploy-Event-Id` and
`Idempotency-Key` so a receiver drops repeats; a target that answered 2xx for an event is marked
(`streams.notified_key`) so a redelivered event is not sent there again. Every outcome is an
event: `notification.sent` or, after the last attempt, `notification.failed`. The secret is read
from this process's environment when signing (`${NAME}` in the manifest), never from the bus.
Events older than the first notifier's start (`streams.NOTIFIER_SINCE`) are not sent: the group
reads the stream from its beginning, and the retained past is not news.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import UTC, datetime

import aiohttp

from swiftdeploy_core.bus import streams
from swiftdeploy_core.bus.describe import describe_event
from swiftdeploy_core.bus.events import PAYLOADS, Event, NotificationFailed, NotificationSent, Payload
from swiftdeploy_core.bus.handlers import Handler
from swiftdeploy_core.bus.wire import matches
from swiftdeploy_core.bus.worker import Context, ServiceSpec
from swiftdeploy_core.project.manifest import LoadedManifest, NotificationSpec, load_manifest
from swiftdeploy_core.project.webhooks import encode, origin, signed_headers
from swiftdeploy_core.settings import Settings, secret_from_env

NAME = "notifier"
ATTEMPTS = 5
BACKOFF_FIRST_S = 0.2
BACKOFF_MAX_S = 5.0
POST_TIMEOUT_S = 10.0
CONCURRENCY = 8  # one slow webhook must not hold every other event back
NOTIFIED_TTL_S = 6 * 3600
CLAIM_MS = 120_000  # longer than a whole delivery (ATTEMPTS × POST_TIMEOUT_S + backoff)
CLAIM_POLL_S = 0.1
# Never notified: the bus's own chatter, and the notifier's own outcomes (that would loop).
NOT_NOTIFIED = {
    "ping.requested",
    "pong",
    "notification.sent",
    "notification.failed",
    "policy.replay.requested",
    "policy.replayed",
}

log = logging.getLogger("swiftdeploy.notifier")


def body_for(event: Event, fmt: str) -> bytes:
    """The POST body: the event envelope plus a one-line summary, or a Slack message."""
    summary = describe_event(event)
    if fmt == "slack":
        return encode({"text": f"*{event.type}* {summary}"})
    return encode({**event.model_dump(mode="json"), "summary": summary})


@dataclass
class ManifestSource:
    """The notifier's manifest (`settings.manifest`), read again when the file changes."""

    settings: Settings
    _loaded: LoadedManifest | None = None
    _mtime: float | None = None

    def targets(self) -> list[NotificationSpec]:
        path = self.settings.manifest
        try:
            mtime = path.stat().st_mtime
        except OSError:
            return []
        if mtime != self._mtime:
            self._loaded, self._mtime = load_manifest(path), mtime
        return list(self._loaded.manifest.notifications) if self._loaded else []


async def post(session: aiohttp.ClientSession, target: NotificationSpec, event: Event) -> tuple[int | None, str]:
    """One attempt: (HTTP status, error text); status None when no answer came."""
    secret = secret_from_env(target.secret) if target.secret else None
    if target.secret and secret is None:
        return None, f"secret {target.secret} is not set in the notifier's environment"
    body = body_for(event, target.format)
    try:
        async with session.post(target.url, data=body, headers=signed_headers(body, secret, event.id)) as response:
            return response.status, "" if response.status < 300 else f"HTTP {response.status}"
    except TimeoutError:
        return None, f"no answer within {POST_TIMEOUT_S:g}s"
    except (aiohttp.ClientError, OSError) as exc:
        return None, f"{type(exc).__name__}: {exc}"


async def deliver(session: aiohttp.ClientSession, target: NotificationSpec, event: Event) -> tuple[bool, int, str]:
    """Attempts with backoff until a 2xx: (delivered, attempts, last status or error)."""
    delay, last = BACKOFF_FIRST_S, ""
    for attempt in range(1, ATTEMPTS + 1):
        status, error = await post(session, target, event)
        if status is not None and 200 <= status < 300:
            return True, attempt, str(status)
        last = error
        if attempt < ATTEMPTS:
            await asyncio.sleep(delay)
            delay = min(delay * 2, BACKOFF_MAX_S)
    return False, ATTEMPTS, last


async def claim(ctx: Context, event_id: str, index: int) -> bool:
    """Wait for this replica's turn to deliver `event_id` to target `index`; False when it is
    already done (sent or given up) by anyone. A claim expires, so a dead replica's is retaken."""
    key = streams.notified_key(event_id)
    while True:
        if await ctx.bus.redis.hexists(key, str(index)):
            return False
        if await ctx.bus.redis.set(
            streams.notify_claim_key(event_id, index), ctx.source.instance, nx=True, px=CLAIM_MS
        ):
            if not await ctx.bus.redis.hexists(key, str(index)):  # finished between the two reads
                return True
            await ctx.bus.redis.delete(streams.notify_claim_key(event_id, index))
            return False
        await asyncio.sleep(CLAIM_POLL_S)


async def settle(ctx: Context, event_id: str, index: int, outcome: str) -> None:
    key = streams.notified_key(event_id)
    async with ctx.bus.redis.pipeline(transaction=True) as pipe:
        pipe.hset(key, str(index), outcome)
        pipe.expire(key, NOTIFIED_TTL_S)
        pipe.delete(streams.notify_claim_key(event_id, index))
        await pipe.execute()


async def mark_start(ctx: Context) -> None:
    """The first replica ever records when notifying began. The group reads the events stream from
    its start, and a webhook must not get the whole retained past when a notifier first joins."""
    await ctx.bus.redis.set(streams.NOTIFIER_SINCE, datetime.now(UTC).isoformat(), nx=True)


async def started_at(ctx: Context) -> datetime | None:
    raw = await ctx.bus.redis.get(streams.NOTIFIER_SINCE)
    return datetime.fromisoformat(raw.decode() if isinstance(raw, bytes) else raw) if raw else None


def make_handler(source: ManifestSource) -> Handler[Payload]:
    async def notify(payload: Payload, event: Event, ctx: Context) -> None:
        targets = [(i, t) for i, t in enumerate(source.targets()) if matches(event.type, t.events)]
        since = await started_at(ctx) if targets else None
        if not targets or (since is not None and event.timestamp < since):
            return
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=POST_TIMEOUT_S)) as session:
            for index, target in targets:
                if not await claim(ctx, event.id, index):
                    continue  # delivered (or given up) already, by this event's earlier delivery
                delivered, attempts, last = await deliver(session, target, event)
                where = origin(target.url)
                if delivered:
                    outcome: NotificationSent | NotificationFailed = NotificationSent(
                        url=where, event_id=event.id, event_type=event.type, attempts=attempts, status=int(last)
                    )
                else:
                    log.warning("! %s of %s to %s: %s after %d attempts", event.type, event.id, where, last, attempts)
                    outcome = NotificationFailed(
                        url=where, event_id=event.id, event_type=event.type, attempts=attempts, error=last
                    )
                await ctx.emit(outcome, cause=event)
                await settle(ctx, event.id, index, "sent" if delivered else "failed")

    return notify


def build_spec(settings: Settings) -> ServiceSpec:
    """The notifier as the worker runs it."""
    notify = make_handler(ManifestSource(settings))
    return ServiceSpec(
        name=NAME,
        streams=[streams.EVENTS],
        handlers={model: notify for kind, model in PAYLOADS.items() if kind not in NOT_NOTIFIED},
        on_start=mark_start,
        concurrency=CONCURRENCY,
    )
