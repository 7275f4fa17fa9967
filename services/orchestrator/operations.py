"""The commands as small operations: each `run()` reads as a few named steps, one event each.

An operation works on a `Rollout` (record, driver, gate, emitter) while the service holds the
project's lock. A refusal before any effect raises `Refused`; the service turns it into
`command.rejected`. What failed after effects began is undone here and reported as
`deploy.failed` / `operation.failed`.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from services.orchestrator import gates, phases, plans
from services.orchestrator.drivers.base import InstanceSpec
from services.orchestrator.drivers.health import wait_http_ok
from services.orchestrator.rollout import Decision, Rollout, failure_logs
from swiftdeploy_core.bus.events import (
    CanaryReplaced,
    CanaryResumed,
    CanaryStarted,
    ChaosInjected,
    ChaosRequested,
    DeployBlocked,
    DeployCompleted,
    DeployFailed,
    DeployStarted,
    DeployStep,
    ModeChanged,
    OperationFailed,
    PromotionBlocked,
    TeardownCompleted,
)
from swiftdeploy_core.errors import SwiftDeployError
from swiftdeploy_core.project.host import INFRA_FIELDS, DataRoots, host_stats
from swiftdeploy_core.project.service_env import ServiceEnv
from swiftdeploy_core.project.state import Instance, Phase, RolloutState, TrackState

CANARY_PHASES = frozenset({Phase.canary_starting, Phase.progressing, Phase.canary_complete})
BUSY_PHASES = CANARY_PHASES | {Phase.promoting, Phase.rolling_back}
CHAOS_TIMEOUT = 5.0


class Refused(SwiftDeployError):
    """The command cannot apply to the deployment as it is; nothing was changed."""


def silent(domain: str) -> Decision:
    """No answer from the gatekeeper is a denial, never an allow."""
    reason = f"no {domain} decision: the gatekeeper did not answer in time (is it running? `swiftdeploy ps`)"
    return Decision(allow=False, reasons=[reason], decision_id=None)


DATA_ROOTS = DataRoots()


@dataclass
class Deploy:
    """Infra gate, networks, the stable track, nginx, health; undone entirely if any step fails."""

    rollout: Rollout
    correlation_id: str
    created_networks: list[str] = field(default_factory=list)
    started: list[Instance] = field(default_factory=list)
    router_was_running: bool = False
    track: TrackState | None = None
    url: str = ""
    env: ServiceEnv = field(default_factory=ServiceEnv, repr=False)
    digest: str | None = None

    async def run(self) -> None:
        if not await self.preflight():
            return
        try:
            await self.networks()
            await self.stable_track()
            await self.router()
            await self.healthy()
        except (SwiftDeployError, OSError) as exc:
            await asyncio.shield(self.undo())
            error = str(exc) or type(exc).__name__
            await self.rollout.emit(DeployFailed(error=error, logs=failure_logs(exc)))
            return
        await self.complete()

    async def preflight(self) -> bool:
        """Runtime checks, then the infra policy; a deny creates nothing."""
        r = self.rollout
        if r.record.phase in BUSY_PHASES:
            raise Refused(f"a canary is in progress ({r.record.phase.value}); run `promote stable` or `rollback` first")
        refuse_while_baking(r.record)
        self.env = r.service_env()
        self.router_was_running = await r.driver.router_running()
        await r.driver.preflight(r.manifest, router_running=self.router_was_running)
        if not await infra_allows(r):
            return False
        digests = await r.driver.ensure_images(r.manifest, plans.images(r.manifest), r.emit)
        self.digest = digests.get(r.manifest.services.image)
        await r.save(phase=Phase.deploying, correlation_id=self.correlation_id)
        await r.emit(
            DeployStarted(project=r.manifest.project, version=r.manifest.services.version, runtime=r.driver.name)
        )
        return True

    async def networks(self) -> None:
        specs = plans.network_specs(self.rollout.manifest)
        self.created_networks = await self.rollout.driver.ensure_networks(specs)
        await self.step("networks", self.rollout.driver.describe_networks(specs))

    async def stable_track(self) -> None:
        """Start the stable instances. A first deploy routes to them while they boot (nothing
        serves yet); a redeploy waits for them first, so nginx never moves to an unready one."""
        r = self.rollout
        gen = plans.generation(f"{self.correlation_id}:deploy")
        specs = plans.track_specs(r.manifest, "stable", gen, service_env=self.env, digest=self.digest)
        self.started = await r.launch(specs)
        if self.router_was_running:
            await r.wait_healthy(self.started)
        self.track = plans.track_state(specs, self.started, 100, self.digest, plans.settings_of(specs[0], self.env))
        runs = f" ({self.digest})" if self.digest else ""
        await self.step("stable", f"{len(self.started)} instance(s) of {self.track.version}{runs} started")

    async def router(self) -> None:
        r = self.rollout
        self.url = await r.route(r.record.model_copy(update={"stable": self.track, "canary": None}))
        await self.step("router", f"nginx on {self.url}")

    async def healthy(self) -> None:
        """Every instance healthy, then nginx answering /healthz; only then does the old track go."""
        r = self.rollout
        await r.wait_healthy(self.started)
        await wait_http_ok(f"{self.url}/healthz", r.health_timeout, name="nginx")
        previous = r.record.stable
        if previous is not None:
            await r.stop([i.name for i in previous.instances if i.name not in {s.name for s in self.started}])
        await self.step("healthy", f"{len(self.started)} instance(s) healthy behind nginx")

    async def complete(self) -> None:
        r = self.rollout
        assert self.track is not None
        release = plans.release_of(self.track, r.record.manifest)
        await r.save(
            phase=Phase.stable, stable=self.track, canary=None, step=-1, router_url=self.url, last_reasons=[],
            releases=plans.remember(r.record.releases, release),
        )  # fmt: skip
        names = [i.name for i in self.started]
        track = self.track
        done = DeployCompleted(
            project=r.manifest.project, version=track.version, url=self.url, instances=names,
            image=track.image, digest=track.digest,
        )  # fmt: skip
        await r.emit(done)

    async def step(self, name: str, detail: str) -> None:
        await self.rollout.emit(DeployStep(step=name, detail=detail))

    async def undo(self) -> None:
        """Remove what this deploy created; the previous stable track (if any) keeps serving."""
        r = self.rollout
        await r.stop([i.name for i in self.started])
        previous = r.record.stable
        objects = await r.driver.list_objects()
        if previous is not None and self.router_was_running:
            await r.route(r.record)
        else:
            for obj in objects:
                if obj.role == "router":
                    await r.driver.remove(obj)
        for obj in objects:
            if obj.kind == "network" and obj.name in self.created_networks:
                await r.driver.remove(obj)
        await r.save(phase=Phase.stable if previous else Phase.failed)


@dataclass
class StartCanary:
    """`promote canary`: the canary track beside stable, then its first step's weight. With
    `replace`, a running canary is removed first and the new revision starts from the first step."""

    rollout: Rollout
    correlation_id: str
    replace: bool = False

    async def run(self) -> None:
        replacing = self.replace and self.rollout.record.phase in (Phase.progressing, Phase.canary_complete)
        if not replacing:
            self.check()
        specs, env = await self.prepare()  # refused (an identical canary) before anything is removed
        if replacing:
            await self.remove_running()
        try:
            instances = await self.start_track(specs, env)
        except SwiftDeployError as exc:
            await self.rollout.save(phase=Phase.stable, canary=None, step=-1)
            await self.rollout.emit(OperationFailed(command="promote-canary", error=_with_log(exc)))
            return
        await self.first_step(instances)

    def check(self) -> None:
        record = self.rollout.record
        refuse_while_baking(record)
        if record.phase in BUSY_PHASES:
            running = record.canary.version if record.canary else "?"
            hint = (
                "; `promote canary --replace` restarts the analysis with this revision, or `rollback` first"
                if record.phase in (Phase.progressing, Phase.canary_complete)
                else ""
            )
            raise Refused(f"a canary of {running} is already running ({record.phase.value}){hint}")
        if record.phase != Phase.stable or record.stable is None:
            raise Refused("nothing is deployed to run a canary beside; run `swiftdeploy deploy` first")

    async def remove_running(self) -> None:
        """All traffic back to stable, the old canary removed; recorded as a replacement."""
        r = self.rollout
        record = r.record
        assert record.canary is not None
        new_version = r.manifest.canary.version or r.manifest.services.version
        await r.route(record.model_copy(update={"canary": None}))
        await r.stop([i.name for i in record.canary.instances])
        await r.save(phase=Phase.stable, canary=None, step=-1, pause=None, consecutive_failures=0, last_reasons=[])
        await r.emit(CanaryReplaced(previous_version=record.canary.version, version=new_version, step=record.step))

    async def prepare(self) -> tuple[list[InstanceSpec], ServiceEnv]:
        """The canary's env and image (pulled), refused when it would run exactly what stable runs."""
        r = self.rollout
        env = r.service_env(canary=True)
        image = r.manifest.canary_image
        digest = (await r.driver.ensure_images(r.manifest, [image], r.emit)).get(image)
        gen = plans.generation(f"{self.correlation_id}:canary")
        specs = plans.track_specs(r.manifest, "canary", gen, service_env=env, digest=digest)
        stable = r.record.stable
        if stable is not None and stable.settings == plans.settings_of(specs[0], env):
            raise Refused(
                f"the canary is identical to stable ({digest or image}, version {stable.version}, same env and "
                "command); change canary.image, canary.version, canary.env or canary.command"
            )
        return specs, env

    async def start_track(self, specs: list[InstanceSpec], env: ServiceEnv) -> list[Instance]:
        r = self.rollout
        await r.save(
            phase=Phase.canary_starting, correlation_id=self.correlation_id, consecutive_failures=0, last_reasons=[],
            last_outcome=None, inconclusive_checks=0,
        )  # fmt: skip
        instances = await r.start(specs)
        digest = specs[0].digest
        await r.save(canary=plans.track_state(specs, instances, 0, digest, plans.settings_of(specs[0], env)))
        await r.emit(
            CanaryStarted(
                version=specs[0].version, image=specs[0].image, weight=r.manifest.canary.weight_at(0), digest=digest
            )
        )
        return instances

    async def first_step(self, instances: list[Instance]) -> None:
        r = self.rollout
        await r.save(phase=Phase.progressing)
        await phases.shift(r, 0)
        await r.emit(ModeChanged(mode="canary", previous="stable", version=instances[0].version))


