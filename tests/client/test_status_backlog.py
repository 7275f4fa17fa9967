"""`swiftdeploy status` shows the bus's backlog: the auditor's lag (events on the bus not yet in
the history) and each service's pending and dead-lettered entries. A real auditor process is
killed while events keep coming: status reports the lag, and reports it cleared once another
auditor has caught up (its own new entries at once, the dead one's pending after their lease)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import redis

from swiftdeploy_core.bus import streams
from swiftdeploy_core.bus.events import DeployStep, Event, Source
from tests.projects import Project, wait_until

ORCHESTRATOR = Source(service="orchestrator", instance="o1")
FAST_LEASE = {"SWIFTDEPLOY_LEASE_MS": "2000", "SWIFTDEPLOY_BLOCK_MS": "200"}


def status_json(project: Project) -> dict:
    done = subprocess.run([sys.executable, "-m", "swiftdeploy_core", "status", "--json", "--policy-timeout", "0.3",
                           "--manifest", str(project.manifest)], cwd=project.root, env=project.env,
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def publish(client: redis.Redis, count: int, label: str) -> list[str]:
    events = [Event(payload=DeployStep(step=f"{label} {i}"), source=ORCHESTRATOR) for i in range(count)]
    for event in events:
        client.xadd(streams.EVENTS, {"event": event.to_json(), "type": event.type, "cid": event.correlation_id})
    return [e.id for e in events]


def auditor_row(view: dict) -> dict:
    return next(q for q in view["bus"]["services"] if q["service"] == "auditor")


def test_status_reports_the_auditor_lag_after_a_kill_and_its_clearing(project: Project) -> None:
    client = redis.Redis.from_url(project.redis_url)
    first = project.start_auditor("aud-1", **FAST_LEASE)
    publish(client, 20, "before")
    project.wait_for_lines(20)
    wait_until(lambda: status_json(project)["bus"]["auditor_lag"] == 0, what="no lag while the auditor runs")
    # Each `status` publishes a `status.checked` (audited too): let the last one reach the history.
    wait_until(lambda: project.history_lines() == client.xlen(streams.EVENTS), what="the history caught up")

    first.send_signal(signal.SIGKILL)
    first.wait()
    publish(client, 30, "while down")
    client.xadd(streams.EVENTS, {"event": "{not json", "type": "deploy.step", "cid": "x"})  # a poison entry
    view = status_json(project)
    assert view["bus"]["auditor_lag"] == 31  # 30 events and the poison entry: none in the history
    assert auditor_row(view)["undelivered"] == 31 and auditor_row(view)["dead_letters"] == 0

    project.start_auditor("aud-2", **FAST_LEASE)
    started = time.monotonic()
    wait_until(lambda: status_json(project)["bus"]["auditor_lag"] == 0, timeout=60, what="the lag to clear")
    print(f"lag cleared {time.monotonic() - started:.1f}s after the new auditor started")
    steps = [json.loads(line) for line in project.history.read_bytes().splitlines()]
    assert sum(line["type"] == "deploy.step" for line in steps) == 50
    cleared = status_json(project)
    assert auditor_row(cleared) == {"service": "auditor", "pending": 0, "undelivered": 0, "dead_letters": 1}
    assert cleared["bus"]["capped"] is False
