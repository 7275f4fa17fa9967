"""The process driver against real processes: workload instances, nginx, reloads, teardown.

The last tests run the rollout's phases on this driver (the gate scripted, a real Redis): what the
phase tests check on the in-memory `FakeDriver`, answered here by real nginx and workloads.
"""

from __future__ import annotations

import json
import os
import signal
import socket
from collections import Counter
from pathlib import Path

import aiohttp
import psutil
import pytest
import redis.asyncio as aioredis

from services.orchestrator import operations, phases, plans
from services.orchestrator.drivers import make_driver
from services.orchestrator.drivers.base import InstanceFailed
from services.orchestrator.drivers.process import ProcessDriver
from services.orchestrator.rollout import RecordStore
from swiftdeploy_core.errors import LeaseLost, RuntimeDriverError
from swiftdeploy_core.project.manifest import load_manifest
from swiftdeploy_core.project.router import served_split
from swiftdeploy_core.project.state import Phase
from tests.eventually import eventually
from tests.orchestration import get_json, write_manifest
from tests.orchestrator.fakes import Harness, harness
from tests.servers import require_binary


@pytest.fixture
async def project(tmp_path: Path):
    require_binary("nginx")
    loaded = load_manifest(write_manifest(tmp_path, "sdo-proc"))
    driver = make_driver(loaded.manifest, loaded.root)
    yield loaded.manifest, driver
    await driver.teardown()


async def versions(url: str, n: int, headers: dict | None = None) -> Counter:
    async with aiohttp.ClientSession() as session:
        seen = Counter()
        for _ in range(n):
            async with session.get(url, headers=headers or {}) as r:
                seen[(await r.json())["version"]] += 1
        return seen


async def both_tracks(manifest, driver) -> tuple[list, list]:
    """One healthy stable and one healthy canary instance."""
    stable = [await driver.start_instance(s) for s in plans.track_specs(manifest, "stable", "s1")]
    canary = [await driver.start_instance(s) for s in plans.track_specs(manifest, "canary", "c1")]
    for i in stable + canary:
        await driver.wait_healthy(i, 20)
    return stable, canary


async def test_instances_serve_behind_nginx_and_a_reload_moves_the_split(project):
    manifest, driver = project
    stable, canary = await both_tracks(manifest, driver)
    url = await driver.apply_router(manifest, stable, [], 0)
    assert await versions(url, 10) == Counter({"1.0.0": 10})
    await driver.apply_router(manifest, stable, canary, 100)
    assert await versions(url, 10) == Counter({"2.0.0": 10})
    await driver.apply_router(manifest, stable, canary, 0)
    assert await versions(url, 5) == Counter({"1.0.0": 5})
    assert await versions(url, 3, {"X-Canary": "always"}) == Counter({"2.0.0": 3})


async def test_a_router_change_never_replaces_one_stamped_by_a_newer_lease(project):
    manifest, driver = project
    stable, canary = await both_tracks(manifest, driver)
    older, newer = (make_driver(manifest, driver.root) for _ in range(2))  # two replicas' drivers
    older.fence_stamp, newer.fence_stamp = "5 canary-analysis orch-a", "7 rollback orch-b"
    url = await older.apply_router(manifest, stable, canary, 25)
    await newer.apply_router(manifest, stable, canary, 0)
    assert driver.nginx_conf.read_text().startswith("# swiftdeploy fence 7 rollback orch-b\n")
    with pytest.raises(LeaseLost, match=r"changed by a newer operation \(fence 7, this one holds 5\)"):
        await older.apply_router(manifest, stable, canary, 50)  # the old lease's next router change
    assert served_split(driver.nginx_conf.read_text()).canary_weight == 0
    assert await versions(url, 5) == Counter({"1.0.0": 5})
    assert await older.apply_router(manifest, stable, canary, 0) == url  # what serves already: nothing to do


async def test_everything_started_is_listed_with_labels_and_teardown_leaves_no_process(project):
    manifest, driver = project
    [spec] = plans.track_specs(manifest, "stable", "s1")
    inst = await driver.start_instance(spec)
    await driver.wait_healthy(inst, 20)
    await driver.apply_router(manifest, [inst], [], 0)
    objects = await driver.list_objects()
    assert sorted((o.role, o.track) for o in objects) == [("instance", "stable"), ("router", None)]
    pids = [int(o.id) for o in objects]
    removed = await driver.teardown()
    assert len(removed) == 2 and await driver.list_objects() == []
    assert not [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]


async def test_a_restarted_orchestrator_finds_its_processes_from_the_state_folder(project, tmp_path):
    manifest, driver = project
    [spec] = plans.track_specs(manifest, "stable", "s1")
    inst = await driver.start_instance(spec)
    await driver.wait_healthy(inst, 20)
    again = ProcessDriver(manifest.project, driver.dir, driver.root)
    assert [o.name for o in await again.list_objects()] == [spec.name]
    assert (await again.start_instance(spec)).url == inst.url  # already running: reused, not doubled


