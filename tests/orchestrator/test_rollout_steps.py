"""Steps with pauses, the no-data rule, the progress deadline and a new revision mid-canary, one
tick at a time on the in-memory runtime (the same fixtures as test_rollout_phases.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from services.orchestrator import operations, phases
from services.orchestrator.rollout import Decision
from swiftdeploy_core.project.state import Pause, Phase
from tests.orchestration import write_snapshot
from tests.orchestrator.conftest import PROJECT, given

pytestmark = pytest.mark.usefixtures("redis_url")


@pytest.fixture
def canary_spec() -> dict[str, Any]:
    return {"steps": [10, {"pause": 60}, 25, {"pause": {}}, 50], "progress_deadline": 30, "no_data": "fail"}


async def healthy(rollout) -> None:
    await write_snapshot(rollout.store.redis, PROJECT, "2.0.0", error_rate=0.0)


async def test_an_allowed_tick_before_a_timed_pause_starts_waiting_at_the_same_weight(rollout):
    await given(rollout, Phase.progressing, step=0)
    await healthy(rollout)
    before = datetime.now(UTC)
    await phases.advance(rollout)
    pause = rollout.record.pause
    assert (rollout.record.step, rollout.record.canary.weight) == (1, 10)
    assert pause is not None and pause.step == 1 and pause.until is not None
    assert timedelta(seconds=59) < pause.until - before < timedelta(seconds=61)
    paused = rollout.events[-1]
    assert (paused.type, paused.step, paused.weight, paused.until) == ("canary.paused", 1, 10, pause.until)
    assert rollout.driver.calls == []  # nothing moved at the router


async def test_a_timed_pause_holds_while_analysis_goes_on_then_moves_on_when_it_is_over(rollout):
    until = datetime.now(UTC) + timedelta(seconds=60)
    await given(rollout, Phase.progressing, step=1, pause=Pause(step=1, until=until))
    await healthy(rollout)
    await phases.advance(rollout)
    assert rollout.record.step == 1 and [q[0] for q in rollout.gate.asked] == ["canary"]  # analysed, held
    await rollout.save(pause=Pause(step=1, until=datetime.now(UTC) - timedelta(seconds=1)))
    await phases.advance(rollout)
    assert (rollout.record.step, rollout.record.canary.weight, rollout.record.pause) == (2, 25, None)
    assert rollout.types()[-1] == "canary.weight_changed"


async def test_a_denial_during_a_timed_pause_rolls_back_as_anywhere_else(rollout):
    await given(rollout, Phase.progressing, step=1, pause=Pause(step=1, until=datetime.now(UTC) + timedelta(hours=1)))
    rollout.gate.answers = [False, False]
    await write_snapshot(rollout.store.redis, PROJECT, "2.0.0", error_rate=0.5)
    await phases.advance(rollout)
    assert await phases.advance(rollout) == Phase.rolling_back
    assert await phases.settle(rollout) == Phase.stable
    assert rollout.record.canary is None and rollout.record.pause is None
    assert rollout.events[-2].type == "rollback.completed" and rollout.events[-2].automatic


async def test_an_open_pause_waits_for_continue_and_a_denial_there_still_rolls_back(rollout):
    await given(rollout, Phase.progressing, step=3, pause=Pause(step=3))
    await healthy(rollout)
    for _ in range(3):
        await phases.advance(rollout)
    assert rollout.record.step == 3  # waits, however long, for the operator

    await operations.ResumeCanary(rollout).run()
    assert rollout.record.pause is not None and rollout.record.pause.released
    assert rollout.types()[-1] == "canary.resumed"
    await phases.advance(rollout)
    assert (rollout.record.step, rollout.record.canary.weight) == (4, 50)

    await given(rollout, Phase.progressing, step=3, pause=Pause(step=3))
    rollout.gate.answers = [False, False]
    await phases.advance(rollout)
    assert await phases.advance(rollout) == Phase.rolling_back


async def test_continue_without_a_pause_is_refused_with_where_the_canary_is(rollout):
    await given(rollout, Phase.progressing, step=0)
    with pytest.raises(operations.Refused, match=r"^the canary is not paused \(at step 0\); nothing to continue$"):
        await operations.ResumeCanary(rollout).run()


async def test_no_traffic_counts_as_a_failed_check_and_rolls_back_after_failure_limit(rollout):
    await given(rollout, Phase.progressing, step=0)
    await phases.advance(rollout)
    analysis = rollout.events[-1]
    reason = "no traffic reached the canary in the last 0.5 s"
    assert (analysis.type, analysis.allow, analysis.reasons) == ("canary.analysis", False, [reason])
    assert rollout.gate.asked == []  # the rule is the rollout's, not a policy decision
    assert await phases.advance(rollout) == Phase.rolling_back
    await phases.settle(rollout)
    done = rollout.events[-2]
    assert (done.type, done.automatic, done.reasons) == ("rollback.completed", True, [reason])


TOO_FEW = "only 7 requests in the window, below the minimum of 20: too little traffic to judge the canary"
INCONCLUSIVE = Decision(allow=False, reasons=[TOO_FEW], decision_id="d-few", inconclusive=True)


async def test_an_inconclusive_analysis_holds_the_step_is_counted_apart_and_never_rolls_back(rollout):
    await given(rollout, Phase.progressing, step=0)
    await healthy(rollout)
    rollout.gate.answers = [INCONCLUSIVE, INCONCLUSIVE, INCONCLUSIVE, True]  # failure_limit is 2
    for _ in range(3):
        assert await phases.advance(rollout) == Phase.progressing
    record = await rollout.store.load(PROJECT)
    assert record is not None
    assert (record.step, record.consecutive_failures, record.inconclusive_checks) == (0, 0, 3)
    assert (record.last_outcome, record.last_reasons) == ("inconclusive", [TOO_FEW])
    assert rollout.driver.calls == []  # the router never moved
    last = rollout.events[-1]
    assert (last.type, last.allow, last.inconclusive, last.inconclusive_checks) == ("canary.analysis", False, True, 3)
    assert (last.consecutive_failures, last.decision_id) == (0, "d-few")
    await phases.advance(rollout)  # enough traffic now: allowed, the next step
    assert (rollout.record.step, rollout.record.last_outcome, rollout.record.inconclusive_checks) == (1, "allow", 3)


async def test_inconclusive_neither_adds_to_nor_clears_a_run_of_denials(rollout):
    await given(rollout, Phase.progressing, step=0)
    await healthy(rollout)
    rollout.gate.answers = [False, INCONCLUSIVE, False]
    await phases.advance(rollout)
    await phases.advance(rollout)
    assert rollout.record.consecutive_failures == 1
    assert await phases.advance(rollout) == Phase.rolling_back


async def test_a_canary_kept_inconclusive_rolls_back_at_its_progress_deadline(rollout):
    await given(rollout, Phase.progressing, step=0, stepped_at=datetime.now(UTC) - timedelta(seconds=20))
    await healthy(rollout)
    rollout.gate.answers = [INCONCLUSIVE]
    assert await phases.advance(rollout) == Phase.progressing  # inside the 30 s deadline: holds
    stepped = datetime.now(UTC) - timedelta(seconds=31)
    rollout.record = await rollout.store.save(rollout.record.model_copy(update={"stepped_at": stepped}))
    assert await phases.advance(rollout) == Phase.rolling_back
    assert rollout.record.last_reasons == ["the canary did not advance within its progress deadline of 30 s (step 0)"]


async def test_a_step_that_outlives_the_progress_deadline_rolls_back_with_that_reason(rollout):
    await given(rollout, Phase.progressing, step=2, stepped_at=datetime.now(UTC) - timedelta(seconds=31))
    await healthy(rollout)
    assert await phases.advance(rollout) == Phase.rolling_back
    assert rollout.gate.asked == []
    await phases.settle(rollout)
    done = rollout.events[-2]
    reason = "the canary did not advance within its progress deadline of 30 s (step 2)"
    assert (done.type, done.automatic, done.reasons) == ("rollback.completed", True, [reason])


async def test_the_deadline_does_not_run_during_a_pause(rollout):
    old = datetime.now(UTC) - timedelta(seconds=600)
    await given(rollout, Phase.progressing, step=3, stepped_at=old, pause=Pause(step=3))
    await healthy(rollout)
    assert await phases.advance(rollout) == Phase.progressing


async def test_a_second_canary_is_refused_unless_it_replaces_the_running_one(rollout):
    await given(rollout, Phase.progressing, step=2)
    with pytest.raises(operations.Refused, match=r"already running \(progressing\); `promote canary --replace`"):
        await operations.StartCanary(rollout, "cmd-2").run()
    old = [i.name for i in rollout.record.canary.instances]

    await operations.StartCanary(rollout, "cmd-2", replace=True).run()
    replaced = next(e for e in rollout.events if e.type == "canary.replaced")
    assert (replaced.previous_version, replaced.version, replaced.step) == ("2.0.0", "2.0.0", 2)
    assert (rollout.record.phase, rollout.record.step, rollout.record.canary.weight) == (Phase.progressing, 0, 10)
    running = {o.name for o in await rollout.driver.list_objects() if o.role == "instance"}
    assert not set(old) & running  # the old canary's instances are gone
    assert rollout.types().index("canary.replaced") < rollout.types().index("canary.started")
