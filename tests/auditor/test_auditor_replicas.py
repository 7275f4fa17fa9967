"""Two auditor replicas, 5,000 events, forced redeliveries: exactly 5,000 lines and a valid chain."""

from __future__ import annotations

import json
import signal

import pytest
import redis

from services.auditor.chain import verify
from services.auditor.history import history_id
from swiftdeploy_core.bus import streams
from swiftdeploy_core.bus.events import DeployStep, Event, Source
from swiftdeploy_core.client.cli.common import connected
from tests.projects import Project, wait_until

EVENTS = 5_000
ORCHESTRATOR = Source(service="orchestrator", instance="o1")


def pending(client: redis.Redis) -> int:
    group = streams.group("auditor")
    return sum(
        client.xpending(s, group)["pending"] for s in (streams.EVENTS, streams.AUDITOR_INBOX) if client.exists(s)
    )


async def publish(project: Project, events: list[Event]) -> None:
    async with connected(project.settings()) as bus:
        for start in range(0, len(events), 500):
            await bus.publish_many(streams.EVENTS, events[start : start + 500])


@pytest.mark.slow
async def test_two_replicas_write_each_of_5000_events_once_despite_redeliveries(project: Project) -> None:
    replica = {"SWIFTDEPLOY_LEASE_MS": "1500", "SWIFTDEPLOY_BATCH_SIZE": "50"}
    project.start_auditor("aud-1", **replica)
    doomed = project.start_auditor("aud-2", **replica)
    events = [Event(payload=DeployStep(step=f"step {i}"), source=ORCHESTRATOR) for i in range(EVENTS)]
    client = redis.Redis.from_url(project.redis_url)

    # First half, with every tenth event published twice (a duplicate publish is a redelivery).
    half = events[: EVENTS // 2]
    await publish(project, half + half[::10])
    wait_until(lambda: project.history_lines() >= 1_500, timeout=60, what="1,500 lines")
    doomed.send_signal(signal.SIGKILL)  # mid-batch: its pending entries are reclaimed by aud-1
    project.start_auditor("aud-3", **replica)
    wait_until(
        lambda: project.history_lines() >= len(half) and pending(client) == 0,
        timeout=60,
        what="the first half written and acknowledged",
    )

    # The workers forget what they processed: only the history's own claims stop duplicates now.
    client.delete(streams.processed_key("auditor"))
    second = events[EVENTS // 2 :]
    await publish(project, second + half[:500] + second[::7])
    wait_until(
        lambda: project.history_lines() >= EVENTS and pending(client) == 0,
        timeout=90,
        what="all 5,000 lines written and every entry acknowledged",
    )

    lines = project.history.read_bytes().splitlines()
    assert len(lines) == EVENTS
    assert sorted(json.loads(line)["event_id"] for line in lines) == sorted(e.id for e in events)
    head = client.get(streams.audit_head_key(history_id(project.history))).decode()
    result = verify(project.history, head=head)
    assert result.ok and result.lines == EVENTS
    workers = {name for name in ("aud-1", "aud-2", "aud-3") if "← deploy.step" in project.log_of(name)}
    assert {"aud-1", "aud-2"} <= workers  # both replicas really shared the work
    logs = "".join(project.log_of(name) for name in ("aud-1", "aud-3"))
    assert "reclaimed" in logs  # the killed replica's pending entries were redelivered
    assert logs.count("is already in the history (a redelivery)") >= 500  # the history's claims held
    client.close()
