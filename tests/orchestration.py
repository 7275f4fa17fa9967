"""Helpers for the orchestrator's tests: manifests, a real orchestrator process, the CLI as a
process, snapshots written the way the collector writes them, and a bounded load loop."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis
import yaml

from services.orchestrator import lock
from services.orchestrator.drivers import make_driver
from swiftdeploy_core.bus import streams
from swiftdeploy_core.bus.events import MetricsSnapshot
from swiftdeploy_core.errors import OperationInProgress
from swiftdeploy_core.project.manifest import Manifest, load_manifest
from swiftdeploy_core.project.state import RolloutState
from tests.eventually import eventually, eventually_sync
from tests.servers import REPO_ROOT, free_port, require_binary

PYTHON = sys.executable


def write_manifest(root: Path, project: str, **sections: Any) -> Path:
    """A process-runtime manifest with short canary intervals; `sections` override or add keys."""
    data: dict[str, Any] = {
        "services": {"name": project, "image": "swiftdeploy/workload:1.0.0", "port": 3000, "version": "1.0.0"},
        "nginx": {"image": "swiftdeploy/nginx", "port": free_port(), "proxy_timeout": 5},
        "network": {"name": f"{project}-net"},
        "runtime": "process",
        "canary": {
            "version": "2.0.0",
            "image": "swiftdeploy/workload:2.0.0",
            "steps": [10, 50],
            "interval": 0.5,
            "failure_limit": 2,
            # Most stories write the collector's figures themselves (write_snapshot), when they
            # choose; those with the real collector say `no_data: fail`, the product's default.
            "no_data": "hold",
        },
    }
    for key, value in sections.items():
        data[key] = {**data[key], **value} if isinstance(value, dict) and isinstance(data.get(key), dict) else value
    root.mkdir(parents=True, exist_ok=True)
    path = root / "manifest.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def docker_sections(workload_image: str, nginx_image: str, interval: float) -> dict[str, Any]:
    """A docker-runtime module's manifest sections: the built images, a 2.0.0 canary of them."""
    return {
        "runtime": "docker",
        "services": {"image": workload_image},
        "nginx": {"image": nginx_image},
        "canary": {"version": "2.0.0", "image": workload_image, "steps": [10, 50], "interval": interval,
                   "failure_limit": 2},
    }  # fmt: skip


def env_for(redis_url: str, **extra: str) -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items() if not k.startswith("SWIFTDEPLOY_") or k == "SWIFTDEPLOY_REQUIRE_SERVERS"
    }
    env.update(REDIS_URL=redis_url, PYTHONPATH=str(REPO_ROOT), SWIFTDEPLOY_LOG_JSON="false", **extra)
    return env


