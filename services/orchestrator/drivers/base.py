"""The runtime seam: one small interface that the docker and process drivers implement.

Everything above it (plans, phases, operations, policy gates) is shared by both runtimes. A driver
only executes: it never decides what to run (that is `plans`) or whether to (that is the gatekeeper).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Hashable
from enum import Enum
from pathlib import Path
from typing import TypeVar

from pydantic import BaseModel, ConfigDict, SecretStr

from swiftdeploy_core.bus.events import AnyPayload, Track
from swiftdeploy_core.errors import RuntimeDriverError
from swiftdeploy_core.project.manifest import Manifest
from swiftdeploy_core.project.state import Instance

LABEL_PROJECT = "swiftdeploy.project"
LABEL_TRACK = "swiftdeploy.track"
LABEL_VERSION = "swiftdeploy.version"
LABEL_ROLE = "swiftdeploy.role"
RELOAD_DRAIN = 12.0  # seconds: nginx's worker_shutdown_timeout (10 s) plus a margin
POLL = 0.05  # seconds between two looks at a reloading or starting router


Reason = Callable[[], Awaitable[str | None]]  # why a process stopped, or None while it runs
Progress = Callable[[AnyPayload], Awaitable[None]]  # emits image.pulling / image.pulled on the bus


class Role(str, Enum):
    """What a labelled runtime object is for."""

    instance = "instance"  # a workload instance of one track
    router = "router"  # nginx
    opa = "policy"  # the policy server, OPA (docker runtime, engine opa); as the compose file labels it
    network = "network"
    volume = "volume"
    secret = "secret"  # swarm runtime: a Docker secret holding one of services.secrets


class InstanceSpec(BaseModel):
    """One workload instance to start: everything a driver needs, nothing it must decide."""

    model_config = ConfigDict(frozen=True)

    name: str
    project: str
    track: Track
    version: str
    image: str  # as the manifest names it
    digest: str | None = None  # docker: what runs exactly (`repo@sha256:...`); None: the reference
    port: int  # the port the workload listens on inside its container (docker)
    command: tuple[str, ...] | None = None  # process: what runs (default: the workload); docker: CMD
    args: tuple[str, ...] = ()  # after the command (docker without a command: the whole CMD)
    network: str | None = None  # docker runtime: the network it joins
    env: dict[str, str] = {}
    secrets: dict[str, SecretStr] = {}  # environment variables whose values are never shown
    labels: dict[str, str] = {}
    cpus: float | None = None  # docker runtime: limits
    memory: int | None = None  # bytes

    def environment(self) -> dict[str, str]:
        """env and the secrets' values: what the runtime hands the process, and nothing else sees."""
        return {**self.env, **{k: v.get_secret_value() for k, v in self.secrets.items()}}


class NetworkSpec(BaseModel):
    model_config = ConfigDict(frozen=True)

    name: str
    driver: str = "bridge"
    internal: bool = False
    labels: dict[str, str] = {}


class RuntimeObject(BaseModel):
    """Something running (or left) in the runtime that carries this project's labels."""

    model_config = ConfigDict(frozen=True)

    kind: str  # container, network, volume, process
    name: str
    id: str
    labels: dict[str, str] = {}
    running: bool = True
    url: str = ""  # instances: where the services reach it
    image: str = ""

    @property
    def role(self) -> str:
        return self.labels.get(LABEL_ROLE, "")

    @property
    def track(self) -> str | None:
        return self.labels.get(LABEL_TRACK)

    @property
    def version(self) -> str | None:
        return self.labels.get(LABEL_VERSION)


