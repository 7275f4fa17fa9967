"""compose.dev.yml on the real dockerd: Redis and the five services in containers, scaled."""

from __future__ import annotations

import json
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest

from swiftdeploy_core.bus import streams
from swiftdeploy_core.bus.events import Event, PingRequested, Source
from swiftdeploy_core.bus.wire import entry_fields
from tests.eventually import eventually_sync
from tests.servers import missing

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.docker, pytest.mark.slow]


@pytest.fixture
def compose(docker_daemon: str, controlplane_image: str):
    """Run docker-compose on compose.dev.yml under a unique project name; torn down after."""
    binary = shutil.which("docker-compose") or missing("docker-compose")
    project = f"sdbus{uuid.uuid4().hex[:8]}"
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "SWIFTDEPLOY_CONTROLPLANE_IMAGE": controlplane_image}

    def run(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
        return subprocess.run([binary, "-f", str(ROOT / "compose.dev.yml"), "-p", project, *args],
                              cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)  # fmt: skip

    yield run
    run("down", "-v", "--remove-orphans", "-t", "5")


def redis_cli(compose, *args: str) -> str:
    result = compose("exec", "-T", "redis", "redis-cli", "--no-raw", *args, timeout=30)
    assert result.returncode == 0, result.stderr
    return result.stdout


def consumers(compose, service: str) -> list[str]:
    out = redis_cli(compose, "XINFO", "CONSUMERS", streams.INBOXES[service], streams.group(service))
    lines = out.splitlines()
    return [lines[i + 1].split('"')[1] for i, line in enumerate(lines) if line.strip().endswith('"name"')]


def test_compose_runs_the_control_plane_and_scales_the_collector_to_two(compose) -> None:
    up = compose("up", "-d", "--scale", "collector=2")
    assert up.returncode == 0, up.stderr[-2000:]
    found: dict[str, list[str]] = {}

    def filled() -> bool:
        found.clear()
        found.update({s: consumers(compose, s) for s in streams.INBOXES} if _inboxes_exist(compose) else {})
        return bool(found and len(found["collector"]) == 2 and all(found[s] for s in found))

    eventually_sync(filled, lambda: f"the groups to fill up: {found}\n{compose('logs', '--tail', '20').stdout[-3000:]}",
                    90, interval=1)  # fmt: skip
    assert len(set(found["collector"])) == 2  # two replicas, two consumer names, one group

    ping = Event(payload=PingRequested(service="collector"), source=Source(service="test", instance="host"))
    fields = entry_fields(ping)
    redis_cli(compose, "XADD", streams.COLLECTOR_INBOX, "*", *[x for kv in fields.items() for x in kv])

    def ponged() -> str | None:
        out = compose(
            "exec", "-T", "redis", "redis-cli", "--raw", "XRANGE", streams.EVENTS, "-", "+", timeout=30
        ).stdout
        return out if ping.correlation_id in out and '"pong"' in out else None

    out = eventually_sync(ponged, "a pong from the collector replicas", 30, interval=0.5)
    pong = next(json.loads(line) for line in out.splitlines() if line.startswith("{") and ping.correlation_id in line)
    assert pong["payload"]["instance"] in found["collector"]


def _inboxes_exist(compose) -> bool:
    return all(redis_cli(compose, "EXISTS", inbox).strip().endswith("1") for inbox in streams.INBOXES.values())
