"""The docker runtime through aiodocker: labelled containers and networks, nginx as a container.

Every aiodocker or connection error is wrapped at this boundary (`docker_errors`) into
`RuntimeDriverError`, or `RuntimeUnavailable` when dockerd cannot be reached at all. Instances are
reached from the host by their bridge IP; nginx reaches them by container name on the network.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiodocker
import aiohttp
from aiodocker.exceptions import DockerError

from services.orchestrator import plans
from services.orchestrator.drivers.base import (
    LABEL_PROJECT,
    LABEL_ROLE,
    LABEL_TRACK,
    LABEL_VERSION,
    RELOAD_DRAIN,
    InstanceSpec,
    NetworkSpec,
    Role,
    RuntimeDriver,
    RuntimeObject,
    read_text,
)
from services.orchestrator.drivers.health import wait_http_ok
from swiftdeploy_core.errors import RuntimeDriverError, RuntimeUnavailable
from swiftdeploy_core.project.manifest import Manifest
from swiftdeploy_core.project.router import (
    CONTAINER_CONF,
    CONTAINER_LOG_DIR,
    OPA_PORT,
    opa_container,
    render_nginx_conf,
    router_container,
    router_log_dir,
)
from swiftdeploy_core.project.state import Instance

STOP_GRACE = 5  # seconds docker waits after SIGTERM before SIGKILL
UNREACHABLE = 900  # aiodocker's status for "cannot connect to the Docker Engine"
NO_DOCKER = "cannot reach dockerd ({error}); start it, or deploy with `runtime: process`"


@contextlib.contextmanager
def docker_errors(doing: str) -> Iterator[None]:
    """Turn aiodocker and socket errors into SwiftDeploy's runtime errors, naming the step."""
    try:
        yield
    except DockerError as exc:
        if exc.status == UNREACHABLE:
            raise RuntimeUnavailable(NO_DOCKER.format(error=exc.message)) from None
        raise RuntimeDriverError(f"{doing}: {exc.message}") from None
    except (aiohttp.ClientConnectionError, FileNotFoundError, ConnectionError) as exc:
        raise RuntimeUnavailable(NO_DOCKER.format(error=exc)) from None