@dataclass
class ResumeCanary:
    """`promote canary --continue`: release the pause the canary waits at."""

    rollout: Rollout

    async def run(self) -> None:
        r = self.rollout
        pause = r.record.pause
        if r.record.phase != Phase.progressing or pause is None or pause.released:
            where = f"at step {r.record.step}" if r.record.phase == Phase.progressing else r.record.phase.value
            raise Refused(f"the canary is not paused ({where}); nothing to continue")
        await r.save(pause=pause.model_copy(update={"released": True}))
        await r.emit(CanaryResumed(step=pause.step))


@dataclass
class PromoteStable:
    """`promote stable`: the canary gate; on allow the canary's version becomes stable at 100%."""

    rollout: Rollout

    async def run(self) -> None:
        r = self.rollout
        if r.record.phase not in (Phase.progressing, Phase.canary_complete) or r.record.canary is None:
            raise Refused("no canary is running to promote; run `promote canary` first")
        if not await self.gate():
            return
        await r.save(phase=Phase.promoting)
        await phases.settle(r)

    async def gate(self) -> bool:
        r = self.rollout
        snapshot = await r.store.snapshot(r.record.project, "canary")
        data = plans.canary_input(snapshot, r.record.canary) or plans.promotion_input(snapshot)
        decision = await r.gate.decide("canary", data) or silent("canary")
        if not decision.allow:
            await r.emit(PromotionBlocked(reasons=decision.reasons, decision_id=decision.decision_id))
            return False
        held = await gates.hold(r, "promotion")
        if held is not None:
            await r.emit(PromotionBlocked(reasons=[held], decision_id=decision.decision_id))
        return held is None


