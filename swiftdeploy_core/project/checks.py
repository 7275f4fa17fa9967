"""`swiftdeploy validate`: the pre-flight checklist, one small function per check.

Each check takes the shared `CheckContext` and returns a `CheckResult(name, ok, reason)`; it never
raises for a failed check (the reason says what is wrong). Checks run in registration order.

To add checks from another module: decorate each `(CheckContext) -> CheckResult` function with
`@check`, and have the caller name the module in `run_checks(..., modules=[...])` (it is imported
first, so its checks register). The project layer names no service: `swiftdeploy validate` passes
the gatekeeper's policy checks.
"""

from __future__ import annotations

import asyncio
import errno
import importlib
import os
import socket
import subprocess
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import BaseModel

from swiftdeploy_core.bus.retry import redis_errors
from swiftdeploy_core.errors import BusError, ConfigError, ControlPlaneDown, ManifestError
from swiftdeploy_core.project.manifest import (
    LoadedManifest,
    Manifest,
    PolicyEngine,
    PullPolicy,
    Runtime,
    load_manifest,
)
from swiftdeploy_core.project.render import (
    COMPOSE_FILE,
    GENERATED_FILES,
    NGINX_CONF,
    generated_dir,
    header_sha256,
    render_all,
)
from swiftdeploy_core.project.router import conf_dirs, localize_for_test, nginx_binary
from swiftdeploy_core.settings import Settings

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
COMMAND_TIMEOUT = 30.0  # seconds for nginx -t and docker-compose config
PROBE_TIMEOUT = 3.0  # seconds for the dockerd and Redis probes
IMAGE_PROBE_TIMEOUT = 20.0  # seconds for asking dockerd and the registries about every image


class CheckResult(BaseModel):
    """One line of the checklist."""

    name: str
    ok: bool
    reason: str


@dataclass
class CheckContext:
    """What the checks share: the manifest (loaded by the first check), the settings, and the
    environment env-sourced secrets are read from (this process's: the one `up` starts from)."""

    manifest_path: Path
    settings: Settings
    loaded: LoadedManifest | None = None
    environ: Mapping[str, str] = field(default_factory=lambda: os.environ)

    @property
    def loaded_manifest(self) -> LoadedManifest:
        """The loaded manifest, for a check that returned `needs_manifest`'s line first."""
        if self.loaded is None:
            raise RuntimeError("the manifest is not loaded: return needs_manifest(name, context) first")
        return self.loaded


Check = Callable[[CheckContext], CheckResult]
CHECKS: list[Check] = []


def check(function: Check) -> Check:
    """Register a check (run in registration order)."""
    CHECKS.append(function)
    return function


def run_checks(manifest_path: Path, settings: Settings, modules: Sequence[str] = ()) -> list[CheckResult]:
    """Run every registered check, after importing `modules` (dotted names holding more @checks)."""
    for module in modules:
        importlib.import_module(module)
    context = CheckContext(manifest_path=manifest_path, settings=settings)
    return [run_one(function, context) for function in CHECKS]


def run_one(function: Check, context: CheckContext) -> CheckResult:
    """Run a check; an unexpected exception becomes a failed line instead of a traceback."""
    try:
        return function(context)
    except Exception as exc:
        name = function.__name__.replace("_", " ")
        return CheckResult(name=name, ok=False, reason=f"check crashed: {type(exc).__name__}: {exc}")


def needs_manifest(name: str, context: CheckContext) -> CheckResult | None:
    """A failed "not checked" line when the manifest did not load; checks needing it return it."""
    if context.loaded is None:
        return CheckResult(name=name, ok=False, reason="not checked: the manifest is not valid")
    return None


@check
def manifest_schema(context: CheckContext) -> CheckResult:
    name = "manifest schema"
    try:
        context.loaded = load_manifest(context.manifest_path)
    except ManifestError as exc:
        return CheckResult(name=name, ok=False, reason=str(exc))
    m = context.loaded.manifest
    return CheckResult(
        name=name,
        ok=True,
        reason=f"{context.manifest_path} is valid ({m.services.name} {m.services.version}, runtime {m.runtime.value})",
    )


