"""The canary state machine: `advance()` is one idempotent tick, dispatched on the stored phase.

Every handler reads the record, acts on the runtime so it matches, and writes the record back, so
a tick can be repeated and an orchestrator restarted at any point. Weight changes apply the router
first and save second: after a crash in between, `recover()` points nginx back at the record.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from services.orchestrator import gates, healing, plans
from services.orchestrator.drivers.base import InstanceSpec
from services.orchestrator.rollout import Decision, Rollout
from swiftdeploy_core.bus.events import (
    BakeAnalysis,
    BakeCompleted,
    BakeFailed,
    BakeStarted,
    CanaryAnalysis,
    CanaryCompleted,
    CanaryPaused,
    CanaryWeightChanged,
    DeployFailed,
    ModeChanged,
    OperationFailed,
    PromotionCompleted,
    RollbackCompleted,
    RouterDriftRepaired,
)
from swiftdeploy_core.errors import SwiftDeployError
from swiftdeploy_core.project import service_env as envs
from swiftdeploy_core.project.manifest import Manifest, NoData, validate_manifest
from swiftdeploy_core.project.router import served_split
from swiftdeploy_core.project.state import Bake, Pause, Phase, Release

Handler = Callable[[Rollout], Awaitable[None]]

ANALYSED = frozenset({Phase.progressing, Phase.canary_complete, Phase.baking})
# Phases whose router is read back each tick and put back when it drifted from the record.
WATCHED = ANALYSED | {Phase.stable}
# Phases a command passes through; finding one at start-up means a command was interrupted.
TRANSITIONAL = frozenset({Phase.deploying, Phase.canary_starting, Phase.promoting, Phase.rolling_back, Phase.reverting})


async def advance(rollout: Rollout) -> Phase:
    """One tick: nginx checked against the record (watched phases), then the handler of the
    current phase (none for resting phases)."""
    if rollout.record.phase in WATCHED:
        await repair_drift(rollout)
    handler = HANDLERS.get(rollout.record.phase)
    if handler is not None:
        await handler(rollout)
    return rollout.record.phase


async def repair_drift(rollout: Rollout) -> None:
    """Read back what nginx serves; when it is not what the record says, route the record again
    and say what was found (a hand edit, an old file after a restart)."""
    record = rollout.record
    live = await rollout.driver.router_config()
    if record.stable is None or live is None:
        return  # no router to compare: recover() and the next command start one
    stable = record.stable.instances
    canary = record.canary.instances if record.canary else []
    weight = record.canary.weight if record.canary else 0
    found = served_split(live)
    chaos = record.canary.router_error_percent if record.canary else 0.0
    expected = served_split(rollout.driver.render_router(rollout.manifest, stable, canary, weight, chaos))
    if found == expected:
        return
    await rollout.route()
    await rollout.emit(RouterDriftRepaired(found=found, expected=expected))


async def settle(rollout: Rollout, limit: int = 5) -> Phase:
    """Tick until the rollout rests (a rollback or promotion runs to its end)."""
    phase = rollout.record.phase
    for _ in range(limit):
        if phase not in TRANSITIONAL:
            break
        phase = await advance(rollout)
    return phase


async def recover(rollout: Rollout) -> Phase:
    """After a restart: nginx back to what the record says, strays removed, then finish the phase."""
    record = rollout.record
    if record.stable is not None and record.phase != Phase.deploying:
        url = await rollout.route()
        if record.router_url != url:
            await rollout.save(router_url=url)
    for stray in plans.orphans(record, await rollout.driver.list_objects()):
        await rollout.driver.remove(stray)
    return await settle(rollout)


# --- analysis ----------------------------------------------------------------------------------


async def analyse(rollout: Rollout) -> Decision | None:
    """Ask the gatekeeper about the canary's window; None when there is nothing to decide on yet.

    An interval with no usable figures is a failed check under `canary.no_data: fail` (the
    default): a canary nobody can judge is not let through by silence."""
    record, manifest = rollout.record, rollout.manifest
    snapshot = await rollout.store.snapshot(record.project, "canary")
    data = plans.canary_input(snapshot, record.canary)
    crashing = healing.crash_loop(rollout)  # a canary in a crash loop fails, whatever its figures
    if crashing is not None:
        decision: Decision | None = Decision(allow=False, reasons=[crashing])
    elif data is None:
        if manifest.canary.no_data is NoData.hold or _warming_up(rollout):
            return None
        decision = Decision(allow=False, reasons=[no_traffic(manifest.canary.interval)])
    else:
        decision = await rollout.gate.decide("canary", data)
    if decision is None:
        return None
    await record_analysis(rollout, decision, snapshot.at if snapshot else None)
    failures = rollout.record.consecutive_failures
    if failures >= manifest.canary.failure_limit:
        await rollout.save(phase=Phase.rolling_back, automatic=True)
    return decision


async def record_analysis(rollout: Rollout, decision: Decision, analysed_at: datetime | None) -> None:
    """Save and emit one analysis: an allow clears the failures, a deny adds one, and an
    inconclusive answer (too few samples) adds neither: it is counted apart and the step holds."""
    record = rollout.record
    failures = (
        record.consecutive_failures
        if decision.inconclusive
        else (0 if decision.allow else record.consecutive_failures + 1)
    )
    inconclusive = record.inconclusive_checks + (1 if decision.inconclusive else 0)
    await rollout.save(
        consecutive_failures=failures, last_reasons=decision.reasons, analysed_at=analysed_at,
        last_outcome=decision.outcome, inconclusive_checks=inconclusive,
    )  # fmt: skip
    await rollout.emit(
        CanaryAnalysis(
            step=record.step,
            weight=record.canary.weight if record.canary else 0,
            allow=decision.allow,
            reasons=decision.reasons,
            decision_id=decision.decision_id,
            consecutive_failures=failures,
            inconclusive=decision.inconclusive,
            inconclusive_checks=inconclusive,
        )
    )


def _warming_up(rollout: Rollout) -> bool:
    """A canary that just started has no figures yet through no fault of its own: the collector
    needs to find it and scrape it twice before a rate exists, and router figures come once it
    has watched the new version for a whole window. Until then no data is no failure."""
    record, manifest = rollout.record, rollout.manifest
    if record.step != 0 or record.stepped_at is None:
        return False
    return datetime.now(UTC) - record.stepped_at < timedelta(seconds=warm_up(manifest))


def warm_up(manifest: Manifest) -> float:
    """Seconds before the collector can have figures for a track that just began to serve."""
    grace = manifest.canary.interval + 2 * manifest.collector.interval
    if manifest.services.metrics == "router":
        grace += manifest.collector.window
    return grace


def no_traffic(interval: float) -> str:
    return f"no traffic reached the canary in the last {interval:g} s"


async def on_progressing(rollout: Rollout) -> None:
    """Past its deadline: roll back. Else analyse; on allow, leave a pause that is over, or take
    the next step (a weight, or a pause), or complete after the last."""
    if await _missed_deadline(rollout):
        return
    decision = await analyse(rollout)
    if decision is None or not decision.allow:
        return
    record, canary = rollout.record, rollout.manifest.canary
    assert record.canary is not None
    if record.pause is not None and not pause_over(record.pause):
        return
    if canary.is_last(record.step):
        await rollout.save(phase=Phase.canary_complete, pause=None)
        await rollout.emit(CanaryCompleted(version=record.canary.version, weight=record.canary.weight))
        return
    if await gates.hold(rollout, "step", record.step + 1) is not None:
        return  # an external gate holds this step: asked again next interval
    await step_to(rollout, record.step + 1)


def pause_over(pause: Pause) -> bool:
    return pause.released or (pause.until is not None and datetime.now(UTC) >= pause.until)


async def _missed_deadline(rollout: Rollout) -> bool:
    """`canary.progress_deadline`: a step (not a pause) that takes longer rolls the canary back."""
    record, deadline = rollout.record, rollout.manifest.canary.progress_deadline
    if deadline is None or record.pause is not None or record.stepped_at is None:
        return False
    if datetime.now(UTC) - record.stepped_at < timedelta(seconds=deadline):
        return False
    reason = f"the canary did not advance within its progress deadline of {deadline:g} s (step {record.step})"
    await rollout.save(phase=Phase.rolling_back, automatic=True, last_reasons=[reason])
    return True


async def step_to(rollout: Rollout, step: int) -> None:
    """Take `step`: shift to its weight, or start waiting at it when it is a pause."""
    canary = rollout.manifest.canary
    pause = canary.pause_at(step)
    if pause is None:
        await shift(rollout, step)
        return
    now = datetime.now(UTC)
    until = now + timedelta(seconds=pause.seconds) if pause.seconds is not None else None
    await rollout.save(step=step, stepped_at=now, pause=Pause(step=step, until=until))
    await rollout.emit(CanaryPaused(step=step, weight=canary.weight_at(step), until=until))


async def shift(rollout: Rollout, step: int) -> None:
    """Move the canary to `step`'s weight: router first, then the record, then the event."""
    record = rollout.record
    assert record.canary is not None
    previous = record.canary.weight
    weight = rollout.manifest.canary.weight_at(step)
    moved = record.model_copy(update={"step": step, "canary": record.canary.model_copy(update={"weight": weight})})
    await rollout.route(moved)
    await rollout.save(step=step, canary=moved.canary, stepped_at=datetime.now(UTC), pause=None)
    await rollout.emit(CanaryWeightChanged(step=step, weight=weight, previous=previous))


