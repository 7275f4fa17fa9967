"""A canary of a service that is not ours, with no /metrics, judged on what nginx measured.

Real processes (the service, nginx), the real collector tailing nginx's access log, the real
gatekeeper and orchestrator. A healthy canary goes through every step and is promoted; a canary
started with FAIL_RATE=0.5 is denied on its router-measured error rate and rolled back on its own.
"""

from __future__ import annotations

import sys
import time

from tests.orchestration import LoadLoop

COLLECTOR = {"interval": 0.5, "window": 4}
SERVICE = [sys.executable, "-m", "tests.not_ours"]  # health on /status (and /healthz), no /metrics
CANARY = {"version": "2.0.0", "steps": [25, 50], "interval": 1.0, "failure_limit": 2}
MANIFEST = {"services": {"command": SERVICE, "metrics": "router"}, "canary": CANARY}


async def test_a_healthy_canary_without_metrics_goes_through_every_step_and_is_promoted(stack):
    assert (await stack.sd("deploy")).code == 0
    async with LoadLoop(await stack.url(), rate=60) as load:
        assert (await stack.sd("promote", "canary")).code == 0
        done = await stack.phase("canary_complete", timeout=40)
        assert (await stack.sd("promote", "stable")).code == 0
        final = await stack.phase("stable", timeout=20)
    assert done.step == len(CANARY["steps"]) - 1
    assert final.canary is None and final.stable.version == "2.0.0"
    assert load.versions["2.0.0"] > 0 and load.failed == 0


async def test_a_failing_canary_without_metrics_is_rolled_back_on_router_figures(stack):
    assert (await stack.sd("deploy")).code == 0
    async with LoadLoop(await stack.url(), rate=60) as load:
        # The new version's manifest starts it with FAIL_RATE=0.5 (the same router port as before).
        nginx = stack.driver_manifest().nginx.model_dump()
        stack.manifest(services={"command": ["env", "FAIL_RATE=0.5", *SERVICE], "metrics": "router"}, nginx=nginx)
        assert (await stack.sd("promote", "canary")).code == 0
        await stack.phase("progressing", timeout=20)
        serving = time.monotonic()
        back = await stack.phase("stable", timeout=30)
        elapsed = time.monotonic() - serving
    print(f"rolled back {elapsed:.1f}s after the canary took traffic; reasons {back.last_reasons}")
    # The window's first figures (min_requests), then failure_limit denied analyses, one interval apart.
    bound = COLLECTOR["window"] + (CANARY["failure_limit"] + 1) * CANARY["interval"]
    assert elapsed < bound, f"rolled back after {elapsed:.1f}s (bound {bound}s)"
    assert back.canary is None and back.stable.version == "1.0.0"
    assert "error rate" in " ".join(back.last_reasons)
    assert load.statuses[500] > 0  # the canary really failed requests


async def test_router_chaos_fails_a_canary_that_has_no_chaos_endpoint_and_it_is_rolled_back(stack):
    assert (await stack.sd("deploy")).code == 0
    async with LoadLoop(await stack.url(), rate=60) as load:
        assert (await stack.sd("promote", "canary")).code == 0
        await stack.phase("canary_complete", timeout=40)  # healthy: it passes every step first
        injected = await stack.sd("chaos", "error", "--rate", "0.5", "--router")
        assert injected.code == 0 and "chaos.injected" in injected.text
        conf = await stack.driver().router_config()
        assert conf is not None and "50.00%   1;" in conf and "return 500;" in conf
        started = time.monotonic()
        back = await stack.phase("stable", timeout=30)
        elapsed = time.monotonic() - started
    print(f"rolled back {elapsed:.1f}s after router chaos; reasons {back.last_reasons}")
    assert back.canary is None and back.stable.version == "1.0.0"
    assert "error rate" in " ".join(back.last_reasons)
    assert load.statuses[500] > 0
    conf = await stack.driver().router_config()
    assert conf is not None and "return 500;" not in conf  # the chaos went with the canary
