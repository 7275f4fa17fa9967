"""The router plan: what nginx should do, as a value, and the nginx.conf rendered from it.

A pure builder (no I/O besides reading the packaged template). One upstream per track
(`app_stable`, `app_canary`); a canary split is only a percentage (`canary_weight`), applied with
`split_clients` on the request id. Requests with `X-Canary: always` and `/chaos` go to the canary
track while one runs. The same template serves the docker runtime (container names, listen on
0.0.0.0 inside the container) and the process runtime (loopback ports, every path under the
state folder, run as `nginx -p <prefix> -c <file> -g 'daemon off;'`).
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated

import jinja2
from pydantic import BaseModel, ConfigDict, Field, model_validator

from swiftdeploy_core.bus.events import RouterSplit
from swiftdeploy_core.project.manifest import Manifest
from swiftdeploy_core.project.templating import environment

STABLE_UPSTREAM = "app_stable"
CANARY_UPSTREAM = "app_canary"
TEMP_KINDS = ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")

# Where the official nginx image keeps things; the compose file mounts named volumes on them.
CONTAINER_LOG_DIR = "/var/log/nginx"
ACCESS_LOG = "access.log"
CONTAINER_PID = "/var/run/nginx.pid"
# nginx creates only the last folder of a temp path: /tmp exists in every image (the official
# one has /var/cache/nginx, Debian's package /var/lib/nginx, neither both).
CONTAINER_TEMP_DIR = "/tmp"
CONTAINER_CONF = "/etc/nginx/nginx.conf"
OPA_PORT = 8181  # where an OPA container listens (compose and the docker driver)

Host = Annotated[str, Field(pattern=r"^[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?$", max_length=253)]
# A path nginx reads as one quoted word: no quotes, variables, escapes or control characters.
NginxPath = Annotated[str, Field(pattern=r'^/[^"$\\;{}\x00-\x1f]*$')]


class Upstream(BaseModel):
    """One workload instance as nginx reaches it."""

    model_config = ConfigDict(frozen=True)

    host: Host
    port: Annotated[int, Field(ge=1, le=65535)]
    down: bool = False  # held out while it restarts (nginx's `down`): no request is sent to it

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


class RouterPlan(BaseModel):
    """Everything nginx.conf depends on. Changing the canary split is a `canary_weight` change."""

    model_config = ConfigDict(frozen=True)

    listen_host: Annotated[str, Field(pattern=r"^(\*|[0-9.]+|\[[0-9a-fA-F:]+\]|[A-Za-z0-9.-]+)$")] = "127.0.0.1"
    listen_port: Annotated[int, Field(ge=1, le=65535)]
    proxy_timeout: Annotated[int, Field(ge=1, le=3600)] = 30
    stable: Annotated[list[Upstream], Field(min_length=1)]
    canary: list[Upstream] = []
    canary_weight: Annotated[int, Field(ge=0, le=100)] = 0
    access_log: NginxPath
    error_log: NginxPath
    pid: NginxPath | None = None
    temp_dir: NginxPath | None = None  # nginx-client_body, nginx-proxy, ... temp folders go under it
    worker_processes: Annotated[int, Field(ge=1, le=64)] = 1
    health_path: NginxPath = "/healthz"  # nginx's own /healthz asks the service here (services.health.path)
    # Router chaos: nginx itself answers 500 to this share of the canary's requests (0 = off).
    canary_error_percent: Annotated[float, Field(ge=0, le=100)] = 0

    @model_validator(mode="after")
    def _weight_needs_a_canary(self) -> RouterPlan:
        if self.canary_weight and not self.canary:
            raise ValueError("canary_weight > 0 needs at least one canary upstream")
        return self

    @property
    def url(self) -> str:
        """Where a client on this machine reaches the router."""
        host = "127.0.0.1" if self.listen_host in ("0.0.0.0", "*") else self.listen_host
        return f"http://{host}:{self.listen_port}"

    def with_canary(self, canary: list[Upstream], weight: int) -> RouterPlan:
        """The same plan with a canary track taking `weight` percent (validated again)."""
        return RouterPlan.model_validate({**self.model_dump(), "canary": canary, "canary_weight": weight})


def instance_name(project: str, track: str, index: int) -> str:
    """Container (and compose service) name of one workload instance; index counts from 1."""
    return f"{project}-{track}-{index}"


def router_container(project: str) -> str:
    return f"{project}-nginx"


def opa_container(project: str) -> str:
    return f"{project}-opa"


def internal_network(manifest: Manifest) -> str:
    """The network only OPA and the gatekeeper join; `internal: true`, nothing published."""
    return f"{manifest.network.name}-internal"


def plan_for_compose(manifest: Manifest) -> RouterPlan:
    """The plan for the docker runtime: upstreams are container names on the manifest's network."""
    port = manifest.services.port
    return RouterPlan(
        listen_host="0.0.0.0",
        listen_port=manifest.nginx.port,
        proxy_timeout=manifest.nginx.proxy_timeout,
        stable=[
            Upstream(host=instance_name(manifest.project, "stable", i), port=port)
            for i in range(1, manifest.services.replicas + 1)
        ],
        access_log=f"{CONTAINER_LOG_DIR}/{ACCESS_LOG}",
        error_log=f"{CONTAINER_LOG_DIR}/error.log",
        pid=CONTAINER_PID,
        temp_dir=CONTAINER_TEMP_DIR,
        health_path=manifest.services.health.path,
    )


