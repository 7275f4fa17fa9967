"""The whole loop with nothing written by hand: real traffic through nginx, the real collector's
windowed figures, the real gatekeeper's canary policy, the orchestrator's automatic rollback."""

from __future__ import annotations

from tests.orchestration import LoadLoop

COLLECTOR = {"interval": 0.5, "window": 4}
MANIFEST = {
    "canary": {"version": "2.0.0", "steps": [50], "interval": 1.0, "failure_limit": 2, "no_data": "fail"},
    "collector": COLLECTOR,  # the project says what the collector does: the warm-up follows it
}


async def test_real_error_chaos_on_the_canary_is_measured_denied_and_rolled_back(stack):
    assert (await stack.sd("deploy")).code == 0
    async with LoadLoop(await stack.url(), rate=50) as load:
        assert (await stack.sd("promote", "canary")).code == 0
        await stack.phase("canary_complete", timeout=20)  # healthy figures first: the canary passes
        back, elapsed = await stack.rolled_back_after("error", "--rate", "0.5")
    # Collector scrape (0.5 s) + failure_limit analyses (1 s apart) + removing the canary.
    assert elapsed < COLLECTOR["window"] + 3 * MANIFEST["canary"]["interval"], f"rolled back after {elapsed:.1f}s"
    assert back.canary is None and back.stable.version == "1.0.0"
    assert "error rate" in " ".join(back.last_reasons)
    assert load.versions["2.0.0"] > 0 and load.statuses[500] > 0  # the canary really failed requests