@dataclass
class Rollback:
    """`rollback`: all traffic back to stable and the canary removed, at any step."""

    rollout: Rollout
    reason: str

    async def run(self) -> None:
        r = self.rollout
        if r.record.phase is Phase.baking and r.record.bake is not None:  # back to the version it replaced
            await r.save(phase=Phase.reverting, reverting_to=r.record.bake.previous, last_reasons=[self.reason])
            await phases.settle(r)
            return
        if r.record.phase not in CANARY_PHASES | {Phase.rolling_back}:
            raise Refused("no canary is running to roll back")
        await r.save(phase=Phase.rolling_back, consecutive_failures=0, last_reasons=[self.reason])
        await phases.settle(r)


@dataclass
class RollbackTo:
    """`rollback --to VERSION`: start an earlier recorded release as the stable track (its image
    by digest, its settings), through the infra gate as a deploy is; refused before any effect
    when the version is not recorded."""

    rollout: Rollout
    version: str
    reason: str
    correlation_id: str

    async def run(self) -> None:
        r = self.rollout
        record = r.record
        if record.phase not in (Phase.stable, Phase.baking) or record.stable is None:
            raise Refused(f"rollback --to needs a stable track at rest (the rollout is {record.phase.value})")
        target = plans.find_release(record.releases, self.version)
        if target is None:
            known = ", ".join(dict.fromkeys(x.version for x in record.releases)) or "none"
            raise Refused(f"version {self.version} is not recorded for {record.project}; known versions: {known}")
        if (target.version, target.settings) == (record.stable.version, record.stable.settings):
            raise Refused(f"version {self.version} already serves")
        if not await infra_allows(r):
            return
        await r.save(
            phase=Phase.reverting, reverting_to=target, correlation_id=self.correlation_id,
            last_reasons=[self.reason], automatic=False, consecutive_failures=0,
        )  # fmt: skip
        await phases.settle(r)


