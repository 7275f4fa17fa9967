"""Gathers one `swiftdeploy status` refresh from the control plane.

Reads the rollout record and the collector's latest snapshots and host stats from Redis, probes
each instance's `/healthz`, asks the gatekeeper for the infra and canary decisions (UNKNOWN when
it does not answer in time, never PASSING), reads the last events, then publishes
`status.checked` with the same correlation id as its decision requests (so the audit report
can tell these observations from the decisions that gate operations).
"""

from __future__ import annotations

import asyncio
import uuid
from typing import TYPE_CHECKING, Any, TypeVar

import aiohttp
from pydantic import BaseModel, ValidationError
from redis.exceptions import RedisError

from swiftdeploy_core.bus import streams
from swiftdeploy_core.bus.describe import describe_event
from swiftdeploy_core.bus.events import (
    DecisionMade,
    DecisionRequested,
    Event,
    HostStats,
    MetricsSnapshot,
    Source,
    StatusChecked,
)
from swiftdeploy_core.bus.wire import B_EVENT, decode
from swiftdeploy_core.client.dashboard import (
    BusView,
    EventLine,
    PolicyView,
    ServiceQueue,
    StatusView,
    build_view,
    serving_track,
)
from swiftdeploy_core.errors import BusError
from swiftdeploy_core.project.host import INFRA_FIELDS
from swiftdeploy_core.project.state import RolloutState

if TYPE_CHECKING:
    from swiftdeploy_core.bus.connection import Bus

HEALTH_TIMEOUT = 1.0
EVENTS_SHOWN = 8
EVENTS_SCANNED = 200
HISTORY_SCANNED = 400
BACKLOG_CAP = 1000  # entries counted per stream for undelivered and dead-lettered figures
GROUP_PREFIX = streams.group("")
QUIET_TYPES = {"status.checked", "pong", "ping.requested", "decision.made", "metrics.snapshot", "audit.rendered"}


Record = TypeVar("Record", bound=BaseModel)


async def _get_model(bus: Bus, key: str, model: type[Record]) -> Record | None:
    raw = await bus.redis.get(key)
    if raw is None:
        return None
    try:
        return model.model_validate_json(raw)
    except ValidationError:
        return None  # a record this client does not understand shows as no data


async def _healthy(session: aiohttp.ClientSession, url: str, path: str) -> bool:
    try:
        async with session.get(url.rstrip("/") + path) as response:
            return response.status == 200
    except (TimeoutError, aiohttp.ClientError, OSError):
        return False


async def probe_health(urls: list[str], path: str = "/healthz") -> dict[str, bool | None]:
    """Each instance's health, asked on the service's own path (`services.health.path`)."""
    if not urls:
        return {}
    timeout = aiohttp.ClientTimeout(total=HEALTH_TIMEOUT)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        answers = await asyncio.gather(*(_healthy(session, url, path) for url in urls))
    return dict(zip(urls, answers))


def policy_inputs(host: HostStats | None, serving: MetricsSnapshot | None) -> dict[str, dict[str, Any] | str]:
    """Each domain's decision input, or the reason there is none yet."""
    inputs: dict[str, dict[str, Any] | str] = {}
    if host is None:
        inputs["infra"] = "no host stats from the collector yet"
    else:
        inputs["infra"] = host.model_dump(include=INFRA_FIELDS)
    if serving is None or serving.error_rate is None or serving.p99_latency_ms is None:
        inputs["canary"] = "no traffic in the metrics window yet"
    else:
        canary: dict[str, Any] = {
            "error_rate": serving.error_rate,
            "p99_latency_ms": serving.p99_latency_ms,
            "requests": serving.requests or 0,
        }
        if serving.comparison is not None:  # judged against stable, as the orchestrator's analyses are
            canary["comparison"] = serving.comparison.model_dump(mode="json")
        inputs["canary"] = canary
    return inputs


async def _ask(
    bus: Bus, source: Source, correlation: str, domain: str, figures: dict[str, Any], timeout: float
) -> DecisionMade | None:
    request = Event(payload=DecisionRequested(domain=domain, input=figures), source=source, correlation_id=correlation)
    try:
        reply = await bus.request(streams.GATEKEEPER_INBOX, request, expect={"decision.made"}, timeout=timeout)
    except BusError:  # RequestTimeout included
        return None
    return reply.payload if isinstance(reply.payload, DecisionMade) else None


async def ask_policies(
    bus: Bus, source: Source, correlation: str, inputs: dict[str, dict[str, Any] | str], timeout: float
) -> dict[str, PolicyView]:
    """Ask the gatekeeper for every domain at once. Replies share one correlation id, so a reply
    may reach the other domain's waiter: they are matched to domains by their own `domain`."""
    asked = {d: figures for d, figures in inputs.items() if isinstance(figures, dict)}
    replies = await asyncio.gather(*(_ask(bus, source, correlation, d, f, timeout) for d, f in asked.items()))
    decided = {r.domain: r for r in replies if r is not None}
    views: dict[str, PolicyView] = {}
    for domain, figures in inputs.items():
        if isinstance(figures, str):
            views[domain] = PolicyView.unknown(domain, figures)
        elif domain in decided:
            d = decided[domain]
            views[domain] = PolicyView.decided(
                domain, d.allow, d.reasons, d.decision_id, figures, d.policy_revision, d.policy_drift, d.inconclusive
            )
        else:
            views[domain] = PolicyView.unknown(domain, f"the gatekeeper did not answer within {timeout:g}s", figures)
    return views


