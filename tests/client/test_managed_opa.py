"""The OPA the control plane runs (`policy.engine: opa`, `policy.opa: process | container`): `up`
starts it before the gatekeeper, only the gatekeeper can reach it, it is restarted when it dies and
reloaded when it serves other policies than the project's files, and `down` leaves none behind.

No OPA binary or image exists here: the process is the stand-in `opa` executable (tests/bin/opa,
OPA's arguments, tests/opa_api.py's REST API) and the container the stand-in image built from it.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

import policies
from swiftdeploy_core.project import opa as opa_api
from swiftdeploy_core.project.manifest import PolicySpec
from tests.opa_api import write_opa_executable
from tests.servers import REPO_ROOT, free_port

HEALTHY_HOST = '{"disk_free_gb": 1000000, "cpu_load": 0}'
PARTIAL_CANARY = '{"error_rate": 0, "p99_latency_ms": 10}'  # the example: `requests` absent


class Project:
    def __init__(self, root: Path, policy: str, **env: str) -> None:
        self.root = root
        manifest = (REPO_ROOT / "manifest.yaml").read_text().replace("port: 8080", f"port: {free_port()}")
        (root / "manifest.yaml").write_text(f"{manifest}runtime: process\npolicy:\n  engine: opa\n{policy}")
        self.env = {k: v for k, v in os.environ.items() if k != "REDIS_URL" and not k.startswith("SWIFTDEPLOY_")}
        self.env.update(
            PYTHONPATH=str(REPO_ROOT), PATH=f"{write_opa_executable(root / 'bin').parent}:{os.environ['PATH']}", **env
        )

    def sd(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "swiftdeploy_core", *args], cwd=self.root, env=self.env,
                              capture_output=True, text=True, timeout=timeout)  # fmt: skip

    def record(self) -> opa_api.ManagedOpa:
        record = opa_api.read_managed(self.root)
        assert record is not None, "no .swiftdeploy/opa.json"
        return record

    def files_revision(self) -> str:
        return policies.revision({p.name: p.read_bytes() for p in policies.policy_files(self.root / "policies")})

    def check(self, domain: str, document: str) -> subprocess.CompletedProcess[str]:
        return self.sd("policy", "check", domain, "--input", document, "--json")

    def up(self) -> None:
        assert (init := self.sd("init")).returncode == 0, init.stderr
        started = self.sd("up", "--timeout", "90")
        assert started.returncode == 0, started.stdout + started.stderr + self.log("supervisor.log")

    def log(self, name: str) -> str:
        path = self.root / ".swiftdeploy" / "logs" / name
        return path.read_text()[-3000:] if path.exists() else ""


def wait_for(check, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.3)
    pytest.fail(f"not within {timeout:g}s: {what}")


def decided(project: Project, domain: str, document: str, code: int) -> dict:
    result = project.check(domain, document)
    assert result.returncode == code, result.stdout + result.stderr
    made = json.loads(result.stdout)
    assert made["engine"] == "opa"
    return made


def validate_all_green(project: Project) -> str:
    result = project.sd("validate")
    assert result.returncode == 0 and result.stdout.splitlines()[-1].startswith("all "), result.stdout
    line = next(line for line in result.stdout.splitlines() if "policy engine" in line)
    assert f"serves the project's policies (revision {project.files_revision()})" in line, line
    return line


@pytest.fixture
def process_project(tmp_path: Path):
    # OPA_STANDIN_NO_WATCH: this OPA misses file changes, so the control plane must notice and reload.
    project = Project(tmp_path, "  opa: process\n", OPA_STANDIN_NO_WATCH="1")
    yield project
    project.sd("down")


def test_a_process_opa_listens_only_on_a_private_unix_socket_is_supervised_and_down_removes_it(process_project):
    project = process_project
    project.up()
    record = project.record()
    socket = project.root / ".swiftdeploy" / "opa" / "opa.sock"
    assert record.mode == "process" and record.url == f"unix://{socket}"
    assert stat.S_IMODE((socket.parent).stat().st_mode) == 0o700  # only its owner may enter
    assert stat.S_ISSOCK(socket.stat().st_mode)
    opa = psutil.Process(record.pid)
    assert [c for c in opa.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN] == []  # no TCP port
    assert str(socket) in {c.laddr for c in opa.net_connections(kind="unix")}
    assert "policy engine: OPA run by the control plane (process" in validate_all_green(project)

    allowed = decided(project, "infra", HEALTHY_HOST, 0)
    assert allowed["allow"] is True and allowed["policy_revision"] == project.files_revision()
    denied = decided(project, "canary", PARTIAL_CANARY, 3)
    assert denied["reasons"] == ["requests is missing from the input"]

    # Edited policies that this OPA misses: the decision says so, then the control plane reloads it.
    data = project.root / "policies" / "data.json"
    before = project.files_revision()
    data.write_text(data.read_text().replace('"disk_free_gb": 10', '"disk_free_gb": 2000000'))
    drifting = decided(project, "infra", HEALTHY_HOST, 0)  # OPA still serves the old threshold
    assert drifting["policy_revision"] == before
    assert drifting["policy_drift"] == (
        f"OPA serves policy revision {before}, but the project's policies/ is revision "
        f"{project.files_revision()}: the control plane reloads it"
    )
    wait_for(lambda: project.record().reloads == 1, 30, "a reload of the drifting OPA")
    # While OPA restarts, decisions fail closed ("policy engine unavailable"): wait for the new threshold's own reason.
    edited = ["disk free 1000000 GB is below the minimum of 2000000 GB"]
    reloaded = wait_for(lambda: (m := json.loads(project.check("infra", HEALTHY_HOST).stdout)) and m["reasons"] == edited and m,
                        30, "a decision with the edited threshold")  # fmt: skip
    assert reloaded["allow"] is False
    assert reloaded["policy_revision"] == project.files_revision() and reloaded["policy_drift"] is None

    # A killed OPA is started again, like any replica.
    old_pid = project.record().pid
    os.kill(old_pid, signal.SIGKILL)
    wait_for(lambda: project.record().restarts == 1 and project.record().pid != old_pid, 30, "OPA restarted")
    wait_for(lambda: project.check("canary", PARTIAL_CANARY).returncode == 3, 30, "decisions again")

    pid = project.record().pid
    assert project.sd("down").returncode == 0
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert not socket.exists() or not _listening(socket)
    assert opa_api.read_managed(project.root) is None


def _listening(socket: Path) -> bool:
    import socket as sockets

    with sockets.socket(sockets.AF_UNIX) as probe:
        try:
            probe.connect(str(socket))
        except OSError:
            return False
    return True


def test_up_without_an_opa_binary_is_one_line_and_starts_nothing(tmp_path):
    project = Project(tmp_path, "  opa: process\n  opa_binary: no-such-opa\n")
    assert project.sd("init").returncode == 0
    result = project.sd("up")
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.strip() == (
        "error: policy.opa: process needs an OPA binary: 'no-such-opa' is not on PATH "
        "(install OPA, or set policy.opa_binary to its path)"
    )
    assert not (tmp_path / ".swiftdeploy" / "controlplane.json").exists()


def test_opa_url_belongs_to_an_external_opa_only(tmp_path):
    project = Project(tmp_path, "  opa: process\n  opa_url: http://127.0.0.1:8181\n")
    result = project.sd("validate")
    assert result.returncode != 0 and "opa_url is for an OPA you run (opa: external)" in result.stdout + result.stderr
    # A managed OPA's manifest survives the bus: a deploy request carries every field, dumped.
    spec = PolicySpec(engine="opa", opa="process")
    assert PolicySpec.model_validate(spec.model_dump(mode="json")) == spec
    assert spec.external_url == PolicySpec().external_url == "http://127.0.0.1:8181"


# --- container ------------------------------------------------------------------------------------


def docker_json(*args: str):
    done = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.mark.docker
def test_a_container_opa_is_alone_on_an_internal_network_with_no_published_port(tmp_path, opa_standin_image):
    project = Project(tmp_path, f"  opa: container\n  opa_image: {opa_standin_image}\n")
    try:
        project.up()
        record = project.record()
        assert record.mode == "container" and record.url.startswith("http://") and record.url.endswith(":8181")
        [container] = docker_json("inspect", record.container)
        assert not container["HostConfig"]["PortBindings"] and not container["NetworkSettings"]["Ports"]
        assert set(container["NetworkSettings"]["Networks"]) == {record.network}
        assert container["HostConfig"]["ReadonlyRootfs"] is True
        mounts = {m["Destination"]: m for m in container["Mounts"]}
        assert mounts["/policies"]["RW"] is False
        assert mounts["/policies"]["Source"] == str((project.root / "policies").resolve())
        [network] = docker_json("network", "inspect", record.network)
        assert network["Internal"] is True
        assert [c["Name"] for c in network["Containers"].values()] == [record.container]  # nothing else joins
        assert "OPA run by the control plane (container" in validate_all_green(project)

        assert decided(project, "infra", HEALTHY_HOST, 0)["allow"] is True
        assert decided(project, "canary", PARTIAL_CANARY, 3)["reasons"] == ["requests is missing from the input"]
        data = project.root / "policies" / "data.json"  # --watch: an edit is served at once
        data.write_text(data.read_text().replace('"disk_free_gb": 10', '"disk_free_gb": 2000000'))
        wait_for(lambda: project.check("infra", HEALTHY_HOST).returncode == 3, 20, "the edit served")

        subprocess.run(["docker", "kill", record.container], capture_output=True, timeout=60)
        wait_for(lambda: project.record().restarts == 1, 30, "the container restarted")
        wait_for(lambda: project.check("canary", PARTIAL_CANARY).returncode == 3, 30, "decisions again")
        assert project.sd("down").returncode == 0
        assert subprocess.run(["docker", "inspect", record.container], capture_output=True).returncode != 0
        assert subprocess.run(["docker", "network", "inspect", record.network], capture_output=True).returncode != 0
        assert opa_api.read_managed(project.root) is None
    finally:
        project.sd("down")