@dataclass
class ServiceProcess:
    """A real `python -m services.<name>` that a test may kill and start again."""

    name: str
    redis_url: str
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen | None = None

    def start(self) -> ServiceProcess:
        out = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [PYTHON, "-m", f"services.{self.name}"], cwd=REPO_ROOT, env=env_for(self.redis_url, **self.env),
            stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
        return self

    def kill(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


async def wait_ready(redis, service: str, timeout: float = 20.0) -> None:
    async def beating() -> bool:
        return bool([key async for key in redis.scan_iter(streams.health_key(service, "*"))])

    await eventually(beating, f"{service}'s heartbeat", timeout, interval=0.05)


def wait_ready_sync(redis_url: str, *services: str, timeout: float = 30.0) -> None:
    import redis

    client = redis.Redis.from_url(redis_url)
    try:
        deadline = time.monotonic() + timeout
        for service in services:
            eventually_sync(lambda service=service: list(client.scan_iter(streams.health_key(service, "*"))),
                            f"{service}'s heartbeat", max(0.0, deadline - time.monotonic()), interval=0.05)  # fmt: skip
    finally:
        client.close()


@dataclass
class CliResult:
    code: int
    out: str
    err: str

    @property
    def text(self) -> str:
        return self.out + self.err

    @property
    def line(self) -> str:
        """The last line on stderr: a failed command's one-line reason."""
        lines = self.err.strip().splitlines()
        return lines[-1] if lines else ""


async def cli(redis_url: str, *args: str, cwd: Path | None = None, timeout: float = 60.0) -> CliResult:
    """Run `python -m swiftdeploy_core ...` as a user would."""
    proc = await asyncio.create_subprocess_exec(
        PYTHON, "-m", "swiftdeploy_core", *args, cwd=cwd or REPO_ROOT, env=env_for(redis_url),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    return CliResult(proc.returncode or 0, out.decode(), err.decode())


async def record(redis, project: str) -> RolloutState | None:
    raw = await redis.get(streams.rollout_key(project))
    return RolloutState.model_validate_json(raw) if raw else None


async def wait_for_phase(redis, project: str, *phases: str, timeout: float = 20.0) -> RolloutState:
    last: list[RolloutState | None] = [None]

    async def reached() -> RolloutState | None:
        last[0] = current = await record(redis, project)
        return current if current is not None and current.phase.value in phases else None

    def what() -> str:
        return f"{project} to reach {'/'.join(phases)} (phase: {last[0].phase.value if last[0] else None})"

    return await eventually(reached, what, timeout, interval=0.05)


async def write_snapshot(
    redis, project: str, version: str, *, error_rate: float = 0.0, p99: float = 20.0, requests: float = 100.0,
) -> None:  # fmt: skip
    """What the collector stores for the canary track, so analysis can be driven exactly."""
    snapshot = MetricsSnapshot(
        project=project, track="canary", version=version, window_seconds=5.0, request_rate=requests / 5,
        error_rate=error_rate, p99_latency_ms=p99, requests=requests,
    )  # fmt: skip
    await redis.set(streams.latest_snapshot_key(project, "canary"), snapshot.model_dump_json())


async def get_json(url: str, headers: dict[str, str] | None = None) -> dict:
    async with aiohttp.ClientSession() as session:
        async with session.get(url, headers=headers or {}) as response:
            return await response.json()


@dataclass
class LoadLoop:
    """A bounded, steady request loop (one new connection per request) against one URL."""

    url: str
    rate: float = 200.0
    statuses: Counter = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)
    versions: Counter = field(default_factory=Counter)
    injected: int = 0  # 500s the workload's error chaos answered on purpose
    failed_at: list[float] = field(default_factory=list)  # wall-clock ends of the unplanned failures
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _runner: asyncio.Task | None = field(default=None, repr=False)

    async def __aenter__(self) -> LoadLoop:
        """`async with LoadLoop(url, rate) as load:` sends requests until the block ends."""
        self._runner = asyncio.create_task(self.run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.stop()
        if self._runner is not None:
            await self._runner

    @property
    def sent(self) -> int:
        return sum(self.statuses.values()) + len(self.errors)

    @property
    def failed(self) -> int:
        return len(self.errors) + sum(n for status, n in self.statuses.items() if status >= 500)

    @property
    def unplanned(self) -> int:
        """Failures nobody injected: connection errors, 502/504s, 500s that are not error chaos's."""
        return self.failed - self.injected

    async def run(self) -> None:
        connector = aiohttp.TCPConnector(force_close=True, limit=200)
        async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=10)) as session:
            tasks: set[asyncio.Task] = set()
            start, n = time.monotonic(), 0
            while not self._stop.is_set():
                n += 1
                task = asyncio.create_task(self._one(session))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                await asyncio.sleep(max(0.0, start + n / self.rate - time.monotonic()))
            if tasks:
                await asyncio.wait(tasks)

    async def _one(self, session: aiohttp.ClientSession) -> None:
        try:
            async with session.get(self.url) as response:
                body = await response.json(content_type=None) if response.status == 200 else {}
                if response.status == 500 and "injected by error chaos" in await response.text():
                    self.injected += 1
                elif response.status >= 500:
                    self.failed_at.append(time.time())
                self.statuses[response.status] += 1
                self.versions[body.get("version")] += 1
        except Exception as exc:
            self.errors.append(f"{type(exc).__name__}: {exc}")
            self.failed_at.append(time.time())

    def stop(self) -> None:
        self._stop.set()


# --- the real gatekeeper on a project's own policies --------------------------------------------

# The machine is shared and busy: the packaged CPU-load and disk thresholds would block at random.
TEST_THRESHOLDS = {"disk_free_gb": 0, "cpu_load": 1000}


def write_policies(root: Path, **thresholds: float) -> Path:
    """The packaged policies and input schemas in `root/policies`, with data.json thresholds overridden."""
    import json
    import shutil

    import policies

    folder = policies.project_dir(root)
    folder.mkdir(parents=True, exist_ok=True)
    for path in policies.policy_files(policies.default_dir()):
        shutil.copyfile(path, folder / path.name)
    policies.schema_dir(folder).mkdir(exist_ok=True)
    for name, content in policies.default_schemas().items():
        (policies.schema_dir(folder) / name).write_bytes(content)
    data = json.loads((policies.default_dir() / "data.json").read_text())
    data["thresholds"].update({**TEST_THRESHOLDS, **thresholds})
    (folder / "data.json").write_text(json.dumps(data, indent=2))
    return folder


def gatekeeper_process(redis_url: str, root: Path, log_dir: Path) -> ServiceProcess:
    """`python -m services.gatekeeper` deciding on `root/manifest.yaml`'s policies folder."""
    env = {"SWIFTDEPLOY_MANIFEST": str(root / "manifest.yaml"), "SWIFTDEPLOY_INSTANCE": "gatekeeper-test"}
    return ServiceProcess("gatekeeper", redis_url, log_dir / "gatekeeper.log", env)


# --- a project on the module's real orchestrator and gatekeeper ---------------------------------