def plan_for_process(
    manifest: Manifest,
    state_dir: Path,
    stable: Sequence[Upstream],
    canary: Sequence[Upstream] = (),
    canary_weight: int = 0,
    listen_port: int | None = None,
) -> RouterPlan:
    """The plan for the process runtime: loopback upstreams, every nginx path under `state_dir`."""
    base = state_dir.resolve() / "nginx"
    return RouterPlan(
        listen_host="127.0.0.1",
        listen_port=listen_port or manifest.nginx.port,
        proxy_timeout=manifest.nginx.proxy_timeout,
        stable=list(stable),
        canary=list(canary),
        canary_weight=canary_weight,
        access_log=str(router_log_dir(state_dir) / ACCESS_LOG),
        error_log=str(router_log_dir(state_dir) / "error.log"),
        pid=str(base / "nginx.pid"),
        temp_dir=str(base / "tmp"),
        health_path=manifest.services.health.path,
    )


def runtime_dir(manifest: Manifest, root: str | Path) -> Path:
    """Where the runtime keeps a project's pids, ports, logs and rendered router config."""
    base = Path(manifest.paths.state)
    base = base if base.is_absolute() else Path(root) / base
    return base / "runtime" / manifest.project


def router_log_dir(state_dir: Path) -> Path:
    """The folder nginx writes its logs to, on the host: the process runtime's nginx writes there
    directly; the docker runtime bind-mounts it on the container's /var/log/nginx. The collector
    tails `access.log` in it."""
    return state_dir.resolve() / "nginx" / "logs"


def router_access_log(manifest: Manifest, root: str | Path) -> Path:
    return router_log_dir(runtime_dir(manifest, root)) / ACCESS_LOG


def render_nginx_conf(plan: RouterPlan, header: str) -> str:
    """Render nginx.conf for `plan`; every line of `header` becomes a leading `# ` comment."""
    comment = "".join(f"# {line}".rstrip() + "\n" for line in header.splitlines())
    return comment + _template().render(
        plan=plan,
        stable_upstream=STABLE_UPSTREAM,
        canary_upstream=CANARY_UPSTREAM,
        temp_kinds=TEMP_KINDS,
    )


_LOCAL_PATH_DIRECTIVE = re.compile(r'^(\s*(?:access_log|error_log|pid|\w+_temp_path)\s+)"(/[^"]*)"', re.MULTILINE)
_SERVER_LINE = re.compile(r"^(\s*server\s+)([A-Za-z0-9._-]+):(\d+)", re.MULTILINE)


def localize_for_test(conf: str, prefix: Path) -> str:
    """A copy of a rendered nginx.conf that `nginx -t` can check on this host.

    Upstream host names (container names that only resolve inside the stack's network) become
    127.0.0.1, and every log/pid/temp path moves under `prefix`, so the check touches nothing
    outside it. Run it as `nginx -t -p <prefix> -c <copy>`.
    """

    def move(match: re.Match[str]) -> str:
        return f'{match.group(1)}"{prefix}/{match.group(2).lstrip("/")}"'

    conf = _LOCAL_PATH_DIRECTIVE.sub(move, conf)
    return _SERVER_LINE.sub(lambda m: f"{m.group(1)}127.0.0.1:{m.group(3)}", conf)


def conf_dirs(conf: str) -> list[Path]:
    """Folders that must exist before nginx starts with a rendered config: the parents of its
    log, pid and temp paths (nginx creates each temp folder itself, but not its parents)."""
    return sorted({Path(match.group(2)).parent for match in _LOCAL_PATH_DIRECTIVE.finditer(conf)})


def _template() -> jinja2.Template:
    return environment().get_template("nginx.conf.j2")


def nginx_binary() -> str | None:
    """The nginx executable, also found in /usr/sbin when that is not on PATH (non-root shells)."""
    found = shutil.which("nginx")
    if found:
        return found
    return next((p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.access(p, os.X_OK)), None)


_UPSTREAM = re.compile(r"upstream\s+(\S+)\s*\{(.*?)\}", re.S)
_SERVER = re.compile(r"^\s*server\s+([^\s;]+)", re.M)
_SPLIT = re.compile(r"split_clients\s+\S+\s+\S+\s*\{(.*?)\}", re.S)
_SHARE = re.compile(r"^\s*(\d+(?:\.\d+)?)%\s+(\S+?);", re.M)
_REST = re.compile(r"^\s*\*\s+(\S+?);", re.M)


def served_split(conf: str) -> RouterSplit:
    """What an nginx.conf rendered from a RouterPlan routes (read back from the live file, so a
    hand edit shows): the servers of each track's upstream and the canary's percent."""
    upstreams = {name: _SERVER.findall(body) for name, body in _UPSTREAM.findall(conf)}
    weight = 0
    split = _SPLIT.search(conf)
    if split is not None:
        shares = {target: float(pct) for pct, target in _SHARE.findall(split.group(1))}
        rest = _REST.findall(split.group(1))
        weight = round(shares.get(CANARY_UPSTREAM, 100.0 if rest == [CANARY_UPSTREAM] else 0.0))
    return RouterSplit(
        stable=sorted(upstreams.get(STABLE_UPSTREAM, [])), canary=sorted(upstreams.get(CANARY_UPSTREAM, [])),
        canary_weight=weight,
    )  # fmt: skip