class DockerDriver(RuntimeDriver):
    name = "docker"

    def __init__(self, project: str, state_dir: Path, url: str | None = None) -> None:
        self.project = project
        self.dir = state_dir
        self.nginx_conf = state_dir / "nginx" / "nginx.conf"  # a copy of what the container serves
        self._url = url
        self._docker: aiodocker.Docker | None = None

    @property
    def docker(self) -> aiodocker.Docker:
        if self._docker is None:
            with docker_errors("connecting to dockerd"):
                self._docker = aiodocker.Docker(url=self._url)
        return self._docker

    async def close(self) -> None:
        if self._docker is not None:
            await self._docker.close()
            self._docker = None

    # --- pre-flight and networks ---------------------------------------------------------------

    async def preflight(self, manifest: Manifest, *, router_running: bool) -> None:
        with docker_errors("asking dockerd"):
            await self.docker.version()
        images = {manifest.services.image, manifest.nginx.image}
        if plans.needs_opa(manifest):
            images.add(manifest.policy.opa_image)
        for image in sorted(images):
            await self.require_image(image)

    async def require_image(self, image: str) -> None:
        with docker_errors(f"inspecting image {image!r}"):
            try:
                await self.docker.images.inspect(image)
            except DockerError as exc:
                if exc.status != 404:
                    raise
                raise RuntimeDriverError(
                    f"image {image!r} is not on this docker host (no registry here: build it with scripts/build-images)"
                ) from None

    async def ensure_networks(self, networks: list[NetworkSpec]) -> list[str]:
        created = []
        with docker_errors("creating networks"):
            existing = {n["Name"] for n in await self.docker.networks.list()}
            for net in networks:
                if net.name not in existing:
                    await self.docker.networks.create(
                        {
                            "Name": net.name,
                            "Driver": net.driver,
                            "Internal": net.internal,
                            "Labels": net.labels,
                            "CheckDuplicate": True,
                        }
                    )
                    created.append(net.name)
        return created

    async def start_opa(self, manifest: Manifest, network: str) -> str | None:
        name = opa_container(self.project)
        config = {
            "Image": manifest.policy.opa_image,
            "Cmd": ["run", "--server", f"--addr=0.0.0.0:{OPA_PORT}", "/policies"],
            "Labels": plans.labels(self.project, Role.opa),
            "HostConfig": {"NetworkMode": network},
        }
        with docker_errors(f"starting {name}"):
            container = await self.docker.containers.create_or_replace(name=name, config=config)
            await container.start()
        return name

    # --- instances -----------------------------------------------------------------------------

    async def start_instance(self, spec: InstanceSpec) -> Instance:
        with docker_errors(f"starting {spec.name}"):
            container = await self._get(spec.name)
            if container is None or not container["State"]["Running"]:
                if container is not None:
                    await container.delete(force=True)
                container = await self.docker.containers.create(instance_config(spec), name=spec.name)
                await container.start()
            info = await container.show()
        return _instance(info)

    async def wait_healthy(self, instance: Instance, timeout: float) -> None:
        async def exited() -> str | None:
            container = await self._get(instance.name)
            if container is None:
                return "was removed"
            state = container["State"]
            return None if state["Running"] else f"exited with code {state['ExitCode']}"

        with docker_errors(f"waiting for {instance.name}"):
            await wait_http_ok(f"{instance.url}/healthz", timeout, name=instance.name, alive=exited)

    async def stop_instance(self, name: str) -> None:
        with docker_errors(f"stopping {name}"):
            container = await self._get(name)
            if container is not None:
                with contextlib.suppress(DockerError):
                    await container.stop(t=STOP_GRACE)
                await container.delete(force=True, v=True)

    # --- router --------------------------------------------------------------------------------

    async def apply_router(
        self, manifest: Manifest, stable: list[Instance], canary: list[Instance], weight: int,
        canary_error_percent: float = 0.0,
    ) -> str:  # fmt: skip
        plan = plans.docker_router_plan(manifest, stable, canary, weight, canary_error_percent)
        conf = render_nginx_conf(plan, plans.ROUTER_HEADER)
        url = f"http://127.0.0.1:{manifest.nginx.port}"
        name = router_container(self.project)
        with docker_errors(f"configuring {name}"):
            container = await self._get(name)
            running = container is not None and container["State"]["Running"]
            if running and read_text(self.nginx_conf) == conf:
                return url
            if running:
                await self._reload(container, conf)
            else:
                await self._start_router(manifest, name, conf, container)
        self.nginx_conf.parent.mkdir(parents=True, exist_ok=True)
        self.nginx_conf.write_text(conf)
        return url

    async def _start_router(self, manifest: Manifest, name: str, conf: str, old: Any) -> None:
        if old is not None:
            await old.delete(force=True)
        logs = router_log_dir(self.dir)
        logs.mkdir(parents=True, exist_ok=True)  # bind-mounted: the collector tails access.log there
        config = router_config(manifest, self.project, logs)
        container = await self.docker.containers.create(config, name=name)
        await container.put_archive(str(Path(CONTAINER_CONF).parent), _tar(Path(CONTAINER_CONF).name, conf))
        try:
            await container.start()
        except DockerError as exc:
            await container.delete(force=True)
            if "address already in use" in exc.message or "port is already allocated" in exc.message:
                raise RuntimeDriverError(
                    f"nginx.port {manifest.nginx.port} on 127.0.0.1 is already in use; free it or change nginx.port"
                ) from None
            raise
        await _wait_router(container, manifest.nginx.port)

    async def _reload(self, container: Any, conf: str) -> None:
        await container.put_archive(str(Path(CONTAINER_CONF).parent), _tar(Path(CONTAINER_CONF).name, conf))
        code, out = await _exec(container, ["nginx", "-t", "-q"])
        if code != 0:
            raise RuntimeDriverError(f"nginx refused the rendered config: {out.strip().splitlines()[-1:]}")
        old = await _workers(container)
        code, out = await _exec(container, ["nginx", "-s", "reload"])
        if code != 0:
            raise RuntimeDriverError(f"nginx -s reload failed: {out.strip()}")
        deadline = time.monotonic() + RELOAD_DRAIN
        while time.monotonic() < deadline:
            current = await _workers(container)
            if current and not current & old:
                return
            await asyncio.sleep(0.05)
        raise RuntimeDriverError(f"nginx did not finish reloading within {RELOAD_DRAIN:.0f}s")

    async def router_running(self) -> bool:
        with docker_errors("inspecting the router"):
            container = await self._get(router_container(self.project))
        return container is not None and bool(container["State"]["Running"])

    # --- labelled objects ----------------------------------------------------------------------

    async def list_objects(self) -> list[RuntimeObject]:
        label = {"label": [f"{LABEL_PROJECT}={self.project}"]}
        found: list[RuntimeObject] = []
        with docker_errors("listing labelled objects"):
            for container in await self.docker.containers.list(all=True, filters=label):
                found.append(_container_object(await container.show()))
            for net in await self.docker.networks.list(filters=label):
                found.append(
                    RuntimeObject(kind="network", name=net["Name"], id=net["Id"], labels=net.get("Labels") or {})
                )
            volumes = (await self.docker.volumes.list(filters=label)).get("Volumes") or []
            for vol in volumes:
                found.append(
                    RuntimeObject(kind="volume", name=vol["Name"], id=vol["Name"], labels=vol.get("Labels") or {})
                )
        return found

    async def remove(self, obj: RuntimeObject) -> None:
        with docker_errors(f"removing {obj.kind} {obj.name}"):
            with contextlib.suppress(DockerError):  # already gone is fine
                if obj.kind == "container":
                    await self.stop_instance(obj.name)
                elif obj.kind == "network":
                    await (await self.docker.networks.get(obj.id)).delete()
                elif obj.kind == "volume":
                    await (await self.docker.volumes.get(obj.name)).delete()

    async def teardown(self) -> list[str]:
        removed = await super().teardown()
        self.nginx_conf.unlink(missing_ok=True)
        return removed

    async def logs_tail(self, name: str, lines: int = 20) -> list[str]:
        with contextlib.suppress(DockerError, RuntimeDriverError):
            container = await self._get(name)
            if container is not None:
                logs = await container.log(stdout=True, stderr=True, tail=lines)
                return [line.rstrip("\n") for chunk in logs for line in chunk.splitlines() if line.strip()][-lines:]
        return []

    async def _get(self, name: str) -> Any:
        try:
            container = await self.docker.containers.get(name)
        except DockerError as exc:
            if exc.status == 404:
                return None
            raise
        return container


