"""Self-healing on the docker runtime: the same orchestrator, gatekeeper and CLI as the process
stories, workload and nginx containers from the built images, 100 req/s through nginx. A crash
(the container's process killed with SIGKILL) is restarted by docker's restart policy and counted
by the orchestrator's watch; `docker kill` (which docker never restarts) is restarted by the watch."""

from __future__ import annotations

import os
import signal
import subprocess

import pytest

from tests.orchestration import docker_sections
from tests.orchestrator.drills import kill_under_load, status_json

pytestmark = pytest.mark.docker
MANIFEST: dict = {}  # filled with the built images' tags by `docker_images`
WATCH = {"interval": 0.5, "timeout": 1}


@pytest.fixture(autouse=True)
def docker_images(request: pytest.FixtureRequest, docker_daemon: str, workload_image: str, nginx_image: str) -> None:
    request.module.MANIFEST = docker_sections(workload_image, nginx_image, 1.0)


def docker(*args: str) -> str:
    return subprocess.run(["docker", *args], capture_output=True, text=True, check=True).stdout.strip()


async def crash(instance) -> None:
    """The container's main process dies (what an out-of-memory kill or a segfault looks like)."""
    os.kill(int(docker("inspect", "-f", "{{.State.Pid}}", instance.name)), signal.SIGKILL)


async def docker_kill(instance) -> None:
    docker("kill", instance.name)


async def test_a_crashed_container_is_restarted_by_docker_counted_and_no_request_fails_with_two_replicas(stack):
    stack.manifest(services={**stack.base["services"], "replicas": 2, "health": WATCH})
    assert (await stack.sd("deploy", timeout=120)).code == 0
    drill = await kill_under_load(stack, crash)
    print(drill.line())
    # The watch finds it either restarting or restarted already; docker's policy restarted it, once.
    assert "docker's restart policy" in drill.event.reason, drill.event
    assert docker("inspect", "-f", "{{.RestartCount}}", drill.event.instance) == "1"
    assert drill.event.restarts == 1 and drill.load.failed == 0, drill.line()
    (stable,) = [t for t in (await status_json(stack))["tracks"] if t["track"] == "stable"]
    assert stable["restarts"] == 1


async def test_a_docker_killed_container_is_restarted_by_the_watch_and_no_request_fails_with_two_replicas(stack):
    stack.manifest(services={**stack.base["services"], "replicas": 2, "health": WATCH})
    assert (await stack.sd("deploy", timeout=120)).code == 0
    drill = await kill_under_load(stack, docker_kill)
    print(drill.line())
    assert drill.event.reason == "exited with code 137" and drill.event.restarts == 1, drill.event
    assert drill.load.failed == 0, drill.line()
    name = drill.event.instance
    assert docker("inspect", "-f", "{{.State.Running}}", name) == "true"
