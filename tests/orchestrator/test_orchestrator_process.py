"""User stories on the process runtime: the real orchestrator and gatekeeper services, the real
CLI, real nginx and workload processes, a real Redis. The collector's canary snapshot is written by
the tests themselves, so analysis sees exactly the figures a story needs."""

from __future__ import annotations

import asyncio
import re
import socket
import time

import psutil
import pytest

from services.orchestrator import lock
from swiftdeploy_core.bus import streams
from swiftdeploy_core.project.state import Phase
from tests.eventually import eventually
from tests.orchestration import LoadLoop, get_json, write_policies, write_snapshot

MANIFEST: dict = {}  # the process runtime with the defaults of tests.orchestration.write_manifest


async def test_deploy_serves_the_stable_version_and_teardown_leaves_no_process(stack):
    deployed = await stack.sd("deploy")
    assert deployed.code == 0, deployed.text
    assert "1.0.0 serving at http://127.0.0.1:" in deployed.out
    body = await get_json(await stack.url())
    assert (body["message"], body["version"], body["mode"]) == ("Welcome to SwiftDeploy", "1.0.0", "stable")
    pids = [int(o.id) for o in await stack.objects()]
    assert len(pids) == 2  # one instance, one nginx

    gone = await stack.sd("teardown")
    assert gone.code == 0 and "removed 2 objects" in gone.out
    assert await stack.objects() == [] and await stack.record() is None
    assert not any(psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE for p in pids)
    assert (stack.root / "manifest.yaml").exists()


async def test_error_chaos_on_the_canary_rolls_back_automatically_within_three_intervals(stack):
    assert (await stack.sd("deploy")).code == 0
    follower = asyncio.create_task(stack.sd("promote", "canary", "--wait"))
    await stack.phase("progressing")
    chaos = await stack.sd("chaos", "error", "--rate", "0.5")
    assert chaos.code == 0 and "error, rate 0.5, on 1 instance" in chaos.out
    statuses = [await _status(await stack.url(), {"X-Canary": "always"}) for _ in range(20)]
    assert 500 in statuses  # the real canary now fails about half its requests

    started = time.monotonic()
    await write_snapshot(stack.redis, stack.project, "2.0.0", error_rate=0.5)  # what the collector would report
    back = await stack.phase("stable", timeout=10)
    elapsed = time.monotonic() - started
    interval = 0.5
    assert elapsed <= 3 * interval + 0.5, f"rollback took {elapsed:.2f}s"
    assert back.canary is None and back.stable.version == "1.0.0"
    waited = await follower
    assert waited.code == 3
    assert waited.line == "error: denied: back on 1.0.0 (automatic): error rate 50% is above the maximum of 1%"
    assert (await get_json(await stack.url(), {"X-Canary": "always"}))["version"] == "1.0.0"
    assert {o.track for o in await stack.objects() if o.role == "instance"} == {"stable"}


async def _status(url: str, headers: dict) -> int:
    import aiohttp

    async with aiohttp.ClientSession() as session:
        async with session.get(url, headers=headers) as response:
            return response.status


async def test_a_healthy_canary_completes_and_promote_stable_serves_the_new_version(stack):
    assert (await stack.sd("deploy")).code == 0
    await write_snapshot(stack.redis, stack.project, "2.0.0", error_rate=0.0)
    waited = await stack.sd("promote", "canary", "--wait")
    assert waited.code == 0, waited.text
    assert "canary.weight_changed step 0: 0% → 10%" in waited.err
    assert "2.0.0 at 50%, awaiting promote stable" in waited.out
    promoted = await stack.sd("promote", "stable")
    assert promoted.code == 0, promoted.text
    assert "promotion.completed 1.0.0 → 2.0.0" in promoted.err
    body = await get_json(await stack.url())
    assert (body["version"], body["mode"]) == ("2.0.0", "stable")
    assert [o.version for o in await stack.objects() if o.role == "instance"] == ["2.0.0"]


async def test_promote_stable_is_blocked_by_an_unhealthy_canary_and_nothing_changes(stack):
    stack.manifest(canary={"interval": 60})  # no analysis tick gets in first
    assert (await stack.sd("deploy")).code == 0
    assert (await stack.sd("promote", "canary")).code == 0
    await write_snapshot(stack.redis, stack.project, "2.0.0", error_rate=0.3, p99=900)
    before = await stack.record()
    blocked = await stack.sd("promote", "stable")
    assert blocked.code == 3 and blocked.line.startswith(
        "error: denied: P99 latency 900 ms is above the maximum of 500 ms"
    )
    after = await stack.record()
    assert after.stable == before.stable and after.canary.instances == before.canary.instances


async def test_an_impossible_infra_threshold_blocks_deploy_with_nothing_created(stack):
    write_policies(stack.policies_root, disk_free_gb=10**9)  # the test data.json: no disk is that large
    blocked = await stack.sd("deploy")
    assert blocked.code == 3, blocked.text
    assert re.fullmatch(r"error: denied: disk free [\d.]+ GB is below the minimum of 1000000000 GB", blocked.line)
    assert await stack.objects() == []


async def test_a_deploy_whose_instance_crashes_is_undone_and_says_why(stack):
    stack.manifest(services={"command": "python3 -c 'import sys; print(\"cannot load settings\"); sys.exit(4)'"})
    failed = await stack.sd("deploy")
    assert failed.code == 1
    assert re.fullmatch(r"error: failed: sdo-\d+-stable-\w+-1 exited with code 4 before it became healthy", failed.line)
    assert "  | cannot load settings" in failed.err  # the instance's last log lines
    assert await stack.objects() == []


