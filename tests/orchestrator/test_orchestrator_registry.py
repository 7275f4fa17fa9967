"""User stories with images from a real registry (Debian's docker-registry on a loopback port,
one open and one asking for basic auth): deploy pulls what is missing and records the digest that
runs; a failed pull is one line; a service that is not ours (tests/fixtures/ledger) deploys with
its own env, secrets, health path, command and limits on both runtimes, is canaried on settings
alone and promoted; its secret's value is found nowhere."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from services.orchestrator.drivers.docker import DockerDriver
from swiftdeploy_core.bus import streams
from swiftdeploy_core.bus.events import Event
from swiftdeploy_core.errors import ImagePullError
from swiftdeploy_core.project.images import load_credentials
from swiftdeploy_core.project.manifest import PullPolicy
from tests.orchestration import ServiceProcess, Stack, docker_sections, get_json, record, wait_ready, write_snapshot
from tests.servers import (
    LEDGER,
    REPO_ROOT,
    RegistryServer,
    build_images,
    credential_helper,
    docker_cli,
    docker_login,
    forget_image,
    free_port,
    push_image,
    require_binary,
    run_swiftdeploy,
)

pytestmark = pytest.mark.docker
MANIFEST: dict = {}  # the module's runtime and images, filled by `docker_images`
SECRET = f"ledger-token-{uuid.uuid4().hex}"  # from the orchestrator's environment
FILE_SECRET = f"db-password-{uuid.uuid4().hex}"  # from a file beside the manifest
ORCHESTRATOR_ENV = {"SD_TEST_LEDGER_TOKEN": SECRET}


@pytest.fixture(autouse=True)
def docker_images(request: pytest.FixtureRequest, docker_daemon: str, workload_image: str, nginx_image: str) -> None:
    request.module.MANIFEST = docker_sections(workload_image, nginx_image, 1.0)


@pytest.fixture(scope="module")
def pushed(registry: RegistryServer, workload_image: str, nginx_image: str) -> dict[str, str]:
    """The workload and nginx images in the open registry (not tagged locally)."""
    return {
        "workload": push_image(workload_image, f"{registry.host}/team/workload:1.0.0"),
        "nginx": push_image(nginx_image, f"{registry.host}/team/nginx:1"),
    }


def edit(stack: Stack, **sections: dict[str, Any]) -> None:
    """Change the stack's manifest in place (its nginx port stays)."""
    path = stack.root / "manifest.yaml"
    data = yaml.safe_load(path.read_text())
    for key, value in sections.items():
        data[key] = {**data.get(key, {}), **value}
    path.write_text(yaml.safe_dump(data, sort_keys=False))


def repo_digests(reference: str) -> list[str]:
    """The `repo@sha256:` references dockerd knows for `reference`'s own repository."""
    out = docker_cli("image", "inspect", "--format", "{{json .RepoDigests}}", reference).stdout
    repository = reference.rsplit(":", 1)[0]
    return [d for d in json.loads(out or "[]") if d.startswith(f"{repository}@")]


def squeeze(text: str) -> str:
    return "".join(text.split())


def container_config(name: str) -> dict:
    return json.loads(docker_cli("inspect", name).stdout)[0]


def nothing_left(project: str) -> bool:
    for kind in (["ps", "-a"], ["network", "ls"], ["volume", "ls"]):
        listed = docker_cli(*kind, "--filter", f"label=swiftdeploy.project={project}", "--quiet").stdout
        if listed.strip():
            return False
    return True


async def bus_events(stack: Stack) -> list[Event]:
    entries = await stack.redis.xrange("swiftdeploy:stream:events")
    return [Event.model_validate_json(fields[b"event"]) for _, fields in entries]


# --- pulls and digests --------------------------------------------------------------------------


