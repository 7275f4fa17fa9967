"""How fast a bad canary is rolled back with nothing written by hand: the analysis runs as soon
as the collector's new figures land, so the rollback takes `failure_limit` intervals plus at most
one (the collector's first scrape after the chaos), not a timer's lag on top."""

from __future__ import annotations

import asyncio
import time

from tests.orchestration import LoadLoop

INTERVAL = 1.0
FAILURE_LIMIT = 2
COLLECTOR = {"interval": INTERVAL, "window": 4}
MANIFEST = {
    "canary": {
        "version": "2.0.0",
        "steps": [50],
        "interval": INTERVAL,
        "failure_limit": FAILURE_LIMIT,
        "no_data": "fail",
    },
    "collector": COLLECTOR,  # the project says what the collector does: the warm-up follows it
}


async def test_error_chaos_rolls_back_within_failure_limit_plus_one_intervals(stack):
    assert (await stack.sd("deploy")).code == 0
    async with LoadLoop(await stack.url(), rate=50):
        assert (await stack.sd("promote", "canary")).code == 0
        await stack.phase("canary_complete", timeout=20)
        back, elapsed = await stack.rolled_back_after("error", "--rate", "0.9")
    print(f"rolled back {elapsed:.2f}s after the chaos ({elapsed / INTERVAL:.2f} intervals)")
    assert elapsed <= (FAILURE_LIMIT + 1) * INTERVAL, f"rolled back after {elapsed:.2f}s"
    assert back.canary is None and back.stable.version == "1.0.0"
    assert back.consecutive_failures >= FAILURE_LIMIT or "error rate" in " ".join(back.last_reasons)


async def test_a_canary_no_traffic_reaches_is_rolled_back_for_it_not_left_waiting(stack):
    assert (await stack.sd("deploy")).code == 0
    follower = asyncio.create_task(stack.sd("promote", "canary", "--wait", timeout=30))
    await stack.phase("progressing")
    serving = time.monotonic()
    await stack.phase("stable", timeout=20)
    elapsed = time.monotonic() - serving
    waited = await follower
    reason = f"no traffic reached the canary in the last {INTERVAL:g} s"
    assert waited.code == 3 and waited.line == f"error: denied: back on 1.0.0 (automatic): {reason}", waited.text
    # The collector finds the canary and scrapes it twice, and router figures wait for a whole window.
    warm_up = INTERVAL + 2 * COLLECTOR["interval"] + COLLECTOR["window"]
    print(f"rolled back {elapsed:.2f}s after the canary began to serve")
    # failure_limit checks after the warm-up, one more interval for a tick's lag and the removal.
    assert elapsed <= warm_up + (FAILURE_LIMIT + 2) * INTERVAL, f"rolled back after {elapsed:.2f}s"
    assert (await stack.record()).canary is None
