"""The history writer: one line per event id under concurrency, redelivery, crashes and full disks."""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import os
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from services.auditor import history as history_module
from services.auditor.chain import verify
from services.auditor.history import HistoryWriteError, HistoryWriter, history_id
from swiftdeploy_core.bus import streams


def entry(index: int) -> dict:
    return {
        "timestamp": "2026-01-01T00:00:00.000Z",
        "type": "deploy.step",
        "mode": "stable",
        "step": f"step {index}",
        "event_id": f"ev{index}",
    }


async def test_appends_chain_and_a_redelivered_event_is_written_once(tmp_path: Path, redis_client) -> None:
    writer = HistoryWriter(tmp_path / "history.jsonl", redis_client, fsync=False)
    assert await writer.append("ev1", entry(1)) is True
    assert await writer.append("ev2", entry(2)) is True
    assert await writer.append("ev1", entry(1)) is False  # redelivered
    result = verify(writer.path, head=await writer.head())
    assert result.ok and result.lines == 2


async def test_concurrent_appends_with_duplicates_keep_one_line_per_event(tmp_path: Path, redis_client) -> None:
    writer = HistoryWriter(tmp_path / "history.jsonl", redis_client, fsync=False)
    ids = [i % 50 for i in range(200)]  # every id four times, interleaved
    written = await asyncio.gather(*(writer.append(f"ev{i}", entry(i)) for i in ids))
    assert sum(written) == 50
    result = verify(writer.path, head=await writer.head())
    assert result.ok and result.lines == 50


async def test_a_crash_after_the_write_but_before_confirming_does_not_duplicate(tmp_path: Path, redis_client) -> None:
    writer = HistoryWriter(tmp_path / "history.jsonl", redis_client, fsync=False)
    await writer.append("ev1", entry(1))
    await writer.append("ev2", entry(2))
    # As if the replica died after appending ev2 but before marking it written.
    claim = streams.audit_claim_key(history_id(writer.path), "ev2")
    await redis_client.set(claim, "pending:0")
    assert await writer.append("ev2", entry(2)) is False
    assert await redis_client.get(claim) == b"written"
    assert verify(writer.path).lines == 2


async def test_a_crash_after_claiming_but_before_writing_writes_on_redelivery(tmp_path: Path, redis_client) -> None:
    writer = HistoryWriter(tmp_path / "history.jsonl", redis_client, fsync=False)
    await writer.append("ev1", entry(1))
    size = writer.path.stat().st_size
    await redis_client.set(streams.audit_claim_key(history_id(writer.path), "ev2"), f"pending:{size}")
    assert await writer.append("ev2", entry(2)) is True
    assert verify(writer.path).lines == 2


async def test_a_torn_tail_left_by_a_crash_is_moved_aside_and_recorded(tmp_path: Path, redis_client) -> None:
    writer = HistoryWriter(tmp_path / "history.jsonl", redis_client, fsync=False)
    await writer.append("ev1", entry(1))
    size = writer.path.stat().st_size
    torn = b'{"timestamp":"2026-01-01T00:00:00.000Z","ty'
    with writer.path.open("ab") as handle:
        handle.write(torn)
    await writer.append("ev2", entry(2))
    result = verify(writer.path)
    assert result.ok and result.lines == 3
    assert result.repairs and f"recovered from byte {size} ({len(torn)} bytes moved to" in result.repairs[0]
    recovery = json.loads(writer.path.read_bytes().splitlines()[1])
    assert (recovery["type"], recovery["offset"], recovery["bytes"]) == ("history.recovered", size, len(torn))
    assert (tmp_path / recovery["recovery_file"]).read_bytes() == torn


async def test_a_short_write_is_undone_and_the_event_stays_pending(tmp_path: Path, redis_client, monkeypatch) -> None:
    writer = HistoryWriter(tmp_path / "history.jsonl", redis_client, fsync=False)
    await writer.append("ev1", entry(1))
    before = writer.path.read_bytes()
    real_write = os.write
    monkeypatch.setattr(history_module.os, "write", lambda fd, data: real_write(fd, data[: len(data) // 2]))
    with pytest.raises(HistoryWriteError, match="short write"):
        await writer.append("ev2", entry(2))
    assert writer.path.read_bytes() == before
    monkeypatch.setattr(history_module.os, "write", real_write)
    assert await writer.append("ev2", entry(2)) is True
    assert verify(writer.path).lines == 2


async def test_an_unopenable_history_raises_a_clear_error(tmp_path: Path, redis_client) -> None:
    (tmp_path / "afile").write_text("not a folder")
    writer = HistoryWriter(tmp_path / "afile" / "history.jsonl", redis_client)
    with pytest.raises(HistoryWriteError, match=r"cannot open the history .*afile/history.jsonl"):
        await writer.append("ev1", entry(1))


async def test_a_full_disk_leaves_no_torn_line_and_the_event_pending(tiny_filesystem: Path, redis_client) -> None:
    writer = HistoryWriter(tiny_filesystem / "history.jsonl", redis_client, fsync=True)
    await writer.append("ev1", entry(1))
    filler = tiny_filesystem / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    with pytest.raises(OSError, match="No space left"):
        while True:
            os.write(fd, b"x" * 1024)
    os.close(fd)
    big = {**entry(2), "reasons": ["x" * 20_000]}
    # The kernel fills the last page (a short write) or refuses (ENOSPC): either way, nothing stays.
    with pytest.raises(HistoryWriteError, match=r"cannot append to the history .*(No space left|short write)"):
        await writer.append("ev2", big)
    result = verify(writer.path)
    assert result.ok and result.lines == 1
    claim = await redis_client.get(streams.audit_claim_key(history_id(writer.path), "ev2"))
    assert claim.startswith(b"pending:")
    filler.unlink()  # space comes back: the redelivered event is written once
    assert await writer.append("ev2", big) is True
    assert verify(writer.path).lines == 2


def _append_in_process(path: str, redis_url: str, ids: list[int]) -> None:
    async def main() -> None:
        client = aioredis.Redis.from_url(redis_url)
        writer = HistoryWriter(Path(path), client, fsync=False)
        for index in ids:
            await writer.append(f"ev{index}", entry(index))
        await client.aclose()

    asyncio.run(main())


def test_two_processes_appending_overlapping_events_write_each_once(tmp_path: Path, redis_url: str) -> None:
    path = tmp_path / "history.jsonl"
    context = multiprocessing.get_context("spawn")
    workers = [
        context.Process(target=_append_in_process, args=(str(path), redis_url, list(range(0, 300)))),
        context.Process(target=_append_in_process, args=(str(path), redis_url, list(range(300, -1, -1)))),
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
        assert worker.exitcode == 0
    result = verify(path)
    assert result.ok and result.lines == 301
    assert len({json.loads(line)["event_id"] for line in path.read_bytes().splitlines()}) == 301