async def test_deploy_pulls_its_images_from_a_registry_and_each_track_records_the_digest_that_runs(
    stack: Stack, registry: RegistryServer, pushed: dict[str, str]
):
    for reference in pushed.values():
        forget_image(reference)
    workload, nginx = pushed["workload"], pushed["nginx"]
    stack.manifest(services={"name": stack.project, "image": workload, "port": 3000, "version": "1.0.0"},
                   nginx={"image": nginx, "port": free_port()})  # fmt: skip
    deployed = await stack.sd("deploy")
    assert deployed.code == 0, deployed.text
    [digest] = repo_digests(workload)
    assert digest.startswith(f"{registry.host}/team/workload@sha256:")
    progress = squeeze(deployed.err)  # rich wraps the lines at the terminal's width
    assert squeeze(f"image.pulling {workload} from {registry.host}: pulling") in progress
    assert squeeze(f"image.pulled {workload} -> {digest} (pulled in ") in progress
    assert squeeze(f"image.pulled {nginx} -> {repo_digests(nginx)[0]} (pulled in ") in progress
    assert deployed.out.strip().endswith(f"running {digest}")
    record = await stack.record()
    assert record.stable.digest == digest and record.stable.image == workload
    assert {container_config(i.name)["Config"]["Image"] for i in record.stable.instances} == {digest}
    done = [e for e in await bus_events(stack) if e.type == "deploy.completed" and e.payload.project == stack.project]
    assert done[-1].payload.digest == digest
    status = await stack.sd("status", "--json")
    assert [(t["track"], t["digest"]) for t in json.loads(status.out)["tracks"]] == [("stable", digest)]

    # The canary named by digest runs exactly that digest; identical to stable, it is refused.
    edit(stack, canary={"version": "1.0.0", "image": digest})
    refused = await stack.sd("promote", "canary")
    assert refused.code == 1 and "the canary is identical to stable" in refused.line, refused.text
    edit(stack, canary={"version": "2.0.0"})
    started = await stack.sd("promote", "canary")
    assert started.code == 0, started.text
    record = await stack.record()
    assert record.canary.digest == digest and record.canary.image == digest
    canary = [e for e in await bus_events(stack) if e.type == "canary.started"][-1]
    assert canary.payload.digest == digest
    assert (await stack.sd("rollback")).code == 0


async def test_a_pull_that_cannot_succeed_fails_the_deploy_in_one_line_and_creates_nothing(
    stack: Stack, registry: RegistryServer, auth_registry: RegistryServer, pushed: dict[str, str], tmp_path: Path,
    workload_image: str,
):  # fmt: skip
    stopped = RegistryServer(require_binary("docker-registry"), tmp_path / "stopped").start()
    stopped_ref = push_image(workload_image, f"{stopped.host}/team/workload:1.0.0")
    stopped.stop()
    cases = [
        (f"{registry.host}/team/workload:no-such-tag", registry.host, "not found"),
        (f"{auth_registry.host}/team/workload:1.0.0", auth_registry.host, "unauthorized"),
        (stopped_ref, stopped.host, "unreachable"),
    ]
    for image, host, cause in cases:
        stack.manifest(services={"name": stack.project, "image": image, "port": 3000, "version": "1.0.0"})
        failed = await stack.sd("deploy")
        assert failed.code == 1, failed.text
        assert failed.line.startswith(f"error: failed: cannot pull image '{image}' from {host}: {cause} ("), failed.line
        assert len(failed.out.splitlines()) == 0 and nothing_left(stack.project)
    forget_image(pushed["workload"])
    stack.manifest(services={"name": stack.project, "image": pushed["workload"], "port": 3000, "version": "1.0.0"},
                   images={"pull": "never"})  # fmt: skip
    never = await stack.sd("deploy")
    assert never.line.startswith(
        f"error: failed: image '{pushed['workload']}' is not on this docker host and images.pull is `never`"
    )
    assert nothing_left(stack.project)


