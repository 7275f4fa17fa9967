"""The orchestrator service: command handlers, the analysis loop, and recovery at start-up.

Handlers only open the project's rollout under its lock and run one operation; the operations and
the phase handlers hold the logic. The analysis loop ticks every progressing rollout once per
`canary.interval`; a tick takes the lock too, so a tick and a command never interleave.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import aiohttp

from services.orchestrator import fencing, healing, lock, operations, phases, plans
from services.orchestrator.drivers import make_driver
from services.orchestrator.rollout import Decision, RecordStore, Rollout
from swiftdeploy_core.bus import streams
from swiftdeploy_core.bus.events import (
    AnyPayload,
    CanaryRequested,
    ChaosRequested,
    CommandRejected,
    DecisionMade,
    DecisionRequested,
    DeployFailed,
    DeployRequested,
    Event,
    OperationFailed,
    PromotionRequested,
    RollbackRequested,
    TeardownRequested,
)
from swiftdeploy_core.bus.retry import redis_errors
from swiftdeploy_core.bus.worker import Context, ServiceSpec
from swiftdeploy_core.errors import BusLost, OperationInProgress, RequestTimeout, SwiftDeployError
from swiftdeploy_core.project.manifest import Manifest, validate_manifest
from swiftdeploy_core.project.state import Phase, RolloutState
from swiftdeploy_core.settings import Settings

NAME = "orchestrator"
LOCK_WAIT = 3.0  # a command waits this long for a tick to finish before it is rejected
LOOP_PAUSE = 0.1  # how often the analysis loop looks for due rollouts
CONCURRENCY = 8  # commands for different projects run side by side

log = logging.getLogger("swiftdeploy.orchestrator")
# Where `services.secrets` with an `env` source are read at deploy time: the orchestrator's own
# environment (what `swiftdeploy up` was started with). The only read of os.environ beyond Settings:
# secret names are the user's, so no settings model can list them.
DEPLOY_ENVIRON = os.environ


@dataclass
class BusGate:
    """Asks the gatekeeper over the bus; no answer in time means "no decision" (None)."""

    ctx: Context
    timeout: float

    async def decide(self, domain: str, data: dict[str, Any]) -> Decision | None:
        try:
            reply = await self.ctx.request(
                streams.GATEKEEPER_INBOX, DecisionRequested(domain=domain, input=data),
                expect={"decision.made"}, timeout=self.timeout,
            )  # fmt: skip
        except RequestTimeout:
            log.warning("no %s decision from the gatekeeper within %.1fs", domain, self.timeout)
            return None
        made = reply.payload
        if not isinstance(made, DecisionMade):  # `expect` lets only decision.made through
            return None
        return Decision(
            allow=made.allow, reasons=list(made.reasons), decision_id=made.decision_id, inconclusive=made.inconclusive
        )


def emitter(
    ctx: Context, cause: Event | None, correlation_id: str | None = None
) -> Callable[[AnyPayload], Awaitable[None]]:
    """Events of a command carry its correlation id; a tick continues the stored command's."""

    async def emit(payload: AnyPayload) -> None:
        await ctx.emit(payload, cause=cause, correlation_id=correlation_id)

    return emit


async def open_rollout(
    ctx: Context, project: str, emit: Callable[[AnyPayload], Awaitable[None]],
    manifest: Manifest | None = None, root: str | None = None, fence: lock.Fence | None = None,
) -> Rollout:  # fmt: skip
    """The project's rollout: its record (rebuilt from runtime labels if Redis lost it)."""
    store = RecordStore(ctx.bus.redis)
    record = stored = await store.load(project)
    if manifest is not None:
        if record is not None and record.runtime != manifest.runtime.value and record.instances():
            raise operations.Refused(
                f"{project} runs on the {record.runtime} runtime; `swiftdeploy teardown` before switching to {manifest.runtime.value}"
            )
        base = record or RolloutState(project=project, runtime=manifest.runtime.value)
        record = base.model_copy(
            update={
                "manifest": manifest.model_dump(mode="json"),
                "root": root or base.root,
                "runtime": manifest.runtime.value,
            }
        )
    if record is None:
        raise operations.Refused(f"{project} is not deployed (no rollout record); run `swiftdeploy deploy` first")
    gate = BusGate(ctx, ctx.settings.request_timeout)
    validated = validate_manifest(record.manifest)
    driver = make_driver(validated, record.root, record.runtime, docker_config=ctx.settings.docker_config)
    if fence is not None:
        driver = await fencing.fence_driver(driver, fence, ctx.bus.redis)
    rollout = Rollout(record, driver, store, gate, emit, environ=DEPLOY_ENVIRON, _manifest=validated, fence=fence)
    if stored is None:  # Redis lost the record (the command brought its manifest): the runtime's labels say the rest
        rebuilt = plans.reconstruct(project, record.runtime, await rollout.driver.list_objects())
        if rebuilt is not None:
            rollout.record = await store.save(
                rebuilt.model_copy(update={"manifest": record.manifest, "root": record.root}), fence
            )
            await phases.recover(rollout)
    return rollout


