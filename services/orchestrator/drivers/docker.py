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

from services.orchestrator import fencing, plans
from services.orchestrator.drivers.base import (
    LABEL_PROJECT,
    LABEL_ROLE,
    LABEL_TRACK,
    LABEL_VERSION,
    Examined,
    InstanceSpec,
    NetworkSpec,
    Progress,
    Role,
    RuntimeDriver,
    RuntimeObject,
    http_problem,
    port_in_use,
    read_text,
    wait_drained,
    wait_listening,
)
from services.orchestrator.drivers.health import wait_http_ok
from swiftdeploy_core.bus.events import ImagePulled, ImagePulling
from swiftdeploy_core.errors import ImagePullError, RuntimeDriverError, RuntimeUnavailable
from swiftdeploy_core.project.images import (
    DOCKER_HUB,
    Credentials,
    RegistryAuth,
    docker_config_file,
    load_credentials,
    parse_reference,
    pull_error,
)
from swiftdeploy_core.project.manifest import Manifest, PullPolicy
from swiftdeploy_core.project.router import CONTAINER_CONF, render_nginx_conf, router_container, router_log_dir
from swiftdeploy_core.project.state import Instance

STOP_GRACE = 5  # seconds docker waits after SIGTERM before SIGKILL
RESTART_WAIT = 10.0  # seconds a restart waits for a container docker is restarting itself
UNREACHABLE = 900  # aiodocker's status for "cannot connect to the Docker Engine"
PROGRESS_EVERY = 1.0  # seconds between two image.pulling events of one pull
NO_DOCKER = "cannot reach dockerd ({error}); start it, or deploy with `runtime: process`"


@contextlib.contextmanager
def docker_errors(doing: str) -> Iterator[None]:
    """Turn aiodocker and socket errors into SwiftDeploy's runtime errors, naming the step."""
    try:
        yield
    except DockerError as exc:
        if exc.status == UNREACHABLE:
            raise RuntimeUnavailable(NO_DOCKER.format(error=exc.message)) from exc
        raise RuntimeDriverError(f"{doing}: {exc.message}") from exc
    except (aiohttp.ClientConnectionError, FileNotFoundError, ConnectionError) as exc:
        raise RuntimeUnavailable(NO_DOCKER.format(error=exc)) from exc