async def on_canary_complete(rollout: Rollout) -> None:
    await analyse(rollout)  # a complete canary is still watched until it is promoted


# --- rollback and promotion --------------------------------------------------------------------


async def on_rolling_back(rollout: Rollout) -> None:
    """All traffic to stable, then remove the canary."""
    record = rollout.record
    automatic = record.automatic or record.consecutive_failures >= rollout.manifest.canary.failure_limit
    served = record.mode
    if record.canary is not None:
        back = record.model_copy(update={"canary": record.canary.model_copy(update={"weight": 0, "instances": []})})
        await rollout.route(back)
        await rollout.stop([i.name for i in record.canary.instances])
    stable_version = record.stable.version if record.stable else ""
    await rollout.save(phase=Phase.stable, canary=None, step=-1, consecutive_failures=0, pause=None, automatic=False)
    await rollout.emit(RollbackCompleted(version=stable_version, reasons=record.last_reasons, automatic=automatic))
    if served == "canary":
        await rollout.emit(ModeChanged(mode="stable", previous="canary", version=stable_version))


async def on_promoting(rollout: Rollout) -> None:
    """Start the canary's version as the new stable track, move traffic, remove the old tracks."""
    record, manifest = rollout.record, rollout.manifest
    gen = plans.generation(f"{record.correlation_id}:promote")
    digest = record.canary.digest if record.canary else None
    try:
        env = rollout.service_env(canary=True)
        specs = plans.track_specs(manifest, "stable", gen, promoted=True, service_env=env, digest=digest)
        instances = await rollout.start(specs)
    except SwiftDeployError as exc:
        await rollout.save(phase=Phase.canary_complete if record.step >= 0 else Phase.stable)
        await rollout.emit(OperationFailed(command="promote-stable", error=str(exc)))
        return
    new_stable = plans.track_state(specs, instances, 100, digest, plans.settings_of(specs[0], env))
    await rollout.route(record.model_copy(update={"stable": new_stable, "canary": None}))
    old = [i.name for i in record.instances()]
    await rollout.stop(old)
    previous = record.stable.version if record.stable else ""
    bake = bake_after(rollout, new_stable.version)
    await rollout.save(
        phase=Phase.baking if bake else Phase.stable, stable=new_stable, canary=None, step=-1, consecutive_failures=0,
        pause=None, bake=bake, releases=plans.remember(record.releases, plans.release_of(new_stable, record.manifest, promoted=True)),
    )  # fmt: skip
    await rollout.emit(PromotionCompleted(version=new_stable.version, previous_version=previous))
    await rollout.emit(ModeChanged(mode="stable", previous="canary", version=new_stable.version))
    if bake is not None:
        await rollout.emit(BakeStarted(version=bake.version, previous_version=bake.previous.version, until=bake.until))