async def run_command(
    event: Event, ctx: Context, command: str, project: str,
    operation: Callable[[Rollout], Awaitable[None]], manifest: Manifest | None = None, root: str | None = None,
) -> None:  # fmt: skip
    """Lock, open, run, close; every refusal or failure becomes one event the client shows."""
    emit = emitter(ctx, event)
    try:
        async with lock.holding(
            ctx.bus.redis, project, command, ctx.source.instance, wait=LOCK_WAIT, lease=ctx.settings.operation_lease
        ) as fence:
            rollout = await open_rollout(ctx, project, emit, manifest, root, fence)
            try:
                await operation(rollout)
            finally:
                await rollout.driver.close()
    except (OperationInProgress, operations.Refused) as exc:
        await emit(CommandRejected(command=command, reason=str(exc)))
    except SwiftDeployError as exc:
        await emit(_failed(command, str(exc)))
    except (TimeoutError, OSError, aiohttp.ClientError) as exc:  # a runtime call went wrong
        log.warning("%s of %s failed: %r", command, project, exc)
        await emit(_failed(command, f"{type(exc).__name__}: {exc}"))


def _failed(command: str, error: str) -> AnyPayload:
    return DeployFailed(error=error) if command == "deploy" else OperationFailed(command=command, error=error)


def _manifest(payload: DeployRequested | CanaryRequested) -> Manifest:
    return validate_manifest(payload.manifest)


# --- handlers ----------------------------------------------------------------------------------


async def on_deploy(payload: DeployRequested, event: Event, ctx: Context) -> None:
    manifest = _manifest(payload)
    await run_command(
        event, ctx, "deploy", manifest.project,
        lambda r: operations.Deploy(r, event.correlation_id).run(), manifest, payload.root,
    )  # fmt: skip


async def on_canary(payload: CanaryRequested, event: Event, ctx: Context) -> None:
    manifest = _manifest(payload)
    await run_command(
        event, ctx, "promote-canary", manifest.project,
        lambda r: (
            operations.ResumeCanary(r) if payload.resume else operations.StartCanary(r, event.correlation_id, payload.replace)
        ).run(),
        None if payload.resume else manifest, None if payload.resume else payload.root,
    )  # fmt: skip


async def on_promotion(payload: PromotionRequested, event: Event, ctx: Context) -> None:
    project = await _project(payload.project, event, ctx, "promote-stable")
    if project:
        await run_command(event, ctx, "promote-stable", project, lambda r: operations.PromoteStable(r).run())


async def on_rollback(payload: RollbackRequested, event: Event, ctx: Context) -> None:
    project = await _project(payload.project, event, ctx, "rollback")
    if project:
        to, reason = payload.to, payload.reason
        await run_command(
            event, ctx, "rollback", project,
            lambda r: (
                operations.RollbackTo(r, to, reason, event.correlation_id) if to else operations.Rollback(r, reason)
            ).run(),
        )  # fmt: skip


async def on_teardown(payload: TeardownRequested, event: Event, ctx: Context) -> None:
    lost = payload.manifest is not None and await RecordStore(ctx.bus.redis).load(payload.project) is None
    manifest = validate_manifest(payload.manifest) if lost and payload.manifest is not None else None
    run = lambda r: operations.Teardown(r).run()  # noqa: E731
    await run_command(event, ctx, "teardown", payload.project, run, manifest, payload.root if lost else None)


async def on_chaos(payload: ChaosRequested, event: Event, ctx: Context) -> None:
    project = await _project(payload.project, event, ctx, "chaos")
    if project:
        await run_command(event, ctx, "chaos", project, lambda r: operations.Chaos(r, payload).run())


async def _project(named: str | None, event: Event, ctx: Context, command: str) -> str | None:
    """The project a command names, or the only deployed one; else reject the command."""
    if named:
        return named
    projects = await RecordStore(ctx.bus.redis).projects()
    if len(projects) == 1:
        return projects[0]
    reason = (
        "nothing is deployed" if not projects else f"several projects are deployed ({', '.join(projects)}); name one"
    )
    await ctx.emit(CommandRejected(command=command, reason=reason), cause=event)
    return None


# --- analysis loop and recovery ----------------------------------------------------------------


async def analysis_loop(ctx: Context) -> None:
    """Tick every analysed rollout when a new canary snapshot lands, and at least once per its
    `canary.interval`."""
    store = RecordStore(ctx.bus.redis)
    checked: dict[str, float] = {}  # when a resting rollout's router was last read back
    while True:
        # Redis away (or a runtime call that lost its connection, as before): the next pass.
        with contextlib.suppress(BusLost), redis_errors("the analysis loop"):
            for project in await store.projects():
                record = await store.load(project)
                if record is None or record.phase not in phases.WATCHED:
                    continue
                if record.phase in phases.ANALYSED:
                    due = await _due(store, record)
                else:  # resting: nothing to analyse, the router is checked once an interval
                    interval = validate_manifest(record.manifest).canary.interval
                    due = time.monotonic() - checked.get(project, 0.0) >= interval
                if due:
                    checked[project] = time.monotonic()
                    with contextlib.suppress(OperationInProgress):  # a command has it: next pass
                        await tick(ctx, project)
        await asyncio.sleep(LOOP_PAUSE)


