"""The canary state machine, one tick at a time, on an in-memory runtime and a real Redis.

Flagger-style: each test stores a rollout record (and makes the fake runtime match it), ticks
`advance()` or runs one operation, and checks the phase, the router's split and the events. The
gatekeeper is a scripted gate (the boundary); `FakeDriver` stands in for the runtime, so a tick
takes milliseconds. The same flows on real processes and nginx are in `test_drivers_process.py`
(the rollout on the process driver) and, through the real services, in `test_orchestrator_*.py`.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import redis.asyncio as aioredis

from services.orchestrator import operations, phases, plans
from services.orchestrator.rollout import RecordStore
from swiftdeploy_core.errors import RuntimeDriverError
from swiftdeploy_core.project.manifest import load_manifest
from swiftdeploy_core.project.state import Phase, RolloutState
from tests.orchestration import write_manifest, write_snapshot
from tests.orchestrator.fakes import FakeDriver, FakeHarness, Split, harness

PROJECT = "sdo-phase"
STEPS = [10, 25, 50]


@pytest.fixture
async def rollout(tmp_path: Path, redis_url: str):
    loaded = load_manifest(write_manifest(tmp_path, PROJECT, canary={"steps": STEPS}))
    redis = aioredis.Redis.from_url(redis_url)
    yield harness(loaded, FakeDriver(PROJECT, tmp_path / "state"), RecordStore(redis), FakeHarness)
    await redis.aclose()


async def given(r: FakeHarness, phase: Phase, step: int = 0, *, canary: bool = True) -> None:
    """The stored record in `phase` (the canary at `step`'s weight), the runtime matching it."""
    stable_specs = plans.track_specs(r.manifest, "stable", "s1")
    stable = plans.track_state(stable_specs, [await r.driver.start_instance(s) for s in stable_specs], 100)
    track = None
    if canary:
        specs = plans.track_specs(r.manifest, "canary", "c1")
        track = plans.track_state(specs, [await r.driver.start_instance(s) for s in specs], STEPS[step])
    record = r.record.model_copy(
        update={
            "phase": phase, "stable": stable, "canary": track, "step": step if canary else -1,
            "correlation_id": "cmd-canary" if canary else "cmd-deploy",
        }
    )  # fmt: skip
    url = await r.route(record)
    r.record = await r.store.save(record.model_copy(update={"router_url": url}))
    r.driver.calls.clear()


def names(r: FakeHarness, track: str) -> tuple[str, ...]:
    found = r.record.stable if track == "stable" else r.record.canary
    return tuple(i.name for i in found.instances) if found else ()


async def stored(r: FakeHarness) -> RolloutState:
    found = await r.store.load(PROJECT)
    assert found is not None
    return found


# --- analysis and steps ------------------------------------------------------------------------


async def test_each_allowed_tick_moves_one_step_then_the_canary_completes(rollout):
    await given(rollout, Phase.progressing, step=0)
    await write_snapshot(rollout.store.redis, PROJECT, "2.0.0")
    weights = []
    for _ in range(3):
        assert await phases.advance(rollout) in (Phase.progressing, Phase.canary_complete)
        weights.append(rollout.record.canary.weight)
    assert weights == [25, 50, 50] and rollout.record.phase == Phase.canary_complete
    conf = await rollout.driver.router_config()
    assert "50%   app_canary" in conf
    assert rollout.types()[-1] == "canary.completed"
    assert rollout.driver.split == Split(names(rollout, "stable"), names(rollout, "canary"), 50, conf="")


async def test_one_allowed_tick_moves_the_router_then_the_record_then_says_so(rollout):
    await given(rollout, Phase.progressing, step=0)
    await write_snapshot(rollout.store.redis, PROJECT, "2.0.0")
    assert await phases.advance(rollout) == Phase.progressing
    assert rollout.driver.calls == ["router stable=1 canary=1 weight=25"]
    assert ((await stored(rollout)).step, (await stored(rollout)).canary.weight) == (1, 25)
    analysis, moved = rollout.events
    assert (analysis.type, analysis.allow, analysis.weight) == ("canary.analysis", True, 10)
    assert (moved.type, moved.step, moved.previous, moved.weight) == ("canary.weight_changed", 1, 10, 25)


async def test_a_tick_without_fresh_metrics_holds_the_step_and_asks_nobody(rollout):
    await given(rollout, Phase.progressing, step=0)
    await phases.advance(rollout)
    canary_questions = [q for q in rollout.gate.asked if q[0] == "canary"]
    assert (rollout.record.phase, rollout.record.step, canary_questions) == (Phase.progressing, 0, [])
    assert rollout.driver.calls == [] and rollout.events == []


async def test_a_snapshot_of_another_version_is_not_fresh_metrics(rollout):
    await given(rollout, Phase.progressing, step=0)
    await write_snapshot(rollout.store.redis, PROJECT, "1.9.0")
    await phases.advance(rollout)
    assert (rollout.record.step, rollout.gate.asked) == (0, [])


async def test_failure_limit_consecutive_denials_roll_back_automatically(rollout):
    await given(rollout, Phase.progressing, step=0)
    rollout.gate.answers = [False, True, False, False]
    await write_snapshot(rollout.store.redis, PROJECT, "2.0.0", error_rate=0.5)
    await phases.advance(rollout)  # deny 1
    await phases.advance(rollout)  # allow: the run of failures starts again, step 1
    await phases.advance(rollout)  # deny 1
    assert (rollout.record.consecutive_failures, rollout.record.step) == (1, 1)
    assert await phases.advance(rollout) == Phase.rolling_back  # deny 2 = failure_limit
    assert await phases.settle(rollout) == Phase.stable
    assert rollout.record.canary is None and rollout.record.stable.version == "1.0.0"
    done = rollout.events[-2]
    assert (done.type, done.automatic, done.reasons) == ("rollback.completed", True, ["error_rate 50.0% exceeds 1.0%"])
    assert rollout.types()[-1] == "mode.changed"
    assert [o.track for o in await rollout.driver.list_objects() if o.role == "instance"] == ["stable"]
    # Every request, `X-Canary: always` included, goes to stable (on real nginx: test_drivers_process).
    assert rollout.driver.split == Split(names(rollout, "stable"), (), 0, conf="")
    assert "app_canary" not in await rollout.driver.router_config()


async def test_a_complete_canary_is_still_watched_and_rolled_back_at_the_failure_limit(rollout):
    await given(rollout, Phase.canary_complete, step=2)
    rollout.gate.answers = [False, False]
    await write_snapshot(rollout.store.redis, PROJECT, "2.0.0", error_rate=0.5)
    assert await phases.advance(rollout) == Phase.canary_complete
    assert await phases.advance(rollout) == Phase.rolling_back
    assert (await stored(rollout)).phase == Phase.rolling_back
    assert rollout.driver.calls == []  # the next tick rolls back


async def test_a_router_that_refuses_a_shift_leaves_the_record_on_its_step(rollout):
    await given(rollout, Phase.progressing, step=0)
    await write_snapshot(rollout.store.redis, PROJECT, "2.0.0")
    rollout.driver.fail_router = "nginx refused the rendered config: unexpected end of file"
    with pytest.raises(RuntimeDriverError, match="nginx refused the rendered config"):
        await phases.advance(rollout)
    saved = await stored(rollout)
    assert (saved.phase, saved.step, saved.canary.weight) == (Phase.progressing, 0, 10)
    assert "canary.weight_changed" not in rollout.types()


# --- commands ------------------------------------------------------------------------------------


async def test_promote_canary_starts_the_canary_beside_stable_at_the_first_weight(rollout):
    await given(rollout, Phase.stable, canary=False)
    await operations.StartCanary(rollout, "cmd-canary").run()
    assert (rollout.record.phase, rollout.record.step, rollout.record.canary.weight) == (Phase.progressing, 0, 10)
    assert rollout.driver.split == Split(names(rollout, "stable"), names(rollout, "canary"), 10, conf="")
    assert rollout.driver.env_of(names(rollout, "canary")[0]) == {"MODE": "canary", "VERSION": "2.0.0"}
    assert rollout.types() == ["canary.started", "canary.weight_changed", "mode.changed"]


async def test_a_canary_that_never_gets_healthy_is_removed_and_stable_serves_on(rollout):
    await given(rollout, Phase.stable, canary=False)
    [spec] = plans.track_specs(rollout.manifest, "canary", plans.generation("cmd-canary:canary"))
    rollout.driver.unhealthy[spec.name] = f"{spec.name} exited with code 3 before it became healthy"
    rollout.driver.logs[spec.name] = ["boom: missing config"]
    await operations.StartCanary(rollout, "cmd-canary").run()
    assert (rollout.record.phase, rollout.record.canary) == (Phase.stable, None)
    [failed] = rollout.events
    assert failed.type == "operation.failed"
    assert (
        failed.error == f"{spec.name} exited with code 3 before it became healthy (last log line: boom: missing config)"
    )
    assert rollout.driver.running() == list(names(rollout, "stable"))
    assert rollout.driver.split == Split(names(rollout, "stable"), (), 0, conf="")


async def test_promotion_runs_the_canary_version_as_stable_and_removes_both_old_tracks(rollout):
    await given(rollout, Phase.progressing, step=0)
    await operations.PromoteStable(rollout).run()
    assert rollout.record.phase == Phase.stable and rollout.record.canary is None
    assert rollout.record.stable.version == "2.0.0"
    # nginx sends everything to the new stable, which runs 2.0.0 in stable mode
    # (the answer through real nginx: test_drivers_process, test_orchestrator_process).
    new = names(rollout, "stable")
    assert rollout.driver.split == Split(new, (), 0, conf="")
    assert rollout.driver.env_of(new[0]) == {"MODE": "stable", "VERSION": "2.0.0"}
    names_running = sorted(o.name for o in await rollout.driver.list_objects() if o.role == "instance")
    assert names_running == sorted(i.name for i in rollout.record.stable.instances)
    assert rollout.types()[-2:] == ["promotion.completed", "mode.changed"]


async def test_a_promotion_whose_new_stable_never_gets_healthy_keeps_the_canary_running(rollout):
    await given(rollout, Phase.canary_complete, step=2)
    before = rollout.record.model_dump(exclude={"updated_at", "phase"})
    [spec] = plans.track_specs(rollout.manifest, "stable", plans.generation("cmd-canary:promote"), promoted=True)
    rollout.driver.unhealthy[spec.name] = f"{spec.name}: /healthz did not answer 200 within 30s"
    await operations.PromoteStable(rollout).run()
    assert (await stored(rollout)).phase == Phase.canary_complete
    assert rollout.record.model_dump(exclude={"updated_at", "phase"}) == before
    assert rollout.types() == ["operation.failed"] and spec.name in rollout.events[0].error
    assert rollout.driver.running() == sorted(names(rollout, "stable") + names(rollout, "canary"))
    assert rollout.driver.calls == [f"start {spec.name}", f"stop {spec.name}"]  # the router never moved


async def test_a_denied_promotion_changes_nothing(rollout):
    await given(rollout, Phase.progressing, step=0)
    rollout.gate.answers = [False]
    before = rollout.record.model_dump(exclude={"updated_at"})
    await operations.PromoteStable(rollout).run()
    assert rollout.record.model_dump(exclude={"updated_at"}) == before
    assert rollout.types()[-1] == "promotion.blocked"
    assert rollout.driver.calls == []


async def test_a_manual_rollback_at_any_step_serves_stable_and_removes_the_canary(rollout):
    await given(rollout, Phase.progressing, step=1)
    canary = names(rollout, "canary")
    await operations.Rollback(rollout, "rolled back by hand").run()
    assert (rollout.record.phase, rollout.record.canary, rollout.record.step) == (Phase.stable, None, -1)
    done = rollout.events[0]
    assert (done.type, done.automatic, done.reasons) == ("rollback.completed", False, ["rolled back by hand"])
    assert rollout.types() == ["rollback.completed", "mode.changed"]
    # Traffic leaves the canary before the canary goes.
    assert rollout.driver.calls == ["router stable=1 canary=0 weight=0", *(f"stop {n}" for n in canary)]


async def test_a_denied_infra_decision_creates_nothing(rollout):
    rollout.gate.answers = [False]
    await operations.Deploy(rollout, "cmd-deploy").run()
    assert rollout.types() == ["deploy.blocked"]
    assert await rollout.driver.list_objects() == []


async def test_a_deploy_refused_by_the_runtime_asks_no_policy_and_creates_nothing(rollout):
    rollout.driver.refuse = "nginx.port 8080 on 127.0.0.1 is already in use"
    with pytest.raises(RuntimeDriverError, match="already in use"):
        await operations.Deploy(rollout, "cmd-deploy").run()
    assert (rollout.gate.asked, rollout.events, await rollout.driver.list_objects()) == ([], [], [])


# --- restarts --------------------------------------------------------------------------------------


async def test_a_crash_between_router_and_record_is_repaired_from_the_record(rollout):
    await given(rollout, Phase.progressing, step=0)
    moved = rollout.record.model_copy(update={"canary": rollout.record.canary.model_copy(update={"weight": 25})})
    await rollout.route(moved)  # nginx took 25% ... and the orchestrator died before saving
    assert "25%   app_canary" in await rollout.driver.router_config()
    await phases.recover(rollout)
    assert "10%   app_canary" in await rollout.driver.router_config()
    assert (rollout.record.step, rollout.record.canary.weight) == (0, 10)


async def test_recovery_removes_instances_the_record_does_not_know(rollout):
    await given(rollout, Phase.progressing, step=0)
    [stray] = plans.track_specs(rollout.manifest, "canary", "interrupted")
    await rollout.driver.start_instance(stray)
    await phases.recover(rollout)
    assert stray.name not in rollout.driver.running()
    assert rollout.driver.running() == sorted(names(rollout, "stable") + names(rollout, "canary"))


async def test_an_interrupted_canary_start_is_rolled_back_on_recovery(rollout):
    await given(rollout, Phase.canary_starting, step=0)
    assert await phases.recover(rollout) == Phase.stable
    assert rollout.record.canary is None and rollout.driver.running("canary") == []
    done = rollout.events[0]
    assert (done.type, done.reasons) == ("rollback.completed", ["the canary start was interrupted"])


async def test_an_interrupted_redeploy_keeps_the_previous_stable_track(rollout):
    await given(rollout, Phase.deploying, canary=False)
    assert await phases.advance(rollout) == Phase.stable
    assert (await stored(rollout)).phase == Phase.stable
    assert rollout.driver.split == Split(names(rollout, "stable"), (), 0, conf="")
    assert rollout.types() == ["deploy.failed"]


async def test_an_interrupted_first_deploy_is_undone_entirely(rollout):
    await given(rollout, Phase.deploying, canary=False)
    await rollout.save(stable=None)  # nothing was deployed before
    assert await phases.advance(rollout) == Phase.failed
    assert await rollout.driver.list_objects() == []
    assert rollout.events[0].error == "the deploy was interrupted (the orchestrator restarted) and undone"