async def test_a_deploy_onto_a_taken_nginx_port_is_refused_in_one_line(stack):
    port = stack.driver_manifest().nginx.port
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", port))
        squatter.listen()
        failed = await stack.sd("deploy")
    assert failed.code == 1
    assert failed.line.startswith(f"error: failed: nginx.port {port} on 127.0.0.1 is already in use")
    assert await stack.objects() == []


async def test_a_second_command_is_rejected_while_an_operation_holds_the_project(stack):
    async with lock.holding(stack.redis, stack.project, "promote-canary", "orchestrator-7"):
        rejected = await stack.sd("deploy")
    assert rejected.code == 1
    assert re.fullmatch(
        r"error: failed: deploy: operation promote-canary in progress since \d\d:\d\d:\d\d \(owner orchestrator-7\)",
        rejected.line,
    )


@pytest.mark.slow
async def test_no_request_fails_at_200_per_second_across_a_whole_canary_and_promotion(stack):
    stack.manifest(canary={"steps": [10, 25, 50, 75, 100], "interval": 0.5})
    assert (await stack.sd("deploy")).code == 0
    load = LoadLoop(await stack.url(), rate=200)
    runner = asyncio.create_task(load.run())
    started = time.monotonic()
    await asyncio.sleep(1)
    await write_snapshot(stack.redis, stack.project, "2.0.0", error_rate=0.0)
    assert (await stack.sd("promote", "canary", "--wait")).code == 0
    assert (await stack.sd("promote", "stable")).code == 0
    await asyncio.sleep(1)
    load.stop()
    await runner
    seconds = time.monotonic() - started
    print(
        f"{load.sent} requests in {seconds:.1f}s ({load.sent / seconds:.0f}/s): {dict(load.statuses)} {dict(load.versions)}"
    )
    assert load.failed == 0, load.errors[:5]
    assert load.sent >= 0.8 * 200 * seconds
    assert load.versions["1.0.0"] > 0 and load.versions["2.0.0"] > 0


async def test_killing_the_orchestrator_mid_canary_ends_consistent(stack):
    stack.manifest(canary={"steps": [10, 20, 30, 40, 50, 60, 70, 80, 90], "interval": 0.3})
    assert (await stack.sd("deploy")).code == 0
    await write_snapshot(stack.redis, stack.project, "2.0.0", error_rate=0.0)
    assert (await stack.sd("promote", "canary")).code == 0
    await eventually(lambda: _at_step(stack, 3), "the canary at step 3", 30)
    stack.orchestrator.kill()
    frozen = await stack.record()
    stack.orchestrator.start()
    done = await stack.phase("canary_complete", timeout=30)
    assert frozen.phase == Phase.progressing and done.canary.weight == 90
    conf = await stack.driver().router_config()
    assert f"{done.canary.weight}%   app_canary" in conf
    running = sorted(o.name for o in await stack.objects() if o.role == "instance")
    assert running == sorted(i.name for i in done.instances())


async def test_a_record_lost_with_redis_is_rebuilt_from_the_runtime_labels(stack):
    stack.manifest(canary={"interval": 60})
    assert (await stack.sd("deploy")).code == 0
    serving = [i.name for i in (await stack.record()).instances()]
    await stack.redis.delete(streams.rollout_key(stack.project))  # Redis lost the record
    started = await stack.sd("promote", "canary")
    assert started.code == 0, started.text
    rebuilt = await stack.record()
    assert [i.name for i in rebuilt.stable.instances] == serving  # the same processes, adopted
    assert sorted(o.track for o in await stack.objects() if o.role == "instance") == ["canary", "stable"]
    assert (await get_json(await stack.url(), {"X-Canary": "always"}))["version"] == "2.0.0"


async def _at_step(stack, step: int) -> bool:
    record = await stack.record()
    return record is not None and record.step >= step


async def test_a_hand_edited_nginx_weight_is_repaired_within_one_interval_and_recorded(stack):
    import json
    import os
    import signal

    from swiftdeploy_core.bus.events import Event

    assert (await stack.sd("deploy")).code == 0
    assert (await stack.sd("promote", "canary")).code == 0
    await stack.phase("progressing")
    driver = stack.driver()
    conf = driver.nginx_conf
    edited = conf.read_text().replace("10%   app_canary", "90%   app_canary")
    assert edited != conf.read_text()
    conf.write_text(edited)
    os.kill(json.loads((driver.dir / "router.json").read_text())["pid"], signal.SIGHUP)
    edited_at = time.monotonic()

    async def repaired() -> Event | None:
        for _, fields in await stack.redis.xrange(streams.EVENTS):
            if fields[b"type"] == b"router.drift_repaired":
                return Event.from_json(fields[b"event"])
        return None

    event = await eventually(repaired, "a router.drift_repaired event", timeout=5)
    elapsed = time.monotonic() - edited_at
    interval = stack.driver_manifest().canary.interval
    assert elapsed <= interval + 0.5, f"repaired after {elapsed:.2f}s"
    assert (event.payload.found.canary_weight, event.payload.expected.canary_weight) == (90, 10)
    assert "10%   app_canary" in conf.read_text()
