"""The canary state machine, one tick at a time, on real processes and a real Redis.

The gatekeeper is replaced by a scripted gate here (the boundary); the end-to-end tests use the
real one.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import redis.asyncio as aioredis

from services.orchestrator import operations, phases
from services.orchestrator.drivers import make_driver
from services.orchestrator.rollout import Decision, RecordStore, Rollout
from swiftdeploy_core.project.manifest import load_manifest
from swiftdeploy_core.project.state import Phase, RolloutState
from tests.orchestration import get_json, write_manifest, write_snapshot
from tests.servers import require_binary


class ScriptedGate:
    """Answers with the next scripted decision (allow when the script runs out)."""

    def __init__(self, *answers: bool) -> None:
        self.answers = list(answers)
        self.asked: list[tuple[str, dict]] = []

    async def decide(self, domain: str, data: dict) -> Decision | None:
        self.asked.append((domain, data))
        allow = self.answers.pop(0) if self.answers else True
        return Decision(allow, [] if allow else ["error_rate 50.0% exceeds 1.0%"], f"d{len(self.asked)}")


@pytest.fixture
async def rollout(tmp_path: Path, redis_url: str):
    require_binary("nginx")
    loaded = load_manifest(write_manifest(tmp_path, "sdo-phase", canary={"steps": [10, 25, 50]}))
    redis = aioredis.Redis.from_url(redis_url)
    events: list = []

    async def emit(payload) -> None:
        events.append(payload)

    record = RolloutState(
        project="sdo-phase", runtime="process", root=str(loaded.root), manifest=loaded.manifest.model_dump(mode="json")
    )
    r = Rollout(record, make_driver(loaded.manifest, loaded.root), RecordStore(redis), ScriptedGate(), emit)
    r.events = events  # type: ignore[attr-defined]
    yield r
    await r.driver.teardown()
    await redis.aclose()


def types(r: Rollout) -> list[str]:
    return [e.type for e in r.events]  # type: ignore[attr-defined]


async def deployed_with_canary(r: Rollout) -> None:
    await operations.Deploy(r, "cmd-deploy").run()
    assert r.record.phase == Phase.stable, r.events  # type: ignore[attr-defined]
    await operations.StartCanary(r, "cmd-canary").run()
    assert (r.record.phase, r.record.step, r.record.canary.weight) == (Phase.progressing, 0, 10)


async def test_each_allowed_tick_moves_one_step_then_the_canary_completes(rollout):
    await deployed_with_canary(rollout)
    await write_snapshot(rollout.store.redis, "sdo-phase", "2.0.0")
    weights = []
    for _ in range(3):
        assert await phases.advance(rollout) in (Phase.progressing, Phase.canary_complete)
        weights.append(rollout.record.canary.weight)
    assert weights == [25, 50, 50] and rollout.record.phase == Phase.canary_complete
    conf = await rollout.driver.router_config()
    assert "50%   app_canary" in conf
    assert types(rollout)[-1] == "canary.completed"


async def test_a_tick_without_fresh_metrics_holds_the_step_and_asks_nobody(rollout):
    await deployed_with_canary(rollout)
    await phases.advance(rollout)
    canary_questions = [q for q in rollout.gate.asked if q[0] == "canary"]
    assert (rollout.record.phase, rollout.record.step, canary_questions) == (Phase.progressing, 0, [])


async def test_failure_limit_consecutive_denials_roll_back_automatically(rollout):
    await deployed_with_canary(rollout)
    rollout.gate.answers = [False, True, False, False]
    await write_snapshot(rollout.store.redis, "sdo-phase", "2.0.0", error_rate=0.5)
    await phases.advance(rollout)  # deny 1
    await phases.advance(rollout)  # allow: the run of failures starts again, step 1
    await phases.advance(rollout)  # deny 1
    assert (rollout.record.consecutive_failures, rollout.record.step) == (1, 1)
    assert await phases.advance(rollout) == Phase.rolling_back  # deny 2 = failure_limit
    assert await phases.settle(rollout) == Phase.stable
    assert rollout.record.canary is None and rollout.record.stable.version == "1.0.0"
    done = rollout.events[-2]  # type: ignore[attr-defined]
    assert (done.type, done.automatic, done.reasons) == ("rollback.completed", True, ["error_rate 50.0% exceeds 1.0%"])
    assert types(rollout)[-1] == "mode.changed"
    assert [o.track for o in await rollout.driver.list_objects() if o.role == "instance"] == ["stable"]
    assert (await get_json(rollout.record.router_url, {"X-Canary": "always"}))["version"] == "1.0.0"


async def test_promotion_runs_the_canary_version_as_stable_and_removes_both_old_tracks(rollout):
    await deployed_with_canary(rollout)
    await operations.PromoteStable(rollout).run()
    assert rollout.record.phase == Phase.stable and rollout.record.canary is None
    assert rollout.record.stable.version == "2.0.0"
    body = await get_json(rollout.record.router_url)
    assert (body["version"], body["mode"]) == ("2.0.0", "stable")
    names = sorted(o.name for o in await rollout.driver.list_objects() if o.role == "instance")
    assert names == sorted(i.name for i in rollout.record.stable.instances)
    assert types(rollout)[-2:] == ["promotion.completed", "mode.changed"]


async def test_a_denied_promotion_changes_nothing(rollout):
    await deployed_with_canary(rollout)
    rollout.gate.answers = [False]
    before = rollout.record.model_dump(exclude={"updated_at"})
    await operations.PromoteStable(rollout).run()
    assert rollout.record.model_dump(exclude={"updated_at"}) == before
    assert types(rollout)[-1] == "promotion.blocked"


async def test_a_crash_between_router_and_record_is_repaired_from_the_record(rollout):
    await deployed_with_canary(rollout)
    moved = rollout.record.model_copy(update={"canary": rollout.record.canary.model_copy(update={"weight": 25})})
    await rollout.route(moved)  # nginx took 25% ... and the orchestrator died before saving
    assert "25%   app_canary" in await rollout.driver.router_config()
    await phases.recover(rollout)
    assert "10%   app_canary" in await rollout.driver.router_config()
    assert (rollout.record.step, rollout.record.canary.weight) == (0, 10)


async def test_a_denied_infra_decision_creates_nothing(rollout):
    rollout.gate.answers = [False]
    await operations.Deploy(rollout, "cmd-deploy").run()
    assert types(rollout) == ["deploy.blocked"]
    assert await rollout.driver.list_objects() == []