# --- the bake after a promotion, and going back to an earlier release ---------------------------


def bake_after(rollout: Rollout, version: str) -> Bake | None:
    """`canary.bake`: the watch a promotion starts, keeping the stable it replaces to go back to."""
    seconds, previous = rollout.manifest.canary.bake, plans.release_serving(rollout.record)
    if not seconds or previous is None:
        return None
    now = datetime.now(UTC)
    return Bake(version=version, since=now, until=now + timedelta(seconds=seconds), previous=previous)


async def on_baking(rollout: Rollout) -> None:
    """Past the bake's end: done, the previous version's record dropped. Else judge the stable
    track's window by the canary policy; failure_limit denials go back to the previous version."""
    record = rollout.record
    bake = record.bake
    if bake is None or record.stable is None:
        await rollout.save(phase=Phase.stable, bake=None)
        return
    if datetime.now(UTC) >= bake.until:
        await rollout.save(phase=Phase.stable, bake=None, consecutive_failures=0)
        await rollout.emit(BakeCompleted(version=bake.version, previous_version=bake.previous.version))
        return
    decision = await judge_stable(rollout, bake)
    if decision is None:
        return
    failures = 0 if decision.allow else record.consecutive_failures + 1
    await rollout.save(consecutive_failures=failures, last_reasons=decision.reasons)
    await rollout.emit(
        BakeAnalysis(
            version=bake.version, allow=decision.allow, reasons=decision.reasons,
            decision_id=decision.decision_id, consecutive_failures=failures,
        )
    )  # fmt: skip
    if failures >= rollout.manifest.canary.failure_limit:
        await rollout.save(phase=Phase.reverting, reverting_to=bake.previous, automatic=True)
        await rollout.emit(
            BakeFailed(version=bake.version, previous_version=bake.previous.version, reasons=decision.reasons)
        )


