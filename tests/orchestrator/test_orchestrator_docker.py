"""User stories on the docker runtime: the same orchestrator, gatekeeper and CLI as the process
stories, with workload and nginx containers from the images that scripts/build-images makes."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from pathlib import Path

import pytest

from services.orchestrator import plans
from services.orchestrator.drivers.docker import DockerDriver
from swiftdeploy_core.errors import RuntimeUnavailable
from swiftdeploy_core.project.manifest import load_manifest, validate_manifest
from tests.orchestration import docker_sections, get_json, write_manifest, write_policies, write_snapshot

pytestmark = pytest.mark.docker
MANIFEST: dict = {}  # filled with the built images' tags by `docker_images`
INTERVAL = 1.0


@pytest.fixture(autouse=True)
def docker_images(request: pytest.FixtureRequest, docker_daemon: str, workload_image: str, nginx_image: str) -> None:
    request.module.MANIFEST = docker_sections(workload_image, nginx_image, INTERVAL)


def labelled(kind: str, project: str) -> list[str]:
    """What `docker ps -a` / `docker network ls` / `docker volume ls` list with the project's label."""
    command = {"container": ["ps", "-a"], "network": ["network", "ls"], "volume": ["volume", "ls"]}[kind]
    out = subprocess.run(
        ["docker", *command, "--filter", f"label=swiftdeploy.project={project}", "--format", "{{.Name}}" if kind != "container" else "{{.Names}}"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    return out.split()


def nothing_left(project: str) -> bool:
    return not any(labelled(kind, project) for kind in ("container", "network", "volume"))


async def test_chaos_rolls_back_a_canary_then_a_healthy_one_is_promoted_and_teardown_leaves_nothing(stack):
    deployed = await stack.sd("deploy")
    assert deployed.code == 0, deployed.text
    assert f"deploy.step networks: {stack.project}-net" in deployed.err
    assert (await get_json(await stack.url()))["version"] == "1.0.0"
    assert sorted(labelled("container", stack.project)) == sorted(
        [f"{stack.project}-nginx", *(i.name for i in (await stack.record()).instances())]
    )

    follower = asyncio.create_task(stack.sd("promote", "canary", "--wait"))
    await stack.phase("progressing", timeout=60)
    assert (await stack.sd("chaos", "error", "--rate", "0.5")).code == 0
    started = time.monotonic()
    await write_snapshot(stack.redis, stack.project, "2.0.0", error_rate=0.5)
    back = await stack.phase("stable", timeout=30)
    assert time.monotonic() - started <= 3 * INTERVAL + 1.0
    assert back.canary is None and (await follower).code == 3
    assert [n for n in labelled("container", stack.project) if "-canary-" in n] == []

    await write_snapshot(stack.redis, stack.project, "2.0.0", error_rate=0.0)
    assert (await stack.sd("promote", "canary", "--wait")).code == 0
    promoted = await stack.sd("promote", "stable")
    assert promoted.code == 0, promoted.text
    body = await get_json(await stack.url())
    assert (body["version"], body["mode"]) == ("2.0.0", "stable")

    gone = await stack.sd("teardown")
    assert gone.code == 0, gone.text
    assert nothing_left(stack.project)


async def test_an_impossible_infra_threshold_blocks_a_docker_deploy_with_nothing_created(stack):
    write_policies(stack.policies_root, disk_free_gb=10**9)
    blocked = await stack.sd("deploy")
    assert blocked.code == 3 and blocked.line.startswith("error: denied: disk free")
    assert nothing_left(stack.project)


async def test_an_unknown_image_fails_the_deploy_in_one_line_with_nothing_created(stack):
    """Not on the host, so it is pulled from Docker Hub, which this machine cannot reach."""
    stack.manifest(services={"image": "swiftdeploy/no-such-image:0"})
    failed = await stack.sd("deploy")
    assert failed.code == 1
    assert failed.line.startswith("error: failed: cannot pull image 'swiftdeploy/no-such-image:0' from docker.io: ")
    assert nothing_left(stack.project)


async def test_a_taken_nginx_port_fails_the_docker_deploy_and_undoes_it(stack):
    await stack.deploy_onto_a_taken_router_port()
    assert nothing_left(stack.project)


async def test_without_a_reachable_dockerd_the_driver_says_so_and_suggests_the_process_runtime(tmp_path: Path):
    driver = DockerDriver("sdo-nodocker", tmp_path, url="unix:///nonexistent/docker.sock")
    manifest = load_manifest(write_manifest(tmp_path, "sdo-nodocker", runtime="docker")).manifest
    try:
        with pytest.raises(RuntimeUnavailable, match=r"cannot reach dockerd .*deploy with `runtime: process`"):
            await driver.preflight(manifest, router_running=False)
    finally:
        await driver.close()


def test_container_configs_are_labelled_and_publish_nginx_on_loopback_only():
    manifest = validate_manifest(
        {"services": {"name": "shop", "image": "w:1", "port": 3000, "version": "1.0.0"},
         "nginx": {"image": "n:1", "port": 8080}, "network": {"name": "shop-net"}}
    )  # fmt: skip
    [spec] = plans.track_specs(manifest, "canary", "g")
    config = plans.instance_config(spec)
    assert config["Labels"] == {
        "swiftdeploy.project": "shop",
        "swiftdeploy.role": "instance",
        "swiftdeploy.track": "canary",
        "swiftdeploy.version": "1.0.0",
    }
    assert set(config["Env"]) == {"HOST=0.0.0.0", "PORT=3000", "MODE=canary", "VERSION=1.0.0"}
    assert config["HostConfig"]["NetworkMode"] == "shop-net" and "PortBindings" not in config["HostConfig"]
    router = plans.router_config(manifest, "shop")
    assert router["HostConfig"]["PortBindings"] == {"8080/tcp": [{"HostIp": "127.0.0.1", "HostPort": "8080"}]}
    assert json.dumps(router["Labels"]) == json.dumps({"swiftdeploy.project": "shop", "swiftdeploy.role": "router"})
