"""Issue 20's two-node drill: a worker dockerd in its own network namespace joins the swarm.

First the fixture itself, with plain Docker: a service constrained to the worker runs there and
answers, over an overlay network from the manager and from the host at the worker's address.
"""

from __future__ import annotations

import json
import time
import urllib.request

import pytest

from tests.servers import free_port
from tests.swarm_nodes import WORKER_ADDR, WORKER_LABEL, TwoNodeSwarm, push_for_swarm, run, two_node_swarm

pytestmark = pytest.mark.usefixtures("two_node_swarm")
__all__ = ["two_node_swarm"]  # the module-scoped fixture, used by every test here


@pytest.fixture(scope="module")
def drill_image(two_node_swarm: TwoNodeSwarm, workload_image: str) -> str:
    """The workload image in the swarm's registry, by digest (both nodes pull these bytes)."""
    return push_for_swarm(two_node_swarm, workload_image, "drill/workload:1")


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
    network, service, port = "swiftdeploy-drill-probe", "swiftdeploy-drill-probe", free_port()
    run("docker", "network", "create", "--driver", "overlay", "--attachable", network)
    try:
        run(
            "docker", "service", "create", "--detach", "--name", service, "--network", network,
            "--endpoint-mode", "dnsrr", "--constraint", f"node.labels.{WORKER_LABEL}==worker",
            "--publish", f"mode=host,target=3000,published={port}",
            "--env", "MODE=stable", "--env", "VERSION=1.0.0", drill_image,
        )  # fmt: skip
        task = running_task(service)
        assert task["NodeID"] == two_node_swarm.worker_id
        assert two_node_swarm.worker.docker(
            "ps", "--quiet", "--filter", f"label=com.docker.swarm.service.name={service}"
        ).stdout.strip()

        address = next(
            a for n in task["NetworksAttachments"] if n["Network"]["Spec"]["Name"] == network for a in n["Addresses"]
        ).split("/")[0]
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