def test_validate_says_whether_each_image_is_present_or_pullable(
    tmp_path: Path, registry: RegistryServer, auth_registry: RegistryServer, pushed: dict[str, str], redis_url: str
):
    def images_line(image: str, env: dict[str, str] | None = None, **extra: Any) -> str:
        data = {"runtime": "docker", "services": {"name": "val", "image": image, "port": 3000, "version": "1"},
                "nginx": {"image": MANIFEST["nginx"]["image"], "port": free_port()}, "network": {"name": "val-net"}, **extra}  # fmt: skip
        (tmp_path / "manifest.yaml").write_text(yaml.safe_dump(data))
        out = run_swiftdeploy("validate", cwd=tmp_path, env={"REDIS_URL": redis_url, **(env or {})}).stdout
        return next(line for line in out.splitlines() if "images present or pullable" in line)

    forget_image(pushed["workload"])
    assert images_line(pushed["workload"]).startswith(
        f"✓ images present or pullable: {pushed['workload']} pullable from {registry.host} (sha256:"
    )
    missing = images_line(f"{registry.host}/team/workload:nope")
    assert missing.startswith(
        f"✗ images present or pullable: cannot pull image '{registry.host}/team/workload:nope' from {registry.host}: not found"
    )
    private = f"{auth_registry.host}/team/ledger:1"
    assert ": unauthorized (" in images_line(private)
    config = docker_login(auth_registry, "team", auth_registry.users["team"], tmp_path / "docker-config")
    push_image(MANIFEST["nginx"]["image"], private, config=tmp_path / "docker-config")
    pullable = f"✓ images present or pullable: {private} pullable from {auth_registry.host}"
    assert images_line(private, images={"credentials": str(config)}).startswith(pullable)
    assert images_line(private, env={"DOCKER_CONFIG": str(config.parent)}).startswith(pullable)


async def test_a_credential_helper_named_in_the_docker_config_pulls_from_a_registry_with_basic_auth(
    tmp_path: Path, auth_registry: RegistryServer, monkeypatch: pytest.MonkeyPatch
):
    private = f"{auth_registry.host}/team/helped:1"
    push_image(MANIFEST["nginx"]["image"], private, config=docker_login(auth_registry, "team", auth_registry.users["team"], tmp_path / "login").parent)  # fmt: skip
    helpers = tmp_path / "bin"
    credential_helper(helpers, "sdtest", {auth_registry.host: ("team", auth_registry.users["team"])})
    credential_helper(helpers, "stale", {auth_registry.host: ("team", "an-old-password")})
    monkeypatch.setenv("PATH", f"{helpers}:{os.environ['PATH']}")
    config = tmp_path / "docker-config" / "config.json"
    config.parent.mkdir()
    pulled: list[Any] = []

    async def progress(event: Any) -> None:
        pulled.append(event)

    driver = DockerDriver("credhelper", tmp_path / "state", docker_config=config)
    try:
        config.write_text(json.dumps({"credHelpers": {auth_registry.host: "stale"}}))
        with pytest.raises(
            ImagePullError, match=rf"cannot pull image '{private}' from {auth_registry.host}: unauthorized"
        ):
            await driver.ensure_image(private, PullPolicy.missing, load_credentials(config), progress)
        config.write_text(json.dumps({"credHelpers": {auth_registry.host: "sdtest"}}))
        digest = await driver.ensure_image(private, PullPolicy.missing, load_credentials(config), progress)
    finally:
        await driver.close()
        forget_image(private)
    assert digest.startswith(f"{auth_registry.host}/team/helped@sha256:")
    assert auth_registry.users["team"] not in " ".join(map(repr, pulled))


# --- a service that is not ours, on both runtimes ---------------------------------------------


def ledger_services(stack: Stack, image: str, command: list[str]) -> dict[str, Any]:
    (stack.root / "db.secret").write_text(FILE_SECRET + "\n")
    (stack.root / "ledger.env").write_text("# from the env file\nGREETING=hello from the env file\n")
    return {
        "name": stack.project, "image": image, "port": 8000, "version": "1.0.0",
        "command": command, "args": ["--ledger-arg"], "env": {"FAIL_RATE": 0}, "env_file": "ledger.env",
        "secrets": [{"name": "LEDGER_TOKEN", "env": "SD_TEST_LEDGER_TOKEN"}, {"name": "DB_PASSWORD", "file": "db.secret"}],
        "health": {"path": "/status", "start_period": 30},
    }  # fmt: skip