def refuse_while_baking(record: RolloutState) -> None:
    """A new deploy or canary waits for the bake (or a revert) to end."""
    if record.phase is Phase.reverting:
        raise Refused("an earlier version is being started again (reverting); try again when it serves")
    if record.phase is Phase.baking and record.bake is not None:
        bake = record.bake
        raise Refused(
            f"{bake.version} is baking until {bake.until:%H:%M:%S} UTC (canary.bake); wait for the bake to end, "
            f"or `rollback` to {bake.previous.version}"
        )


async def infra_allows(r: Rollout) -> bool:
    """The infra policy on this host's figures (the collector's own measure); a deny is
    `deploy.blocked` and nothing is created."""
    stats = host_stats(await DATA_ROOTS.for_runtime(r.driver.name, Path(r.record.root)))
    decision = await r.gate.decide("infra", stats.model_dump(include=INFRA_FIELDS)) or silent("infra")
    if not decision.allow:
        await r.emit(DeployBlocked(reasons=decision.reasons, decision_id=decision.decision_id))
    return decision.allow


@dataclass
class Teardown:
    """`teardown`: every labelled container, network, volume or process goes; files stay."""

    rollout: Rollout

    async def run(self) -> None:
        removed = await self.rollout.driver.teardown()
        await self.rollout.store.delete(self.rollout.record.project)
        await self.rollout.emit(TeardownCompleted(removed=removed))


@dataclass
class Chaos:
    """`chaos`: post the injection to every canary instance and record it."""

    rollout: Rollout
    request: ChaosRequested

    async def run(self) -> None:
        canary = self.rollout.record.canary
        if canary is None or not canary.instances:
            raise Refused("no canary is running; chaos is injected into the canary track only")
        if self.request.at == "router":
            return await self.at_router(canary)
        body = {k: v for k, v in self.request.model_dump(include={"mode", "rate", "duration"}).items() if v is not None}
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=CHAOS_TIMEOUT)) as session:
            for instance in canary.instances:
                async with session.post(f"{instance.url}/chaos", json=body) as response:
                    if response.status >= 400:
                        raise Refused(f"{instance.name} refused the chaos request: HTTP {response.status}")
        req = self.request
        await self.rollout.emit(
            ChaosInjected(
                mode=req.mode, rate=req.rate, duration=req.duration, instances=[i.name for i in canary.instances]
            )
        )

    async def at_router(self, canary: TrackState) -> None:
        """nginx answers 500 to `rate` of the canary's requests itself (or stops: recover)."""
        req = self.request
        if req.mode == "slow":
            raise Refused("chaos at the router injects errors only (error --rate R, or recover)")
        percent = round((req.rate if req.rate is not None else 1.0) * 100, 2) if req.mode == "error" else 0.0
        record = await self.rollout.save(canary=canary.model_copy(update={"router_error_percent": percent}))
        await self.rollout.route(record)
        await self.rollout.emit(
            ChaosInjected(mode=req.mode, rate=req.rate, at="router", instances=[i.name for i in canary.instances])
        )


def _with_log(exc: BaseException) -> str:
    logs = failure_logs(exc)
    return f"{exc} (last log line: {logs[-1]})" if logs else str(exc)