async def judge_stable(rollout: Rollout, bake: Bake) -> Decision | None:
    """The canary policy on the stable track's latest snapshot, as a canary's is judged (no data
    after the warm-up is a failed check under `no_data: fail`); None: nothing to decide on yet."""
    record, canary = rollout.record, rollout.manifest.canary
    snapshot = await rollout.store.snapshot(record.project, "stable")
    data = plans.canary_input(snapshot, record.stable)
    if data is not None:
        decided = await rollout.gate.decide("canary", data)
        if decided is not None:
            await rollout.save(analysed_at=snapshot and snapshot.at)
        return decided
    warming = datetime.now(UTC) - bake.since < timedelta(seconds=warm_up(rollout.manifest))
    if canary.no_data is NoData.hold or warming:
        return None
    return Decision(
        allow=False, reasons=[f"no traffic reached the baking stable track in the last {canary.interval:g} s"]
    )


async def on_reverting(rollout: Rollout) -> None:
    """Start the recorded release (its image by digest, its settings), move all traffic to it,
    remove what served before. If it cannot start, what serves keeps serving."""
    record = rollout.record
    target = record.reverting_to
    if target is None:
        await rollout.save(phase=Phase.stable, bake=None)
        return
    try:
        specs, settings = release_specs(rollout, target)
        instances = await rollout.start(specs)
    except SwiftDeployError as exc:
        await rollout.save(phase=Phase.stable, bake=None, reverting_to=None, automatic=False)
        await rollout.emit(OperationFailed(command="rollback", error=f"{target.version} did not start: {exc}"))
        return
    stable = plans.track_state(specs, instances, 100, target.digest, settings)
    await rollout.route(record.model_copy(update={"stable": stable, "canary": None}))
    await rollout.stop([i.name for i in record.instances()])
    replaced = record.stable.version if record.stable else None
    await rollout.save(
        phase=Phase.stable, stable=stable, canary=None, step=-1, pause=None, consecutive_failures=0, bake=None,
        reverting_to=None, automatic=False, releases=plans.remember(record.releases, target),
    )  # fmt: skip
    await rollout.emit(
        RollbackCompleted(
            version=stable.version, reasons=record.last_reasons, automatic=record.automatic, replaced=replaced,
            digest=stable.digest,
        )
    )  # fmt: skip


def release_specs(rollout: Rollout, release: Release) -> tuple[list[InstanceSpec], str]:
    """The stable instances of an earlier release, from the manifest it was started from, and
    their settings' fingerprint."""
    record = rollout.record
    manifest = validate_manifest(release.manifest or record.manifest)
    env = envs.resolve(manifest, Path(record.root), rollout.environ, canary=release.promoted)
    gen = plans.generation(f"{record.correlation_id}:revert:{release.version}:{release.at.isoformat()}")
    specs = plans.track_specs(
        manifest, "stable", gen, promoted=release.promoted, service_env=env, digest=release.digest
    )
    return specs, plans.settings_of(specs[0], env)


# --- interrupted commands ----------------------------------------------------------------------


async def on_canary_starting(rollout: Rollout) -> None:
    """A canary start was interrupted: roll it back (nothing was analysed)."""
    await rollout.save(phase=Phase.rolling_back, last_reasons=["the canary start was interrupted"])


async def on_deploying(rollout: Rollout) -> None:
    """A deploy was interrupted: keep the previous stable track if there was one, else undo all."""
    record = rollout.record
    if record.stable is not None:
        await rollout.route()
        await rollout.save(phase=Phase.stable)
    else:
        await rollout.driver.teardown()
        await rollout.save(phase=Phase.failed)
    await rollout.emit(DeployFailed(error="the deploy was interrupted (the orchestrator restarted) and undone"))


HANDLERS: dict[Phase, Handler] = {
    Phase.progressing: on_progressing,
    Phase.canary_complete: on_canary_complete,
    Phase.rolling_back: on_rolling_back,
    Phase.promoting: on_promoting,
    Phase.baking: on_baking,
    Phase.reverting: on_reverting,
    Phase.canary_starting: on_canary_starting,
    Phase.deploying: on_deploying,
}
