"""Self-healing tracks, one look at a time, on the in-memory runtime and a real Redis.

`healing.watch` is what the orchestrator runs every `services.health.interval`: each test stores
a rollout (the fake runtime matching it), makes an instance die or stop answering, looks once or a
few times, and checks the runtime's journal, nginx's config, the record and the events. The same on
real processes, nginx and docker under load is in `test_self_healing_drills.py`.
"""

from __future__ import annotations

from typing import Any

from services.orchestrator import healing, operations, phases
from swiftdeploy_core.project.state import Phase
from tests.orchestration import write_snapshot
from tests.orchestrator.conftest import PROJECT, given
from tests.orchestrator.fakes import FakeHarness


def tune(r: FakeHarness, **sections: dict[str, Any]) -> None:
    """Override manifest keys of this rollout (before `given`, which starts what it says)."""
    manifest = dict(r.record.manifest)
    for name, values in sections.items():
        manifest[name] = {**manifest[name], **values}
    r.record = r.record.model_copy(update={"manifest": manifest})
    r._manifest = None


async def test_a_killed_stable_instance_is_restarted_counted_in_the_record_and_announced(rollout):
    await given(rollout, Phase.stable, canary=False)
    before = await rollout.store.load(PROJECT)
    (old,) = rollout.record.stable.instances
    rollout.driver.dead[old.name] = "was killed by SIGKILL"
    await healing.watch(rollout)
    assert rollout.driver.calls[:2] == [f"restart {old.name}", f"start {old.name}"]
    stored = await rollout.store.load(PROJECT)
    (now,) = stored.stable.instances
    assert (now.name, now.restarts, len(now.restarted_at), now.down) == (old.name, 1, 1, False)
    assert now.url != old.url and now.url.split(":")[-1] in await rollout.driver.router_config()
    assert stored.stable.restarts == 1
    assert stored.updated_at == before.updated_at  # a look is no analysis tick
    (event,) = rollout.events
    assert event.model_dump() == {
        "type": "instance.restarted", "project": PROJECT, "track": "stable", "instance": old.name,
        "reason": "was killed by SIGKILL", "restarts": 1,
    }  # fmt: skip
    assert rollout.driver.env_of(old.name)["MODE"] == "stable"  # started again from its own spec


async def test_a_healthy_track_is_left_alone(rollout):
    await given(rollout, Phase.progressing, step=0)
    before = rollout.record
    assert await healing.watch(rollout) == []
    assert (rollout.driver.calls, rollout.events, rollout.record) == ([], [], before)


async def test_with_two_replicas_nginx_holds_the_sick_one_out_until_it_answers_again(rollout):
    tune(rollout, services={"replicas": 2})
    await given(rollout, Phase.stable, canary=False)
    sick, healthy = rollout.record.stable.instances
    rollout.driver.dead[sick.name] = "exited with code 1"
    await healing.watch(rollout)
    # nginx first (the sick one marked down while the other serves), then the restart.
    assert rollout.driver.calls[:2] == ["router stable=2 canary=0 weight=0 down=1", f"restart {sick.name}"]
    restarted = rollout.record.stable.instances[0]
    conf = await rollout.driver.router_config()
    assert f"{restarted.url.removeprefix('http://')} max_fails=3 fail_timeout=10s down;" in conf
    assert f"{healthy.url.removeprefix('http://')} max_fails=3 fail_timeout=10s;" in conf
    assert restarted.down and (await rollout.store.load(PROJECT)).stable.instances[0].down

    rollout.driver.calls.clear()
    await healing.watch(rollout)  # it answers: back in
    assert " down;" not in await rollout.driver.router_config()
    assert not rollout.record.stable.instances[0].down and rollout.record.stable.instances[0].restarts == 1
    assert [e.type for e in rollout.events] == ["instance.restarted"]


async def test_an_instance_that_stops_answering_is_restarted_after_the_retries_then_given_time_to_boot(rollout):
    tune(rollout, services={"health": {"retries": 3, "start_period": 30}})
    await given(rollout, Phase.stable, canary=False)
    (instance,) = rollout.record.stable.instances
    rollout.driver.failing[instance.name] = "no answer within 3 s"
    await healing.watch(rollout)
    await healing.watch(rollout)
    assert rollout.driver.calls == [] and rollout.record.stable.instances[0].failed_checks == 2
    await healing.watch(rollout)
    assert rollout.driver.calls[0] == f"restart {instance.name}"
    (event,) = rollout.events
    assert event.reason == "stopped answering its health check (no answer within 3 s; 3 checks in a row)"
    for _ in range(4):  # still not answering, but booting (start_period): no restart loop
        await healing.watch(rollout)
    assert [c for c in rollout.driver.calls if c.startswith("restart")] == [f"restart {instance.name}"]


