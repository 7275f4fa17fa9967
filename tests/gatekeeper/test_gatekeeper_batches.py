"""The engine's own thread: calls run off the event loop, in order, and those made while it is
busy go over together; errors and closing reach exactly the callers concerned."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from services.gatekeeper import batches
from services.gatekeeper.batches import BatchingThread
from swiftdeploy_core.errors import PolicyEngineError


def where(tag: str) -> tuple[str, str]:
    return tag, threading.current_thread().name


async def keep_busy(thread: BatchingThread, seconds: float) -> asyncio.Future:
    """Start a call that sleeps `seconds` on the thread; returns once it is running there."""
    running = asyncio.ensure_future(thread.call(time.sleep, seconds))
    await asyncio.sleep(min(0.05, seconds / 4))
    return running


async def test_calls_run_on_the_thread_and_each_caller_gets_its_own_result():
    thread = BatchingThread("rego")
    results = await asyncio.gather(*(thread.call(where, f"call-{i}") for i in range(20)))
    assert [tag for tag, _ in results] == [f"call-{i}" for i in range(20)]
    assert {name for _, name in results} != {threading.current_thread().name}
    assert all(name.startswith("rego") for _, name in results)
    thread.close()


@pytest.fixture
def batch_sizes(monkeypatch) -> list[int]:
    sizes: list[int] = []
    original = batches._run_all

    def recording(batch):
        sizes.append(len(batch))
        return original(batch)

    monkeypatch.setattr(batches, "_run_all", recording)
    return sizes


async def test_calls_made_together_or_while_the_thread_is_busy_go_over_in_one_batch(batch_sizes):
    thread = BatchingThread("rego")
    slow = await keep_busy(thread, 0.2)
    rest = [asyncio.ensure_future(thread.call(where, i)) for i in range(50)]
    await asyncio.gather(slow, *rest)
    await asyncio.gather(*(thread.call(where, i) for i in range(10)))  # all made in one iteration
    assert batch_sizes == [1, 50, 10]
    thread.close()


async def test_a_lone_quick_call_runs_on_the_loop_and_a_slow_one_sends_the_next_to_the_thread(batch_sizes):
    thread = BatchingThread("rego", inline_below=0.05)
    loop_thread = threading.current_thread().name
    assert (await thread.call(where, "first"))[1] != loop_thread  # its cost is not known yet
    assert (await thread.call(where, "second"))[1] == loop_thread  # quick: answered in place
    together = await asyncio.gather(*(thread.call(where, i) for i in range(3)))
    assert {name for _, name in together} != {loop_thread}  # a burst goes to the thread
    await thread.call(time.sleep, 0.1)  # lone, ran in place, and turned out slow
    assert (await thread.call(where, "after a slow one"))[1] != loop_thread
    assert (await thread.call(where, "quick again"))[1] == loop_thread
    thread.close()


async def test_the_event_loop_keeps_running_while_a_call_blocks():
    thread = BatchingThread("rego")
    ticks = 0

    async def tick():
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.01)

    ticker = asyncio.ensure_future(tick())
    await thread.call(time.sleep, 0.3)
    ticker.cancel()
    assert ticks >= 10
    thread.close()


async def test_an_exception_reaches_only_the_caller_whose_call_raised():
    thread = BatchingThread("rego")

    def boom(n):
        if n == 3:
            raise ValueError("three")
        return n

    results = await asyncio.gather(*(thread.call(boom, n) for n in range(6)), return_exceptions=True)
    assert results[:3] == [0, 1, 2] and results[4:] == [4, 5]
    assert isinstance(results[3], ValueError)
    thread.close()


async def test_a_caller_that_gives_up_does_not_disturb_the_others():
    thread = BatchingThread("rego")
    slow = await keep_busy(thread, 0.1)
    abandoned = asyncio.ensure_future(thread.call(where, "abandoned"))
    kept = asyncio.ensure_future(thread.call(where, "kept"))
    await asyncio.sleep(0)
    abandoned.cancel()
    await slow
    assert (await kept)[0] == "kept"
    assert abandoned.cancelled()
    assert (await thread.call(where, "after"))[0] == "after"
    thread.close()


async def test_closing_fails_what_is_queued_and_refuses_new_calls():
    thread = BatchingThread("rego")
    running = await keep_busy(thread, 0.1)
    queued = asyncio.ensure_future(thread.call(where, "queued"))
    await asyncio.sleep(0)
    thread.close()
    with pytest.raises(PolicyEngineError, match="closed"):
        await queued
    await running  # the call already on the thread finishes on its own
    with pytest.raises(PolicyEngineError, match="closed"):
        await thread.call(where, "late")
