"""The seed's story on a single-node Docker Swarm (`runtime: swarm`): the same orchestrator,
gatekeeper, collector and CLI as on docker, with each track a Swarm service (dnsrr, its tasks
published in host mode) and nginx a service published in host mode, weighting the tracks' task
addresses itself. The swarm is made for this module and left after it (tests/swarm.py)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time

import pytest

from services.orchestrator import plans
from swiftdeploy_core.bus import streams
from swiftdeploy_core.bus.events import MetricsSnapshot
from tests.eventually import eventually
from tests.orchestration import LoadLoop, get_json, write_policies

pytestmark = pytest.mark.docker
COLLECTOR = {"interval": 0.5, "window": 4}
SECRET = "sw4rm-t0ken-never-shown"
ORCHESTRATOR_ENV = {"SDO_SWARM_TOKEN": SECRET}
MANIFEST: dict = {}  # filled with the built images' tags by `swarm_images`
INTERVAL = 1.0
RATE = 100.0
KINDS = ("service", "network", "secret", "config")


@pytest.fixture(autouse=True)
def swarm_images(request: pytest.FixtureRequest, single_node_swarm, workload_image: str, nginx_image: str) -> None:
    request.module.MANIFEST = {
        "runtime": "swarm",
        "services": {
            "image": workload_image, "replicas": 2, "metrics": "router",
            "secrets": [{"name": "API_TOKEN", "env": "SDO_SWARM_TOKEN"}],
            # The tasks' Docker HEALTHCHECK: generous, as this shared 2-core machine is often loaded
            # past 10 and a healthcheck that times out makes Swarm replace a healthy task.
            "health": {"interval": 5, "timeout": 15, "retries": 5},
        },
        "nginx": {"image": nginx_image},
        "canary": {"version": "2.0.0", "image": workload_image, "steps": [10, 50], "interval": INTERVAL,
                   "failure_limit": 2, "no_data": "fail"},
        "swarm": {"stable": {"constraints": ["node.role==manager"]}, "canary": {"spread": ["node.labels.zone"]}},
    }  # fmt: skip


async def completed(stack) -> None:
    """Wait for the canary to complete its steps; say why when it was rolled back instead."""
    done = await stack.phase("canary_complete", "stable", timeout=120)
    if done.phase.value != "canary_complete":
        tasks = subprocess.run(["docker", "service", "ps", "--no-trunc", *labelled("service", stack.project)],
                               capture_output=True, text=True).stdout  # fmt: skip
        raise AssertionError(f"the canary was rolled back: {done.last_reasons}\n{tasks}")


@pytest.fixture(autouse=True)
def task_history(stack):
    """After each story: every task the project's services ran, and why each one ended."""
    yield
    services = labelled("service", stack.project)
    if services:
        out = subprocess.run(["docker", "service", "ps", "--no-trunc", "--format",
                              "{{.Name}} {{.Node}} {{.CurrentState}} {{.Error}}", *services],
                             capture_output=True, text=True).stdout  # fmt: skip
        print(f"tasks of {stack.project}:\n{out}")