async def recent_events(bus: Bus) -> list[EventLine]:
    lines: list[EventLine] = []
    for _, fields in await bus.redis.xrevrange(streams.EVENTS, count=EVENTS_SCANNED) or []:
        event = _decode(fields)
        if event is None or event.type in QUIET_TYPES:
            continue
        lines.append(EventLine(timestamp=event.timestamp, type=event.type, summary=describe_event(event)))
        if len(lines) == EVENTS_SHOWN:
            break
    return lines


def _decode(fields: dict[bytes | str, bytes | str] | None) -> Event | None:
    raw = fields.get(B_EVENT) if fields else None
    try:
        return Event.from_json(raw) if raw is not None else None
    except (ValidationError, ValueError):
        return None  # a malformed entry: the consumers dead-letter it; the dashboard skips it


async def metrics_history(bus: Bus, project: str, track: str) -> list[MetricsSnapshot]:
    found: list[MetricsSnapshot] = []
    for _, fields in await bus.redis.xrevrange(streams.METRICS, count=HISTORY_SCANNED) or []:
        event = _decode(fields)
        snapshot = event.payload if event is not None else None
        if isinstance(snapshot, MetricsSnapshot) and snapshot.project == project and snapshot.track == track:
            found.append(snapshot)
    return list(reversed(found))


async def bus_backlog(bus: Bus) -> BusView:
    """Each service group's pending and undelivered entries on every stream it reads, its
    dead letters, and the auditor's lag on the events stream (see `BusView`)."""
    queues: dict[str, ServiceQueue] = {}
    capped, lag = False, None
    for stream in (streams.EVENTS, *streams.INBOXES.values()):
        try:
            groups = await bus.redis.xinfo_groups(stream)
        except RedisError:  # no such stream yet
            continue
        for info in groups:
            name = decode(info["name"])
            if not name.startswith(GROUP_PREFIX):
                continue
            service = name[len(GROUP_PREFIX) :]
            undelivered = await _undelivered(bus, stream, info)
            capped |= undelivered >= BACKLOG_CAP
            queue = queues.setdefault(service, ServiceQueue(service=service))
            queue.pending += int(info["pending"])
            queue.undelivered += undelivered
            if service == "auditor" and stream == streams.EVENTS:
                lag = int(info["pending"]) + undelivered
    dead = await bus.redis.xrevrange(streams.DEAD_LETTER, count=BACKLOG_CAP) or []
    capped |= len(dead) >= BACKLOG_CAP
    for _, fields in dead:
        service = decode((fields or {}).get(b"service", b"?"))  # redis-py types a deleted entry's fields None
        queues.setdefault(service, ServiceQueue(service=service)).dead_letters += 1
    order = {name: i for i, name in enumerate(streams.INBOXES)}
    ordered = sorted(queues.values(), key=lambda q: (order.get(q.service, 99), q.service))
    return BusView(auditor_lag=lag, services=ordered, capped=capped)


async def _undelivered(bus: Bus, stream: str, info: dict[str, Any]) -> int:
    """Entries after the group's last delivered id: Redis 7's `lag` when it has one, else counted."""
    if info.get("lag") is not None:
        return int(info["lag"])
    last = decode(info["last-delivered-id"])
    return len(await bus.redis.xrange(stream, min=f"({last}", max="+", count=BACKLOG_CAP) or [])


async def gather_status(
    bus: Bus, project: str, source: Source, policy_timeout: float = 2.0, publish: bool = True
) -> StatusView:
    """One refresh: read the records, ask the gatekeeper, publish `status.checked`."""
    rollout = await _get_model(bus, streams.rollout_key(project), RolloutState)
    snapshots = {
        t: await _get_model(bus, streams.latest_snapshot_key(project, t), MetricsSnapshot) for t in ("stable", "canary")
    }
    host = await _get_model(bus, streams.host_stats_key(project), HostStats)
    serving = snapshots.get(serving_track(rollout))
    correlation = uuid.uuid4().hex
    inputs = policy_inputs(host, serving)
    urls = [i.url for i in rollout.instances()] if rollout else []
    health_path = (
        str(((rollout.manifest.get("services") or {}).get("health") or {}).get("path") or "/healthz")
        if rollout
        else "/healthz"
    )
    health, policies = await asyncio.gather(
        probe_health(urls, health_path), ask_policies(bus, source, correlation, inputs, policy_timeout)
    )
    view = build_view(
        project,
        rollout,
        {k: v for k, v in snapshots.items() if v is not None},
        host=host,
        health=health,
        policies=policies,
        events=await recent_events(bus),
        history=await metrics_history(bus, project, serving_track(rollout)),
        bus=await bus_backlog(bus),
    )
    if publish:
        await bus.publish(
            streams.EVENTS, Event(payload=checked_payload(view), source=source, correlation_id=correlation)
        )
    return view


def checked_payload(view: StatusView) -> StatusChecked:
    return StatusChecked(
        mode=view.mode,  # type: ignore[arg-type]
        chaos=view.chaos,  # type: ignore[arg-type]
        request_rate=view.request_rate,
        error_rate=view.error_rate,
        p99_latency_ms=view.p99_latency_ms,
        policies={
            name: {"status": p.status, "allow": p.allow, "reasons": p.reasons} for name, p in view.policies.items()
        },
    )
