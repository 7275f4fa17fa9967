"""The canary state machine: `advance()` is one idempotent tick, dispatched on the stored phase.

Every handler reads the record, acts on the runtime so it matches, and writes the record back, so
a tick can be repeated and an orchestrator restarted at any point. Weight changes apply the router
first and save second: after a crash in between, `recover()` points nginx back at the record.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

from services.orchestrator import gates, healing, plans
from services.orchestrator.rollout import Decision, Rollout
from swiftdeploy_core.bus.events import (
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
from swiftdeploy_core.project.manifest import NoData
from swiftdeploy_core.project.router import served_split
from swiftdeploy_core.project.state import Pause, Phase

Handler = Callable[[Rollout], Awaitable[None]]

ANALYSED = frozenset({Phase.progressing, Phase.canary_complete})
# Phases whose router is read back each tick and put back when it drifted from the record.
WATCHED = ANALYSED | {Phase.stable}
# Phases a command passes through; finding one at start-up means a command was interrupted.
TRANSITIONAL = frozenset({Phase.deploying, Phase.canary_starting, Phase.promoting, Phase.rolling_back})


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
    failures = 0 if decision.allow else record.consecutive_failures + 1
    await rollout.save(
        consecutive_failures=failures, last_reasons=decision.reasons, analysed_at=snapshot and snapshot.at
    )
    await rollout.emit(
        CanaryAnalysis(
            step=record.step,
            weight=record.canary.weight if record.canary else 0,
            allow=decision.allow,
            reasons=decision.reasons,
            decision_id=decision.decision_id,
            consecutive_failures=failures,
        )
    )
    if failures >= manifest.canary.failure_limit:
        await rollout.save(phase=Phase.rolling_back, automatic=True)
    return decision


def _warming_up(rollout: Rollout) -> bool:
    """A canary that just started has no figures yet through no fault of its own: the collector
    needs to find it and scrape it twice before a rate exists, and router figures come once it
    has watched the new version for a whole window. Until then no data is no failure."""
    record, manifest = rollout.record, rollout.manifest
    if record.step != 0 or record.stepped_at is None:
        return False
    grace = manifest.canary.interval + 2 * manifest.collector.interval
    if manifest.services.metrics == "router":
        grace += manifest.collector.window
    return datetime.now(UTC) - record.stepped_at < timedelta(seconds=grace)


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
    await rollout.save(phase=Phase.stable, stable=new_stable, canary=None, step=-1, consecutive_failures=0, pause=None)
    await rollout.emit(PromotionCompleted(version=new_stable.version, previous_version=previous))
    await rollout.emit(ModeChanged(mode="stable", previous="canary", version=new_stable.version))


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
    Phase.canary_starting: on_canary_starting,
    Phase.deploying: on_deploying,
}
