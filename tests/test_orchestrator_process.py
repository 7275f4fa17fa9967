"""User stories on the process runtime: the real orchestrator service, the real CLI, real nginx
and workload processes, a real Redis. The gatekeeper answers with the policies' thresholds."""

from __future__ import annotations

import asyncio
import socket
import time
from pathlib import Path

import psutil
import pytest
import redis.asyncio as aioredis

from swiftdeploy_core.manifest import load_manifest
from swiftdeploy_core.state import Phase
from services.orchestrator import lock
from services.orchestrator.drivers import make_driver
from tests.orchestration import (
    LoadLoop,
    ScriptedGatekeeper,
    ServiceProcess,
    cli,
    get_json,
    record,
    wait_for_phase,
    wait_ready,
    write_manifest,
    write_snapshot,
)
from tests.servers import require_binary

PROJECT = "sdo-e2e"


class Stack:
    def __init__(self, root: Path, redis_url: str, redis: aioredis.Redis, orchestrator: ServiceProcess) -> None:
        self.root, self.redis_url, self.redis, self.orchestrator = root, redis_url, redis, orchestrator

    def manifest(self, **sections) -> Path:
        return write_manifest(self.root, PROJECT, **sections)

    async def sd(self, *args: str, timeout: float = 60.0):
        result = await cli(self.redis_url, *args, "--manifest", str(self.root / "manifest.yaml"), timeout=timeout)
        print(f"$ swiftdeploy {' '.join(args)} -> {result.code}\n{result.text}")
        return result

    async def objects(self) -> list:
        loaded = load_manifest(self.root / "manifest.yaml")
        driver = make_driver(loaded.manifest, loaded.root)
        return await driver.list_objects()

    async def url(self) -> str:
        current = await record(self.redis, PROJECT)
        assert current is not None and current.router_url
        return current.router_url


@pytest.fixture
async def stack(tmp_path: Path, redis_url: str):
    require_binary("nginx")
    redis = aioredis.Redis.from_url(redis_url)
    orchestrator = ServiceProcess("orchestrator", redis_url, tmp_path / "orchestrator.log").start()
    s = Stack(tmp_path / "project", redis_url, redis, orchestrator)
    s.manifest()
    try:
        await wait_ready(redis, "orchestrator")
        yield s
    finally:
        orchestrator.stop()
        loaded = load_manifest(s.root / "manifest.yaml")
        await make_driver(loaded.manifest, loaded.root).teardown()
        await redis.aclose()
        print(orchestrator.log()[-4000:])


@pytest.fixture
async def gatekeeper(redis_url: str):
    async with ScriptedGatekeeper(redis_url) as gk:
        yield gk


async def test_deploy_serves_the_stable_version_and_teardown_leaves_no_process(stack, gatekeeper):
    deployed = await stack.sd("deploy")
    assert deployed.code == 0, deployed.text
    assert "✓ deployed sdo-e2e 1.0.0 at http://127.0.0.1:" in deployed.out
    body = await get_json(await stack.url())
    assert (body["message"], body["version"], body["mode"]) == ("Welcome to SwiftDeploy", "1.0.0", "stable")
    pids = [int(o.id) for o in await stack.objects()]
    assert len(pids) == 2  # one instance, one nginx

    gone = await stack.sd("teardown")
    assert gone.code == 0 and "removed 2 object(s)" in gone.out
    assert await stack.objects() == [] and await record(stack.redis, PROJECT) is None
    assert not any(psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE for p in pids)
    assert (stack.root / "manifest.yaml").exists()


async def test_error_chaos_on_the_canary_rolls_back_automatically_within_three_intervals(stack, gatekeeper):
    assert (await stack.sd("deploy")).code == 0
    follower = asyncio.create_task(stack.sd("promote", "canary", "--wait"))
    await wait_for_phase(stack.redis, PROJECT, "progressing")
    chaos = await stack.sd("chaos", "error", "--rate", "0.5")
    assert chaos.code == 0 and "chaos error injected" in chaos.out
    statuses = [await _status(await stack.url() , {"X-Canary": "always"}) for _ in range(20)]
    assert 500 in statuses  # the real canary now fails about half its requests

    started = time.monotonic()
    await write_snapshot(stack.redis, PROJECT, "2.0.0", error_rate=0.5)  # what the collector would report
    back = await wait_for_phase(stack.redis, PROJECT, "stable", timeout=10)
    elapsed = time.monotonic() - started
    interval = 0.5
    assert elapsed <= 3 * interval + 0.5, f"rollback took {elapsed:.2f}s"
    assert back.canary is None and back.stable.version == "1.0.0"
    waited = await follower
    assert waited.code == 3 and "rolled back automatically" in waited.out and "error rate 0.5" in waited.out
    assert (await get_json(await stack.url(), {"X-Canary": "always"}))["version"] == "1.0.0"
    assert {o.track for o in await stack.objects() if o.role == "instance"} == {"stable"}


async def _status(url: str, headers: dict) -> int:
    import aiohttp

    async with aiohttp.ClientSession() as session:
        async with session.get(url, headers=headers) as response:
            return response.status


