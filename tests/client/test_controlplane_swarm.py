"""stack.swarm.yml on a single-node swarm: `docker stack deploy` runs Redis and the five services
as Swarm services (dnsrr), the replicated ones at two replicas, each consuming its inbox."""

from __future__ import annotations

import subprocess
import uuid
from pathlib import Path

import pytest

from swiftdeploy_core.bus import streams
from tests.eventually import eventually_sync

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.docker, pytest.mark.slow]


@pytest.fixture
def stack(single_node_swarm, controlplane_image: str):
    """`docker stack deploy` of stack.swarm.yml under a unique name; `docker stack rm` after."""
    name = f"sdcp{uuid.uuid4().hex[:6]}"
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "SWIFTDEPLOY_CONTROLPLANE_IMAGE": controlplane_image,
           "SWIFTDEPLOY_MANIFEST_FILE": str(ROOT / "manifest.yaml")}  # fmt: skip

    def docker(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run(["docker", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)

    deployed = docker("stack", "deploy", "-c", str(ROOT / "stack.swarm.yml"), name)
    assert deployed.returncode == 0, deployed.stderr
    yield name, docker
    docker("stack", "rm", name)
    eventually_sync(lambda: not docker("network", "ls", "-q", "--filter", f"label=com.docker.stack.namespace={name}").stdout.strip(),
                    f"the networks of {name} to go", 60, interval=1)  # fmt: skip


def test_stack_deploy_runs_the_control_plane_with_replicated_consumers(stack) -> None:
    name, docker = stack

    def redis_cli(*args: str) -> str:
        ids = docker("ps", "-q", "--filter", f"label=com.docker.swarm.service.name={name}_redis").stdout.split()
        if not ids:
            return ""
        return docker("exec", ids[0], "redis-cli", "--no-raw", *args, timeout=30).stdout

    def consumers(service: str) -> list[str]:
        lines = redis_cli("XINFO", "CONSUMERS", streams.INBOXES[service], streams.group(service)).splitlines()
        return [lines[i + 1].split('"')[1] for i, line in enumerate(lines) if line.strip().endswith('"name"')]

    found: dict[str, list[str]] = {}

    def filled() -> bool:
        found.clear()
        found.update({s: consumers(s) for s in streams.INBOXES})
        replicated = [s for s in found if s != "orchestrator"]
        return len(found["orchestrator"]) == 1 and all(len(set(found[s])) == 2 for s in replicated)

    services = lambda: docker("stack", "services", name).stdout  # noqa: E731
    eventually_sync(filled, lambda: f"every inbox consumed (two replicas each): {found}\n{services()}", 180, interval=2)
    specs = docker("service", "inspect", "--format", "{{.Spec.EndpointSpec.Mode}}",
                   *docker("stack", "services", "-q", name).stdout.split()).stdout.split()  # fmt: skip
    assert set(specs) == {"dnsrr"} and len(specs) == 6
    internal = docker("network", "inspect", "--format", "{{.Name}} {{.Internal}}", f"{name}_bus", f"{name}_opa").stdout
    assert internal.split() == [f"{name}_bus", "true", f"{name}_opa", "true"]