async def test_an_instance_that_crashes_says_so_with_its_last_log_lines(project):
    manifest, driver = project
    broken = plans.track_specs(manifest, "stable", "b1")[0].model_copy(
        update={"command": ("python3", "-c", "import sys; print('boom: missing config'); sys.exit(3)")}
    )
    inst = await driver.start_instance(broken)
    with pytest.raises(InstanceFailed, match="exited with code 3 before it became healthy") as caught:
        await driver.wait_healthy(inst, 10)
    assert caught.value.name == broken.name
    assert await driver.logs_tail(broken.name) == ["boom: missing config"]


async def test_a_taken_nginx_port_is_refused_before_anything_starts(project):
    manifest, driver = project
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", manifest.nginx.port))
        squatter.listen()
        with pytest.raises(
            RuntimeDriverError, match=f"nginx.port {manifest.nginx.port} on 127.0.0.1 is already in use"
        ):
            await driver.preflight(manifest, router_running=False)
    assert await driver.list_objects() == []


# --- the rollout's phases on real processes ------------------------------------------------------


@pytest.fixture
async def rollout(tmp_path: Path, redis_url: str):
    require_binary("nginx")
    loaded = load_manifest(write_manifest(tmp_path, "sdo-phase", canary={"steps": [10, 25, 50]}))
    redis = aioredis.Redis.from_url(redis_url)
    r = harness(loaded, make_driver(loaded.manifest, loaded.root), RecordStore(redis), Harness)
    yield r
    await r.driver.teardown()
    await redis.aclose()


async def deployed_with_canary(r: Harness) -> None:
    await operations.Deploy(r, "cmd-deploy").run()
    assert r.record.phase == Phase.stable, r.events
    await operations.StartCanary(r, "cmd-canary").run()
    assert (r.record.phase, r.record.step, r.record.canary.weight) == (Phase.progressing, 0, 10)


async def test_a_rollback_on_real_nginx_sends_even_x_canary_always_to_stable(rollout):
    await deployed_with_canary(rollout)
    assert "10%   app_canary" in await rollout.driver.router_config()
    assert (await get_json(rollout.record.router_url, {"X-Canary": "always"}))["version"] == "2.0.0"
    moved = rollout.record.model_copy(update={"canary": rollout.record.canary.model_copy(update={"weight": 25})})
    await rollout.route(moved)  # nginx reloaded to 25% ... and the orchestrator died before saving
    assert "25%   app_canary" in await rollout.driver.router_config()
    await phases.recover(rollout)
    assert "10%   app_canary" in await rollout.driver.router_config()
    await operations.Rollback(rollout, "rolled back by hand").run()
    assert rollout.record.phase == Phase.stable and rollout.record.canary is None
    assert [o.track for o in await rollout.driver.list_objects() if o.role == "instance"] == ["stable"]
    assert (await get_json(rollout.record.router_url, {"X-Canary": "always"}))["version"] == "1.0.0"


async def test_a_promotion_on_real_nginx_serves_the_new_version_in_stable_mode(rollout):
    await deployed_with_canary(rollout)
    await operations.PromoteStable(rollout).run()
    assert rollout.record.phase == Phase.stable and rollout.record.stable.version == "2.0.0"
    body = await get_json(rollout.record.router_url)
    assert (body["version"], body["mode"]) == ("2.0.0", "stable")
    names = sorted(o.name for o in await rollout.driver.list_objects() if o.role == "instance")
    assert names == sorted(i.name for i in rollout.record.stable.instances)
    assert rollout.types()[-2:] == ["promotion.completed", "mode.changed"]


async def test_a_hand_edited_weight_in_the_live_nginx_is_put_back_and_the_event_says_what_was_found(rollout):
    await deployed_with_canary(rollout)
    conf = rollout.driver.nginx_conf
    conf.write_text(conf.read_text().replace("10%   app_canary", "90%   app_canary"))  # an operator's edit
    pid = json.loads((rollout.driver.dir / "router.json").read_text())["pid"]
    os.kill(pid, signal.SIGHUP)  # ... and reload: nginx now serves 90% to the canary

    async def mostly_canary() -> bool:
        versions = [(await get_json(rollout.record.router_url))["version"] for _ in range(40)]
        return versions.count("2.0.0") > 24

    await eventually(mostly_canary, "nginx serving the edited 90% split")  # really live, not only on disk
    await phases.repair_drift(rollout)
    assert "10%   app_canary" in await rollout.driver.router_config()
    repaired = rollout.events[-1]
    assert repaired.type == "router.drift_repaired"
    assert (repaired.found.canary_weight, repaired.expected.canary_weight) == (90, 10)
    assert repaired.found.stable == repaired.expected.stable and len(repaired.expected.canary) == 1
    before = len(rollout.events)
    await phases.repair_drift(rollout)  # nothing drifted since: nothing to say
    assert len(rollout.events) == before
