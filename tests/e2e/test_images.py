"""The images are built here, on a machine with dockerd and no registry, and they work: the
workload answers /healthz from a container, the router passes `nginx -t`, and a second build
does nothing."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from importlib.machinery import SourceFileLoader
from importlib.util import module_from_spec, spec_from_loader
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.eventually import eventually_sync
from tests.servers import REPO_ROOT

pytestmark = pytest.mark.docker


def docker(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def container_name() -> Iterator[str]:
    name = f"swd-workload-test-{uuid.uuid4().hex[:8]}"
    yield name
    docker("rm", "--force", name)


def get_json(url: str, deadline: float) -> dict:
    def fetch() -> dict:
        with urllib.request.urlopen(url, timeout=2) as response:
            return json.loads(response.read())

    return eventually_sync(fetch, f"{url} to answer", max(0.0, deadline - time.monotonic()), interval=0.1,
                           ignoring=(OSError,))  # fmt: skip


def test_a_workload_container_answers_healthz_on_a_loopback_port(workload_image, container_name):
    started = docker("run", "--detach", "--name", container_name, "--publish", "127.0.0.1::3000",
                     "--env", "MODE=canary", "--env", "VERSION=9.9.9", workload_image)  # fmt: skip
    assert started.returncode == 0, started.stderr
    port = docker("port", container_name, "3000/tcp").stdout.split()[0].rsplit(":", 1)[1]
    base = f"http://127.0.0.1:{port}"
    health = get_json(f"{base}/healthz", deadline=time.monotonic() + 30)
    assert health["status"] == "ok" and health["uptime_seconds"] >= 0
    assert get_json(f"{base}/", deadline=time.monotonic() + 5)["version"] == "9.9.9"
    user = docker("exec", container_name, "id", "-un").stdout.strip()
    assert user == "nobody"


def test_the_nginx_image_passes_nginx_t(nginx_image):
    result = docker("run", "--rm", "--network", "none", nginx_image, "nginx", "-t")
    assert result.returncode == 0, result.stderr
    assert "syntax is ok" in result.stderr and "test is successful" in result.stderr
    cmd = json.loads(docker("image", "inspect", "--format", "{{json .Config.Cmd}}", nginx_image).stdout)
    assert cmd == ["nginx", "-g", "daemon off;"]


def test_the_controlplane_image_holds_redis_and_the_whole_package(controlplane_image):
    script = (
        "redis-server --version && swiftdeploy --help >/dev/null && "
        "python -c 'import services, workload, swiftdeploy_core as core; print(core.__version__)'"
    )
    result = docker("run", "--rm", "--network", "none", controlplane_image, "sh", "-c", script)
    assert result.returncode == 0, result.stderr
    assert "Redis server v=" in result.stdout and "0.1.0" in result.stdout


def test_the_base_has_bookworms_python_for_the_downloaded_wheels(swiftdeploy_images):
    result = docker("run", "--rm", "--network", "none", swiftdeploy_images["base"], "python3", "-c",
                    "import platform; print(platform.python_version())")  # fmt: skip
    build_images = load_build_script()
    assert result.stdout.strip() == build_images.PYTHON_TARGET[0]


def test_a_second_build_does_nothing(swiftdeploy_images):
    started = time.monotonic()
    result = subprocess.run([sys.executable, str(REPO_ROOT / "scripts" / "build-images"), "--quiet"],
                            capture_output=True, text=True, timeout=120)  # fmt: skip
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert [line.split()[:3] for line in lines] == [["cached", n, t] for n, t in swiftdeploy_images.items()]
    assert time.monotonic() - started < 30


# --- the apt mirror comes from the machine, never from the repository ----------------------------


def load_build_script():
    """scripts/build-images as a module (it has no .py suffix: it is a command)."""
    if "build_images" not in sys.modules:
        loader = SourceFileLoader("build_images", str(REPO_ROOT / "scripts" / "build-images"))
        module = module_from_spec(spec_from_loader("build_images", loader))
        sys.modules["build_images"] = module  # dataclasses look their module up there
        loader.exec_module(module)
    return sys.modules["build_images"]


def test_the_mirror_is_read_from_deb822_sources(tmp_path: Path):
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list.d" / "debian.sources").write_text(
        "Types: deb\n# a comment\nURIs: http://mirror.invalid/debian\nSuites: bookworm bookworm-updates\n"
        "Components: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n\n"
        "Types: deb\nURIs: http://mirror.invalid/debian-security\nSuites: bookworm-security\n"
    )  # fmt: skip
    assert load_build_script().apt_mirror(tmp_path) == (
        "http://mirror.invalid/debian", "/usr/share/keyrings/debian-archive-keyring.gpg"
    )  # fmt: skip


def test_the_mirror_is_read_from_a_one_line_sources_list(tmp_path: Path):
    (tmp_path / "sources.list").write_text(
        "# deb http://old.invalid/debian bookworm main\n"
        "deb [arch=amd64] http://mirror.invalid/debian bookworm main\n"
    )  # fmt: skip
    assert load_build_script().apt_mirror(tmp_path) == ("http://mirror.invalid/debian", None)


def test_no_bookworm_source_is_a_one_line_error(tmp_path: Path):
    module = load_build_script()
    with pytest.raises(module.BuildError, match="no apt source for bookworm"):
        module.apt_mirror(tmp_path)


def test_no_mirror_host_is_written_into_the_repository():
    host = urlsplit(load_build_script().apt_mirror()[0]).hostname
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO_ROOT, capture_output=True, text=True).stdout.split()
    for name in tracked:
        path = REPO_ROOT / name
        if path.is_file():
            assert host not in path.read_text(errors="ignore"), name


def test_without_dockerd_the_build_says_so_in_one_line(tmp_path: Path):
    env = {"PATH": "/usr/bin:/bin", "DOCKER_HOST": f"unix://{tmp_path}/no-docker.sock", "HOME": str(tmp_path)}
    result = subprocess.run([sys.executable, str(REPO_ROOT / "scripts" / "build-images")],
                            capture_output=True, text=True, timeout=60, env=env)  # fmt: skip
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "build-images: dockerd is not reachable (is it running? scripts/start-servers starts it)"
    ]


def test_an_unknown_image_name_is_refused():
    result = subprocess.run([sys.executable, str(REPO_ROOT / "scripts" / "build-images"), "--only", "redis"],
                            capture_output=True, text=True, timeout=60)  # fmt: skip
    assert result.returncode == 2
    assert "unknown image 'redis'" in result.stderr


def test_the_workload_image_can_carry_extra_version_tags(workload_image):
    tag = f"swiftdeploy/workload:0.0.0-test-{uuid.uuid4().hex[:8]}"
    try:
        result = subprocess.run([sys.executable, str(REPO_ROOT / "scripts" / "build-images"), "--quiet",
                                 "--only", "workload", "--workload-tag", tag.split(":")[1]],
                                capture_output=True, text=True, timeout=300)  # fmt: skip
        assert result.returncode == 0, result.stderr
        ids = {docker("image", "inspect", "--format", "{{.Id}}", t).stdout for t in (tag, workload_image)}
        assert len(ids) == 1
    finally:
        docker("rmi", tag)