@check
def generated_files(context: CheckContext) -> CheckResult:
    name = "generated files"
    if blocked := needs_manifest(name, context):
        return blocked
    folder = generated_dir(context.loaded_manifest)
    expected = render_all(context.loaded_manifest)
    problems = [
        p for p in (_compare(folder / n, expected[n], context.loaded_manifest.sha256) for n in GENERATED_FILES) if p
    ]
    if problems:
        return CheckResult(name=name, ok=False, reason=f"{'; '.join(problems)}; run `swiftdeploy init`")
    return CheckResult(
        name=name,
        ok=True,
        reason=f"{len(expected)} files in {folder} match the manifest (sha256 {context.loaded_manifest.sha256[:12]})",
    )


def _compare(path: Path, expected: bytes, sha256: str) -> str | None:
    if not path.is_file():
        return f"{path.name} is missing"
    actual = path.read_bytes()
    if actual == expected:
        return None
    rendered_from = header_sha256(actual.decode("utf-8", errors="replace"))
    if rendered_from != sha256:
        return f"{path.name} is stale (from sha256 {(rendered_from or 'unknown')[:12]}, manifest is {sha256[:12]})"
    return f"{path.name} was edited by hand"


@check
def nginx_config(context: CheckContext) -> CheckResult:
    name = "nginx config (nginx -t)"
    if blocked := needs_manifest(name, context):
        return blocked
    conf = generated_dir(context.loaded_manifest) / NGINX_CONF
    binary = nginx_binary()
    if not conf.is_file():
        return CheckResult(name=name, ok=False, reason=f"{conf} is missing; run `swiftdeploy init`")
    if binary is None:
        return CheckResult(name=name, ok=False, reason="no nginx binary (apt-get install nginx)")
    with tempfile.TemporaryDirectory(prefix="swiftdeploy-nginx-t-") as prefix:
        copy = localize_for_test(conf.read_text(), Path(prefix))
        for folder in conf_dirs(copy):
            folder.mkdir(parents=True, exist_ok=True)
        (Path(prefix) / NGINX_CONF).write_text(copy)
        ok, output = _run([binary, "-t", "-q", "-p", prefix, "-c", f"{prefix}/{NGINX_CONF}"])
    if not ok:
        return CheckResult(name=name, ok=False, reason=f"nginx -t refused {conf.name}: {output}")
    return CheckResult(name=name, ok=True, reason=f"nginx -t accepts {conf.name} (upstream names mapped to 127.0.0.1)")


@check
def compose_file(context: CheckContext) -> CheckResult:
    name = "compose file (docker-compose config)"
    if blocked := needs_manifest(name, context):
        return blocked
    compose = generated_dir(context.loaded_manifest) / COMPOSE_FILE
    if not compose.is_file():
        return CheckResult(name=name, ok=False, reason=f"{compose} is missing; run `swiftdeploy init`")
    ok, output = _run(["docker-compose", "-f", str(compose), "config", "-q"], cwd=compose.parent)
    if not ok:
        return CheckResult(name=name, ok=False, reason=f"docker-compose refused {compose.name}: {output}")
    return CheckResult(name=name, ok=True, reason=f"docker-compose config accepts {compose.name}")


@check
def nginx_port_free(context: CheckContext) -> CheckResult:
    name = "nginx port free"
    if blocked := needs_manifest(name, context):
        return blocked
    port = context.loaded_manifest.manifest.nginx.port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError as exc:
            why = "is in use" if exc.errno == errno.EADDRINUSE else f"cannot be bound ({exc.strerror})"
            return CheckResult(name=name, ok=False, reason=f"127.0.0.1:{port} {why} (nginx.port)")
    return CheckResult(name=name, ok=True, reason=f"127.0.0.1:{port} is free")


@check
def runtime_reachable(context: CheckContext) -> CheckResult:
    name = "runtime reachable"
    if blocked := needs_manifest(name, context):
        return blocked
    if context.loaded_manifest.manifest.runtime is Runtime.process:
        binary = nginx_binary()
        if binary is None:
            return CheckResult(
                name=name, ok=False, reason="runtime process needs the nginx binary (apt-get install nginx)"
            )
        return CheckResult(name=name, ok=True, reason=f"runtime process: nginx at {binary}")
    runtime = context.loaded_manifest.manifest.runtime.value
    try:
        version = asyncio.run(asyncio.wait_for(_docker_version(), PROBE_TIMEOUT))
    except Exception as exc:
        reason = f"runtime {runtime}: dockerd not reachable ({_one_line(exc)}); start it, or set `runtime: process`"
        return CheckResult(name=name, ok=False, reason=reason)
    return CheckResult(name=name, ok=True, reason=f"runtime {runtime}: dockerd {version} answers")


