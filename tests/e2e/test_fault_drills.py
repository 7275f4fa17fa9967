"""Fault drills on real servers: what happens when a part of SwiftDeploy goes away mid-operation.

The real orchestrator and gatekeeper processes, the real CLI, nginx and workload processes and a
real redis-server. (The orchestrator killed mid-canary lives in test_orchestrator_process.py, the
history's full disk in test_history_writer.py.)
"""

from __future__ import annotations

import asyncio

import redis.asyncio as aioredis

from services.orchestrator.drivers import make_driver
from swiftdeploy_core.project.manifest import load_manifest
from tests.eventually import eventually
from tests.orchestration import (
    ServiceProcess,
    cli,
    gatekeeper_process,
    wait_ready,
    write_manifest,
    write_policies,
    write_snapshot,
)
from tests.servers import free_port

MANIFEST: dict = {}


async def test_a_gatekeeper_killed_during_a_promotion_is_a_denial_never_an_allow(stack, services):
    stack.manifest(canary={"interval": 60})  # no analysis tick gets in the way
    assert (await stack.sd("deploy")).code == 0
    assert (await stack.sd("promote", "canary")).code == 0
    await write_snapshot(stack.redis, stack.project, "2.0.0", error_rate=0.0)  # a healthy canary
    services.gatekeeper.kill()
    try:
        blocked = await stack.sd("promote", "stable", timeout=90)
        assert blocked.code == 3, blocked.text
        assert "no canary decision: the gatekeeper did not answer in time" in blocked.text
        unchanged = await stack.record()
        assert unchanged.phase.value == "progressing" and unchanged.canary is not None
        assert unchanged.stable.version == "1.0.0"
    finally:
        services.gatekeeper.start()
        await wait_ready(stack.redis, "gatekeeper")
    promoted = await stack.sd("promote", "stable")
    assert promoted.code == 0, promoted.text
    assert (await stack.record()).stable.version == "2.0.0"


async def test_opa_stopped_denies_every_decision_and_blocks_deploys_while_services_run(make_redis, tmp_path):
    server = make_redis(appendonly=False)
    dead_opa = f"http://127.0.0.1:{free_port()}"  # nothing listens: OPA is stopped
    root = tmp_path / "project"
    write_manifest(root, "sdo-opa-down", policy={"engine": "opa", "opa_url": dead_opa, "timeout": 1})
    write_policies(root)
    gatekeeper = gatekeeper_process(server.url, root, tmp_path).start()
    orchestrator = ServiceProcess("orchestrator", server.url, tmp_path / "orchestrator.log").start()
    redis = aioredis.Redis.from_url(server.url)
    try:
        await wait_ready(redis, "gatekeeper")
        await wait_ready(redis, "orchestrator")
        manifest = str(root / "manifest.yaml")
        deployed = await cli(server.url, "deploy", "--manifest", manifest, timeout=90)
        assert deployed.code == 3, deployed.text
        assert f"policy engine unavailable: connection refused ({dead_opa})" in deployed.text
        loaded = load_manifest(root / "manifest.yaml")
        assert await make_driver(loaded.manifest, loaded.root).list_objects() == []  # nothing created
        for _ in range(3):  # the gatekeeper keeps serving, and keeps denying
            checked = await cli(
                server.url,
                "policy",
                "check",
                "canary",
                "--input",
                '{"error_rate": 0, "p99_latency_ms": 10, "requests": 500}',
            )
            assert checked.code == 3 and "policy engine unavailable" in checked.text, checked.text
        assert gatekeeper.process.poll() is None and orchestrator.process.poll() is None
    finally:
        await redis.aclose()
        orchestrator.stop()
        gatekeeper.stop()


async def test_redis_restarted_during_a_canary_step_resumes_and_never_half_applies(make_redis, tmp_path):
    server = make_redis(appendonly=True)
    root = tmp_path / "project"
    write_manifest(root, "sdo-redis-restart", canary={"steps": [10, 30, 50, 70, 90], "interval": 0.5})
    write_policies(root)
    gatekeeper = gatekeeper_process(server.url, root, tmp_path).start()
    orchestrator = ServiceProcess("orchestrator", server.url, tmp_path / "orchestrator.log").start()
    redis = aioredis.Redis.from_url(server.url)
    manifest = str(root / "manifest.yaml")
    try:
        await wait_ready(redis, "gatekeeper")
        await wait_ready(redis, "orchestrator")
        assert (await cli(server.url, "deploy", "--manifest", manifest, timeout=90)).code == 0
        await write_snapshot(redis, "sdo-redis-restart", "2.0.0", error_rate=0.0)
        assert (await cli(server.url, "promote", "canary", "--manifest", manifest, timeout=90)).code == 0
        await asyncio.sleep(0.8)  # a step or two in
        await redis.aclose()
        await asyncio.to_thread(server.restart)  # Redis goes away and comes back with its AOF
        redis = aioredis.Redis.from_url(server.url)
        await write_snapshot(redis, "sdo-redis-restart", "2.0.0", error_rate=0.0)
        record = await _wait_settled(redis, "sdo-redis-restart")
        assert record["phase"] in ("canary_complete", "stable"), record["phase"]
        if record["phase"] == "canary_complete":
            assert record["canary"]["weight"] == 90
        loaded = load_manifest(root / "manifest.yaml")
        conf = await make_driver(loaded.manifest, loaded.root).router_config()
        if record.get("canary"):
            assert f"{record['canary']['weight']}%   app_canary" in conf, "nginx's weight differs from the record"
        else:
            assert "%   app_canary" not in conf
        assert gatekeeper.process.poll() is None and orchestrator.process.poll() is None
    finally:
        await cli(server.url, "teardown", "--manifest", manifest, timeout=90)
        await redis.aclose()
        orchestrator.stop()
        gatekeeper.stop()


async def _wait_settled(redis: aioredis.Redis, project: str, timeout: float = 60.0) -> dict:
    import json

    record: dict = {}

    async def settled() -> dict | None:
        nonlocal record
        raw = await redis.get(f"swiftdeploy:rollout:{project}")
        record = json.loads(raw) if raw else {}
        return record if record.get("phase") in ("canary_complete", "stable", "failed") else None

    return await eventually(settled, lambda: f"the rollout to settle (phase: {record.get('phase')})", timeout,
                            interval=0.1)  # fmt: skip
