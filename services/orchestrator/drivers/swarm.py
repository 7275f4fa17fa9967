"""The swarm runtime: each track a Docker Swarm service, nginx a service too, across the nodes.

A track's generation (`plans.instance_name` without its index) is one replicated service; its
instances are the service's task slots (`<service>-<slot>`). Services use `endpoint_mode: dnsrr`
and nginx is published in host mode: a service's virtual IP and the ingress routing mesh need
IPVS, which not every kernel has, and nginx weights the tracks itself anyway.

- nginx's upstreams are the tasks' addresses on the project's overlay network, read from the
  tasks' network attachments whenever the router is read back or applied (every orchestrator
  tick): a task Swarm replaced shows as drift and nginx is reloaded gracefully (`nginx -s reload`
  executed in its container, the old workers drained).
- nginx runs on the manager the orchestrator talks to (constraint `node.id==<it>`): its
  config folder and its access log (which the collector tails) are bind-mounted from this host.
- an instance's URL (health, chaos, app scrapes) is its node's address and the port its task
  publishes in host mode (a free port Docker picks), so the control plane reaches every task
  wherever it runs.
- env reaches the tasks as env; `services.secrets` as Docker secrets (labelled with the project,
  one per service generation and variable, removed with the service and at teardown), read into
  the environment by a small `sh` wrapper in front of the image's entrypoint.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import time
from pathlib import Path
from typing import Any

from aiodocker.exceptions import DockerError
from aiodocker.utils import compose_auth_header

from services.orchestrator import plans
from services.orchestrator.drivers.base import (
    LABEL_PROJECT,
    LABEL_ROLE,
    LABEL_TRACK,
    LABEL_VERSION,
    Examined,
    InstanceFailed,
    InstanceSpec,
    NetworkSpec,
    Progress,
    Role,
    RuntimeObject,
    ensure_port_free,
    port_in_use,
    wait_drained,
)
from services.orchestrator.drivers.docker import DockerDriver, _exec, _workers, docker_errors
from services.orchestrator.drivers.health import wait_http_ok
from swiftdeploy_core.errors import ImagePullError, RuntimeDriverError
from swiftdeploy_core.project.images import Credentials, load_credentials, parse_reference
from swiftdeploy_core.project.manifest import HealthSpec, Manifest, PlacementSpec, SwarmSpec
from swiftdeploy_core.project.router import (
    CONTAINER_LOG_DIR,
    RouterPlan,
    Upstream,
    render_nginx_conf,
    router_container,
    router_log_dir,
)
from swiftdeploy_core.project.state import Instance

LABEL_SERVICE = "swiftdeploy.service"  # on a secret: the service generation it belongs to
SECRET_PREFIX = "swiftdeploy-env-"  # a secret's file under /run/secrets: its variable's name follows
CONF_DIR = "/etc/swiftdeploy-nginx"  # where nginx's bind-mounted config folder is in its task
NS = 1_000_000_000  # Swarm's durations are nanoseconds
STOP_GRACE = 5  # seconds between SIGTERM and SIGKILL
TASK_TIMEOUT = 120.0  # seconds for a task to be scheduled and started (a node may pull first)
GONE_TIMEOUT = 20.0  # seconds for a removed service's tasks to stop
POLL = 0.1
FAILED_STATES = frozenset({"failed", "rejected", "shutdown", "complete", "orphaned", "remove"})
# Reads every secret file into the variable it names, then runs what the image runs.
SECRETS_WRAPPER = (
    f'for f in /run/secrets/{SECRET_PREFIX}*; do [ -e "$f" ] || continue; '
    f'n="${{f#/run/secrets/{SECRET_PREFIX}}}"; export "$n=$(cat "$f")"; done; exec "$@"'
)


def service_of(instance: str) -> tuple[str, int]:
    """`<project>-<track>-<gen>-<slot>` -> (the track's service, the slot)."""
    service, _, slot = instance.rpartition("-")
    if not service or not slot.isdigit():
        raise RuntimeDriverError(f"{instance!r} is not a swarm instance name (<service>-<slot>)")
    return service, int(slot)


def health_command(port: int, path: str) -> list[str]:
    """The task's HEALTHCHECK: whichever of wget, curl or python3 the image has (as compose)."""
    url = f"http://127.0.0.1:{port}{path}"
    return [
        "CMD-SHELL",
        f"wget -q -O /dev/null {url} || curl -fsS -o /dev/null {url} || "
        f"python3 -c \"import urllib.request; urllib.request.urlopen('{url}', timeout=2)\"",
    ]


def placement(spec: PlacementSpec, extra: tuple[str, ...] = ()) -> dict[str, Any]:
    return {
        "Constraints": [*spec.constraints, *extra],
        "Preferences": [{"Spread": {"SpreadDescriptor": label}} for label in spec.spread],
    }


def secret_name(service: str, variable: str) -> str:
    """One Docker secret per service generation and variable (names: at most 64 characters)."""
    name = f"{service}.{variable.lower()}"
    return name if len(name) <= 64 else f"{name[:51]}.{hashlib.sha256(name.encode()).hexdigest()[:12]}"


def instance_service_spec(
    spec: InstanceSpec, *, service: str, replicas: int, health: HealthSpec, where: PlacementSpec,
    secrets: list[dict[str, Any]], entrypoint: list[str],
) -> dict[str, Any]:  # fmt: skip
    """The Swarm service of one track generation (what `docker service create` is sent).
    `entrypoint` is the image's ENTRYPOINT + CMD (used only in front of the secrets wrapper)."""
    container: dict[str, Any] = {
        "Image": spec.digest or spec.image,
        "Env": [f"{k}={v}" for k, v in {"HOST": "0.0.0.0", "PORT": str(spec.port), **spec.env}.items()],
        "Labels": spec.labels,
        "StopGracePeriod": STOP_GRACE * NS,
        "HealthCheck": {
            "Test": health_command(spec.port, health.path),
            "Interval": int(health.interval * NS),
            "Timeout": int(health.timeout * NS),
            "Retries": health.retries,
            "StartPeriod": int((health.start_period or 30.0) * NS),
        },
    }
    override = [*(spec.command or ()), *spec.args]
    if secrets:
        container["Secrets"] = secrets
        container["Command"] = ["/bin/sh", "-c", SECRETS_WRAPPER, "sh", *(override or entrypoint)]
    elif override:
        container["Args"] = override
    resources: dict[str, Any] = {}
    if spec.cpus is not None:
        resources["NanoCPUs"] = int(spec.cpus * 1e9)
    if spec.memory is not None:
        resources["MemoryBytes"] = spec.memory
    return {
        "Name": service,
        "Labels": spec.labels,
        "TaskTemplate": {
            "ContainerSpec": container,
            "Resources": {"Limits": resources} if resources else {},
            "RestartPolicy": {"Condition": "on-failure", "Delay": 1 * NS},
            "Placement": placement(where),
            "Networks": [{"Target": spec.network, "Aliases": [service]}] if spec.network else [],
        },
        "Mode": {"Replicated": {"Replicas": replicas}},
        "EndpointSpec": {
            "Mode": "dnsrr",
            "Ports": [{"Protocol": "tcp", "TargetPort": spec.port, "PublishMode": "host"}],
        },
    }


def router_service_spec(
    manifest: Manifest, project: str, node_id: str, conf_dir: Path, log_dir: Path
) -> dict[str, Any]:
    """nginx as a service on `node_id`, published in host mode on nginx.port, its config folder
    and log folder bind-mounted from that node."""
    port = manifest.nginx.port
    return {
        "Name": router_container(project),
        "Labels": plans.labels(project, Role.router),
        "TaskTemplate": {
            "ContainerSpec": {
                "Image": manifest.nginx.image,
                "Command": ["nginx", "-c", f"{CONF_DIR}/nginx.conf", "-g", "daemon off;"],
                "Labels": plans.labels(project, Role.router),
                "StopGracePeriod": STOP_GRACE * NS,
                "Mounts": [
                    {"Type": "bind", "Source": str(conf_dir), "Target": CONF_DIR, "ReadOnly": True},
                    {"Type": "bind", "Source": str(log_dir), "Target": CONTAINER_LOG_DIR},
                ],
            },
            "RestartPolicy": {"Condition": "on-failure", "Delay": 1 * NS},
            "Placement": {"Constraints": [f"node.id=={node_id}"]},
            "Networks": [{"Target": manifest.network.name}],
        },
        "Mode": {"Replicated": {"Replicas": 1}},
        "EndpointSpec": {
            "Mode": "dnsrr",
            "Ports": [{"Protocol": "tcp", "TargetPort": port, "PublishedPort": port, "PublishMode": "host"}],
        },
    }


def task_address(task: dict[str, Any], network: str) -> str | None:
    """The task's IP on `network` (its overlay), from the task's network attachments."""
    for attachment in task.get("NetworksAttachments") or []:
        net = attachment.get("Network") or {}
        if (net.get("Spec") or {}).get("Name") == network and attachment.get("Addresses"):
            return str(attachment["Addresses"][0]).split("/", 1)[0]
    return None


def published_port(task: dict[str, Any]) -> int | None:
    ports = ((task.get("Status") or {}).get("PortStatus") or {}).get("Ports") or []
    return next((int(p["PublishedPort"]) for p in ports if p.get("PublishedPort")), None)


def newest_by_slot(tasks: list[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    """Each slot's task that should run now (desired state running), the newest when several."""
    found: dict[int, dict[str, Any]] = {}
    for task in sorted(tasks, key=lambda t: (t.get("Version") or {}).get("Index", 0)):
        if task.get("DesiredState") == "running" and task.get("Slot"):
            found[int(task["Slot"])] = task
    return found


class SwarmDriver(DockerDriver):
    """Services, overlay networks and secrets on a swarm manager (see the module docstring)."""

    name = "swarm"

    def __init__(
        self, project: str, state_dir: Path, url: str | None = None, docker_config: Path | None = None,
        *, replicas: int = 1, network: str = "", health: HealthSpec | None = None, swarm: SwarmSpec | None = None,
    ) -> None:  # fmt: skip
        super().__init__(project, state_dir, url=url, docker_config=docker_config)
        self.replicas = replicas
        self.network = network
        self.health = health or HealthSpec()
        self.swarm = swarm or SwarmSpec()
        self.conf_dir = state_dir / "nginx" / "live"  # bind-mounted into the nginx task
        self._addresses: dict[str, str] = {}  # instance (service-slot) -> its task's overlay IP
        self._nodes: dict[str, str] = {}  # node id -> its address
        self._hostnames: dict[str, str] = {}  # node id -> its hostname
        self._credentials: Credentials | None = None

    # --- the swarm ---------------------------------------------------------------------------

    async def swarm_node(self) -> dict[str, Any]:
        """This daemon's swarm state (`docker info`'s Swarm block); RuntimeDriverError unless it
        is an active manager."""
        with docker_errors("asking dockerd about its swarm"):
            info = (await self.docker.system.info())["Swarm"]
        if info.get("LocalNodeState") != "active":
            raise RuntimeDriverError(
                "runtime swarm: this dockerd is not in a swarm "
                f"(state {info.get('LocalNodeState') or 'inactive'}); `docker swarm init` or set `runtime: docker`"
            )
        if not info.get("ControlAvailable"):
            raise RuntimeDriverError("runtime swarm: this node is a worker; run SwiftDeploy against a manager")
        return dict(info)

    async def nodes(self) -> list[dict[str, Any]]:
        """Every node: id, hostname, role, state (ready/down), availability, address, labels."""
        with docker_errors("listing swarm nodes"):
            raw = await self.docker.nodes.list()
        return [
            {
                "id": n["ID"], "hostname": (n.get("Description") or {}).get("Hostname", ""),
                "role": n["Spec"].get("Role", ""), "state": n["Status"].get("State", ""),
                "availability": n["Spec"].get("Availability", ""), "addr": n["Status"].get("Addr", ""),
                "labels": n["Spec"].get("Labels") or {},
            }
            for n in raw
        ]  # fmt: skip

    async def preflight(self, manifest: Manifest, *, router_running: bool) -> None:
        await self.swarm_node()
        nodes = await self.nodes()
        not_ready = [n["hostname"] or n["id"] for n in nodes if n["state"] != "ready"]
        if not_ready and len(not_ready) == len(nodes):
            raise RuntimeDriverError(f"runtime swarm: no node is ready ({', '.join(not_ready)})")
        if not router_running:
            ensure_port_free(manifest.nginx.port)

    async def ensure_images(self, manifest: Manifest, images: list[str], progress: Progress) -> dict[str, str | None]:
        """As on docker (pulled here, the digest resolved); on a swarm of several nodes a service
        image must come from a registry, since the other nodes pull it by that digest (nginx,
        which runs here, may be local)."""
        digests = await super().ensure_images(manifest, images, progress)
        local = [i for i, d in digests.items() if d and "@" not in d and i != manifest.nginx.image]
        if local and len(await self.nodes()) > 1:
            raise ImagePullError(
                f"image {local[0]!r} is only on this node (never pushed to a registry): the swarm's other "
                "nodes cannot pull it; push it to a registry and name it there"
            )
        return digests

    async def ensure_networks(self, networks: list[NetworkSpec]) -> list[str]:
        """The networks as attachable overlays (whatever driver the manifest names: a swarm's
        services join overlays only)."""
        created = []
        with docker_errors("creating overlay networks"):
            existing = {n["Name"]: n for n in await self.docker.networks.list()}
            for net in networks:
                found = existing.get(net.name)
                if found is not None and found.get("Driver") != "overlay":
                    raise RuntimeDriverError(
                        f"network {net.name!r} exists with driver {found.get('Driver')}; "
                        "runtime swarm needs an overlay: remove it or rename network.name"
                    )
                if found is None:
                    await self.docker.networks.create(
                        {"Name": net.name, "Driver": "overlay", "Attachable": True, "Internal": net.internal,
                         "Labels": net.labels, "CheckDuplicate": True}
                    )  # fmt: skip
                    created.append(net.name)
        return created

    def describe_networks(self, networks: list[NetworkSpec]) -> str:
        return ", ".join(f"{net.name} (overlay)" for net in networks)

    # --- instances: task slots of a track's service ------------------------------------------

    async def start_instance(self, spec: InstanceSpec) -> Instance:
        service, slot = service_of(spec.name)
        with docker_errors(f"starting {service}"):
            if await self._service(service) is None:
                await self._create_service(spec, service)
            task = await self._wait_task(service, slot, spec.name)
            return await self._instance(task, spec.name)

    async def _create_service(self, spec: InstanceSpec, service: str) -> None:
        where = self.swarm.canary if spec.track == "canary" else self.swarm.stable
        secrets = [await self._secret(service, name, value.get_secret_value()) for name, value in spec.secrets.items()]
        entrypoint = await self._entrypoint(spec.digest or spec.image) if secrets else []
        body = instance_service_spec(
            spec, service=service, replicas=self.replicas, health=self.health, where=where, secrets=secrets,
            entrypoint=entrypoint,
        )  # fmt: skip
        await self._create(body, spec.image)

    async def _create(self, body: dict[str, Any], image: str) -> None:
        """`POST /services/create`, with the registry credentials every node pulls the image with."""
        if self._credentials is None:
            self._credentials = load_credentials(self.docker_config)
        registry = parse_reference(image).registry
        auth = await asyncio.to_thread(self._credentials.for_registry, registry)
        headers = {"X-Registry-Auth": compose_auth_header(auth, registry)} if auth else None
        await self.docker._query_json("services/create", method="POST", data=json.dumps(body), headers=headers)

    async def _secret(self, service: str, variable: str, value: str) -> dict[str, Any]:
        """The Docker secret holding one variable for `service` (created now, or kept from an
        interrupted start of the same generation); returns the task's reference to it."""
        name = secret_name(service, variable)
        found = await self.docker.secrets.list(filters={"name": name})
        mine = next((s for s in found if s["Spec"]["Name"] == name), None)
        if mine is None:
            labels = {**plans.labels(self.project, Role.secret), LABEL_SERVICE: service}
            created = await self.docker.secrets.create(name=name, data=value, labels=labels)
            secret_id = str(created["ID"])
        else:
            secret_id = str(mine["ID"])
        return {
            "SecretID": secret_id, "SecretName": name,
            "File": {"Name": f"{SECRET_PREFIX}{variable}", "UID": "0", "GID": "0", "Mode": 0o444},
        }  # fmt: skip

    async def _entrypoint(self, image: str) -> list[str]:
        info = await self.docker.images.inspect(image)
        config = info.get("Config") or {}
        return [*(config.get("Entrypoint") or []), *(config.get("Cmd") or [])]

    async def _wait_task(self, service: str, slot: int, name: str, timeout: float = TASK_TIMEOUT) -> dict[str, Any]:
        """The slot's task once it was scheduled, started and has its address and port."""
        deadline = time.monotonic() + timeout
        last = "not scheduled yet"
        while time.monotonic() < deadline:
            tasks = await self._tasks_of(service)
            task = newest_by_slot(tasks).get(slot)
            if task is not None:
                status = task.get("Status") or {}
                state = status.get("State", "")
                if state in ("starting", "running") and published_port(task) and task_address(task, self.network):
                    return task
                last = f"{state}: {status.get('Err') or status.get('Message') or ''}".strip(": ")
            failed = [
                t for t in tasks if t.get("Slot") == slot and (t.get("Status") or {}).get("State") in FAILED_STATES
            ]
            if failed and (task is None or (task.get("Status") or {}).get("State") in ("pending", "assigned", "")):
                err = (failed[-1].get("Status") or {}).get("Err") or "its task failed"
                raise InstanceFailed(name, f"{name}: {err}")
            await asyncio.sleep(POLL)
        raise InstanceFailed(name, f"{name}: no task of {service} slot {slot} started within {timeout:g}s ({last})")

    async def _instance(self, task: dict[str, Any], name: str) -> Instance:
        labels = ((task.get("Spec") or {}).get("ContainerSpec") or {}).get("Labels") or {}
        node_id = str(task.get("NodeID", ""))
        host = await self._node_addr(node_id)
        return Instance(
            id=str(task["ID"]), name=name, track=labels.get(LABEL_TRACK, "stable"),
            version=labels.get(LABEL_VERSION, ""), url=f"http://{host}:{published_port(task)}",
            node=self._hostnames.get(node_id, node_id[:12]),
        )  # fmt: skip

    async def _node_addr(self, node_id: str) -> str:
        if node_id not in self._nodes:
            node = await self.docker.nodes.inspect(node_id=node_id)
            addr = str((node.get("Status") or {}).get("Addr") or "127.0.0.1")
            self._nodes[node_id] = "127.0.0.1" if addr in ("0.0.0.0", "") else addr
            self._hostnames[node_id] = str((node.get("Description") or {}).get("Hostname") or node_id[:12])
        return self._nodes[node_id]

    async def wait_healthy(self, instance: Instance, timeout: float, path: str = "/healthz") -> None:
        async def stopped() -> str | None:
            try:
                task = await self.docker.tasks.inspect(instance.id)
            except DockerError as exc:
                if exc.status == 404:
                    return "was removed"
                raise
            status = task.get("Status") or {}
            if status.get("State") in FAILED_STATES:
                return f"stopped ({status.get('State')}: {status.get('Err') or status.get('Message') or ''})"
            return None

        with docker_errors(f"waiting for {instance.name}"):
            await wait_http_ok(f"{instance.url}{path}", timeout, name=instance.name, alive=stopped)

    async def stop_instance(self, name: str) -> None:
        """Remove the instance's service (the orchestrator always stops a track whole), wait for
        its tasks to stop, and remove its secrets."""
        service, _ = service_of(name)
        await self._remove_service(service)

    async def _remove_service(self, service: str) -> None:
        with docker_errors(f"removing {service}"):
            with contextlib.suppress(DockerError):
                await self.docker.services.delete(service)
            # Swarm forgets the tasks at once; their containers (on this node) stop within the grace.
            label = {"label": [f"com.docker.swarm.service.name={service}"]}
            deadline = time.monotonic() + GONE_TIMEOUT
            while time.monotonic() < deadline:
                if not await self._tasks_of(service) and not await self.docker.containers.list(all=True, filters=label):
                    break
                await asyncio.sleep(POLL)
            for secret in await self.docker.secrets.list(filters={"label": f"{LABEL_SERVICE}={service}"}):
                with contextlib.suppress(DockerError):
                    await self.docker.secrets.delete(secret["ID"])

    async def tasks(self) -> list[dict[str, Any]]:
        """Every task of the project's services that should run now: its instance name, service,
        slot, track, version, node (id, hostname, address), state, overlay address and URL."""
        hostnames = {n["id"]: n["hostname"] for n in await self.nodes()}
        found = []
        with docker_errors("listing swarm tasks"):
            for svc in await self._services():
                service = svc["Spec"]["Name"]
                role = (svc["Spec"].get("Labels") or {}).get(LABEL_ROLE, "")
                labels = svc["Spec"].get("Labels") or {}
                for slot, task in sorted(newest_by_slot(await self._tasks_of(service)).items()):
                    node = str(task.get("NodeID", ""))
                    port = published_port(task)
                    addr = await self._node_addr(node) if node else ""
                    found.append({
                        "name": f"{service}-{slot}" if role == Role.instance.value else service,
                        "service": service, "slot": slot, "role": role, "track": labels.get(LABEL_TRACK),
                        "version": labels.get(LABEL_VERSION), "node": node, "hostname": hostnames.get(node, ""),
                        "state": (task.get("Status") or {}).get("State", ""),
                        "address": task_address(task, self.network) or "",
                        "url": f"http://{addr}:{port}" if port and role == Role.instance.value else "",
                    })  # fmt: skip
        return found

    async def examine(self, instance: Instance, path: str, timeout: float) -> Examined:
        """Swarm heals its own tasks (their restart policy, a new task on another node), and each
        tick's `refresh_addresses` makes nginx follow: the orchestrator's watch restarts nothing
        here, so a task is always "healthy" to it (`status` still probes it)."""
        return Examined(state="healthy")

    async def refresh_addresses(self) -> dict[str, str]:
        """Re-read every running task's overlay address (what nginx's upstreams list)."""
        found = {
            t["name"]: t["address"] for t in await self.tasks() if t["role"] == Role.instance.value and t["address"]
            and t["state"] in ("starting", "running")
        }  # fmt: skip
        # A slot between two tasks keeps its last address (nginx passes over it to the others)
        # rather than a name nginx could not resolve while no task of the service runs.
        self._addresses = {**self._addresses, **found}
        return self._addresses

    # --- router ------------------------------------------------------------------------------

    def _upstreams(self, instances: list[Instance], port: int) -> list[Upstream]:
        """The tasks' overlay addresses; when none of the track's is known, the services' dnsrr
        names (nginx resolves them to the running tasks when it loads the config)."""
        known = [Upstream(host=self._addresses[i.name], port=port) for i in instances if i.name in self._addresses]
        names = dict.fromkeys(service_of(i.name)[0] for i in instances)
        return known or [Upstream(host=name, port=port) for name in names]

    def render_router(
        self, manifest: Manifest, stable: list[Instance], canary: list[Instance], weight: int,
        canary_error_percent: float = 0.0,
    ) -> str:  # fmt: skip
        port = manifest.services.port
        base = plans.docker_router_plan(manifest, stable, canary, weight, canary_error_percent).model_dump()
        base.update(stable=self._upstreams(stable, port), canary=self._upstreams(canary, port))
        return render_nginx_conf(RouterPlan.model_validate(base), plans.ROUTER_HEADER)

    async def router_config(self) -> str | None:
        """What nginx serves; the task addresses are re-read first, so a task Swarm replaced
        makes the expected config differ from the live one (and the orchestrator reloads)."""
        await self.refresh_addresses()
        return await super().router_config()

    async def apply_router(
        self, manifest: Manifest, stable: list[Instance], canary: list[Instance], weight: int,
        canary_error_percent: float = 0.0,
    ) -> str:  # fmt: skip
        await self.refresh_addresses()
        conf = self.render_router(manifest, stable, canary, weight, canary_error_percent)
        url = f"http://127.0.0.1:{manifest.nginx.port}"
        name = router_container(self.project)
        with docker_errors(f"configuring {name}"):
            container = await self._router_container()
            if container is None and await self._service(name) is not None:
                container = await self._router_restarted(name)
            if container is not None and (self.nginx_conf.read_text() if self.nginx_conf.exists() else None) == conf:
                return url
            await self._write_live(conf, container)
            if container is not None:
                await self._reload_router(container)
            else:
                await self._start_router_service(manifest, name)
        self.nginx_conf.parent.mkdir(parents=True, exist_ok=True)
        self.nginx_conf.write_text(conf)
        return url

    async def _write_live(self, conf: str, container: Any = None) -> None:
        """The config nginx reads, replaced whole (a rename: nginx never reads half a file). With
        nginx running (`container`) only once `nginx -t` accepted it: a refused config must not
        become the file a restarted nginx task reads."""
        self.conf_dir.mkdir(parents=True, exist_ok=True)
        staged = self.conf_dir / ".nginx.conf.new"
        staged.write_text(conf)
        if container is not None:
            code, out = await _exec(container, ["nginx", "-t", "-q", "-c", f"{CONF_DIR}/{staged.name}"])
            if code != 0:
                staged.unlink(missing_ok=True)
                reason = " ".join(out.strip().splitlines()[-2:])  # nginx's [emerg] line, then "test failed"
                raise RuntimeDriverError(f"nginx refused the rendered config: {reason}")
        staged.replace(self.conf_dir / "nginx.conf")

    async def _start_router_service(self, manifest: Manifest, name: str) -> None:
        with contextlib.suppress(DockerError):
            await self.docker.services.delete(name)  # a router service whose task is not running
        logs = router_log_dir(self.dir)
        logs.mkdir(parents=True, exist_ok=True)
        node_id = str((await self.swarm_node())["NodeID"])
        body = router_service_spec(manifest, self.project, node_id, self.conf_dir.resolve(), logs)
        await self._create(body, manifest.nginx.image)
        deadline = time.monotonic() + TASK_TIMEOUT
        while time.monotonic() < deadline:
            tasks = await self._tasks_of(name)
            task = newest_by_slot(tasks).get(1)
            status = (task or {}).get("Status") or {}
            err = str(status.get("Err") or "")
            if "address already in use" in err or "port is already allocated" in err:
                await self.docker.services.delete(name)
                raise port_in_use(manifest.nginx.port, detail=err)
            if status.get("State") == "running":
                break
            await asyncio.sleep(POLL)
        else:
            raise RuntimeDriverError(f"nginx's task did not start within {TASK_TIMEOUT:g}s")

        async def gone() -> str | None:
            task = newest_by_slot(await self._tasks_of(name)).get(1)
            state = ((task or {}).get("Status") or {}).get("State")
            return None if state == "running" else f"nginx's task is {state}"

        await wait_http_ok(f"http://127.0.0.1:{manifest.nginx.port}/healthz", 20.0, name="nginx", alive=gone)

    async def _router_restarted(self, name: str, timeout: float = 30.0) -> Any:
        """nginx's service exists but no task runs (Swarm is restarting it): its container once
        one runs again, or None (then the service is made anew)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            container = await self._router_container()
            if container is not None:
                return container
            states = {((t.get("Status") or {}).get("State")) for t in await self._tasks_of(name)}
            if not states & {"new", "pending", "assigned", "accepted", "preparing", "ready", "starting", "running"}:
                return None
            await asyncio.sleep(POLL)
        return None

    async def _reload_router(self, container: Any) -> None:
        conf = f"{CONF_DIR}/nginx.conf"  # tested before it was put there (_write_live)
        old = await _workers(container)
        code, out = await _exec(container, ["nginx", "-c", conf, "-s", "reload"])
        if code != 0:
            raise RuntimeDriverError(f"nginx -s reload failed: {out.strip()}")
        await wait_drained(lambda: _workers(container), old)

    async def _router_container(self) -> Any:
        """nginx's running container on this node, or None."""
        name = router_container(self.project)
        if await self._service(name) is None:
            return None
        task = newest_by_slot(await self._tasks_of(name)).get(1)
        status = (task or {}).get("Status") or {}
        container_id = (status.get("ContainerStatus") or {}).get("ContainerID")
        if status.get("State") != "running" or not container_id:
            return None
        return await self._get(container_id)

    async def router_running(self) -> bool:
        with docker_errors("inspecting the router"):
            return await self._router_container() is not None

    # --- labelled objects --------------------------------------------------------------------

    async def _services(self) -> list[dict[str, Any]]:
        return [dict(s) for s in await self.docker.services.list(filters={"label": f"{LABEL_PROJECT}={self.project}"})]

    async def _tasks_of(self, service: str) -> list[dict[str, Any]]:
        """The service's tasks (none when the service is gone: dockerd answers 404 then)."""
        try:
            return [dict(t) for t in await self.docker.tasks.list(filters={"service": service})]
        except DockerError as exc:
            if exc.status == 404:
                return []
            raise

    async def _service(self, name: str) -> dict[str, Any] | None:
        try:
            return dict(await self.docker.services.inspect(name))
        except DockerError as exc:
            if exc.status == 404:
                return None
            raise

    async def list_objects(self) -> list[RuntimeObject]:
        """The project's services (instances: one object per running task slot, as the record
        names them), overlay networks, secrets and configs."""
        label = {"label": f"{LABEL_PROJECT}={self.project}"}
        found: list[RuntimeObject] = []
        with docker_errors("listing labelled objects"):
            tasks = {t["name"]: t for t in await self.tasks()}
            for svc in await self._services():
                spec = svc["Spec"]
                labels = spec.get("Labels") or {}
                image = spec["TaskTemplate"]["ContainerSpec"]["Image"]
                if labels.get(LABEL_ROLE) != Role.instance.value:
                    running = any(t["state"] == "running" for t in tasks.values() if t["service"] == spec["Name"])
                    found.append(RuntimeObject(kind="service", name=spec["Name"], id=svc["ID"], labels=labels,
                                               running=running, image=image))  # fmt: skip
                    continue
                replicas = ((spec.get("Mode") or {}).get("Replicated") or {}).get("Replicas", 1)
                for slot in range(1, replicas + 1):
                    task = tasks.get(f"{spec['Name']}-{slot}") or {}
                    found.append(RuntimeObject(
                        kind="service", name=f"{spec['Name']}-{slot}", id=svc["ID"], labels=labels,
                        running=task.get("state") == "running", url=task.get("url", ""), image=image,
                    ))  # fmt: skip
            for net in await self.docker.networks.list(filters={"label": [f"{LABEL_PROJECT}={self.project}"]}):
                found.append(
                    RuntimeObject(kind="network", name=net["Name"], id=net["Id"], labels=net.get("Labels") or {})
                )
            for kind, listing in (("secret", self.docker.secrets), ("config", self.docker.configs)):
                for item in await listing.list(filters=label):
                    found.append(RuntimeObject(kind=kind, name=item["Spec"]["Name"], id=item["ID"],
                                               labels=item["Spec"].get("Labels") or {}))  # fmt: skip
        return found

    async def remove(self, obj: RuntimeObject) -> None:
        with docker_errors(f"removing {obj.kind} {obj.name}"):
            with contextlib.suppress(DockerError):  # already gone is fine
                if obj.kind == "service":
                    service = service_of(obj.name)[0] if obj.role == Role.instance.value else obj.name
                    await self._remove_service(service)
                elif obj.kind == "network":
                    await self._remove_network(obj.id)
                elif obj.kind == "secret":
                    await self.docker.secrets.delete(obj.id)
                elif obj.kind == "config":
                    await self.docker.configs.delete(obj.id)

    async def _remove_network(self, network_id: str) -> None:
        """An overlay is in use until the last task's endpoint left it: retried for a while."""
        deadline = time.monotonic() + GONE_TIMEOUT
        while True:
            try:
                await (await self.docker.networks.get(network_id)).delete()
                return
            except DockerError as exc:
                if exc.status == 404 or time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.5)

    async def teardown(self) -> list[str]:
        order = {Role.instance.value: 0, Role.router.value: 1, Role.secret.value: 2}
        objects = sorted(await self.list_objects(), key=lambda o: (o.kind == "network", order.get(o.role, 3)))
        for obj in objects:
            await self.remove(obj)
        self.nginx_conf.unlink(missing_ok=True)
        return [f"{obj.kind} {obj.name}" for obj in objects]

    async def logs_tail(self, name: str, lines: int = 20) -> list[str]:
        """The last log lines of the instance's task container (on this node), else nothing."""
        with contextlib.suppress(DockerError, RuntimeDriverError):
            service, slot = service_of(name)
            tasks = await self._tasks_of(service)
            for task in sorted(tasks, key=lambda t: -(t.get("Version") or {}).get("Index", 0)):
                container_id = ((task.get("Status") or {}).get("ContainerStatus") or {}).get("ContainerID")
                if task.get("Slot") == slot and container_id:
                    container = await self._get(container_id)
                    if container is not None:
                        logs = await container.log(stdout=True, stderr=True, tail=lines)
                        return [line.rstrip("\n") for chunk in logs for line in chunk.splitlines() if line.strip()][
                            -lines:
                        ]
        return []
