"""Issue 20's two-node drill: a worker dockerd in its own network namespace joins the swarm
(tests/swarm_nodes.py), and the swarm runtime's canary runs on it.

1. The fixture itself, with plain Docker: a service placed on the worker answers over an overlay
   network from the manager, and from the host at the worker's address.
2. The canary's tasks are constrained to the worker, stable's to the manager; the weighted canary
   works through nginx (on the manager); stopping the worker's dockerd loses the canary's tasks
   (Swarm cannot reschedule them: no other node matches), so the canary's figures drop to no
   data (or errors) and it rolls back; stable keeps serving.
3. Node failure with somewhere to go: stable tasks spread over both nodes; stopping the worker
   makes Swarm reschedule its task on the manager, and nginx follows within one interval.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
from typing import Any

import pytest

from tests.orchestration import LoadLoop, get_json, write_policies
from tests.servers import free_port
from tests.swarm_nodes import WORKER_ADDR, WORKER_LABEL, TwoNodeSwarm, push_for_swarm, run

pytestmark = pytest.mark.docker
COLLECTOR = {"interval": 0.5, "window": 8}
INTERVAL = 2.0
RATE = 50.0  # 5 req/s on the canary at 10%: 40 requests in the collector's window, twice min_requests
MANIFEST: dict = {}  # filled by `drill_manifest` with the pushed image and the placements
ON_MANAGER = f"node.labels.{WORKER_LABEL}==manager"
ON_WORKER = f"node.labels.{WORKER_LABEL}==worker"


@pytest.fixture(scope="module")
def drill_image(two_node_swarm: TwoNodeSwarm, workload_image: str) -> str:
    """The workload image pushed to the swarm's registry: its reference by digest (both nodes
    pull these bytes). The manifest names the tag; the driver pins the digest itself."""
    return push_for_swarm(two_node_swarm, workload_image, "drill/workload:1")


@pytest.fixture(autouse=True)
def drill_manifest(request: pytest.FixtureRequest, drill_image: str, nginx_image: str) -> None:
    tag = f"{drill_image.split('@')[0]}:1"
    request.module.MANIFEST = {
        "runtime": "swarm",
        "services": {"image": tag, "replicas": 1, "metrics": "router"},
        "nginx": {"image": nginx_image},
        "canary": {"version": "2.0.0", "image": tag, "steps": [10, 50], "interval": INTERVAL,
                   "failure_limit": 2, "no_data": "fail"},
        "swarm": {"stable": {"constraints": [ON_MANAGER]}, "canary": {"constraints": [ON_WORKER]}},
    }  # fmt: skip


def running_task(service: str, timeout: float = 120.0) -> dict:
    """The service's one running task (`docker inspect` of it), once it runs."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ids = run("docker", "service", "ps", "-q", "--filter", "desired-state=running", service).stdout.split()
        if ids:
            task = json.loads(run("docker", "inspect", ids[0]).stdout)[0]
            if task["Status"]["State"] == "running":
                return task
        time.sleep(0.5)
    errors = run("docker", "service", "ps", "--no-trunc", "--format", "{{.CurrentState}} {{.Error}}", service).stdout
    pytest.fail(f"service {service} has no running task after {timeout:.0f}s: {errors}", pytrace=False)


def test_a_service_placed_on_the_worker_answers_over_the_overlay_and_at_the_worker_address(
    two_node_swarm: TwoNodeSwarm, drill_image: str
) -> None:
    print(f"worker joined and Ready in {two_node_swarm.join_seconds:.2f}s")
    network, service, port = "swiftdeploy-drill-probe", "swiftdeploy-drill-probe", free_port()
    run("docker", "network", "create", "--driver", "overlay", "--attachable", network)
    try:
        started = time.monotonic()
        run(
            "docker", "service", "create", "--detach", "--name", service, "--network", network,
            "--endpoint-mode", "dnsrr", "--constraint", ON_WORKER,
            "--publish", f"mode=host,target=3000,published={port}",
            "--env", "MODE=stable", "--env", "VERSION=1.0.0", drill_image,
        )  # fmt: skip
        task = running_task(service)
        print(f"a task on the worker (pull included) ran after {time.monotonic() - started:.1f}s")
        assert task["NodeID"] == two_node_swarm.worker_id
        worker_containers = two_node_swarm.worker.docker(
            "ps", "--quiet", "--filter", f"label=com.docker.swarm.service.name={service}"
        ).stdout.split()
        assert len(worker_containers) == 1

        [address] = [
            a.split("/")[0]
            for n in task["NetworksAttachments"]
            if n["Network"]["Spec"]["Name"] == network
            for a in n["Addresses"]
        ]
        probe = "import sys, urllib.request; print(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode())"
        from_manager = run(
            "docker", "run", "--rm", "--network", network, "--entrypoint", "python", drill_image, "-c", probe,
            f"http://{address}:3000/",
        )  # fmt: skip
        assert json.loads(from_manager.stdout)["version"] == "1.0.0"

        with urllib.request.urlopen(f"http://{WORKER_ADDR}:{port}/", timeout=5) as answer:
            assert json.loads(answer.read())["mode"] == "stable"
    finally:
        run("docker", "service", "rm", service, check=False)
        deadline = time.monotonic() + 30
        while run("docker", "network", "rm", network, check=False).returncode and time.monotonic() < deadline:
            time.sleep(0.5)


