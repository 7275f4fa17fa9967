"""A Docker Swarm on the machine's dockerd for tests, one test module at a time.

Every fixture that puts the dockerd into a swarm first takes an exclusive `fcntl.flock` on
LOCK_PATH and holds it until the swarm is left, so two test sessions (or two helpers' fixtures:
the single-node one here and a two-node one) never share or tear down each other's swarm. A swarm
this module created carries the node label MARKER_LABEL; a marked swarm found while holding the
lock is a leftover of a crashed run and is left before a new one is made. A swarm without the
mark is somebody else's: the fixture fails naming it and never touches it.

The docker runtime keeps working while the swarm is active (plain containers and bridge networks
are unaffected), so other tests may run beside it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO

import pytest

from tests.servers import docker_socket_alive, missing

LOCK_PATH = "/tmp/swiftdeploy-swarm.lock"
MARKER_LABEL = "swiftdeploy.test-swarm"
LOCK_TIMEOUT = 1800.0  # another session's swarm test may run for a while


def docker(*args: str, timeout: float = 60, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout, check=check)


def swarm_info() -> dict[str, object]:
    """`docker info`'s Swarm block: LocalNodeState ('inactive', 'active', ...), NodeID, Cluster..."""
    info: dict[str, object] = json.loads(docker("info", "--format", "{{json .Swarm}}").stdout)
    return info


@contextlib.contextmanager
def swarm_lock(timeout: float = LOCK_TIMEOUT) -> Iterator[IO[str]]:
    """Hold the machine-wide swarm lock (exclusive flock on LOCK_PATH) for the block."""
    handle = open(LOCK_PATH, "a+")
    deadline = time.monotonic() + timeout
    try:
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    pytest.fail(f"{LOCK_PATH} is still locked after {timeout:.0f}s (another swarm test)")
                time.sleep(0.5)
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        yield handle
    finally:
        with contextlib.suppress(OSError):
            fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()


def ours_left_over() -> bool:
    """True when the active swarm is one this module made (the node carries MARKER_LABEL)."""
    node = docker("node", "inspect", "self", "--format", "{{json .Spec.Labels}}", check=False)
    if node.returncode != 0:
        return False
    labels = json.loads(node.stdout or "null") or {}
    return MARKER_LABEL in labels


def leave_swarm() -> None:
    docker("swarm", "leave", "--force", check=False)


def init_swarm(advertise_addr: str = "127.0.0.1", listen_addr: str | None = None) -> str:
    """Put the dockerd into a new swarm (call with swarm_lock held); returns this node's id.
    `listen_addr` (`ADDR:2377`) keeps the manager's port off every other address (default 0.0.0.0).

    A leftover swarm of ours is left first; anybody else's swarm fails the test, untouched.
    """
    info = swarm_info()
    if info.get("LocalNodeState") != "inactive":
        if not ours_left_over():
            cluster = info.get("Cluster") or {}
            cluster_id = cluster.get("ID") if isinstance(cluster, dict) else None
            pytest.fail(
                f"dockerd is already in a swarm it did not get from tests/swarm.py "
                f"(node {info.get('NodeID')}, cluster {cluster_id}, state {info.get('LocalNodeState')}); "
                "leave it first (`docker swarm leave --force`) if it is not needed",
                pytrace=False,
            )
        leave_swarm()
    listen = ["--listen-addr", listen_addr] if listen_addr else []
    docker("swarm", "init", "--advertise-addr", advertise_addr, *listen)
    node_id = str(swarm_info()["NodeID"])
    docker("node", "update", "--label-add", f"{MARKER_LABEL}={os.getpid()}", node_id)
    return node_id


@dataclass(frozen=True)
class Swarm:
    node_id: str
    advertise_addr: str


@pytest.fixture(scope="module")
def single_node_swarm() -> Iterator[Swarm]:
    """This machine's dockerd as a one-node swarm manager (advertising 127.0.0.1) for one module.

    Takes the swarm lock first, leaves the swarm (`docker swarm leave --force`) at the end.
    """
    if not docker_socket_alive():
        missing("dockerd (/var/run/docker.sock; run scripts/start-servers)")
    with swarm_lock():
        node_id = init_swarm("127.0.0.1")
        try:
            yield Swarm(node_id=node_id, advertise_addr="127.0.0.1")
        finally:
            leave_swarm()
