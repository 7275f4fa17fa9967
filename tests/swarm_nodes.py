"""A real two-node Docker Swarm on this one machine, for the multi-node drill.

The machine's dockerd is the manager; the worker is a second dockerd the fixture starts inside a
network namespace it makes (`ip netns add`), joined to the host over a veth pair on the private
/30 WORKER_NET (HOST_ADDR on the host end, WORKER_ADDR inside; no other address is touched). The
daemon runs under `nsenter --net=...` (not `ip netns exec`, which remounts /sys and hides the
cgroup mounts) with its own data root, exec root (so its own containerd), pidfile, unix socket
and cgroup parent; it shares the host's filesystem, kernel and UTS name (both nodes are called
like the machine, so tell them apart by id or by the node label WORKER_LABEL).

Images: a swarm service has one image reference for every node. The worker cannot reach the
host's loopback, so the fixture mirrors a test registry into the namespace: a second, read-only
docker-registry process inside it, listening on the same `127.0.0.1:PORT` and serving the same
storage folder. `127.0.0.1:PORT/name@sha256:...` then resolves to the same bytes on both nodes,
without `--insecure-registry` on either daemon (dockerd trusts plain HTTP to 127.0.0.0/8).

The whole life of the swarm holds the machine-wide swarm lock (tests/swarm.py), so the
single-node fixture and this one never share or tear down each other's swarm. Teardown: the
worker leaves and its daemon stops, its folders go, the namespace and veth are deleted, the
manager leaves the swarm. Fixed names (a crash's leftovers are cleared under the lock on the
next run).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.servers import RegistryServer, docker_socket_alive, missing, require_binary
from tests.swarm import init_swarm, leave_swarm, swarm_lock

NETNS = "swiftdeploy-worker"
VETH_HOST, VETH_WORKER = "sdworker0h", "sdworker0w"  # interface names: 15 characters at most
WORKER_NET = "10.231.7.0/30"
HOST_ADDR, WORKER_ADDR = "10.231.7.1", "10.231.7.2"
ROOT = Path("/tmp/swiftdeploy-swarm-worker")  # short: unix socket paths stay under 108 bytes
WORKER_LABEL = "swiftdeploy.node"  # node label: `manager` / `worker` (constraint node.labels.<it>==worker)
JOIN_TIMEOUT = 60.0
CGROUP_PARENT = "/swiftdeploy-worker"  # the worker's containers' cgroups (a crash's strays are found there)


def run(*args: str, timeout: float = 60, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout)
    if check and done.returncode != 0:
        pytest.fail(f"`{' '.join(args)}` failed ({done.returncode}): {done.stderr.strip()[-1500:]}", pytrace=False)
    return done


def in_netns(*args: str) -> list[str]:
    """A command line that runs in the worker's network namespace only (mounts, cgroups shared)."""
    return ["nsenter", f"--net=/run/netns/{NETNS}", *args]


@dataclass
class WorkerDaemon:
    """The second dockerd, inside NETNS, with every piece of state under `root`."""

    root: Path = ROOT
    process: subprocess.Popen[bytes] | None = None

    @property
    def socket(self) -> Path:
        return self.root / "docker.sock"

    @property
    def host(self) -> str:
        """Its DOCKER_HOST (`docker -H ...`, aiodocker.Docker(url=...))."""
        return f"unix://{self.socket}"

    @property
    def log(self) -> Path:
        return self.root / "dockerd.log"

    def docker(self, *args: str, timeout: float = 60, check: bool = True) -> subprocess.CompletedProcess[str]:
        return run("docker", "-H", self.host, *args, timeout=timeout, check=check)

    def start(self, timeout: float = 60.0) -> WorkerDaemon:
        (self.root / "data").mkdir(parents=True, exist_ok=True)
        args = [
            require_binary("dockerd"), "--data-root", str(self.root / "data"), "--exec-root", str(self.root / "exec"),
            "--pidfile", str(self.root / "dockerd.pid"), "-H", self.host, "--storage-driver", "overlay2",
            "--cgroup-parent", CGROUP_PARENT, "--log-level", "warn",
        ]  # fmt: skip
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(in_netns(*args), stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while not docker_socket_alive(str(self.socket)):
            if self.process.poll() is not None or time.monotonic() > deadline:
                tail = self.log.read_text(errors="replace")[-2000:]
                pytest.fail(f"the worker dockerd did not start (exit {self.process.poll()}): {tail}", pytrace=False)
            time.sleep(0.1)
        return self

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, timeout: float = 30.0) -> float:
        """SIGTERM, as `systemctl stop docker` does (its containers stop with it); the seconds
        until the daemon had exited. SIGKILL (and its containerd) after `timeout`."""
        started = time.monotonic()
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        _kill_pidfile(self.root / "exec" / "containerd" / "containerd.pid")
        return time.monotonic() - started