async def _docker_version() -> str:
    import aiodocker

    docker = aiodocker.Docker()
    try:
        return str((await docker.version()).get("Version", "?"))
    finally:
        await docker.close()


@check
def service_settings(context: CheckContext) -> CheckResult:
    name = "service settings"
    if blocked := needs_manifest(name, context):
        return blocked
    from swiftdeploy_core.errors import SecretUnavailable
    from swiftdeploy_core.project.service_env import resolve

    m = context.loaded_manifest.manifest
    try:
        env = resolve(m, context.loaded_manifest.root, context.environ)
        canary = resolve(m, context.loaded_manifest.root, context.environ, canary=True)
    except SecretUnavailable as exc:
        return CheckResult(name=name, ok=False, reason=str(exc))
    count = len({*env.env, *canary.env})
    return CheckResult(
        name=name, ok=True,
        reason=f"health on {m.services.health.path}; {count} env variable(s); "
        f"{len(env.secrets)} secret(s) resolvable here (shown as ***)",
    )  # fmt: skip


@check
def images_available(context: CheckContext) -> CheckResult:
    name = "images present or pullable"
    if blocked := needs_manifest(name, context):
        return blocked
    m = context.loaded_manifest.manifest
    if m.runtime is Runtime.process:
        return CheckResult(
            name=name,
            ok=True,
            reason=f"runtime process runs services.command; {m.services.image} is recorded, not pulled",
        )
    from swiftdeploy_core.project.images import docker_config_file

    credentials = context.loaded_manifest.resolve(m.images.credentials) if m.images.credentials else None
    config = docker_config_file(credentials, context.settings.docker_config, Path.home())
    try:
        lines = asyncio.run(asyncio.wait_for(_images_available(m, config), IMAGE_PROBE_TIMEOUT))
    except ImageProblem as exc:
        return CheckResult(name=name, ok=False, reason=str(exc))
    except Exception as exc:
        return CheckResult(name=name, ok=False, reason=f"cannot ask dockerd about the images ({_one_line(exc)})")
    return CheckResult(name=name, ok=True, reason="; ".join(lines))


class ImageProblem(Exception):
    """An image deploy could not run (its message is the check's reason)."""


def _images(manifest: Manifest) -> list[str]:
    found = [manifest.services.image, manifest.canary_image, manifest.nginx.image]
    if manifest.policy.engine is PolicyEngine.opa:
        found.append(manifest.policy.opa_image)
    return list(dict.fromkeys(found))


async def _images_available(manifest: Manifest, config: Path) -> list[str]:
    """Each image: on the host, or known to its registry (dockerd's distribution inspect, which
    checks the reference, reaches the registry and presents the credentials)."""
    import aiodocker
    from aiodocker.exceptions import DockerError
    from aiodocker.utils import compose_auth_header

    from swiftdeploy_core.project.images import load_credentials, parse_reference, pull_error

    credentials = load_credentials(config)
    lines = []
    async with aiodocker.Docker() as docker:
        for image in _images(manifest):
            try:
                await docker.images.inspect(image)
                if manifest.images.pull is not PullPolicy.always:
                    lines.append(f"{image} present")
                    continue
            except DockerError as exc:
                if exc.status != 404:
                    raise
                if manifest.images.pull is PullPolicy.never:
                    raise ImageProblem(f"{image} is not on this docker host and images.pull is `never`") from None
            ref = parse_reference(image)
            try:
                auth = await asyncio.to_thread(credentials.for_registry, ref.registry)
            except ConfigError as exc:
                raise ImageProblem(str(exc)) from None
            headers = {"X-Registry-Auth": compose_auth_header(auth, ref.registry)} if auth else {}
            try:
                found = await docker._query_json(f"distribution/{image}/json", headers=headers)
            except DockerError as exc:
                raise ImageProblem(pull_error(image, exc.message, credentials=config)) from None
            lines.append(f"{image} pullable from {ref.registry} ({found['Descriptor']['digest'][:19]}…)")
    return lines


@check
def swarm_ready(context: CheckContext) -> CheckResult:
    """runtime swarm: this dockerd a manager of an active swarm, its nodes ready, and every image
    one each node can run by digest (on one node a local image does; on several, a registry's)."""
    name = "swarm ready"
    if blocked := needs_manifest(name, context):
        return blocked
    m = context.loaded_manifest.manifest
    if m.runtime is not Runtime.swarm:
        return CheckResult(name=name, ok=True, reason=f"runtime {m.runtime.value} needs no swarm")
    try:
        ok, reason = asyncio.run(asyncio.wait_for(_swarm_ready(m), IMAGE_PROBE_TIMEOUT))
    except Exception as exc:
        return CheckResult(name=name, ok=False, reason=f"cannot ask dockerd about its swarm ({_one_line(exc)})")
    return CheckResult(name=name, ok=ok, reason=reason)