async def _due(store: RecordStore, record: RolloutState) -> bool:
    """An interval since the last tick, or new figures and half an interval since the last tick:
    a bad canary is judged as soon as the collector has it (a timer alone can lag a whole
    interval), while steps still never move faster than the figures do."""
    interval = validate_manifest(record.manifest).canary.interval
    since = (datetime.now(UTC) - record.updated_at).total_seconds()
    if since >= interval:
        return True
    if since < interval / 2:
        return False
    snapshot = await store.snapshot(record.project, "stable" if record.phase is Phase.baking else "canary")
    return snapshot is not None and snapshot.at is not None and snapshot.at != record.analysed_at


async def tick(ctx: Context, project: str) -> None:
    """One analysis tick under the lock (skipped when a command holds it)."""
    lease = ctx.settings.operation_lease
    async with lock.holding(ctx.bus.redis, project, "canary-analysis", ctx.source.instance, lease=lease) as fence:
        record = await RecordStore(ctx.bus.redis).load(project)
        if record is None or record.phase not in phases.WATCHED:
            return
        if record.phase in phases.ANALYSED and not await _due(RecordStore(ctx.bus.redis), record):
            return
        rollout = await open_rollout(ctx, project, emitter(ctx, None, record.correlation_id), fence=fence)
        try:
            await phases.advance(rollout)
            await phases.settle(rollout)
        except SwiftDeployError as exc:
            log.warning("analysis tick of %s failed: %s", project, exc)
        finally:
            await rollout.driver.close()


async def watch_loop(ctx: Context) -> None:
    """Self-healing: every `services.health.interval`, one look at each instance of every
    deployed rollout (`healing.watch`), under the project's lock (a command holding it wins)."""
    store = RecordStore(ctx.bus.redis)
    looked: dict[str, float] = {}  # when each project's instances were last looked at
    while True:
        with contextlib.suppress(BusLost), redis_errors("the watch"):
            for project in await store.projects():
                record = await store.load(project)
                if record is None or record.phase not in phases.WATCHED:
                    continue
                interval = validate_manifest(record.manifest).services.health.interval
                if time.monotonic() - looked.get(project, 0.0) >= interval:
                    looked[project] = time.monotonic()
                    with contextlib.suppress(OperationInProgress):  # a command or a tick has it: next pass
                        await look(ctx, project)
        await asyncio.sleep(LOOP_PAUSE)


async def look(ctx: Context, project: str) -> None:
    """One self-healing look at a project's instances under its lock."""
    async with lock.holding(ctx.bus.redis, project, "watch", ctx.source.instance) as fence:
        record = await RecordStore(ctx.bus.redis).load(project)
        if record is None or record.phase not in phases.WATCHED:
            return
        rollout = await open_rollout(ctx, project, emitter(ctx, None, record.correlation_id), fence=fence)
        try:
            await healing.watch(rollout)
        except SwiftDeployError as exc:
            log.warning("watch of %s failed: %s", project, exc)
        finally:
            await rollout.driver.close()


async def recover_all(ctx: Context) -> None:
    """At start-up: finish or undo what a previous orchestrator left half done."""
    store = RecordStore(ctx.bus.redis)
    for project in await store.projects():
        try:
            lease = ctx.settings.operation_lease
            async with lock.holding(ctx.bus.redis, project, "recover", ctx.source.instance, lease=lease) as fence:
                record = await store.load(project)
                if record is None or not record.manifest:
                    continue
                rollout = await open_rollout(ctx, project, emitter(ctx, None, record.correlation_id), fence=fence)
                try:
                    phase = await phases.recover(rollout)
                    log.info("recovered %s: %s", project, phase.value)
                finally:
                    await rollout.driver.close()
        except OperationInProgress as exc:
            log.info("not recovering %s now: %s", project, exc)
        except SwiftDeployError as exc:
            log.warning("could not recover %s: %s", project, exc)


def build_spec(settings: Settings) -> ServiceSpec:
    """The orchestrator as the worker runs it."""
    return ServiceSpec(
        name=NAME,
        streams=[streams.ORCHESTRATOR_INBOX],
        handlers={
            DeployRequested: on_deploy,
            CanaryRequested: on_canary,
            PromotionRequested: on_promotion,
            RollbackRequested: on_rollback,
            TeardownRequested: on_teardown,
            ChaosRequested: on_chaos,
        },
        background=[analysis_loop, watch_loop],
        on_start=recover_all,
        concurrency=CONCURRENCY,
    )