class Stack:
    """One project of the tests, on the module's orchestrator and gatekeeper."""

    def __init__(self, root: Path, project: str, redis_url: str, redis: aioredis.Redis, services: Services) -> None:
        self.root, self.project, self.redis_url, self.redis = root, project, redis_url, redis
        self.orchestrator = services.orchestrator
        self.policies_root = services.root
        self.base: dict = {}

    def manifest(self, **sections) -> Path:
        return write_manifest(self.root, self.project, **{**self.base, **sections})

    async def sd(self, *args: str, timeout: float = 60.0):
        result = await cli(self.redis_url, *args, "--manifest", str(self.root / "manifest.yaml"), timeout=timeout)
        print(f"$ swiftdeploy {' '.join(args)} -> {result.code}\n{result.text}")
        return result

    def driver_manifest(self) -> Manifest:
        return load_manifest(self.root / "manifest.yaml").manifest

    def driver(self):
        loaded = load_manifest(self.root / "manifest.yaml")
        return make_driver(loaded.manifest, loaded.root)

    async def objects(self) -> list:
        return await self.driver().list_objects()

    async def record(self):
        return await record(self.redis, self.project)

    async def phase(self, *phases: str, timeout: float = 20.0):
        return await wait_for_phase(self.redis, self.project, *phases, timeout=timeout)

    async def rolled_back_after(self, *chaos: str, timeout: float = 20.0) -> tuple[RolloutState, float]:
        """`swiftdeploy chaos *chaos`, then the automatic rollback: its record, and the seconds it took."""
        assert (await self.sd("chaos", *chaos)).code == 0
        injected = time.monotonic()
        back = await self.phase("stable", timeout=timeout)
        return back, time.monotonic() - injected

    async def deploy_onto_a_taken_router_port(self) -> CliResult:
        """`swiftdeploy deploy` while another socket listens on the manifest's nginx port; the
        refusal's one line is checked here."""
        port = self.driver_manifest().nginx.port
        with socket.socket() as squatter:
            squatter.bind(("127.0.0.1", port))
            squatter.listen()
            failed = await self.sd("deploy")
        assert failed.code == 1
        assert failed.line.startswith(f"error: failed: nginx.port {port} on 127.0.0.1 is already in use")
        return failed

    async def url(self) -> str:
        current = await self.record()
        assert current is not None and current.router_url
        return current.router_url


class Services:
    """The real orchestrator and gatekeeper (and, when asked, collector and auditor), shared by a
    module's stories (each has its own project). The collector reads `collector` from the shared
    manifest; the auditor writes the shared root's history.jsonl."""

    def __init__(
        self, redis_url: str, root: Path, collector: dict | None = None, env: dict[str, str] | None = None,
        auditor: bool = False,
    ) -> None:  # fmt: skip
        self.root = root
        manifest = write_manifest(root, "sdo-policies", **({"collector": collector} if collector else {}))
        write_policies(root)  # where the gatekeeper finds policies/
        self.orchestrator = ServiceProcess(
            "orchestrator", redis_url, root / "orchestrator.log", dict(env or {})
        ).start()
        self.gatekeeper = gatekeeper_process(redis_url, root, root).start()
        self.others = [
            ServiceProcess("collector", redis_url, root / "collector.log", {"SWIFTDEPLOY_MANIFEST": str(manifest)}).start()
        ] if collector else []  # fmt: skip
        if auditor:
            self.others.append(
                ServiceProcess(
                    "auditor", redis_url, root / "auditor.log", {"SWIFTDEPLOY_MANIFEST": str(manifest)}
                ).start()
            )
        try:
            wait_ready_sync(redis_url, "orchestrator", "gatekeeper", *(p.name for p in self.others))
        except BaseException:
            self.stop()  # a fixture that fails to start must not leave its services running
            raise

    def stop(self) -> None:
        for process in [self.orchestrator, self.gatekeeper, *self.others]:
            process.stop()


@pytest.fixture(scope="module")
def services(redis_server, tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest):
    """Import into a test module (with `stack`) to run its stories on real services (a module's
    `COLLECTOR` adds the collector, `AUDITOR = True` the auditor, and its `ORCHESTRATOR_ENV` goes to
    the orchestrator's environment)."""
    require_binary("nginx")
    s = Services(
        redis_server.url, tmp_path_factory.mktemp("orchestrator-e2e"), getattr(request.module, "COLLECTOR", None),
        getattr(request.module, "ORCHESTRATOR_ENV", None), getattr(request.module, "AUDITOR", False),
    )  # fmt: skip
    yield s
    s.stop()


@pytest.fixture
async def stack(services: Services, tmp_path: Path, request: pytest.FixtureRequest):
    redis = aioredis.Redis.from_url(services.orchestrator.redis_url)
    project = f"sdo-{abs(hash(request.node.name)) % 10**6}"
    s = Stack(tmp_path / "project", project, services.orchestrator.redis_url, redis, services)
    s.base = getattr(request.module, "MANIFEST", {})  # the module's runtime and images
    s.manifest()
    try:
        yield s
    finally:
        # The record first, under the project's lock: the orchestrator's self-healing watch must
        # not restart what this teardown removes.
        try:
            async with lock.holding(redis, project, "test-teardown", "tests", wait=30):
                await redis.delete(streams.rollout_key(project), streams.latest_snapshot_key(project, "canary"))
        except OperationInProgress:
            await redis.delete(streams.rollout_key(project), streams.latest_snapshot_key(project, "canary"))
        driver = s.driver()
        await driver.teardown()
        await driver.close()
        write_policies(services.root)
        await redis.aclose()
        print(services.orchestrator.log()[-3000:])