class RuntimeDriver(ABC):
    """Executes plans on one runtime for one project. Every method is safe to repeat."""

    name: str
    project: str
    dir: Path  # the driver's state folder
    nginx_conf: Path  # the router's nginx.conf as last applied: `dir / "nginx" / "nginx.conf"`

    @abstractmethod
    async def preflight(self, manifest: Manifest, *, router_running: bool) -> None:
        """Refuse early, with one line, what would fail later (missing image, port taken)."""

    @abstractmethod
    async def ensure_networks(self, networks: list[NetworkSpec]) -> list[str]:
        """Create the networks that do not exist yet; return the names created now."""

    def describe_networks(self, networks: list[NetworkSpec]) -> str:
        """What the deploy's `networks` step says this runtime joined."""
        return ", ".join(net.name for net in networks)

    @abstractmethod
    async def start_instance(self, spec: InstanceSpec) -> Instance:
        """Start one workload instance; returns as soon as it was started (not yet healthy)."""

    async def ensure_images(self, manifest: Manifest, images: list[str], progress: Progress) -> dict[str, str | None]:
        """Make the images runnable (pulled per `images.pull`); image -> the digest that runs
        (`repo@sha256:...`), None where the runtime runs no image (the process runtime)."""
        return dict.fromkeys(images)

    @abstractmethod
    async def wait_healthy(self, instance: Instance, timeout: float, path: str = "/healthz") -> None:
        """Wait until `path` answers 200; RuntimeDriverError (with its last log lines) if not."""

    @abstractmethod
    async def stop_instance(self, name: str) -> None:
        """Stop and remove one instance (gracefully first); nothing happens if it is gone."""

    @abstractmethod
    async def apply_router(
        self, manifest: Manifest, stable: list[Instance], canary: list[Instance], weight: int,
        canary_error_percent: float = 0.0,
    ) -> str:  # fmt: skip
        """Start nginx, or reload it gracefully, so it serves exactly this split; return its URL.
        `canary_error_percent` of the canary's requests nginx answers with a 500 itself (router chaos).

        Returns only once the new configuration serves and the old workers have drained, so
        instances that left the configuration may be stopped right after.
        """

    @abstractmethod
    def render_router(
        self, manifest: Manifest, stable: list[Instance], canary: list[Instance], weight: int,
        canary_error_percent: float = 0.0,
    ) -> str:  # fmt: skip
        """The nginx.conf that serves exactly this split (what `apply_router` installs)."""

    @abstractmethod
    async def router_running(self) -> bool: ...

    async def router_config(self) -> str | None:
        """The nginx.conf the router currently serves (None when there is no router)."""
        return read_text(self.nginx_conf) if await self.router_running() else None

    @abstractmethod
    async def list_objects(self) -> list[RuntimeObject]:
        """Every object in the runtime labelled with this project."""

    @abstractmethod
    async def logs_tail(self, name: str, lines: int = 20) -> list[str]: ...

    @abstractmethod
    async def remove(self, obj: RuntimeObject) -> None:
        """Remove one labelled object (instance, router, opa, network, volume)."""

    async def teardown(self) -> list[str]:
        """Remove every labelled object: instances first, then router and opa, networks last."""
        order = {Role.instance.value: 0, Role.router.value: 1, Role.opa.value: 2, Role.volume.value: 3}
        objects = sorted(await self.list_objects(), key=lambda o: order.get(o.role, 4))
        for obj in objects:
            await self.remove(obj)
        return [f"{obj.kind} {obj.name}" for obj in objects]

    async def close(self) -> None:  # noqa: B027 - an optional hook: the process driver holds nothing
        """Release the driver's connections."""


class InstanceFailed(RuntimeDriverError):
    """One instance did not start or never became healthy; `name` says which (for its logs)."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(message)
        self.name = name
        self.logs: list[str] = []  # its last log lines, captured before it was removed


W = TypeVar("W", bound=Hashable)  # how a runtime names an nginx worker (pid)


async def wait_drained(workers: Callable[[], Awaitable[set[W]]], old: set[W]) -> None:
    """After a reload: return once new nginx workers serve and none of the `old` ones is left."""
    deadline = time.monotonic() + RELOAD_DRAIN
    while time.monotonic() < deadline:
        current = await workers()
        if current and not current & old:
            return
        await asyncio.sleep(POLL)
    raise RuntimeDriverError(f"nginx did not finish reloading within {RELOAD_DRAIN:.0f}s")


async def wait_listening(host: str, port: int, exited: Reason, *, public: int, timeout: float) -> None:
    """Wait until nginx accepts on `host:port`; `exited` says (whole) why it stopped, if it did.
    `public` is the port users reach it on (named in the timeout message)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        reason = await exited()
        if reason is not None:
            raise RuntimeDriverError(reason)
        with contextlib.suppress(OSError):
            _, writer = await asyncio.open_connection(host, port)
            writer.close()
            return
        await asyncio.sleep(POLL)
    raise RuntimeDriverError(f"nginx did not listen on 127.0.0.1:{public} within {timeout:.0f}s")


def port_in_use(port: int, host: str = "127.0.0.1", detail: str = "") -> RuntimeDriverError:
    """The one line for a router port something else holds."""
    cause = f" ({detail})" if detail else ""
    return RuntimeDriverError(f"nginx.port {port} on {host} is already in use{cause}; free it or change nginx.port")


def ensure_port_free(port: int, host: str = "127.0.0.1") -> None:
    with contextlib.closing(socket.socket()) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise port_in_use(port, host, exc.strerror or "") from None


def read_text(path: Path) -> str | None:
    """A file's text, or None when it does not exist."""
    with contextlib.suppress(FileNotFoundError):
        return path.read_text()
    return None