# --- pure configs (tested by equality) ---------------------------------------------------------


def instance_config(spec: InstanceSpec) -> dict[str, Any]:
    network = spec.network or "bridge"
    env = {"HOST": "0.0.0.0", "PORT": str(spec.port), **spec.env}
    return {
        "Image": spec.image,
        "Env": [f"{k}={v}" for k, v in env.items()],
        "Labels": spec.labels,
        "ExposedPorts": {f"{spec.port}/tcp": {}},
        "HostConfig": {"NetworkMode": network, "RestartPolicy": {"Name": "no"}},
        "NetworkingConfig": {"EndpointsConfig": {network: {"Aliases": [spec.name]}}},
    }


def router_config(manifest: Manifest, project: str, log_dir: Path | None = None) -> dict[str, Any]:
    """nginx's container; with `log_dir`, the host folder mounted on its log folder (the image's
    access.log is a symlink to stdout, which the mount hides: nginx writes a real file there)."""
    port = f"{manifest.nginx.port}/tcp"
    binds = [f"{log_dir}:{CONTAINER_LOG_DIR}"] if log_dir else []
    return {
        "Image": manifest.nginx.image,
        "Cmd": ["nginx", "-g", "daemon off;"],
        "Labels": plans.labels(project, Role.router),
        "ExposedPorts": {port: {}},
        "HostConfig": {
            "NetworkMode": manifest.network.name,
            "PortBindings": {port: [{"HostIp": "127.0.0.1", "HostPort": str(manifest.nginx.port)}]},
            "RestartPolicy": {"Name": "no"},
            "Binds": binds,
        },
    }


def _instance(info: dict[str, Any]) -> Instance:
    labels = info["Config"]["Labels"] or {}
    port = next(iter(info["Config"].get("ExposedPorts") or {"3000/tcp": {}})).split("/")[0]
    return Instance(
        id=info["Id"][:12], name=info["Name"].lstrip("/"), track=labels.get(LABEL_TRACK, "stable"),
        version=labels.get(LABEL_VERSION, ""), url=f"http://{_ip(info)}:{port}",
    )  # fmt: skip


def _container_object(info: dict[str, Any]) -> RuntimeObject:
    labels = info["Config"]["Labels"] or {}
    url = _instance(info).url if labels.get(LABEL_ROLE) == Role.instance.value else ""
    return RuntimeObject(
        kind="container", name=info["Name"].lstrip("/"), id=info["Id"][:12], labels=labels,
        running=bool(info["State"]["Running"]), url=url, image=info["Config"]["Image"],
    )  # fmt: skip


def _ip(info: dict[str, Any]) -> str:
    networks = info.get("NetworkSettings", {}).get("Networks") or {}
    return next((n["IPAddress"] for n in networks.values() if n.get("IPAddress")), "127.0.0.1")


def _tar(name: str, text: str) -> bytes:
    data = text.encode()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo(name)
        info.size, info.mode, info.mtime = len(data), 0o644, int(time.time())
        tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


async def _exec(container: Any, cmd: list[str]) -> tuple[int, str]:
    execution = await container.exec(cmd, stdout=True, stderr=True)
    out = b""
    async with execution.start(detach=False) as stream:
        while (message := await stream.read_out()) is not None:
            out += message.data
    info = await execution.inspect()
    return int(info.get("ExitCode") or 0), out.decode(errors="replace")


async def _workers(container: Any) -> set[str]:
    top = await container.top()
    titles = top.get("Titles", [])
    pid, cmd = titles.index("PID"), titles.index("CMD") if "CMD" in titles else len(titles) - 1
    return {row[pid] for row in top.get("Processes") or [] if "worker process" in row[cmd]}


async def _wait_router(container: Any, port: int, timeout: float = 10.0) -> None:
    """Wait until nginx listens inside its container. Probed at the container's own address:
    docker-proxy accepts on the published port before nginx listens, and a request through nginx
    to instances still booting would count against them (max_fails)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        info = await container.show()
        if not info["State"]["Running"]:
            logs = await container.log(stdout=True, stderr=True, tail=3)
            raise RuntimeDriverError(
                f"nginx exited with code {info['State']['ExitCode']}: {''.join(logs).strip()[-300:]}"
            )
        with contextlib.suppress(OSError):
            _, writer = await asyncio.open_connection(_ip(info), port)
            writer.close()
            return
        await asyncio.sleep(0.05)
    raise RuntimeDriverError(f"nginx did not listen on 127.0.0.1:{port} within {timeout:.0f}s")
