"""`swiftdeploy init` turns the manifest into files that real nginx and docker-compose accept,
with the same bytes every time."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from swiftdeploy_core.errors import ConfigError
from swiftdeploy_core.project.manifest import load_manifest
from swiftdeploy_core.project.render import GENERATED_FILES, header_sha256, render_all, write_all
from swiftdeploy_core.project.router import conf_dirs, localize_for_test
from tests.servers import REPO_ROOT, require_binary, run_swiftdeploy

ORIGINAL = (REPO_ROOT / "manifest.yaml").read_text()


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A folder holding the original's manifest, as a user's checkout would."""
    (tmp_path / "manifest.yaml").write_text(ORIGINAL)
    return tmp_path


def init(folder: Path, *args: str) -> subprocess.CompletedProcess[str]:
    result = run_swiftdeploy("init", *args, cwd=folder)
    assert result.returncode == 0, result.stderr
    return result


def snapshot(folder: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted((folder / "generated").iterdir())}


def test_init_writes_the_three_files_and_says_so(project):
    result = init(project)
    assert sorted(snapshot(project)) == sorted(GENERATED_FILES)
    assert "wrote generated/nginx.conf" in result.stdout
    assert "Traceback" not in result.stderr


def test_deleting_generated_and_running_init_again_gives_identical_bytes(project):
    init(project)
    first = snapshot(project)
    init(project)
    assert snapshot(project) == first  # running twice changes nothing
    shutil.rmtree(project / "generated")
    init(project)
    assert snapshot(project) == first


def test_every_file_starts_with_a_do_not_edit_header_carrying_the_manifests_hash(project):
    init(project)
    digest = hashlib.sha256((project / "manifest.yaml").read_bytes()).hexdigest()
    for name, content in snapshot(project).items():
        first_line = content.decode().splitlines()[0]
        assert first_line.startswith("# generated from manifest.yaml"), name
        assert "do not edit" in first_line
        assert header_sha256(content.decode()) == digest


def test_a_changed_manifest_changes_the_files(project):
    init(project)
    before = snapshot(project)
    (project / "manifest.yaml").write_text(ORIGINAL.replace("port: 8080", "port: 8181"))
    init(project)
    after = snapshot(project)
    assert all(before[name] != after[name] for name in GENERATED_FILES)
    assert b"listen 0.0.0.0:8181;" in after["nginx.conf"]


