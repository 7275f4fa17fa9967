"""The canary judged against stable on real traffic, the whole loop: real workloads (stable and
canary), real nginx, the real collector comparing the two tracks from nginx's access log, the real
gatekeeper's default canary policy, the orchestrator's automatic rollback. The canary first passes
beside an identical stable; slowed by 0.05 s (chaos), still under every absolute threshold, it is
denied by the comparison (p < 0.05) and rolled back."""

from __future__ import annotations

import asyncio
import re
import time

from tests.orchestration import LoadLoop

COLLECTOR = {"interval": 0.5, "window": 6}
CANARY = {"version": "2.0.0", "steps": [50], "interval": 1.0, "failure_limit": 2}
MANIFEST = {"services": {"metrics": "router"}, "canary": CANARY}


async def test_a_canary_slowed_by_50_ms_is_denied_against_stable_and_rolled_back(stack):
    assert (await stack.sd("deploy")).code == 0
    load = LoadLoop(await stack.url(), rate=50)
    runner = asyncio.create_task(load.run())
    try:
        assert (await stack.sd("promote", "canary")).code == 0
        await stack.phase("canary_complete", timeout=30)  # beside an identical stable: it passes
        assert (await stack.sd("chaos", "slow", "--duration", "0.05")).code == 0
        injected = time.monotonic()
        back = await stack.phase("stable", timeout=40)
        elapsed = time.monotonic() - injected
    finally:
        load.stop()
        await runner
    print(f"rolled back {elapsed:.1f}s after slow chaos; reasons {back.last_reasons}")
    assert back.canary is None and back.stable.version == "1.0.0"
    judged = [r for r in back.last_reasons if r.startswith("canary latency is significantly worse than stable")]
    assert judged, back.last_reasons
    assert not any("above the maximum" in r for r in back.last_reasons)  # no absolute threshold was crossed
    found = re.search(
        r"median ([\d.]+) ms vs ([\d.]+) ms .* Mann-Whitney U p (<|=) ([\d.]+) below 0.05, (\d+) canary and (\d+) stable",
        judged[0],
    )
    assert found, judged[0]
    assert float(found.group(4)) < 0.05 and int(found.group(5)) >= 50 and int(found.group(6)) >= 50
    # Denied once the median shows more than the policy's 5 ms floor (about half the window slowed).
    assert float(found.group(1)) > float(found.group(2)) + 5