def _kill_pidfile(pidfile: Path) -> None:
    with contextlib.suppress(FileNotFoundError, ValueError, ProcessLookupError):
        os.kill(int(pidfile.read_text().strip()), signal.SIGKILL)


def _unmount_under(root: Path) -> None:
    """Lazily unmount what a killed daemon left mounted under `root` (overlay layers, netns files)."""
    mounts = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()]
    for point in sorted((m for m in mounts if m.startswith(f"{root}/")), key=len, reverse=True):
        subprocess.run(["umount", "-l", point], capture_output=True)


@dataclass
class RegistryMirror:
    """A read-only docker-registry inside NETNS on the same `127.0.0.1:PORT` as `registry`,
    serving the same storage: the worker pulls `registry.host/...@digest` from it."""

    registry: RegistryServer
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> RegistryMirror:
        workdir = self.registry.workdir
        config = {
            "version": 0.1,
            "log": {"level": "warn"},
            "storage": {
                "filesystem": {"rootdirectory": str(workdir / "data")},
                "maintenance": {"readonly": {"enabled": True}},
            },
            "http": {"addr": self.registry.host},
        }
        mirror = ROOT / "mirror.yml"  # under ROOT: a crash's stray mirror is found by that path
        mirror.write_text(json.dumps(config))  # JSON is YAML
        with (workdir / "mirror.log").open("ab") as log:
            self.process = subprocess.Popen(
                in_netns(self.registry.binary, "serve", str(mirror)),
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 10
        while run(*in_netns("bash", "-c", f"exec 3<>/dev/tcp/127.0.0.1/{self.registry.port}"), check=False).returncode:
            if self.process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the registry mirror in {NETNS} did not start: {(workdir / 'mirror.log').read_text()}")
            time.sleep(0.1)
        return self

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)


def _kill_strays() -> None:
    """What a killed worker daemon leaves running: its containerd shims (their command line names
    ROOT) and its containers (in the cgroups under CGROUP_PARENT)."""
    pids = {int(p.parent.name) for p in Path("/proc").glob("[0-9]*/cmdline") if str(ROOT).encode() in _read(p)}
    for procs in Path("/sys/fs/cgroup").glob(f"**/{CGROUP_PARENT.strip('/')}/**/cgroup.procs"):
        pids |= {int(pid) for pid in _read(procs).split()}
    for pid in pids - {os.getpid()}:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    time.sleep(0.2 if pids else 0)
    parents = Path("/sys/fs/cgroup").glob(f"**/{CGROUP_PARENT.strip('/')}")
    for folder in sorted((d for p in parents for d in [p, *p.rglob("*")] if d.is_dir()), key=lambda d: -len(d.parts)):
        with contextlib.suppress(OSError):  # still busy, or not a cgroup folder of ours
            folder.rmdir()


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError:  # gone meanwhile
        return b""


def clear_leftovers() -> None:
    """A crashed run's namespace, veth, daemon, containers and folders (ours by their fixed
    names); call with the swarm lock held."""
    _kill_pidfile(ROOT / "dockerd.pid")
    _kill_pidfile(ROOT / "exec" / "containerd" / "containerd.pid")
    _kill_strays()
    run("ip", "link", "del", VETH_HOST, check=False)
    run("ip", "netns", "del", NETNS, check=False)
    if ROOT.exists():
        _unmount_under(ROOT)
        shutil.rmtree(ROOT, ignore_errors=True)


def make_namespace() -> None:
    """NETNS with the veth pair on WORKER_NET, loopback up."""
    clash = run("ip", "-o", "addr", "show", "to", WORKER_NET, check=False).stdout.strip()
    if clash:
        pytest.fail(f"{WORKER_NET} is already in use on this machine: {clash}", pytrace=False)
    for command in (
        ("ip", "netns", "add", NETNS),
        ("ip", "link", "add", VETH_HOST, "type", "veth", "peer", "name", VETH_WORKER),
        ("ip", "link", "set", VETH_WORKER, "netns", NETNS),
        ("ip", "addr", "add", f"{HOST_ADDR}/30", "dev", VETH_HOST),
        ("ip", "link", "set", VETH_HOST, "up"),
        ("ip", "-n", NETNS, "addr", "add", f"{WORKER_ADDR}/30", "dev", VETH_WORKER),
        ("ip", "-n", NETNS, "link", "set", VETH_WORKER, "up"),
        ("ip", "-n", NETNS, "link", "set", "lo", "up"),
    ):
        run(*command)


def node_label(node_id: str, value: str) -> None:
    run("docker", "node", "update", "--label-add", f"{WORKER_LABEL}={value}", node_id)