async def reach(stack, phase: str, timeout: float):
    """The record once in `phase`; on a timeout, the failure names the rollout's last reasons."""
    try:
        return await stack.phase(phase, timeout=timeout)
    except AssertionError as exc:
        current = await stack.record()
        reasons = current.last_reasons if current else None
        raise AssertionError(f"{exc}; last reasons {reasons}\n{await picture(stack)}") from None


async def from_driver(stack, method: str) -> Any:
    """What the project's swarm driver's `method()` answers (a driver of its own, closed after)."""
    driver = stack.driver()
    try:
        return await getattr(driver, method)()
    finally:
        await driver.close()


async def picture(stack) -> str:
    """For a failure message: every task of the project (node, state, error) and nginx's upstreams."""
    tasks = "\n".join(
        f"{t['name']} {t['track']} {t['hostname']}/{t['node'][:6]} {t['state']} {t['address']}"
        for t in await from_driver(stack, "tasks")
    )
    history = run(
        "docker", "service", "ps", "--no-trunc", "--format", "{{.Name}} {{.Node}} {{.CurrentState}} {{.Error}}",
        *run("docker", "service", "ls", "-q", "--filter", f"label=swiftdeploy.project={stack.project}").stdout.split(),
        check=False,
    ).stdout  # fmt: skip
    conf = await from_driver(stack, "router_config") or ""
    servers = "\n".join(line.strip() for line in conf.splitlines() if "upstream" in line or "server " in line)
    return f"tasks now:\n{tasks}\ntask history:\n{history}\nnginx:\n{servers}"


async def swarm_ready(stack) -> str:
    """`swiftdeploy validate`'s `swarm ready` line (the other checks are not this drill's)."""
    validated = await stack.sd("validate", timeout=120)
    return next(line for line in validated.text.splitlines() if "swarm ready" in line)


async def instance_tasks(stack) -> list[dict]:
    return [t for t in await from_driver(stack, "tasks") if t["role"] == "instance"]