async def test_a_crash_looping_canary_fails_its_analysis_and_rolls_back_with_that_reason(rollout):
    tune(rollout, canary={"crash_loop": {"restarts": 3, "window": 60}})
    await given(rollout, Phase.progressing, step=0)
    await write_snapshot(rollout.store.redis, PROJECT, "2.0.0")  # its figures alone would pass
    (canary,) = rollout.record.canary.instances
    for _ in range(3):
        rollout.driver.dead[canary.name] = "exited with code 1"
        await healing.watch(rollout)
    assert rollout.record.canary.instances[0].restarts == 3
    assert rollout.driver.env_of(canary.name)["VERSION"] == "2.0.0"
    reason = f"canary instance {canary.name} restarted 3 times in 60 s"
    assert await phases.advance(rollout) == Phase.progressing
    assert (rollout.events[-1].type, rollout.events[-1].reasons) == ("canary.analysis", [reason])
    assert await phases.advance(rollout) == Phase.rolling_back
    assert await phases.settle(rollout) == Phase.stable
    done = next(e for e in rollout.events if e.type == "rollback.completed")
    assert (done.automatic, done.reasons) == (True, [reason])
    assert rollout.gate.asked == []  # a crash loop is the rollout's own finding, no policy question


async def test_two_restarts_in_the_window_are_no_crash_loop(rollout):
    tune(rollout, canary={"crash_loop": {"restarts": 3, "window": 60}})
    await given(rollout, Phase.progressing, step=0)
    await write_snapshot(rollout.store.redis, PROJECT, "2.0.0")
    (canary,) = rollout.record.canary.instances
    for _ in range(2):
        rollout.driver.dead[canary.name] = "exited with code 1"
        await healing.watch(rollout)
    await phases.advance(rollout)
    analysis = next(e for e in rollout.events if e.type == "canary.analysis")
    assert analysis.allow and rollout.record.step == 1


async def test_a_promoted_stable_restarts_as_the_version_it_runs(rollout):
    await given(rollout, Phase.canary_complete, step=2)
    await operations.PromoteStable(rollout).run()
    assert await phases.settle(rollout) == Phase.stable
    (instance,) = rollout.record.stable.instances
    rollout.driver.dead[instance.name] = "was killed by SIGKILL"
    await healing.watch(rollout)
    env = rollout.driver.env_of(instance.name)
    assert (env["VERSION"], env["MODE"]) == ("2.0.0", "stable")


async def test_a_hung_instance_is_not_restarted_while_its_peer_is_down(rollout):
    tune(rollout, services={"replicas": 2, "health": {"retries": 1}})
    await given(rollout, Phase.stable, canary=False)
    dead, hung = (i.name for i in rollout.record.stable.instances)
    rollout.driver.dead[dead] = "exited with code 1"
    rollout.driver.failing[hung] = "no answer within 3 s"  # it may still serve some requests
    await healing.watch(rollout)
    assert [c for c in rollout.driver.calls if c.startswith("restart")] == [f"restart {dead}"]
    await healing.watch(rollout)  # its peer answers again: now it goes
    assert [c for c in rollout.driver.calls if c.startswith("restart")] == [f"restart {dead}", f"restart {hung}"]


async def test_a_router_that_refuses_the_hold_out_still_sees_the_instance_restarted_and_the_record_true(rollout):
    tune(rollout, services={"replicas": 2})
    await given(rollout, Phase.stable, canary=False)
    sick = rollout.record.stable.instances[0].name
    rollout.driver.dead[sick] = "exited with code 1"
    rollout.driver.fail_router = "nginx refused the rendered config: host not found in upstream"
    await healing.watch(rollout)
    assert f"restart {sick}" in rollout.driver.calls
    assert (await rollout.store.load(PROJECT)).stable.instances[0].down is False  # what nginx serves
    rollout.driver.fail_router = None
    await phases.advance(rollout)  # the drift check gives nginx the restarted instance's new address
    assert rollout.record.stable.instances[0].url.removeprefix("http://") in await rollout.driver.router_config()
    assert rollout.types() == ["instance.restarted", "router.drift_repaired"]