@dataclass
class TwoNodeSwarm:
    """The manager (this machine's dockerd) and one worker, both Ready."""

    manager_id: str
    worker_id: str
    worker: WorkerDaemon
    registry: RegistryServer
    join_seconds: float  # `swarm join` until the manager lists the worker Ready
    mirror: RegistryMirror | None = None

    def node_state(self, node_id: str) -> str:
        """'ready', 'down', 'unknown'... as the manager sees it."""
        return run("docker", "node", "inspect", node_id, "--format", "{{.Status.State}}").stdout.strip()

    def wait_worker(self, state: str, timeout: float = 60.0) -> float:
        """Seconds until the manager sees the worker in `state` ('ready' or 'down')."""
        started = time.monotonic()
        while self.node_state(self.worker_id) != state:
            if time.monotonic() - started > timeout:
                pytest.fail(f"the worker is not {state} after {timeout:.0f}s", pytrace=False)
            time.sleep(0.2)
        return time.monotonic() - started

    def restart_worker(self) -> float:
        """Start the worker's dockerd again (a test stopped it); it rejoins from its own state.
        Seconds until the manager lists it ready."""
        started = time.monotonic()
        if not self.worker.running:
            self.worker.start()
        self.wait_worker("ready")
        return time.monotonic() - started


def join_worker(worker: WorkerDaemon) -> tuple[str, float]:
    """Join `worker` to the host's swarm; (its node id, seconds until the manager lists it Ready)."""
    token = run("docker", "swarm", "join-token", "-q", "worker").stdout.strip()
    started = time.monotonic()
    worker.docker(
        "swarm", "join", "--token", token, "--advertise-addr", WORKER_ADDR,
        "--listen-addr", f"{WORKER_ADDR}:2377", f"{HOST_ADDR}:2377", timeout=JOIN_TIMEOUT,
    )  # fmt: skip
    node_id = worker.docker("info", "--format", "{{.Swarm.NodeID}}").stdout.strip()
    deadline = started + JOIN_TIMEOUT
    while (
        run("docker", "node", "inspect", node_id, "--format", "{{.Status.State}}", check=False).stdout.strip()
        != "ready"
    ):
        if time.monotonic() > deadline:
            pytest.fail(f"worker {node_id} not Ready {JOIN_TIMEOUT:.0f}s after joining", pytrace=False)
        time.sleep(0.2)
    return node_id, time.monotonic() - started


@contextlib.contextmanager
def two_node_swarm_running(registry: RegistryServer) -> Iterator[TwoNodeSwarm]:
    """The two-node swarm for a block: lock, namespace, worker daemon, mirror, init, join; all
    undone afterwards in reverse, each step even when an earlier one failed."""
    for binary in ("ip", "nsenter", "dockerd", "docker-registry"):
        require_binary(binary)
    if not docker_socket_alive():
        missing("dockerd (/var/run/docker.sock; run scripts/start-servers)")
    with swarm_lock(), contextlib.ExitStack() as undo:
        clear_leftovers()
        undo.callback(clear_leftovers)
        make_namespace()
        worker = WorkerDaemon()
        undo.callback(worker.stop)
        worker.start()
        mirror = RegistryMirror(registry)
        undo.callback(mirror.stop)
        mirror.start()
        manager_id = init_swarm(HOST_ADDR, listen_addr=f"{HOST_ADDR}:2377")
        undo.callback(leave_swarm)
        node_label(manager_id, "manager")
        undo.callback(lambda: worker.running and worker.docker("swarm", "leave", "--force", check=False))
        worker_id, join_seconds = join_worker(worker)
        node_label(worker_id, "worker")
        yield TwoNodeSwarm(manager_id, worker_id, worker, registry, join_seconds, mirror)


@pytest.fixture(scope="module")
def two_node_swarm(registry: RegistryServer) -> Iterator[TwoNodeSwarm]:
    """This machine's dockerd as manager plus a worker dockerd in its own network namespace, for
    one module; images for the worker go through `registry` (see push_for_swarm)."""
    with two_node_swarm_running(registry) as swarm:
        yield swarm


def push_for_swarm(swarm: TwoNodeSwarm, local: str, name: str) -> str:
    """Push the local image `local` to the swarm's registry as `name`; the reference by digest
    (`127.0.0.1:PORT/name@sha256:...`) that both nodes resolve to the same image."""
    reference = f"{swarm.registry.host}/{name}"
    run("docker", "tag", local, reference)
    run("docker", "push", reference, timeout=600)
    digests = json.loads(run("docker", "image", "inspect", "--format", "{{json .RepoDigests}}", reference).stdout)
    return next(d for d in digests if d.startswith(f"{swarm.registry.host}/{name.split(':')[0]}@"))
