"""The control plane supervises the embedded Redis like a replica, `up` repairs a half-dead
plane, and `down` signals only the processes it verifiably started. Real processes throughout."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import redis

from swiftdeploy_core.client.controlplane import STATE_FILE
from tests.client.test_controlplane import swiftdeploy


def record(project: Path) -> dict:
    return json.loads((project / ".swiftdeploy" / STATE_FILE).read_text())


def rows(project: Path) -> dict[str, dict]:
    listed = swiftdeploy("ps", "--json", cwd=project)
    return {row["instance"] if row["service"] != "redis" else "redis": row
            for row in map(json.loads, listed.stdout.splitlines())}  # fmt: skip


def answers(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_timeout=0.3, socket_connect_timeout=0.3).ping())
    except redis.RedisError:
        return False


@pytest.fixture
def plane(tmp_path: Path):
    (tmp_path / "empty-bin").mkdir()
    started = swiftdeploy("up", "--timeout", "60", cwd=tmp_path)
    assert started.returncode == 0, started.stderr
    assert started.stdout.startswith("started: redis redis://127.0.0.1:")
    yield tmp_path
    swiftdeploy("down", cwd=tmp_path)


def test_a_killed_embedded_redis_is_restarted_on_its_port_with_its_data(plane: Path) -> None:
    before = record(plane)
    url = before["redis_url"]
    redis.Redis.from_url(url).set("kept", "yes")
    assert rows(plane)["redis"]["status"] == "healthy" and rows(plane)["redis"]["restarts"] == 0

    psutil.Process(before["redis_pid"]).kill()
    killed = time.monotonic()
    while not answers(url) or record(plane)["redis_pid"] == before["redis_pid"]:
        assert time.monotonic() - killed < 5, "the embedded Redis was not back (and recorded) within 5 s"
        time.sleep(0.05)
    print(f"redis answered again {time.monotonic() - killed:.2f}s after kill -9")
    assert redis.Redis.from_url(url).get("kept") == b"yes"  # same data folder, AOF replayed

    after = record(plane)
    assert after["redis_url"] == url and after["redis_pid"] != before["redis_pid"]
    assert after["redis_restarts"] == 1
    deadline = time.monotonic() + 20
    while not all(r["status"] == "healthy" for r in rows(plane).values()):  # the services reconnect
        assert time.monotonic() < deadline, rows(plane)
        time.sleep(0.2)
    assert rows(plane)["redis"]["restarts"] == 1
    table = swiftdeploy("ps", cwd=plane).stdout.splitlines()
    assert any(line.split()[:2] == ["redis", "embedded"] and line.split()[4] == "1" for line in table), table


def test_up_on_a_plane_whose_supervisor_died_repairs_it(plane: Path) -> None:
    before = record(plane)
    orphans = [r["pid"] for r in before["replicas"]] + [before["redis_pid"]]
    psutil.Process(before["supervisor_pid"]).kill()
    time.sleep(0.5)
    repaired = swiftdeploy("up", "--timeout", "60", cwd=plane)
    assert repaired.returncode == 0, repaired.stderr
    assert repaired.stdout.startswith("repaired: redis redis://127.0.0.1:"), repaired.stdout
    assert not [p for p in orphans if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
    assert all(r["status"] == "healthy" for r in rows(plane).values()), rows(plane)
    again = swiftdeploy("up", cwd=plane)
    assert again.stdout.startswith("already running: ")


def test_down_never_signals_a_recorded_pid_that_is_no_longer_ours(plane: Path) -> None:
    # A process that looks like one of ours by its command line, under a pid the record names,
    # but started at another time: a reused pid. `down` must leave it alone.
    stranger = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "services.gatekeeper"])
    try:
        state = record(plane)
        state["replicas"].append({"service": "gatekeeper", "instance": "reused", "pid": stranger.pid,
                                  "restarts": 0, "created": psutil.Process(stranger.pid).create_time() - 100})  # fmt: skip
        (plane / ".swiftdeploy" / STATE_FILE).write_text(json.dumps(state))
        stopped = swiftdeploy("down", cwd=plane)
        assert stopped.returncode == 0, stopped.stderr
        assert stranger.poll() is None, "down signalled a process it did not start"
        for pid in [state["supervisor_pid"], state["redis_pid"], *(r["pid"] for r in state["replicas"][:-1])]:
            assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    finally:
        stranger.kill()
        stranger.wait()