async def ledger_story(stack: Stack) -> list[str]:
    """Deploy, serve through nginx, refuse an identical canary, canary on env alone, promote.
    Returns the CLI's output (searched for the secret with everything else)."""
    deployed = await stack.sd("deploy", timeout=120)
    assert deployed.code == 0, deployed.text
    url = await stack.url()
    body = await get_json(url)
    assert (body["service"], body["mode"], body["greeting"], body["args"]) == (
        "ledger", "stable", "hello from the env file", ["--ledger-arg"]
    )  # fmt: skip
    assert body["token_sha256"] == hashlib.sha256(SECRET.encode()).hexdigest()  # the value arrived
    async with aiohttp.ClientSession() as session, session.get(f"{url}/healthz") as health:
        assert health.status == 200  # nginx's /healthz asks the service's /status
        async with session.get(f"{url}/metrics") as metrics:
            assert metrics.status == 404

    edit(stack, canary={"version": "1.0.0", "steps": [50], "interval": 0.5})
    stack_image = (await stack.record()).stable.image
    edit(stack, canary={"image": stack_image})
    refused = await stack.sd("promote", "canary")
    assert refused.code == 1 and "the canary is identical to stable" in refused.line, refused.text

    edit(stack, canary={"env": {"GREETING": "hello from the canary"}})
    started = await stack.sd("promote", "canary", timeout=120)
    assert started.code == 0, started.text
    canary = await get_json(url, headers={"X-Canary": "always"})
    assert (canary["greeting"], canary["mode"]) == ("hello from the canary", "canary")
    await write_snapshot(stack.redis, stack.project, "1.0.0", error_rate=0.0)
    await stack.phase("canary_complete", timeout=30)
    promoted = await stack.sd("promote", "stable", timeout=120)
    assert promoted.code == 0, promoted.text
    body = await get_json(url)
    assert (body["greeting"], body["mode"], body["token_sha256"]) == (
        "hello from the canary", "stable", hashlib.sha256(SECRET.encode()).hexdigest()
    )  # fmt: skip
    return [deployed.text, refused.text, started.text, promoted.text]


async def eventually(condition: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.2)


@pytest.fixture
async def auditor(stack: Stack, tmp_path: Path):
    """The real auditor writing this stack's history and report."""
    env = {"SWIFTDEPLOY_MANIFEST": str(stack.root / "manifest.yaml")}
    process = ServiceProcess("auditor", stack.redis_url, tmp_path / "auditor.log", env).start()
    await wait_ready(stack.redis, "auditor")
    yield process
    process.stop()


async def no_secret_anywhere(stack: Stack, outputs: list[str]) -> None:
    """The state folder, history, report, generated files, orchestrator log, CLI output and every
    Redis key (the event stream and the record among them) hold neither secret's value."""
    history = stack.root / "history.jsonl"
    await eventually(lambda: history.exists() and "promotion.completed" in history.read_text(), timeout=30)
    report = await stack.sd("audit")
    assert report.code == 0, report.text
    assert (await stack.sd("init")).code == 0
    corpus = [path.read_bytes() for path in stack.root.rglob("*") if path.is_file() and path.name != "db.secret"]
    corpus += [stack.orchestrator.log().encode(), *(o.encode() for o in outputs)]
    for key in [k async for k in stack.redis.scan_iter("*")]:
        kind = (await stack.redis.type(key)).decode()
        if kind == "stream":
            corpus += [
                json.dumps({k.decode(): v.decode() for k, v in f.items()}).encode()
                for _, f in await stack.redis.xrange(key)
            ]
        elif kind == "string":
            corpus.append(await stack.redis.get(key))
        elif kind == "hash":
            corpus.append(
                json.dumps({k.decode(): v.decode() for k, v in (await stack.redis.hgetall(key)).items()}).encode()
            )
    names = {p.name for p in stack.root.rglob("*")}
    assert {"history.jsonl", "audit_report.md", "docker-compose.yml", "nginx.conf"} <= names
    everything = b"\n".join(corpus)
    assert b"promotion.completed" in everything and b"LEDGER_TOKEN" in everything  # the search can find things
    assert SECRET.encode() not in everything and FILE_SECRET.encode() not in everything