class DockerDriver(RuntimeDriver):
    name = "docker"

    def __init__(
        self, project: str, state_dir: Path, url: str | None = None, docker_config: Path | None = None
    ) -> None:
        self.project = project
        self.dir = state_dir
        self.docker_config = docker_config or docker_config_file(None, None, Path.home())
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

    async def ensure_images(self, manifest: Manifest, images: list[str], progress: Progress) -> dict[str, str | None]:
        credentials = load_credentials(self.docker_config)
        return {image: await self.ensure_image(image, manifest.images.pull, credentials, progress) for image in images}

    async def ensure_image(self, image: str, policy: PullPolicy, credentials: Credentials, progress: Progress) -> str:
        """The image on this host per the pull policy; returns the digest that runs."""
        started = time.monotonic()
        with docker_errors(f"inspecting image {image!r}"):
            info = await self._image(image)
            pull = policy == PullPolicy.always or (info is None and policy == PullPolicy.missing)
            if pull:
                auth = await asyncio.to_thread(credentials.for_registry, parse_reference(image).registry)
                await self._pull(image, auth, progress)
                info = await self._image(image)
        if info is None:
            raise ImagePullError(
                f"image {image!r} is not on this docker host and images.pull is `never` "
                "(pull or build it, or set images.pull: missing)"
            )
        digest = repo_digest(image, info)
        await progress(
            ImagePulled(image=image, digest=digest, pulled=pull, seconds=round(time.monotonic() - started, 3))
        )
        return digest

    async def _image(self, image: str) -> dict[str, Any] | None:
        try:
            return await self.docker.images.inspect(image)
        except DockerError as exc:
            if exc.status == 404:
                return None
            raise

    async def _pull(self, image: str, auth: RegistryAuth | None, progress: Progress) -> None:
        ref = parse_reference(image)
        name = (
            f"{DOCKER_HUB}/{image}"
            if auth and ref.registry == DOCKER_HUB and not image.startswith(DOCKER_HUB)
            else image
        )
        layers: dict[str, tuple[int, int]] = {}
        await progress(ImagePulling(image=image, registry=ref.registry, status="pulling"))
        shown = time.monotonic()
        try:
            async for item in self.docker.images.pull(name, auth=auth, stream=True):
                if item.get("error"):
                    raise ImagePullError(pull_error(image, str(item["error"]), credentials=self.docker_config))
                detail = item.get("progressDetail") or {}
                if item.get("id") and detail.get("total"):
                    layers[item["id"]] = (int(detail.get("current") or 0), int(detail["total"]))
                if time.monotonic() - shown >= PROGRESS_EVERY:
                    shown = time.monotonic()
                    current, total = sum(c for c, _ in layers.values()), sum(t for _, t in layers.values())
                    status = str(item.get("status") or "pulling")
                    await progress(
                        ImagePulling(image=image, registry=ref.registry, status=status, current=current, total=total)
                    )
        except DockerError as exc:
            if exc.status == UNREACHABLE:
                raise
            raise ImagePullError(pull_error(image, exc.message, credentials=self.docker_config)) from exc

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

    # --- instances -----------------------------------------------------------------------------

    async def start_instance(self, spec: InstanceSpec) -> Instance:
        with docker_errors(f"starting {spec.name}"):
            container = await self._get(spec.name)
            if container is None or not container["State"]["Running"]:
                if container is not None:
                    await container.delete(force=True)
                container = await self.docker.containers.create(plans.instance_config(spec), name=spec.name)
                await container.start()
            info = await container.show()
        return _instance(info)

    async def wait_healthy(self, instance: Instance, timeout: float, path: str = "/healthz") -> None:
        async def exited() -> str | None:
            container = await self._get(instance.name)
            if container is None:
                return "was removed"
            state = container["State"]
            return None if state["Running"] else f"exited with code {state['ExitCode']}"

        with docker_errors(f"waiting for {instance.name}"):
            await wait_http_ok(f"{instance.url}{path}", timeout, name=instance.name, alive=exited)

    async def examine(self, instance: Instance, path: str, timeout: float) -> Examined:
        with docker_errors(f"inspecting {instance.name}"):
            container = await self._get(instance.name)
        if container is None:
            return Examined(state="exited", reason="was removed")
        state = container["State"]
        if state.get("Restarting") or not state["Running"]:
            restarting = "; docker's restart policy restarts it" if state.get("Restarting") else ""
            return Examined(state="exited", reason=f"exited with code {state['ExitCode']}{restarting}")
        if instance.started and state.get("StartedAt") != instance.started:
            info = await container.show()
            now = _instance(info)
            if now.url != instance.url:
                await self._refresh_router()
            restarts = info.get("RestartCount", 0)
            reason = f"exited and was restarted by docker's restart policy ({restarts} so far)"
            return Examined(state="restarted", reason=reason, instance=now)
        problem = await http_problem(f"{instance.url}{path}", timeout)
        return Examined(state="healthy") if problem is None else Examined(state="unhealthy", reason=problem)

    async def restart_instance(self, instance: Instance, spec: InstanceSpec) -> Instance:
        """docker restart (or start) the same container; one docker is restarting is waited for."""
        with docker_errors(f"restarting {instance.name}"):
            container = await self._get(instance.name)
            if container is None:
                return await self.start_instance(spec)
            deadline = time.monotonic() + RESTART_WAIT
            while container["State"].get("Restarting") and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
                container = await self._get(instance.name) or container
            if container["State"]["Running"] and container["State"].get("StartedAt") != instance.started:
                info = await container.show()  # docker started it again meanwhile
            else:
                await container.restart(timeout=1)
                info = await container.show()
        now = _instance(info)
        if now.url != instance.url:
            await self._refresh_router()
        return now

    async def _refresh_router(self) -> None:
        """Reload nginx on the config it serves: it resolves instance names again (a restarted
        container may have a new address)."""
        conf = read_text(self.nginx_conf)
        with docker_errors("reloading the router"):
            container = await self._get(router_container(self.project))
            if conf is not None and container is not None and container["State"]["Running"]:
                await self._reload(container, conf)

    async def stop_instance(self, name: str) -> None:
        with docker_errors(f"stopping {name}"):
            container = await self._get(name)
            if container is not None:
                with contextlib.suppress(DockerError):
                    await container.stop(t=STOP_GRACE)
                await container.delete(force=True, v=True)

    # --- router --------------------------------------------------------------------------------

    def render_router(
        self, manifest: Manifest, stable: list[Instance], canary: list[Instance], weight: int,
        canary_error_percent: float = 0.0,
    ) -> str:  # fmt: skip
        plan = plans.docker_router_plan(manifest, stable, canary, weight, canary_error_percent)
        return render_nginx_conf(plan, plans.ROUTER_HEADER)

    async def apply_router(
        self, manifest: Manifest, stable: list[Instance], canary: list[Instance], weight: int,
        canary_error_percent: float = 0.0,
    ) -> str:  # fmt: skip
        conf = self.render_router(manifest, stable, canary, weight, canary_error_percent)
        url = f"http://127.0.0.1:{manifest.nginx.port}"
        name = router_container(self.project)
        with docker_errors(f"configuring {name}"):
            container = await self._get(name)
            running = container is not None and container["State"]["Running"]
            if running and fencing.unstamped(read_text(self.nginx_conf)) == conf:
                return url
            conf = fencing.stamped(conf, self.fence_stamp)
            # Replicas of this host share the copy: never replace a newer operation's config.
            async with fencing.file_lock(self.nginx_conf.with_suffix(".lock")):
                fencing.check_newer(read_text(self.nginx_conf), self.fence_stamp, f"the router of {self.project}")
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
        container = await self.docker.containers.create(plans.router_config(manifest, self.project, logs), name=name)
        await container.put_archive(  # type: ignore[no-untyped-call]  # aiodocker leaves it unannotated
            str(Path(CONTAINER_CONF).parent), _tar(Path(CONTAINER_CONF).name, conf)
        )
        try:
            await container.start()
        except DockerError as exc:
            await container.delete(force=True)
            if "address already in use" in exc.message or "port is already allocated" in exc.message:
                raise port_in_use(manifest.nginx.port) from exc
            raise
        await _wait_router(container, manifest.nginx.port)

    async def _reload(self, container: Any, conf: str) -> None:
        await container.put_archive(str(Path(CONTAINER_CONF).parent), _tar(Path(CONTAINER_CONF).name, conf))
        code, out = await _exec(container, ["nginx", "-t", "-q"])
        if code != 0:
            lines = out.strip().splitlines()
            why = [line for line in lines if "[emerg]" in line][:1] or lines[-1:]  # the reason, not "test failed"
            raise RuntimeDriverError(f"nginx refused the rendered config: {why}")
        old = await _workers(container)
        code, out = await _exec(container, ["nginx", "-s", "reload"])
        if code != 0:
            raise RuntimeDriverError(f"nginx -s reload failed: {out.strip()}")
        await wait_drained(lambda: _workers(container), old)

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
            listed = await self.docker.volumes.list(filters=label)  # type: ignore[no-untyped-call]  # unannotated
            volumes = listed.get("Volumes") or []
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
                    volume = await self.docker.volumes.get(obj.name)  # type: ignore[no-untyped-call]  # unannotated
                    await volume.delete()

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


