"""`swiftdeploy init`: render the generated files from the manifest, all in memory, then write.

Output is deterministic (same manifest, same bytes): no timestamps, sorted iteration only, and a
header carrying the manifest's sha256 so `validate` can tell a stale file from a fresh one.
Nothing is written unless every file rendered, and each file is replaced atomically.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from typing import Any

import policies as policies_package
from swiftdeploy_core.errors import ConfigError
from swiftdeploy_core.project.manifest import HealthSpec, LoadedManifest
from swiftdeploy_core.project.router import (
    CONTAINER_CONF,
    CONTAINER_LOG_DIR,
    OPA_PORT,
    instance_name,
    internal_network,
    opa_container,
    plan_for_compose,
    render_nginx_conf,
    router_container,
)
from swiftdeploy_core.project.templating import environment

NGINX_CONF = "nginx.conf"
COMPOSE_FILE = "docker-compose.yml"
OPA_CONFIG = "opa-config.yaml"
GENERATED_FILES = (NGINX_CONF, COMPOSE_FILE, OPA_CONFIG)
COMPOSE_START_PERIOD = 5.0  # seconds: the compose healthcheck's grace when services.health says none


_HASH = re.compile(r"\(sha256 ([0-9a-f]{64})\)")


def generated_dir(loaded: LoadedManifest) -> Path:
    return loaded.resolve(loaded.manifest.paths.generated)


def header(loaded: LoadedManifest) -> str:
    """The first line of every generated file (a comment in each file's syntax)."""
    name = loaded.path.name
    return f"generated from {name} (sha256 {loaded.sha256}); do not edit: change {name} and run `swiftdeploy init`"


def header_sha256(text: str) -> str | None:
    """The manifest hash a generated file was rendered from, read from its first line."""
    first = text.split("\n", 1)[0]
    match = _HASH.search(first)
    return match.group(1) if match else None


def render_all(loaded: LoadedManifest) -> dict[str, bytes]:
    """Every generated file's name and exact bytes. Pure: reads only the packaged templates."""
    top = header(loaded)
    manifest = loaded.manifest
    context = _compose_context(loaded)
    return {
        NGINX_CONF: render_nginx_conf(plan_for_compose(manifest), top).encode(),
        COMPOSE_FILE: _render("docker-compose.yml.j2", header=top, **context).encode(),
        OPA_CONFIG: _render("opa-config.yaml.j2", header=top, **context).encode(),
    }


def write_all(folder: Path, files: dict[str, bytes]) -> list[Path]:
    """Write every file, each atomically (temp file + rename), after all temp files are complete."""
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"{folder}: exists and is not a folder (generated files go there)")
    for name in sorted(files):
        target = folder / name
        if target.exists() and not target.is_file():
            raise ConfigError(f"{target}: exists and is not a regular file; nothing was written")
    staged: list[tuple[Path, Path]] = []
    try:
        folder.mkdir(parents=True, exist_ok=True)
        for name, content in sorted(files.items()):
            staged.append((_stage(folder, name, content), folder / name))
        for temp, final in staged:
            os.replace(temp, final)
    except OSError as exc:
        raise ConfigError(f"{exc.filename or folder}: cannot write ({exc.strerror or exc})") from exc
    finally:
        for temp, _ in staged:
            temp.unlink(missing_ok=True)
    return [final for _, final in staged]


def init(loaded: LoadedManifest) -> list[Path]:
    """Render everything, then write it under the manifest's generated folder."""
    return write_all(generated_dir(loaded), render_all(loaded))


def _stage(folder: Path, name: str, content: bytes) -> Path:
    fd, temp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=folder)
    with os.fdopen(fd, "wb") as out:
        out.write(content)
        out.flush()
        os.fsync(out.fileno())
    os.chmod(temp, 0o644)
    return Path(temp)


def _compose_context(loaded: LoadedManifest) -> dict[str, Any]:
    manifest = loaded.manifest
    project = manifest.project
    policies = _compose_path(policies_package.project_dir(loaded.root), loaded)  # what the gatekeeper reads
    return {
        "manifest": manifest,
        "project": project,
        "instances": [instance_name(project, "stable", i) for i in range(1, manifest.services.replicas + 1)],
        "router": router_container(project),
        "opa": opa_container(project),
        "opa_port": OPA_PORT,
        "internal_network": internal_network(manifest),
        "policies": policies,
        "nginx_conf_target": CONTAINER_CONF,
        "nginx_log_dir": CONTAINER_LOG_DIR,
        "command": [*(manifest.services.command or []), *manifest.services.args],
        "env_file": _compose_path(loaded.resolve(env_file), loaded)
        if (env_file := manifest.services.env_file)
        else None,
        "health": _compose_health(manifest.services.health),
    }


def _compose_health(health: HealthSpec) -> dict[str, str | int]:
    """The healthcheck's durations as compose writes them (`5s`, `0.5s`)."""

    def seconds(value: float) -> str:
        return f"{value:g}s"

    return {
        "path": health.path, "interval": seconds(health.interval), "timeout": seconds(health.timeout),
        "retries": health.retries, "start_period": seconds(health.start_period or COMPOSE_START_PERIOD),
    }  # fmt: skip


def _compose_path(target: Path, loaded: LoadedManifest) -> str:
    """`target` as the compose file should name it: relative when it is inside the manifest's
    folder (so the folder can move), absolute otherwise."""
    if not target.is_relative_to(loaded.root):
        return str(target)
    relative = os.path.relpath(target, generated_dir(loaded))
    return relative if relative.startswith(".") else f"./{relative}"


def _render(template: str, **context: object) -> str:
    return environment().get_template(template).render(**context)