async def test_a_service_that_is_not_ours_from_a_registry_with_basic_auth_deploys_canaries_and_promotes_on_docker(
    stack: Stack, auth_registry: RegistryServer, ledger_image: str, tmp_path: Path, auditor: ServiceProcess
):
    config = docker_login(auth_registry, "team", auth_registry.users["team"], tmp_path / "docker-config")
    image = push_image(ledger_image, f"{auth_registry.host}/team/ledger:1", config=tmp_path / "docker-config")
    stack.manifest()
    services = {
        **ledger_services(stack, image, ["python3", "/srv/ledger/app.py"]),
        "resources": {"cpus": 0.5, "memory": "128m"},
    }
    stack.manifest(services=services, images={"credentials": str(config)})
    outputs = await ledger_story(stack)
    record = await stack.record()
    [digest] = repo_digests(image)
    assert record.stable.digest == digest
    host = container_config(record.stable.instances[0].name)["HostConfig"]
    assert (host["NanoCpus"], host["Memory"]) == (500_000_000, 128 * 1024**2)
    await no_secret_anywhere(stack, outputs)
    assert f"running {digest}" in (stack.root / "audit_report.md").read_text()  # the report names what ran


async def test_the_same_service_on_the_process_runtime_runs_its_command_and_records_the_image_unpulled(
    stack: Stack, auditor: ServiceProcess
):
    stack.manifest()
    services = ledger_services(stack, "team/ledger:1", [sys.executable, str(LEDGER / "app.py")])
    stack.manifest(runtime="process", services=services)
    outputs = await ledger_story(stack)
    record = await stack.record()
    assert (record.stable.image, record.stable.digest) == ("team/ledger:1", None)
    await no_secret_anywhere(stack, outputs)


async def test_the_repositorys_own_manifest_deploys_on_docker_after_make_images(stack: Stack):
    """`make images` runs scripts/build-images, which tags what manifest.yaml names."""
    build_images("workload", "nginx")
    for tag in ("swift-deploy-1-node:latest", "nginx:latest"):
        assert docker_cli("image", "inspect", tag).returncode == 0, tag
    seed = (REPO_ROOT / "manifest.yaml").read_text().replace("port: 8080", f"port: {free_port()}")  # 8080 may be busy
    (stack.root / "manifest.yaml").write_text(seed)
    try:
        deployed = await stack.sd("deploy")
        assert deployed.code == 0, deployed.text
        served = await record(stack.redis, "app")
        assert (await get_json(served.router_url))["version"] == "1.0.0"
        assert served.stable.image == "swift-deploy-1-node:latest" and served.stable.digest
    finally:
        await stack.sd("teardown")
        await stack.redis.delete(streams.rollout_key("app"))


async def test_a_secret_the_orchestrator_cannot_read_fails_the_deploy_in_one_line_with_nothing_created(stack: Stack):
    stack.manifest(runtime="process", services={
        "name": stack.project, "image": "team/ledger:1", "port": 8000, "version": "1.0.0",
        "command": [sys.executable, str(LEDGER / "app.py")], "secrets": [{"name": "DB_PASSWORD", "file": "absent.secret"}],
    })  # fmt: skip
    failed = await stack.sd("deploy")
    assert failed.code == 1
    assert failed.line.startswith("error: failed: secret DB_PASSWORD: file absent.secret cannot be read (No such file")
    assert await stack.objects() == [] and (await stack.record()) is None
