"""Test doubles at the orchestrator's boundaries: an in-memory runtime and a scripted gatekeeper.

Flagger tests its scheduler on a fake clientset; these do the same for the phase table.

`FakeDriver` implements `RuntimeDriver` with dictionaries: instances are names with the spec they
were started from, the router is the split it was last told to serve (and the nginx.conf the real
drivers would render for it), and every effect is journalled in `calls`. A test injects failures
by name (`fail_start`, `unhealthy`, `fail_router`, `refuse`) and reads the runtime back with
`running()`, `split` and `router_config()`. Nothing listens and nothing runs: a tick takes
milliseconds. What only a real runtime can prove (nginx answering with the right version, processes
gone after teardown) stays in `test_drivers_process.py` and `test_orchestrator_*.py`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from services.orchestrator import plans
from services.orchestrator.drivers.base import (
    Examined,
    InstanceFailed,
    InstanceSpec,
    NetworkSpec,
    Role,
    RuntimeDriver,
    RuntimeObject,
)
from services.orchestrator.rollout import Decision, RecordStore, Rollout
from swiftdeploy_core.bus.events import Payload, Track
from swiftdeploy_core.errors import RuntimeDriverError
from swiftdeploy_core.project.manifest import LoadedManifest, Manifest
from swiftdeploy_core.project.router import Upstream, plan_for_process, render_nginx_conf, router_container
from swiftdeploy_core.project.state import Instance, RolloutState

FIRST_PORT = 41000  # fake instance URLs: loopback ports nobody listens on, never contacted


@dataclass(frozen=True)
class Split:
    """What the fake router serves: instance names per track and the canary's percent."""

    stable: tuple[str, ...]
    canary: tuple[str, ...]
    weight: int
    conf: str = field(repr=False, compare=False)
    down: tuple[str, ...] = ()  # instances held out (nginx's `down`) while they restart


@dataclass(frozen=True)
class FakeInstance:
    spec: InstanceSpec
    instance: Instance


