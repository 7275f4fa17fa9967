"""Helpers for the orchestrator's tests: manifests, a real orchestrator process, the CLI as a
process, snapshots written the way the collector writes them, and a bounded load loop."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from swiftdeploy_core import streams
from swiftdeploy_core.events import MetricsSnapshot
from swiftdeploy_core.state import RolloutState
from tests.servers import REPO_ROOT, free_port

PYTHON = sys.executable


def write_manifest(root: Path, project: str, **sections: Any) -> Path:
    """A process-runtime manifest with short canary intervals; `sections` override or add keys."""
    data: dict[str, Any] = {
        "services": {"name": project, "image": "swiftdeploy/workload:1.0.0", "port": 3000, "version": "1.0.0"},
        "nginx": {"image": "swiftdeploy/nginx", "port": free_port(), "proxy_timeout": 5},
        "network": {"name": f"{project}-net"},
        "runtime": "process",
        "canary": {"version": "2.0.0", "image": "swiftdeploy/workload:2.0.0", "steps": [10, 50], "interval": 0.5, "failure_limit": 2},
    }
    for key, value in sections.items():
        data[key] = {**data[key], **value} if isinstance(value, dict) and isinstance(data.get(key), dict) else value
    root.mkdir(parents=True, exist_ok=True)
    path = root / "manifest.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def env_for(redis_url: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SWIFTDEPLOY_") or k == "SWIFTDEPLOY_REQUIRE_SERVERS"}
    env.update(REDIS_URL=redis_url, PYTHONPATH=str(REPO_ROOT), SWIFTDEPLOY_LOG_JSON="false", **extra)
    return env


@dataclass
class ServiceProcess:
    """A real `python -m services.<name>` that a test may kill and start again."""

    name: str
    redis_url: str
    log_path: Path
    process: subprocess.Popen | None = None

    def start(self) -> "ServiceProcess":
        out = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [PYTHON, "-m", f"services.{self.name}"], cwd=REPO_ROOT, env=env_for(self.redis_url),
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


async def wait_ready(redis, service: str, timeout: float = 15.0) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        async for _ in redis.scan_iter(streams.health_key(service, "*")):
            return
        await asyncio.sleep(0.05)
    raise TimeoutError(f"{service} did not start within {timeout}s")


@dataclass
class CliResult:
    code: int
    out: str
    err: str

    @property
    def text(self) -> str:
        return self.out + self.err


async def cli(redis_url: str, *args: str, cwd: Path | None = None, timeout: float = 60.0) -> CliResult:
    """Run `python -m swiftdeploy_core ...` as a user would."""
    proc = await asyncio.create_subprocess_exec(
        PYTHON, "-m", "swiftdeploy_core", *args, cwd=cwd or REPO_ROOT, env=env_for(redis_url),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    return CliResult(proc.returncode or 0, out.decode(), err.decode())


async def record(redis, project: str) -> RolloutState | None:  # noqa: ANN001
    raw = await redis.get(streams.rollout_key(project))
    return RolloutState.model_validate_json(raw) if raw else None


async def wait_for_phase(redis, project: str, *phases: str, timeout: float = 20.0) -> RolloutState:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    current = None
    while time.monotonic() < deadline:
        current = await record(redis, project)
        if current is not None and current.phase.value in phases:
            return current
        await asyncio.sleep(0.05)
    raise TimeoutError(f"{project} never reached {phases} (last: {current.phase.value if current else None})")


async def write_snapshot(
    redis, project: str, version: str, *, error_rate: float = 0.0, p99: float = 20.0, requests: float = 100.0,  # noqa: ANN001
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
    _stop: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def sent(self) -> int:
        return sum(self.statuses.values()) + len(self.errors)

    @property
    def failed(self) -> int:
        return len(self.errors) + sum(n for status, n in self.statuses.items() if status >= 500)

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
                self.statuses[response.status] += 1
                self.versions[body.get("version")] += 1
        except Exception as exc:  # noqa: BLE001 - every failure is counted, whatever it is
            self.errors.append(f"{type(exc).__name__}: {exc}")

    def stop(self) -> None:
        self._stop.set()


# --- a scripted gatekeeper (unit-level stand-in; the e2e tests prefer the real one) -------------

PERMISSIVE = {"disk_free_gb": 0.0, "cpu_load": 1000.0, "error_rate": 0.01, "p99_latency_ms": 500.0}


def threshold_decision(domain: str, data: dict, thresholds: dict) -> tuple[bool, list[str]]:
    """The policies' rules with `thresholds` (the real gatekeeper evaluates Rego instead)."""
    reasons = []
    if domain == "infra":
        if data["disk_free_gb"] < thresholds["disk_free_gb"]:
            reasons.append(f"disk free {data['disk_free_gb']} GB is below {thresholds['disk_free_gb']} GB")
        if data["cpu_load"] > thresholds["cpu_load"]:
            reasons.append(f"CPU load {data['cpu_load']} exceeds {thresholds['cpu_load']}")
    elif domain == "canary":
        if data.get("error_rate") is None or data["error_rate"] > thresholds["error_rate"]:
            reasons.append(f"error rate {data.get('error_rate')} exceeds {thresholds['error_rate']}")
        if data.get("p99_latency_ms") is not None and data["p99_latency_ms"] > thresholds["p99_latency_ms"]:
            reasons.append(f"P99 {data['p99_latency_ms']} ms exceeds {thresholds['p99_latency_ms']} ms")
    return not reasons, reasons


class ScriptedGatekeeper:
    """An in-process `gatekeeper` worker on the real bus answering with `threshold_decision`."""

    def __init__(self, redis_url: str, thresholds: dict | None = None) -> None:
        self.redis_url = redis_url
        self.thresholds = dict(thresholds or PERMISSIVE)
        self.questions: list[tuple[str, dict]] = []

    async def __aenter__(self) -> "ScriptedGatekeeper":
        from swiftdeploy_core.bus import Bus
        from swiftdeploy_core.events import DecisionMade
        from swiftdeploy_core.settings import Settings
        from swiftdeploy_core.worker import ServiceSpec, Worker

        async def decide(event, ctx) -> None:  # noqa: ANN001
            p = event.payload
            self.questions.append((p.domain, p.input))
            allow, reasons = threshold_decision(p.domain, p.input, self.thresholds)
            made = DecisionMade(
                domain=p.domain, allow=allow, reasons=reasons, input=p.input, engine="scripted",
                decision_id=f"scripted-{len(self.questions)}", policy_revision="test", duration_ms=0.1,
            )  # fmt: skip
            await ctx.emit(made, cause=event)

        settings = Settings(redis_url=self.redis_url, instance="scripted-gatekeeper", log_json=False)
        self.bus = await Bus.connect(settings)
        spec = ServiceSpec(name="gatekeeper", streams=[streams.GATEKEEPER_INBOX], handlers={"decision.requested": decide})
        self.worker = Worker(spec, settings, self.bus)
        await self.worker.start()
        self.task = asyncio.create_task(self.worker.run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.worker.request_stop()
        await asyncio.wait({self.task}, timeout=3)
        self.task.cancel()
        # Bounded: cancelling a blocked redis call can stall (see the bus's shutdown notes).
        await asyncio.wait({asyncio.ensure_future(self.worker.stop())}, timeout=5)
        await asyncio.wait({asyncio.ensure_future(self.bus.close())}, timeout=3)