async def _swarm_ready(manifest: Manifest) -> tuple[bool, str]:
    import aiodocker
    from aiodocker.exceptions import DockerError

    from swiftdeploy_core.project.images import parse_reference

    async with aiodocker.Docker() as docker:
        swarm = (await docker.system.info())["Swarm"]
        if swarm.get("LocalNodeState") != "active":
            return False, "this dockerd is in no swarm (`docker swarm init`, or `runtime: docker`)"
        if not swarm.get("ControlAvailable"):
            return False, "this node is a swarm worker; run SwiftDeploy against a manager"
        nodes = await docker.nodes.list()
        down = [n["Description"]["Hostname"] for n in nodes if n["Status"]["State"] != "ready"]
        if len(down) == len(nodes):
            return False, f"no swarm node is ready ({', '.join(down)})"
        lines = [f"manager {swarm['NodeID'][:12]}; {len(nodes) - len(down)}/{len(nodes)} node(s) ready"]
        if down:
            lines.append(f"not ready: {', '.join(down)}")
        for image in _images(manifest):
            if image == manifest.policy.opa_image and manifest.policy.engine is PolicyEngine.opa:
                continue  # the control plane's, not the swarm's
            try:
                info = await docker.images.inspect(image)
            except DockerError as exc:
                if exc.status != 404:
                    raise
                info = {}
            repository = parse_reference(image).repository
            digests = [d for d in info.get("RepoDigests") or [] if d.split("@", 1)[0] == repository]
            if digests:
                lines.append(f"{image} runs as {digests[0][: len(repository) + 20]}…")
            elif image == manifest.nginx.image and info:
                lines.append(f"{image} is local (fine: nginx runs on this manager)")
            elif len(nodes) == 1 and info:
                lines.append(f"{image} is local only (fine on one node; push it to a registry before adding nodes)")
            elif info:
                return False, f"{image} has no registry digest: the other nodes cannot pull it (push it to a registry)"
            else:
                lines.append(f"{image} is not here yet (pulled by digest at deploy)")
        return True, "; ".join(lines)


@check
def redis_reachable(context: CheckContext) -> CheckResult:
    import redis

    name = "redis reachable"
    url = _redis_url(context)
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=PROBE_TIMEOUT, socket_timeout=PROBE_TIMEOUT)
        with client, redis_errors("PING"):
            client.ping()
    except (BusError, ValueError) as exc:  # ValueError: not a redis:// URL
        cause = exc.__cause__ if isinstance(exc, BusError) and exc.__cause__ else exc
        return CheckResult(
            name=name, ok=False, reason=f"{url}: {_one_line(cause)} (start redis-server, or set REDIS_URL)"
        )
    return CheckResult(name=name, ok=True, reason=f"{url} answers PING")


def _redis_url(context: CheckContext) -> str:
    """REDIS_URL, else the control plane `swiftdeploy up` runs beside the manifest, else the default."""
    from swiftdeploy_core.bus.connection import resolve_redis_url

    try:
        return resolve_redis_url(context.settings.model_copy(update={"manifest": context.manifest_path}))
    except ControlPlaneDown:
        return DEFAULT_REDIS_URL


def _run(command: list[str], cwd: Path | None = None) -> tuple[bool, str]:
    """Run a checker command; (succeeded, its output on one line, errors first)."""
    try:
        done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=COMMAND_TIMEOUT)
    except FileNotFoundError:
        return False, f"{command[0]} is not installed"
    except subprocess.TimeoutExpired:
        return False, f"{command[0]} did not finish within {COMMAND_TIMEOUT:.0f}s"
    lines = [line for line in (done.stderr + done.stdout).splitlines() if line.strip()]
    lines.sort(key=lambda line: "[emerg]" not in line and "ERROR" not in line)  # stable: errors first
    return done.returncode == 0, _one_line(" ".join(lines) or f"exit {done.returncode}")


def _one_line(value: object) -> str:
    text = " ".join(str(value).split())
    return text if len(text) <= 300 else text[:297] + "..."