def labelled(kind: str, project: str) -> list[str]:
    """What `docker <kind> ls` lists with the project's label."""
    out = subprocess.run(
        ["docker", kind, "ls", "--filter", f"label=swiftdeploy.project={project}", "--format", "{{.Name}}"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    return out.split()


def inspect(kind: str, name: str) -> dict:
    out = subprocess.run(["docker", kind, "inspect", name], capture_output=True, text=True, check=True).stdout
    return json.loads(out)[0]


async def loaded(stack, during):
    """Run `during()` under a steady RATE req/s through nginx; return the load loop."""
    load = LoadLoop(await stack.url(), rate=RATE)
    runner = asyncio.create_task(load.run())
    try:
        await during()
    finally:
        load.stop()
        await runner
    return load


async def test_swarm_story_weighted_canary_rollback_promotion_and_a_clean_teardown(stack):
    project = stack.project
    # This story is about errors: latency on this shared 2-core machine (load often above 10) is noise.
    write_policies(stack.policies_root, p99_latency_ms=5000, comparison_latency_min_ms=2000)
    deployed = await stack.sd("deploy")
    assert deployed.code == 0, deployed.text
    assert f"deploy.step networks: {project}-net (overlay)" in deployed.err
    record = await stack.record()
    assert record.runtime == "swarm" and len(record.stable.instances) == 2
    assert (await get_json(await stack.url()))["version"] == "1.0.0"

    # Tracks are dnsrr services with replicas, nginx a host-mode service; the net an attachable overlay.
    [stable_service] = {i.name.rpartition("-")[0] for i in record.stable.instances}
    spec = inspect("service", stable_service)["Spec"]
    assert spec["Mode"]["Replicated"]["Replicas"] == 2 and spec["EndpointSpec"]["Mode"] == "dnsrr"
    assert spec["TaskTemplate"]["Placement"]["Constraints"] == ["node.role==manager"]
    assert "@sha256:" in spec["TaskTemplate"]["ContainerSpec"]["Image"] or spec["TaskTemplate"]["ContainerSpec"][
        "Image"
    ].startswith("sha256:")
    router = inspect("service", f"{project}-nginx")["Spec"]
    assert router["EndpointSpec"]["Ports"][0]["PublishMode"] == "host"
    network = inspect("network", f"{project}-net")
    assert (network["Driver"], network["Attachable"], network["Scope"]) == ("overlay", True, "swarm")

    # The secret is a labelled Docker secret; the task has it in its environment, the spec does not.
    [secret] = labelled("secret", project)
    assert secret.startswith(stable_service)
    assert SECRET not in json.dumps(spec)
    container = task_container(stable_service)
    environ = subprocess.run(["docker", "exec", container, "cat", "/proc/1/environ"], capture_output=True, check=True)
    assert f"API_TOKEN={SECRET}".encode() in environ.stdout.split(b"\0")

    # A weighted canary under 100 req/s: no request fails while the weights change.
    async def to_complete() -> None:
        assert (await stack.sd("promote", "canary")).code == 0
        await completed(stack)

    load = await loaded(stack, to_complete)
    print(f"swarm canary: {load.sent} requests, {load.failed} failed, versions {dict(load.versions)}")
    assert load.failed == 0, load.errors[:5] or load.statuses
    assert load.versions["1.0.0"] > 0 and load.versions["2.0.0"] > 0
    upstreams = await live_router(stack)
    addresses = {t["address"] for t in await driver_tasks(stack) if t["role"] == "instance"}
    assert len(addresses) == 4 and all(f"server {a}:3000" in upstreams for a in addresses)  # overlay IPs
    canary = (await stack.record()).canary
    assert canary.weight == 50 and len(canary.instances) == 2
    assert (await get_json(await stack.url(), {"X-Canary": "always"}))["version"] == "2.0.0"

    # A bad canary (the workload's own chaos) is judged on the router's figures and rolled back.
    timing: dict[str, float] = {}

    async def chaos() -> None:
        assert (await stack.sd("chaos", "error", "--rate", "0.5")).code == 0
        started = time.monotonic()
        timing["back"] = (await stack.phase("stable", timeout=60)).canary is None
        timing["seconds"] = time.monotonic() - started

    load = await loaded(stack, chaos)
    back = await stack.record()
    print(f"swarm rollback: {timing['seconds']:.1f}s after chaos; reasons {back.last_reasons}")
    assert timing["back"] and back.stable.version == "1.0.0" and "error rate" in " ".join(back.last_reasons)
    assert load.statuses[500] > 0  # the canary's errors, through nginx
    assert [s for s in labelled("service", project) if "-canary-" in s] == []

    # A healthy canary again, then promotion, under load: no request fails.
    async def promote() -> None:
        assert (await stack.sd("promote", "canary")).code == 0
        await completed(stack)
        promoted = await stack.sd("promote", "stable", timeout=120)
        assert promoted.code == 0, promoted.text

    load = await loaded(stack, promote)
    print(f"swarm promotion: {load.sent} requests, {load.failed} failed")
    assert load.failed == 0, load.errors[:5] or load.statuses
    body = await get_json(await stack.url())
    assert (body["version"], body["mode"]) == ("2.0.0", "stable")

    # The record rebuilt from labels finds the promoted stable track.
    rebuilt = plans.reconstruct(project, "swarm", await stack.objects())
    assert rebuilt is not None and rebuilt.stable.version == "2.0.0" and rebuilt.canary is None
    assert sorted(i.name for i in rebuilt.stable.instances) == sorted(
        i.name for i in (await stack.record()).stable.instances
    )

    gone = await stack.sd("teardown", timeout=120)
    assert gone.code == 0, gone.text
    assert {kind: labelled(kind, project) for kind in KINDS} == {kind: [] for kind in KINDS}


def task_container(service: str, address: str = "") -> str:
    """A running container of the service (the one with that overlay address, if given)."""
    out = subprocess.run(
        ["docker", "ps", "--filter", f"label=com.docker.swarm.service.name={service}", "--format", "{{.ID}}"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    for container in out.split():
        if not address or address in json.dumps(inspect("container", container)["NetworkSettings"]):
            return container
    raise AssertionError(f"no container of {service} at {address!r}")


async def driver_tasks(stack) -> list[dict]:
    """The project's tasks as the swarm driver reads them (`SwarmDriver.tasks`)."""
    driver = stack.driver()
    try:
        return await driver.tasks()
    finally:
        await driver.close()


async def live_router(stack) -> str:
    """The nginx.conf nginx serves now."""
    driver = stack.driver()
    try:
        return await driver.router_config() or ""
    finally:
        await driver.close()


async def test_the_collector_scrapes_every_task_and_status_shows_tasks_per_node(stack):
    stack.manifest(services={**MANIFEST["services"], "metrics": "app"})
    assert (await stack.sd("deploy")).code == 0
    urls = sorted(i.url for i in (await stack.record()).stable.instances)
    assert len(urls) == 2 and all(u.startswith("http://127.0.0.1:") for u in urls)  # node address, task port

    async def scraped() -> MetricsSnapshot | None:
        raw = await stack.redis.get(streams.latest_snapshot_key(stack.project, "stable"))
        found = MetricsSnapshot.model_validate_json(raw) if raw else None
        return found if found is not None and sorted(found.targets) == urls else None

    snapshot = await eventually(scraped, "the collector to scrape both stable tasks", 30, interval=0.2)
    assert snapshot.source == "app"
    status = await stack.sd("status", "--json")
    assert status.code == 0, status.text
    [track] = json.loads(status.out)["tracks"]
    hostname = inspect("node", "self")["Description"]["Hostname"]
    assert [(i["node"], i["healthy"]) for i in track["instances"]] == [(hostname, True), (hostname, True)]
    assert (await stack.sd("teardown", timeout=120)).code == 0


async def test_a_task_swarm_replaces_is_followed_by_nginx_within_an_interval_or_two(stack):
    assert (await stack.sd("deploy")).code == 0
    before = {t["slot"]: t for t in await driver_tasks(stack) if t["role"] == "instance"}
    assert sorted(before) == [1, 2] and all(t["address"] for t in before.values())
    victim = before[1]
    container = task_container(victim["service"], victim["address"])
    subprocess.run(["docker", "kill", container], capture_output=True, check=True)  # Swarm starts another
    started = time.monotonic()

    async def followed() -> str | None:
        tasks = {t["slot"]: t for t in await driver_tasks(stack) if t["role"] == "instance"}
        new = tasks.get(1)
        if new is None or new["state"] != "running" or new["address"] in ("", victim["address"]):
            return None
        live = await live_router(stack)
        return new["address"] if f"server {new['address']}:3000" in live and victim["address"] not in live else None

    address = await eventually(followed, "nginx to list the replacement task", 60, interval=0.2)
    print(f"swarm: nginx lists the replacement task {address} {time.monotonic() - started:.1f}s after the kill")
    assert (await get_json(await stack.url()))["version"] == "1.0.0"
    assert (await stack.sd("teardown", timeout=120)).code == 0


async def test_validate_checks_the_swarm_this_node_a_ready_manager(stack):
    result = await stack.sd("validate")
    [line] = [line for line in result.out.splitlines() if line.startswith(("✓ swarm ready", "✗ swarm ready"))]
    assert line.startswith("✓ swarm ready: manager ") and "1/1 node(s) ready" in line, line


async def test_nginx_killed_is_restarted_by_swarm_with_its_config_and_the_next_shift_reloads_it(stack):
    assert (await stack.sd("deploy")).code == 0
    router = f"{stack.project}-nginx"
    subprocess.run(["docker", "kill", task_container(router)], capture_output=True, check=True)

    async def served() -> str | None:
        try:
            return (await get_json(await stack.url()))["version"]
        except Exception:
            return None

    assert await eventually(served, "nginx to serve again after Swarm restarted it", 60, interval=0.5) == "1.0.0"
    started = await stack.sd("promote", "canary")
    assert started.code == 0, started.text
    assert "10%   app_canary" in await live_router(stack)  # reloaded in the restarted container
    assert (await get_json(await stack.url(), {"X-Canary": "always"}))["version"] == "2.0.0"
    assert (await stack.sd("teardown", timeout=120)).code == 0