async def test_a_canary_on_the_worker_rolls_back_when_the_worker_dockerd_stops(
    stack, two_node_swarm: TwoNodeSwarm
) -> None:
    # The drill is about placement and lost tasks: latency on this shared 2-core machine is noise.
    write_policies(stack.policies_root, p99_latency_ms=5000, comparison_latency_min_ms=2000)
    ready = await swarm_ready(stack)
    assert ready.startswith("✓") and "2/2 node(s) ready" in ready and "/drill/workload@sha256:" in ready, ready
    deployed = await stack.sd("deploy", timeout=180)
    assert deployed.code == 0, deployed.text
    url = await stack.url()

    load = LoadLoop(url, rate=RATE)
    runner = asyncio.create_task(load.run())
    try:
        started = time.monotonic()
        assert (await stack.sd("promote", "canary", timeout=180)).code == 0
        await reach(stack, "canary_complete", 180)
        print(f"canary on the worker complete (50%) after {time.monotonic() - started:.1f}s")
    finally:
        load.stop()
        await runner
    print(f"weighted canary: {load.sent} requests, {load.failed} failed, versions {dict(load.versions)}")
    assert load.failed == 0, f"{load.errors[:5] or load.statuses}\n{await picture(stack)}"
    assert load.versions["1.0.0"] > 0 and load.versions["2.0.0"] > 0

    placed = {(t["track"], t["node"]) for t in await instance_tasks(stack)}
    assert placed == {("stable", two_node_swarm.manager_id), ("canary", two_node_swarm.worker_id)}
    record = await stack.record()
    assert record.canary is not None and record.canary.weight == 50
    assert all(i.url.startswith(f"http://{WORKER_ADDR}:") for i in record.canary.instances)
    assert (await get_json(url, {"X-Canary": "always"}))["version"] == "2.0.0"  # from the worker

    # The worker's dockerd stops (its containers with it): the canary's tasks have no node to go to.
    load = LoadLoop(url, rate=RATE)
    runner = asyncio.create_task(load.run())
    try:
        stopped_at = time.monotonic()
        daemon_seconds = await asyncio.to_thread(two_node_swarm.worker.stop)  # the load keeps going
        down = asyncio.create_task(asyncio.to_thread(two_node_swarm.wait_worker, "down"))
        back = await reach(stack, "stable", 120)
        rollback_seconds = time.monotonic() - stopped_at
        down_seconds = daemon_seconds + await down
    finally:
        load.stop()
        await runner
    print(
        f"worker stopped: dockerd exited after {daemon_seconds:.1f}s, node down after {down_seconds:.1f}s, "
        f"rolled back after {rollback_seconds:.1f}s; reasons {back.last_reasons}; "
        f"{load.sent} requests meanwhile, {load.failed} failed ({dict(load.statuses)})"
    )
    assert back.canary is None and back.stable.version == "1.0.0"
    assert any("no traffic reached the canary" in r or "error rate" in r for r in back.last_reasons)
    body = await get_json(url)
    assert (body["version"], body["mode"]) == ("1.0.0", "stable")
    assert [t for t in await instance_tasks(stack) if t["track"] == "canary"] == []
    assert "1/2 node(s) ready; not ready: " in await swarm_ready(stack)
    assert two_node_swarm.restart_worker() < 60


async def test_a_task_swarm_reschedules_off_a_stopped_worker_is_in_nginx_within_one_interval(
    stack, two_node_swarm: TwoNodeSwarm
) -> None:
    two_node_swarm.restart_worker()
    stack.base = {
        **stack.base,
        "services": {**stack.base["services"], "replicas": 2},
        "swarm": {"stable": {"spread": [f"node.labels.{WORKER_LABEL}"]}},
    }
    stack.manifest()
    deployed = await stack.sd("deploy", timeout=180)
    assert deployed.code == 0, deployed.text
    url = await stack.url()
    nodes = {t["node"] for t in await instance_tasks(stack)}
    assert nodes == {two_node_swarm.manager_id, two_node_swarm.worker_id}

    during = LoadLoop(url, rate=RATE)
    runner = asyncio.create_task(during.run())
    try:
        stopped_at = time.monotonic()
        await asyncio.to_thread(two_node_swarm.worker.stop)
        await asyncio.to_thread(two_node_swarm.wait_worker, "down")
        down_at = time.monotonic()
        while True:
            tasks = await instance_tasks(stack)
            if len(tasks) == 2 and all(
                t["state"] == "running" and t["node"] == two_node_swarm.manager_id for t in tasks
            ):
                break
            assert time.monotonic() < down_at + 120, tasks
            await asyncio.sleep(0.2)
        rescheduled_at = time.monotonic()
        addresses = {t["address"] for t in tasks}
        while True:
            conf = await from_driver(stack, "router_config") or ""
            if all(f"server {a}:3000" in conf for a in addresses):
                break
            assert time.monotonic() - rescheduled_at < 10 * INTERVAL, f"{addresses} not in\n{conf}"
            await asyncio.sleep(0.1)
        followed = time.monotonic() - rescheduled_at
    finally:
        during.stop()
        await runner
    print(
        f"worker stopped: node down after {down_at - stopped_at:.1f}s, its task running on the manager "
        f"{rescheduled_at - down_at:.1f}s later, nginx lists it {followed:.2f}s after that; meanwhile "
        f"{during.sent} requests, {during.failed} failed ({dict(during.statuses)}, {during.errors[:2]})"
    )
    assert followed <= INTERVAL + 1.0  # one interval (and the tick's own work)
    after = LoadLoop(url, rate=RATE)
    runner = asyncio.create_task(after.run())
    await asyncio.sleep(3)
    after.stop()
    await runner
    assert after.failed == 0, after.errors[:5] or after.statuses
    assert two_node_swarm.restart_worker() < 60
