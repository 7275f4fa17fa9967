"""`swiftdeploy validate` runs the pre-flight checklist against real nginx, docker-compose, Redis
and dockerd: one ✓/✗ line per check with its reason, exit 0 only when every check passes."""

from __future__ import annotations

import json
import socket
import subprocess
from pathlib import Path

import pytest

import services.gatekeeper.checks  # noqa: F401 - registers the policy checks first, as run_checks does
from swiftdeploy_core.project import checks
from swiftdeploy_core.project.checks import CheckContext, CheckResult, run_checks
from swiftdeploy_core.settings import Settings
from tests.servers import REPO_ROOT, free_port, require_binary, run_swiftdeploy

ORIGINAL = (REPO_ROOT / "manifest.yaml").read_text()
CHECK_NAMES = [
    "manifest schema",
    "generated files",
    "nginx config (nginx -t)",
    "compose file (docker-compose config)",
    "nginx port free",
    "runtime reachable",
    "service settings",
    "images present or pullable",
    "swarm ready",
    "redis reachable",
    "policies compile",
    "policy tests",
    "input schemas",
    "policy engine",
]


@pytest.fixture(autouse=True)
def tools() -> None:
    require_binary("nginx")
    require_binary("docker-compose")


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """The original's manifest on a free port with the process runtime, initialised."""
    write_manifest(tmp_path, runtime="process", port=free_port())
    assert run_swiftdeploy("init", cwd=tmp_path).returncode == 0
    return tmp_path


def write_manifest(folder: Path, runtime: str, port: int) -> None:
    text = ORIGINAL.replace("port: 8080", f"port: {port}")
    (folder / "manifest.yaml").write_text(f"runtime: {runtime}\n{text}")