class FakeDriver(RuntimeDriver):
    """The runtime seam in memory; every method is safe to repeat, as the interface demands."""

    name = "fake"

    def __init__(self, project: str, state_dir: Path) -> None:
        self.project = project
        self.dir = state_dir
        self.nginx_conf = state_dir / "nginx" / "nginx.conf"  # never written: the conf lives in `split`
        self.instances: dict[str, FakeInstance] = {}
        self.split: Split | None = None  # None: no router running
        self.router_url = ""
        self.networks: set[str] = set()
        self.opa: str | None = None
        self.calls: list[str] = []
        self.logs: dict[str, list[str]] = {}
        # Failures a test injects; each is one line, as a real driver would say it.
        self.refuse: str | None = None  # preflight raises RuntimeDriverError(refuse)
        self.fail_start: dict[str, str] = {}  # instance name -> InstanceFailed message at start
        self.unhealthy: dict[str, str] = {}  # instance name -> InstanceFailed message at wait_healthy
        self.fail_router: str | None = None  # apply_router raises RuntimeDriverError(fail_router)
        # What the self-healing watch finds (`examine`): instance name -> why it exited / its failed probe.
        self.dead: dict[str, str] = {}  # cleared by a restart
        self.failing: dict[str, str] = {}  # kept across restarts (a test clears it)
        self._ports = iter(range(FIRST_PORT, FIRST_PORT + 10_000))

    # --- what a test reads back ----------------------------------------------------------------

    def running(self, track: str | None = None) -> list[str]:
        """Names of the running instances (of one track), sorted."""
        return sorted(n for n, i in self.instances.items() if track is None or i.spec.track == track)

    def env_of(self, name: str) -> dict[str, str]:
        """The environment an instance was started with (what the workload would report)."""
        return dict(self.instances[name].spec.env)

    # --- the interface -------------------------------------------------------------------------

    async def preflight(self, manifest: Manifest, *, router_running: bool) -> None:
        self.calls.append("preflight")
        if self.refuse is not None:
            raise RuntimeDriverError(self.refuse)

    async def ensure_networks(self, networks: list[NetworkSpec]) -> list[str]:
        created = [n.name for n in networks if n.name not in self.networks]
        self.networks.update(created)
        self.calls += [f"network {name}" for name in created]
        return created

    async def start_instance(self, spec: InstanceSpec) -> Instance:
        existing = self.instances.get(spec.name)
        if existing is not None:
            return existing.instance  # already running: reused, not doubled
        self.calls.append(f"start {spec.name}")
        if spec.name in self.fail_start:
            raise InstanceFailed(spec.name, self.fail_start[spec.name])
        port = next(self._ports)
        track: Track = "canary" if spec.track == "canary" else "stable"
        instance = Instance(
            id=str(port), name=spec.name, track=track, version=spec.version, url=f"http://127.0.0.1:{port}"
        )
        self.instances[spec.name] = FakeInstance(spec, instance)
        return instance

    async def wait_healthy(self, instance: Instance, timeout: float, path: str = "/healthz") -> None:
        found = self.instances.get(instance.name)
        if found is None:
            raise InstanceFailed(instance.name, f"{instance.name} is not running")
        if instance.name in self.unhealthy:
            raise InstanceFailed(instance.name, self.unhealthy[instance.name])

    async def examine(self, instance: Instance, path: str, timeout: float) -> Examined:
        if instance.name in self.dead or instance.name not in self.instances:
            return Examined(state="exited", reason=self.dead.get(instance.name, "is gone"))
        if instance.name in self.failing:
            return Examined(state="unhealthy", reason=self.failing[instance.name])
        return Examined(state="healthy")

    async def restart_instance(self, instance: Instance, spec: InstanceSpec) -> Instance:
        self.calls.append(f"restart {spec.name}")
        self.dead.pop(spec.name, None)
        self.instances.pop(spec.name, None)
        return await self.start_instance(spec)

    async def stop_instance(self, name: str) -> None:
        if self.instances.pop(name, None) is not None:
            self.calls.append(f"stop {name}")

    async def apply_router(
        self, manifest: Manifest, stable: list[Instance], canary: list[Instance], weight: int,
        canary_error_percent: float = 0.0,
    ) -> str:  # fmt: skip
        if self.fail_router is not None:
            raise RuntimeDriverError(self.fail_router)
        weight = weight if canary else 0  # as the real plans do: no canary, no canary share
        plan = plan_for_process(manifest, self.dir, _upstreams(stable), _upstreams(canary), canary_weight=weight)
        conf = self.render_router(manifest, stable, canary, weight, canary_error_percent)
        down = tuple(i.name for i in [*stable, *canary] if i.down)
        split = Split(tuple(i.name for i in stable), tuple(i.name for i in canary), weight, conf, down)
        if split != self.split:
            held = f" down={len(down)}" if down else ""
            self.calls.append(f"router stable={len(stable)} canary={len(canary)} weight={weight}{held}")
        self.split = split
        self.router_url = plan.url
        return plan.url

    def render_router(
        self, manifest: Manifest, stable: list[Instance], canary: list[Instance], weight: int,
        canary_error_percent: float = 0.0,
    ) -> str:  # fmt: skip
        weight = weight if canary else 0
        plan = plan_for_process(manifest, self.dir, _upstreams(stable), _upstreams(canary), canary_weight=weight)
        plan = plan.model_copy(update={"canary_error_percent": canary_error_percent if canary else 0.0})
        return render_nginx_conf(plan, "fake")

    async def router_running(self) -> bool:
        return self.split is not None

    async def router_config(self) -> str | None:
        return self.split.conf if self.split is not None else None

    async def list_objects(self) -> list[RuntimeObject]:
        found = [
            RuntimeObject(
                kind="fake", name=name, id=i.instance.id, labels=i.spec.labels, url=i.instance.url, image=i.spec.image
            )
            for name, i in sorted(self.instances.items())
        ]
        if self.split is not None:
            labels = plans.labels(self.project, Role.router)
            found.append(RuntimeObject(kind="fake", name=router_container(self.project), id="router", labels=labels))
        if self.opa is not None:
            found.append(
                RuntimeObject(kind="fake", name=self.opa, id="opa", labels=plans.labels(self.project, Role.opa))
            )
        labels = plans.labels(self.project, Role.network)
        found += [RuntimeObject(kind="network", name=n, id=n, labels=labels) for n in sorted(self.networks)]
        return found

    async def logs_tail(self, name: str, lines: int = 20) -> list[str]:
        return self.logs.get(name, [])[-lines:]

    async def remove(self, obj: RuntimeObject) -> None:
        self.calls.append(f"remove {obj.name}")
        if obj.role == Role.router.value:
            self.split = None
        elif obj.role == Role.opa.value:
            self.opa = None
        elif obj.kind == "network":
            self.networks.discard(obj.name)
        else:
            self.instances.pop(obj.name, None)


def _upstreams(instances: list[Instance]) -> list[Upstream]:
    return [plans.process_upstream(i) for i in instances]


# --- the gatekeeper and the rollout a test drives ----------------------------------------------


class ScriptedGate:
    """Answers with the next scripted decision (allow when the script runs out): True, False, or
    a whole `Decision` (an inconclusive one, say)."""

    def __init__(self, *answers: bool | Decision) -> None:
        self.answers = list(answers)
        self.asked: list[tuple[str, dict[str, Any]]] = []

    async def decide(self, domain: str, data: dict[str, Any]) -> Decision | None:
        self.asked.append((domain, data))
        allow = self.answers.pop(0) if self.answers else True
        if isinstance(allow, Decision):
            return allow
        return Decision(allow, [] if allow else ["error_rate 50.0% exceeds 1.0%"], f"d{len(self.asked)}")


class Harness(Rollout):
    """A `Rollout` whose gate and emitted events a test reads back."""

    gate: ScriptedGate
    events: list[Payload]

    def types(self) -> list[str]:
        return [e.model_dump(include={"type"})["type"] for e in self.events]


class FakeHarness(Harness):
    driver: FakeDriver


H = TypeVar("H", bound=Harness)


def harness(loaded: LoadedManifest, driver: RuntimeDriver, store: RecordStore, cls: type[H]) -> H:
    """A fresh (never deployed) rollout of `loaded` on `driver`, its record in `store`."""
    events: list[Payload] = []

    async def emit(payload: Payload) -> None:
        events.append(payload)

    manifest = loaded.manifest
    record = RolloutState(
        project=manifest.project, runtime=manifest.runtime.value, root=str(loaded.root),
        manifest=manifest.model_dump(mode="json"),
    )  # fmt: skip
    made = cls(record, driver, store, ScriptedGate(), emit)
    made.events = events
    return made
