"""A torn last line never costs a record: a real auditor process finds the tail torn, moves its
bytes to a recovery file named in the log, records the repair in the history, writes the torn
event again from the bus, and `swiftdeploy audit --verify` names the repair."""

from __future__ import annotations

import json

from services.auditor.chain import RECOVERED, verify
from swiftdeploy_core.bus import streams
from swiftdeploy_core.bus.events import DeployStep, Event, Source
from swiftdeploy_core.client.cli.common import connected
from tests.projects import Project, wait_until

ORCHESTRATOR = Source(service="orchestrator", instance="o1")


async def publish(project: Project, events: list[Event]) -> None:
    async with connected(project.settings()) as bus:
        await bus.publish_many(streams.EVENTS, events)


def lines(project: Project) -> list[dict]:
    return [json.loads(raw) for raw in project.history.read_bytes().splitlines()]


def ids_written(project: Project) -> set[str]:
    """The event ids of the complete lines so far (the torn one is not)."""
    return {json.loads(raw)["event_id"] for raw in project.history.read_bytes().splitlines(keepends=True)
            if raw.endswith(b"\n")}  # fmt: skip


async def test_a_torn_last_line_is_recovered_and_its_event_written_again(project: Project) -> None:
    project.start_auditor("aud-1")
    first = [Event(payload=DeployStep(step=f"step {i}"), source=ORCHESTRATOR) for i in range(6)]
    await publish(project, first)
    project.wait_for_lines(6)

    # Tear the last line mid-way, as a power cut during its write would.
    data = project.history.read_bytes()
    torn_at = data.rstrip(b"\n").rfind(b"\n") + 1
    cut = torn_at + (len(data) - torn_at) // 2
    project.history.write_bytes(data[:cut])
    assert verify(project.history).problem == "the line is torn (it has no newline)"

    more = [Event(payload=DeployStep(step=f"later {i}"), source=ORCHESTRATOR) for i in range(3)]
    await publish(project, more)
    every_id = {e.id for e in first + more}
    wait_until(lambda: every_id <= ids_written(project), what="every event in the history")

    history = lines(project)
    ids = [line["event_id"] for line in history if line["type"] != RECOVERED]
    assert sorted(ids) == sorted(every_id)  # each exactly once
    (repair,) = [line for line in history if line["type"] == RECOVERED]
    assert (repair["offset"], repair["bytes"]) == (torn_at, cut - torn_at)
    recovery = project.root / repair["recovery_file"]
    assert recovery.read_bytes() == data[torn_at:cut]
    log = project.log_of("aud-1")
    assert f"moved it to {recovery}" in log and "1 event written again" in log

    result = project.cli("audit", "--verify")
    assert result.returncode == 0, result.stderr
    out = result.stdout.splitlines()
    assert out[0] == f"{project.history}: the hash chain is valid ({len(history)} lines), repaired:"
    assert out[1].startswith(f"  - line 6 records a torn tail recovered from byte {torn_at} ({cut - torn_at} bytes")
    assert repair["recovery_file"] in out[1]


async def test_a_tail_torn_while_no_auditor_ran_is_recovered_when_one_starts(project: Project) -> None:
    auditor = project.start_auditor("aud-1")
    events = [Event(payload=DeployStep(step=f"step {i}"), source=ORCHESTRATOR) for i in range(4)]
    await publish(project, events)
    project.wait_for_lines(4)
    project.stop_all()
    assert auditor.returncode == 0
    data = project.history.read_bytes()
    project.history.write_bytes(data[:-40])
    project.start_auditor("aud-2")
    wait_until(lambda: len(ids_written(project)) == 5, what="the tail recovered")
    history = lines(project)
    assert [line["type"] for line in history].count(RECOVERED) == 1
    assert sorted(line["event_id"] for line in history if line["type"] != RECOVERED) == sorted(e.id for e in events)
    assert verify(project.history).ok and verify(project.history).repairs