async def test_a_healthy_canary_completes_and_promote_stable_serves_the_new_version(stack, gatekeeper):
    assert (await stack.sd("deploy")).code == 0
    await write_snapshot(stack.redis, PROJECT, "2.0.0", error_rate=0.0)
    waited = await stack.sd("promote", "canary", "--wait")
    assert waited.code == 0, waited.text
    assert "canary weight 0% → 10%" in waited.out and "reached its last step (50%)" in waited.out
    promoted = await stack.sd("promote", "stable")
    assert promoted.code == 0, promoted.text
    assert "promoted 2.0.0 to stable (was 1.0.0)" in promoted.out
    body = await get_json(await stack.url())
    assert (body["version"], body["mode"]) == ("2.0.0", "stable")
    assert [o.version for o in await stack.objects() if o.role == "instance"] == ["2.0.0"]


async def test_promote_stable_is_blocked_by_an_unhealthy_canary_and_nothing_changes(stack, gatekeeper):
    stack.manifest(canary={"interval": 60})  # no analysis tick gets in first
    assert (await stack.sd("deploy")).code == 0
    assert (await stack.sd("promote", "canary")).code == 0
    await write_snapshot(stack.redis, PROJECT, "2.0.0", error_rate=0.3, p99=900)
    before = await record(stack.redis, PROJECT)
    blocked = await stack.sd("promote", "stable")
    assert blocked.code == 3 and "promotion blocked" in blocked.out and "P99 900" in blocked.out
    after = await record(stack.redis, PROJECT)
    assert after.stable == before.stable and after.canary.instances == before.canary.instances


async def test_an_impossible_infra_threshold_blocks_deploy_with_nothing_created(stack, gatekeeper):
    gatekeeper.thresholds["disk_free_gb"] = 10**9
    blocked = await stack.sd("deploy")
    assert blocked.code == 3, blocked.text
    assert "deploy blocked by the infra policy" in blocked.out and "disk free" in blocked.out
    assert await stack.objects() == []


async def test_a_deploy_whose_instance_crashes_is_undone_and_says_why(stack, gatekeeper):
    stack.manifest(services={"command": "python3 -c 'import sys; print(\"cannot load settings\"); sys.exit(4)'"})
    failed = await stack.sd("deploy")
    assert failed.code == 1
    assert "deploy failed (undone):" in failed.out and "exited with code 4" in failed.out
    assert "| cannot load settings" in failed.out
    assert await stack.objects() == []


async def test_a_deploy_onto_a_taken_nginx_port_is_refused_in_one_line(stack, gatekeeper):
    port = load_manifest(stack.root / "manifest.yaml").manifest.nginx.port
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", port))
        squatter.listen()
        failed = await stack.sd("deploy")
    assert failed.code == 1
    assert f"nginx.port {port} on 127.0.0.1 is already in use" in failed.out
    assert await stack.objects() == []


async def test_a_second_command_is_rejected_while_an_operation_holds_the_project(stack, gatekeeper):
    async with lock.holding(stack.redis, PROJECT, "promote-canary", "orchestrator-7"):
        rejected = await stack.sd("deploy")
    assert rejected.code == 1
    assert "operation promote-canary in progress since" in rejected.out and "(owner orchestrator-7)" in rejected.out


@pytest.mark.slow
async def test_no_request_fails_at_200_per_second_across_a_whole_canary_and_promotion(stack, gatekeeper):
    stack.manifest(canary={"steps": [10, 25, 50, 75, 100], "interval": 0.5})
    assert (await stack.sd("deploy")).code == 0
    load = LoadLoop(await stack.url(), rate=200)
    runner = asyncio.create_task(load.run())
    started = time.monotonic()
    await asyncio.sleep(1)
    await write_snapshot(stack.redis, PROJECT, "2.0.0", error_rate=0.0)
    assert (await stack.sd("promote", "canary", "--wait")).code == 0
    assert (await stack.sd("promote", "stable")).code == 0
    await asyncio.sleep(1)
    load.stop()
    await runner
    seconds = time.monotonic() - started
    print(f"{load.sent} requests in {seconds:.1f}s ({load.sent / seconds:.0f}/s): {dict(load.statuses)} {dict(load.versions)}")
    assert load.failed == 0, load.errors[:5]
    assert load.sent >= 0.8 * 200 * seconds
    assert load.versions["1.0.0"] > 0 and load.versions["2.0.0"] > 0


async def test_killing_the_orchestrator_mid_canary_ends_consistent(stack, gatekeeper):
    stack.manifest(canary={"steps": [10, 20, 30, 40, 50, 60, 70, 80, 90], "interval": 0.3})
    assert (await stack.sd("deploy")).code == 0
    await write_snapshot(stack.redis, PROJECT, "2.0.0", error_rate=0.0)
    assert (await stack.sd("promote", "canary")).code == 0
    while (await record(stack.redis, PROJECT)).step < 3:
        await asyncio.sleep(0.02)
    stack.orchestrator.kill()
    frozen = await record(stack.redis, PROJECT)
    stack.orchestrator.start()
    done = await wait_for_phase(stack.redis, PROJECT, "canary_complete", timeout=30)
    assert frozen.phase == Phase.progressing and done.canary.weight == 90
    loaded = load_manifest(stack.root / "manifest.yaml")
    conf = await make_driver(loaded.manifest, loaded.root).router_config()
    assert f"{done.canary.weight}%   app_canary" in conf
    running = sorted(o.name for o in await stack.objects() if o.role == "instance")
    assert running == sorted(i.name for i in done.instances())
