"""Real auditor processes for the auditor tests: a project folder, replicas started with
`python -m services.auditor`, and helpers to wait on the history they write."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from swiftdeploy_core.settings import Settings
from tests.eventually import eventually_sync

ROOT = Path(__file__).resolve().parents[2]
MANIFEST = """\
services: {name: app, image: app:1.0.0, port: 3000, version: "1.0.0", mode: stable}
nginx: {image: nginx:latest, port: 8080, proxy_timeout: 30}
network: {name: swiftdeploy-net, driver_type: bridge}
"""


@dataclass
class Project:
    """A manifest folder and the environment every process of a test shares."""

    root: Path
    redis_url: str
    env: dict[str, str] = field(default_factory=dict)
    processes: list[subprocess.Popen] = field(default_factory=list)

    @property
    def manifest(self) -> Path:
        return self.root / "manifest.yaml"

    @property
    def history(self) -> Path:
        return self.root / "history.jsonl"

    def settings(self) -> Settings:
        return Settings(manifest=self.manifest).model_copy(update={"redis_url": self.redis_url})

    def start_auditor(self, name: str, **extra: str) -> subprocess.Popen:
        return self.start_service("auditor", name, **extra)

    def start_service(self, service: str, name: str, **extra: str) -> subprocess.Popen:
        """`python -m services.<service>` as instance `name`, logging to `<root>/<name>.log`."""
        env = {**self.env, "SWIFTDEPLOY_INSTANCE": name, **extra}
        log = (self.root / f"{name}.log").open("ab")
        process = subprocess.Popen(
            [sys.executable, "-m", f"services.{service}"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
        )
        self.processes.append(process)
        return process

    def log_of(self, name: str) -> str:
        path = self.root / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def cli(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "swiftdeploy_core", *args, "--manifest", str(self.manifest)],
            cwd=self.root,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def history_lines(self) -> int:
        return len(self.history.read_bytes().splitlines()) if self.history.exists() else 0

    def wait_for_lines(self, count: int, timeout: float = 30.0) -> None:
        eventually_sync(lambda: self.history_lines() >= count, f"{count} history lines", timeout, interval=0.05)

    def stop_all(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@pytest.fixture
def project(tmp_path: Path, redis_url: str) -> Iterator[Project]:
    """A project folder with a manifest; auditors started through it are stopped afterwards."""
    (tmp_path / "manifest.yaml").write_text(MANIFEST)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SWIFTDEPLOY_") and k != "REDIS_URL"}
    env.update(
        REDIS_URL=redis_url,
        SWIFTDEPLOY_MANIFEST=str(tmp_path / "manifest.yaml"),
        SWIFTDEPLOY_LOG_JSON="false",
        SWIFTDEPLOY_AUDIT_FSYNC="false",
        PYTHONPATH=str(ROOT),
        SWIFTDEPLOY_SHUTDOWN_GRACE="2",
    )
    project = Project(tmp_path, redis_url, env)
    yield project
    project.stop_all()


def wait_until(check: Callable[[], bool], timeout: float = 20.0, what: str = "condition") -> None:
    eventually_sync(check, what, timeout, interval=0.05)
