"""Group commit: lines that arrive together share one write and one fsync, and a crash in the
middle of a batch still leaves exactly one line per event id and a valid chain."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from pathlib import Path

import pytest
import redis

from services.auditor import history as history_module
from services.auditor.chain import verify
from services.auditor.history import HistoryWriteError, HistoryWriter, history_id
from swiftdeploy_core.bus import streams
from swiftdeploy_core.bus.events import DeployStep, Event, Source
from tests.auditor.test_auditor_replicas import publish
from tests.auditor.test_history_writer import entry
from tests.projects import Project, wait_until

ORCHESTRATOR = Source(service="orchestrator", instance="o1")


async def test_lines_appended_together_share_one_fsync_each_batch(tmp_path: Path, redis_client, monkeypatch) -> None:
    fsyncs = 0
    real_fsync = os.fsync

    def counting_fsync(fd: int) -> None:
        nonlocal fsyncs
        fsyncs += 1
        real_fsync(fd)

    monkeypatch.setattr(history_module.os, "fsync", counting_fsync)
    writer = HistoryWriter(tmp_path / "history.jsonl", redis_client, fsync=True)
    results = await asyncio.gather(*(writer.append(f"ev{i}", entry(i)) for i in range(1_000)))

    assert all(results)
    assert fsyncs <= 1_000 // 50, f"{fsyncs} fsyncs for 1,000 lines: no group commit"
    lines = (tmp_path / "history.jsonl").read_bytes().splitlines()
    assert [json.loads(line)["event_id"] for line in lines] == [f"ev{i}" for i in range(1_000)]  # staging order
    assert verify(tmp_path / "history.jsonl", head=await writer.head()).lines == 1_000


async def test_a_duplicate_inside_one_batch_and_across_batches_gets_one_line(tmp_path: Path, redis_client) -> None:
    writer = HistoryWriter(tmp_path / "history.jsonl", redis_client, fsync=False)
    first = await asyncio.gather(*(writer.append(f"ev{i % 10}", entry(i % 10)) for i in range(30)))
    again = await asyncio.gather(*(writer.append(f"ev{i}", entry(i)) for i in range(15)))

    assert first.count(True) == 10 and again.count(True) == 5
    ids = [json.loads(line)["event_id"] for line in (tmp_path / "history.jsonl").read_bytes().splitlines()]
    assert sorted(ids) == sorted(f"ev{i}" for i in range(15))
    assert verify(tmp_path / "history.jsonl").ok


async def test_a_failed_batch_write_fails_every_line_in_it_and_leaves_the_file_as_it_was(
    tiny_filesystem: Path, redis_client
) -> None:
    writer = HistoryWriter(tiny_filesystem / "history.jsonl", redis_client, fsync=True)
    assert await writer.append("ev0", entry(0))
    before = writer.path.read_bytes()
    filler = tiny_filesystem / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError:
        pass
    finally:
        os.close(fd)
    big = [{**entry(i), "reasons": ["x" * 2_000]} for i in range(1, 40)]
    outcomes = await asyncio.gather(*(writer.append(e["event_id"], e) for e in big), return_exceptions=True)

    assert outcomes and all(isinstance(o, HistoryWriteError) for o in outcomes), outcomes
    assert writer.path.read_bytes() == before  # nothing torn, nothing half-written
    filler.unlink()
    assert await writer.append("ev1", big[0])  # the same event goes in once the disk has room
    assert verify(writer.path).lines == 2


@pytest.mark.slow
async def test_sigkill_mid_batch_leaves_one_line_per_event_and_a_valid_chain(project: Project) -> None:
    events = [Event(payload=DeployStep(step=f"step {i}"), source=ORCHESTRATOR) for i in range(6_000)]
    settings = {"SWIFTDEPLOY_LEASE_MS": "1000"}
    auditor = project.start_auditor("aud-1", **settings)
    await publish(project, events)
    for n, at in enumerate((1_000, 3_000)):  # killed twice while batches are being written
        wait_until(lambda at=at: project.history_lines() >= at, timeout=60, what=f"{at} lines")
        auditor.send_signal(signal.SIGKILL)
        auditor.wait()
        auditor = project.start_auditor(f"aud-{n + 2}", **settings)
    client = redis.Redis.from_url(project.redis_url)
    wait_until(lambda: project.history_lines() >= len(events), timeout=90, what="every event in the history")

    data = project.history.read_bytes()
    assert data.endswith(b"\n")
    ids = [json.loads(line)["event_id"] for line in data.splitlines()]
    assert len(ids) == len(set(ids)) == len(events)  # none lost, none twice
    assert set(ids) == {e.id for e in events}
    head = client.get(streams.audit_head_key(history_id(project.history))).decode()
    result = verify(project.history, head=head)
    assert result.ok and result.lines == len(events), result
    client.close()