def validate(folder: Path, redis_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return run_swiftdeploy("validate", *args, cwd=folder, env={"REDIS_URL": redis_url})


def lines_of(result: subprocess.CompletedProcess[str]) -> dict[str, str]:
    """`name -> mark and reason` for every checklist line."""
    out = {}
    for line in result.stdout.splitlines():
        if line[:2] in ("✓ ", "✗ "):
            name, _, reason = line[2:].partition(": ")
            out[name] = f"{line[0]} {reason}"
    return out


def test_a_fresh_project_passes_every_check_and_exits_zero(project, redis_url):
    result = validate(project, redis_url)
    assert result.returncode == 0, result.stdout + result.stderr
    checklist = lines_of(result)
    assert list(checklist) == CHECK_NAMES
    assert all(mark.startswith("✓") for mark in checklist.values()), checklist
    assert result.stdout.splitlines()[-1] == "all 14 checks passed"


def test_the_docker_runtime_is_checked_by_asking_dockerd(tmp_path, redis_url, workload_image, nginx_image):
    """The seed's own manifest (nginx:latest, swift-deploy-1-node:latest) after scripts/build-images."""
    write_manifest(tmp_path, runtime="docker", port=free_port())
    run_swiftdeploy("init", cwd=tmp_path)
    result = validate(tmp_path, redis_url)
    checklist = lines_of(result)
    assert checklist["runtime reachable"].startswith("✓ runtime docker: dockerd"), result.stdout
    assert checklist["images present or pullable"] == "✓ swift-deploy-1-node:latest present; nginx:latest present"
    assert result.returncode == 0


def test_json_prints_the_same_checklist(project, redis_url):
    result = validate(project, redis_url, "--json")
    report = json.loads(result.stdout)
    assert report["ok"] is True and result.returncode == 0
    assert [c["name"] for c in report["checks"]] == CHECK_NAMES
    assert all(set(c) == {"name", "ok", "reason"} for c in report["checks"])


def test_missing_generated_files_fail_and_say_to_run_init(tmp_path, redis_url):
    write_manifest(tmp_path, runtime="process", port=free_port())
    result = validate(tmp_path, redis_url)
    assert result.returncode == 1
    checklist = lines_of(result)
    assert checklist["generated files"].startswith("✗ ") and "run `swiftdeploy init`" in checklist["generated files"]
    assert checklist["nginx config (nginx -t)"].startswith("✗ ")
    assert checklist["manifest schema"].startswith("✓ ")
    assert (
        result.stdout.splitlines()[-1] == "6 of 14 checks failed"
    )  # generated files, nginx, compose, and no policies (nor schemas) yet


def one_check(function, project: Path, redis_url: str = "redis://127.0.0.1:1/0") -> CheckResult:
    """Run the schema check, then one other check, in this process (each failure's reason)."""
    context = CheckContext(manifest_path=project / "manifest.yaml", settings=Settings(redis_url=redis_url))
    assert checks.manifest_schema(context).ok
    return function(context)


def test_a_manifest_changed_after_init_makes_the_files_stale(project):
    manifest = project / "manifest.yaml"
    manifest.write_text(manifest.read_text().replace("proxy_timeout: 30", "proxy_timeout: 31"))
    verdict = one_check(checks.generated_files, project)
    assert not verdict.ok and "nginx.conf is stale" in verdict.reason and "run `swiftdeploy init`" in verdict.reason


def test_a_hand_edited_file_is_caught_and_a_broken_nginx_conf_is_refused_by_nginx(project):
    conf = project / "generated" / "nginx.conf"
    conf.write_text(conf.read_text().replace("keepalive 16;", "keepalive sixteen;", 1))
    assert "nginx.conf was edited by hand" in one_check(checks.generated_files, project).reason
    nginx = one_check(checks.nginx_config, project)
    assert not nginx.ok and "[emerg]" in nginx.reason and "keepalive" in nginx.reason


def test_a_broken_compose_file_is_refused_by_docker_compose(project):
    compose = project / "generated" / "docker-compose.yml"
    compose.write_text(compose.read_text().replace("    restart: unless-stopped", "    restart: [oops]", 1))
    verdict = one_check(checks.compose_file, project)
    assert not verdict.ok and verdict.reason.startswith("docker-compose refused docker-compose.yml"), verdict


def test_a_busy_nginx_port_fails(project):
    port = int((project / "manifest.yaml").read_text().split("port: ")[2].split()[0])
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", port))
        busy.listen()
        verdict = one_check(checks.nginx_port_free, project)
    assert verdict == CheckResult(name="nginx port free", ok=False, reason=f"127.0.0.1:{port} is in use (nginx.port)")


def test_an_unreachable_redis_fails_with_the_url(project):
    url = f"redis://127.0.0.1:{free_port()}/0"
    verdict = one_check(checks.redis_reachable, project, url)
    assert not verdict.ok and verdict.reason.startswith(f"{url}: ") and "start redis-server" in verdict.reason


def test_the_process_runtime_needs_only_the_nginx_binary(project):
    verdict = one_check(checks.runtime_reachable, project)
    assert verdict.ok and verdict.reason.startswith("runtime process: nginx at /")


def test_a_bad_manifest_fails_the_schema_and_checks_nothing_else(tmp_path, redis_url):
    (tmp_path / "manifest.yaml").write_text(ORIGINAL.replace("port: 3000", "port: 70000"))
    result = validate(tmp_path, redis_url)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    checklist = lines_of(result)
    assert "services.port: must be between 1 and 65535 (got 70000)" in checklist["manifest schema"]
    assert checklist["nginx port free"] == "✗ not checked: the manifest is not valid"
    assert checklist["redis reachable"].startswith("✓ ")  # independent of the manifest


def test_other_modules_can_append_checks(project, redis_url):
    seen: list[Path] = []

    @checks.check
    def policies_compile(context: CheckContext) -> CheckResult:
        seen.append(context.loaded.root)
        return CheckResult(name="policies compile", ok=False, reason="example failure")

    try:
        results = run_checks(project / "manifest.yaml", Settings(redis_url=redis_url))
    finally:
        checks.CHECKS.remove(policies_compile)
    assert [r.name for r in results] == [*CHECK_NAMES, "policies compile"]
    assert seen == [project] and results[-1].ok is False


def test_a_crashing_check_is_a_failed_line_not_a_traceback(project, redis_url):
    @checks.check
    def explodes(context: CheckContext) -> CheckResult:
        raise RuntimeError("boom")

    try:
        results = run_checks(project / "manifest.yaml", Settings(redis_url=redis_url))
    finally:
        checks.CHECKS.remove(explodes)
    assert results[-1] == CheckResult(name="explodes", ok=False, reason="check crashed: RuntimeError: boom")


def test_an_unresolvable_secret_fails_the_service_settings_check_naming_its_source(project):
    text = (
        (project / "manifest.yaml")
        .read_text()
        .replace(
            "  mode: stable\n", "  mode: stable\n  secrets: [SD_VALIDATE_NO_SUCH_SECRET, {name: DB, file: db.secret}]\n"
        )
    )
    (project / "manifest.yaml").write_text(text)
    result = one_check(checks.service_settings, project)
    assert (result.ok, result.reason) == (False, (
        "secret SD_VALIDATE_NO_SUCH_SECRET: environment variable SD_VALIDATE_NO_SUCH_SECRET is not set where the "
        "orchestrator runs (export it before `swiftdeploy up`, or give the secret a file)"
    ))  # fmt: skip
    (project / "db.secret").write_text("hunter2")
    context = CheckContext(
        manifest_path=project / "manifest.yaml", settings=Settings(), environ={"SD_VALIDATE_NO_SUCH_SECRET": "x"}
    )
    assert checks.manifest_schema(context).ok
    passed = checks.service_settings(context)
    assert passed.ok and "2 secret(s) resolvable here" in passed.reason and "hunter2" not in passed.reason
