"""The rollout being worked on: its stored record, its driver, its gate and its event emitter.

`RecordStore` is the only code that writes `streams.rollout_key` (the collector, auditor and
`status` read it). A `Rollout` bundles
what a phase handler or an operation needs, and the few runtime moves they share: start a track
and wait for it, point the router at exactly what the record says, stop instances.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import redis.asyncio as aioredis

from services.orchestrator.drivers.base import InstanceFailed, InstanceSpec, RuntimeDriver
from services.orchestrator.lock import Fence
from swiftdeploy_core.bus import streams
from swiftdeploy_core.bus.events import AnyPayload, MetricsSnapshot
from swiftdeploy_core.project import service_env as envs
from swiftdeploy_core.project.manifest import Manifest, validate_manifest
from swiftdeploy_core.project.service_env import ServiceEnv
from swiftdeploy_core.project.state import Instance, RolloutState

HEALTH_TIMEOUT = 30.0
LOG_LINES = 20


class RecordStore:
    """Load and save rollout records (JSON at `streams.rollout_key(project)`)."""

    def __init__(self, redis: aioredis.Redis) -> None:
        self.redis = redis

    async def load(self, project: str) -> RolloutState | None:
        raw = await self.redis.get(streams.rollout_key(project))
        return RolloutState.model_validate_json(raw) if raw else None

    async def save(self, record: RolloutState, fence: Fence | None = None, *, touch: bool = True) -> RolloutState:
        """Write the record; with a fence, only while its lease is still held (else LeaseLost).
        `touch=False` keeps `updated_at` (the last analysis tick): the watch's writes are no tick."""
        stamp: dict[str, object] = {"fence": fence.lease.fence} if fence is not None else {}
        if touch:
            stamp["updated_at"] = datetime.now(UTC)
        record = record.model_copy(update=stamp)
        key, value = streams.rollout_key(record.project), record.model_dump_json()
        if fence is None:
            await self.redis.set(key, value)
        else:
            await fence.fenced_set(self.redis, key, value)
        return record

    async def delete(self, project: str) -> None:
        await self.redis.delete(streams.rollout_key(project))

    async def projects(self) -> list[str]:
        prefix = streams.rollout_key("")
        found = [key.decode() if isinstance(key, bytes) else key async for key in self.redis.scan_iter(f"{prefix}*")]
        return sorted(key[len(prefix) :] for key in found)

    async def snapshot(self, project: str, track: str) -> MetricsSnapshot | None:
        raw = await self.redis.get(streams.latest_snapshot_key(project, track))
        if not raw:
            return None
        with contextlib.suppress(ValueError):
            return MetricsSnapshot.model_validate_json(raw)
        return None


@dataclass(frozen=True)
class Decision:
    allow: bool
    reasons: list[str]
    decision_id: str | None = None
    inconclusive: bool = False  # not allowed, not a failure: too few samples to judge (the policy's answer)

    @property
    def outcome(self) -> str:
        return "allow" if self.allow else ("inconclusive" if self.inconclusive else "deny")


class Gate(Protocol):
    """Asks the gatekeeper; None means it gave no answer in time (retry later)."""

    async def decide(self, domain: str, data: dict[str, Any]) -> Decision | None: ...


Emit = Callable[[AnyPayload], Awaitable[None]]


@dataclass
class Rollout:
    """One project's rollout as a handler sees it. `record` is replaced, never mutated in place."""

    record: RolloutState
    driver: RuntimeDriver
    store: RecordStore
    gate: Gate
    emit: Emit
    health_timeout: float = HEALTH_TIMEOUT  # unless services.health.start_period says otherwise
    environ: Mapping[str, str] = field(default_factory=dict, repr=False)  # where env secrets come from
    _manifest: Manifest | None = field(default=None, repr=False)
    fence: Fence | None = None  # the lease this rollout's operation holds: every effect checks it
    _secrets: list[str] = field(default_factory=list, repr=False)  # values to mask in log lines

    @property
    def manifest(self) -> Manifest:
        if self._manifest is None:
            self._manifest = validate_manifest(self.record.manifest)
        return self._manifest

    def service_env(self, *, canary: bool = False) -> ServiceEnv:
        """The track's env and secrets, read now (SecretUnavailable names what is missing)."""
        return envs.resolve(self.manifest, Path(self.record.root), self.environ, canary=canary)

    async def save(self, **changes: object) -> RolloutState:
        self.record = await self.store.save(self.record.model_copy(update=changes), self.fence)
        return self.record

    async def note(self, **changes: object) -> RolloutState:
        """Save changes that are no tick of the rollout (the self-healing watch's)."""
        self.record = await self.store.save(self.record.model_copy(update=changes), self.fence, touch=False)
        return self.record

    async def fenced(self) -> None:
        """Before an effect on the runtime or the router: LeaseLost if the lease is not ours."""
        if self.fence is not None:
            await self.fence.verify(self.store.redis)

    async def route(self, record: RolloutState | None = None) -> str:
        """Make nginx serve exactly what `record` (default: the current one) says."""
        record = record or self.record
        stable = record.stable.instances if record.stable else []
        canary = record.canary.instances if record.canary else []
        weight = record.canary.weight if record.canary else 0
        chaos = record.canary.router_error_percent if record.canary else 0.0
        await self.fenced()
        return await self.driver.apply_router(self.manifest, stable, canary, weight, chaos)

    async def start(self, specs: list[InstanceSpec]) -> list[Instance]:
        """Start instances and wait until every one is healthy; on failure stop them all again."""
        return await self.wait_healthy(await self.launch(specs), specs)

    async def launch(self, specs: list[InstanceSpec]) -> list[Instance]:
        """Start instances without waiting for them; on failure stop what was started."""
        started: list[Instance] = []
        await self.fenced()
        self._secrets = [v.get_secret_value() for spec in specs for v in spec.secrets.values()]
        try:
            for spec in specs:
                started.append(await self.driver.start_instance(spec))
        except BaseException:
            await asyncio.shield(self.stop([s.name for s in specs]))
            raise
        return started

    async def wait_healthy(self, instances: list[Instance], specs: list[InstanceSpec] | None = None) -> list[Instance]:
        """Wait for every instance; on failure keep the failing one's last log lines, stop them all."""
        try:
            health = self.manifest.services.health
            timeout = health.start_period or self.health_timeout
            await asyncio.gather(*(self.driver.wait_healthy(i, timeout, health.path) for i in instances))
        except BaseException as exc:
            if isinstance(exc, InstanceFailed):
                exc.logs = envs.redact(await self.driver.logs_tail(exc.name, LOG_LINES), self._secrets)
            names = [s.name for s in specs] if specs else [i.name for i in instances]
            await asyncio.shield(self.stop(names))
            raise
        return instances

    async def stop(self, names: list[str]) -> None:
        await self.fenced()
        await asyncio.gather(*(self.driver.stop_instance(name) for name in names))


def failure_logs(error: BaseException) -> list[str]:
    """The last log lines of the instance an error is about (empty when it names none)."""
    return list(error.logs) if isinstance(error, InstanceFailed) else []