def repo_digest(image: str, info: dict[str, Any]) -> str:
    """`repo@sha256:...` of the image as its registry knows it; a local build's image id when no
    registry ever served it."""
    repository = parse_reference(image).repository
    digests = [str(d) for d in info.get("RepoDigests") or []]
    mine = [d for d in digests if d.split("@", 1)[0] == repository]
    return (mine or digests or [str(info["Id"])])[0]


def _instance(info: dict[str, Any]) -> Instance:
    labels = info["Config"]["Labels"] or {}
    port = next(iter(info["Config"].get("ExposedPorts") or {"3000/tcp": {}})).split("/")[0]
    return Instance(
        id=info["Id"][:12], name=info["Name"].lstrip("/"), track=labels.get(LABEL_TRACK, "stable"),
        version=labels.get(LABEL_VERSION, ""), url=f"http://{_ip(info)}:{port}",
        started=str(info["State"].get("StartedAt") or ""),
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

    async def exited() -> str | None:
        info = await container.show()
        if info["State"]["Running"]:
            return None
        logs = await container.log(stdout=True, stderr=True, tail=3)
        return f"nginx exited with code {info['State']['ExitCode']}: {''.join(logs).strip()[-300:]}"

    await wait_listening(_ip(await container.show()), port, exited, public=port, timeout=timeout)