def test_real_nginx_accepts_the_generated_config(project, tmp_path_factory):
    nginx = require_binary("nginx")
    init(project)
    prefix = tmp_path_factory.mktemp("nginx-t")
    copy = localize_for_test((project / "generated" / "nginx.conf").read_text(), prefix)
    for folder in conf_dirs(copy):
        folder.mkdir(parents=True, exist_ok=True)
    (prefix / "nginx.conf").write_text(copy)
    result = subprocess.run(
        [nginx, "-t", "-p", str(prefix), "-c", str(prefix / "nginx.conf")], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert "server 127.0.0.1:3000" in copy and str(prefix) in copy


def test_real_docker_compose_accepts_the_generated_compose_file(project):
    compose = require_binary("docker-compose")
    init(project)
    folder = project / "generated"
    result = subprocess.run([compose, "-f", "docker-compose.yml", "config"], cwd=folder, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    resolved = yaml.safe_load(result.stdout)
    assert set(resolved["services"]) == {"app-stable-1", "app-nginx", "app-opa"}


def compose_of(project: Path) -> dict:
    return yaml.safe_load((project / "generated" / "docker-compose.yml").read_text())


def test_the_compose_file_describes_the_stack(project):
    init(project)
    compose = compose_of(project)
    app, nginx, _opa = (compose["services"][n] for n in ("app-stable-1", "app-nginx", "app-opa"))
    assert app["environment"]["MODE"] == "stable" and app["environment"]["VERSION"] == "1.0.0"
    assert app["image"] == "swift-deploy-1-node:latest" and "healthcheck" in app
    assert nginx["ports"] == ["127.0.0.1:8080:8080"] and "healthcheck" in nginx
    assert "./nginx.conf:/etc/nginx/nginx.conf:ro" in nginx["volumes"]
    assert compose["networks"]["swiftdeploy-net"] == {"name": "swiftdeploy-net", "driver": "bridge"}
    assert sorted(compose["volumes"]) == ["app-logs", "nginx-logs"]


def test_opa_sits_alone_on_an_internal_network_with_no_published_port(project):
    init(project)
    compose = compose_of(project)
    opa = compose["services"]["app-opa"]
    assert "ports" not in opa
    assert opa["networks"] == ["swiftdeploy-net-internal"]
    assert compose["networks"]["swiftdeploy-net-internal"]["internal"] is True
    assert opa["command"][:2] == ["run", "--server"] and opa["command"][-1] == "/policies"
    assert "../policies:/policies:ro" in opa["volumes"]  # the project's own policies, as the gatekeeper reads
    assert (project / "policies" / "canary.rego").is_file()
    members = [name for name, s in compose["services"].items() if "swiftdeploy-net-internal" in s["networks"]]
    assert members == ["app-opa"]
    assert "opa" not in (project / "generated" / "nginx.conf").read_text().lower().replace("generated", "")


def test_the_opa_config_logs_decisions_to_the_console_and_polls_nothing(project):
    init(project)
    config = yaml.safe_load((project / "generated" / "opa-config.yaml").read_text())
    assert config["decision_logs"] == {"console": True}
    assert "bundles" not in config and "services" not in config
    assert config["labels"]["address"] == "app-opa:8181"


def test_replicas_give_one_container_and_one_upstream_server_each(project):
    (project / "manifest.yaml").write_text(ORIGINAL.replace("  mode: stable", "  mode: stable\n  replicas: 2"))
    init(project)
    assert {"app-stable-1", "app-stable-2"} <= set(compose_of(project)["services"])
    conf = (project / "generated" / "nginx.conf").read_text()
    assert "server app-stable-1:3000" in conf and "server app-stable-2:3000" in conf


def test_init_with_a_manifest_elsewhere_writes_beside_that_manifest(project, tmp_path_factory):
    elsewhere = tmp_path_factory.mktemp("cwd")
    init(elsewhere, "--manifest", str(project / "manifest.yaml"))
    assert (project / "generated" / "nginx.conf").is_file()
    assert not (elsewhere / "generated").exists()


def test_a_generated_path_that_is_a_file_is_one_line_and_writes_nothing(project):
    (project / "generated").write_text("not a folder")
    result = run_swiftdeploy("init", cwd=project)
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert "is not a folder" in result.stderr and "Traceback" not in result.stderr


def test_writing_is_all_or_nothing(project):
    loaded = load_manifest(project / "manifest.yaml")
    folder = project / "generated"
    folder.mkdir()
    (folder / "nginx.conf").write_text("old\n")
    (folder / "opa-config.yaml").mkdir()  # the last file cannot be written
    with pytest.raises(ConfigError, match="nothing was written"):
        write_all(folder, render_all(loaded))
    assert (folder / "nginx.conf").read_text() == "old\n"
    assert sorted(p.name for p in folder.iterdir()) == ["nginx.conf", "opa-config.yaml"]  # no temp files left


def test_the_generated_config_passes_nginx_t_inside_the_router_image(project, nginx_image):
    """The container context the original learned to validate in: names resolve there."""
    init(project)
    conf = project / "generated" / "nginx.conf"
    result = subprocess.run(
        ["docker", "run", "--rm", "--network", "none", "--add-host", "app-stable-1:127.0.0.1",
         "-v", f"{conf}:/etc/nginx/nginx.conf:ro", nginx_image, "nginx", "-t"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
