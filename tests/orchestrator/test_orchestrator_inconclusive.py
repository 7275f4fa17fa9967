"""A canary that gets only a trickle of traffic is inconclusive, not failed: nothing written by hand.

The real collector measures nginx's per-request log, the real gatekeeper's canary policy answers
`inconclusive` (some requests, fewer than min_requests, nothing else wrong), the real orchestrator
holds the step without counting a failure until the progress deadline rolls it back, and `status`
(text and --json), the event stream and the audit report say so."""

from __future__ import annotations

import asyncio
import json

from swiftdeploy_core.bus import streams, wire
from swiftdeploy_core.bus.events import CanaryAnalysis, Event
from tests.auditor.test_auditor_real_rollout import start_auditor
from tests.auditor.test_report import table
from tests.eventually import eventually
from tests.orchestration import LoadLoop

INTERVAL = 1.0
COLLECTOR = {"interval": INTERVAL, "window": 4}
DEADLINE = 25
MANIFEST = {
    "canary": {
        "version": "2.0.0",
        "steps": [50],
        "interval": INTERVAL,
        "failure_limit": 2,
        "no_data": "fail",
        "progress_deadline": DEADLINE,
    },
    "collector": COLLECTOR,
}
TRICKLE = 4.0  # requests/s through nginx: ~8 reach the canary in a 4 s window, min_requests is 20


async def analyses(stack, correlation_id: str) -> list[CanaryAnalysis]:
    """The `canary.analysis` events of one canary command from the bus, oldest first."""
    found = []
    for _, fields in await stack.redis.xrange(streams.EVENTS):
        if fields.get(wire.B_TYPE) == b"canary.analysis" and fields.get(wire.B_CORRELATION) == correlation_id.encode():
            payload = Event.model_validate_json(fields[wire.B_EVENT]).payload
            assert isinstance(payload, CanaryAnalysis)
            found.append(payload)
    return found


async def test_a_trickle_of_canary_traffic_is_reported_inconclusive_and_never_counted_as_a_failure(stack):
    auditor = start_auditor(stack)
    history = stack.root / "history.jsonl"
    assert (await stack.sd("deploy")).code == 0
    load = LoadLoop(await stack.url(), rate=TRICKLE)
    runner = asyncio.create_task(load.run())
    try:
        assert (await stack.sd("promote", "canary")).code == 0

        async def held_inconclusive():
            record = await stack.record()
            assert record is not None and record.phase.value == "progressing", record and record.phase
            return record if record.inconclusive_checks >= 3 and record.last_outcome == "inconclusive" else None

        record = await eventually(held_inconclusive, "three inconclusive analyses", DEADLINE)
        assert (record.step, record.consecutive_failures) == (0, 0)
        assert "too little traffic to judge the canary" in record.last_reasons[0]

        shown = await stack.sd("status", "--json")
        view = json.loads(shown.out)
        assert view["analysis"]["outcome"] == "inconclusive" and view["analysis"]["inconclusive_checks"] >= 3
        assert view["policies"]["canary"]["inconclusive"] is True
        text = await stack.sd("status", "--once")
        assert "Analysis inconclusive, holding" in text.out and "INCONCLUSIVE" in text.out

        back = await stack.phase("stable", timeout=DEADLINE + 15)  # the deadline bounds the hold
    finally:
        load.stop()
        await runner
    assert back.canary is None
    assert back.last_reasons == [f"the canary did not advance within its progress deadline of {DEADLINE} s (step 0)"]
    print(f"{load.sent} requests sent, {load.versions}")

    assert record.correlation_id is not None
    inconclusive = [e for e in await analyses(stack, record.correlation_id) if e.inconclusive]
    assert len(inconclusive) >= 3 and all(not e.allow and e.consecutive_failures == 0 for e in inconclusive)
    assert all(e.decision_id for e in inconclusive)  # each one the gatekeeper's decision

    try:
        done = await stack.sd("audit", "--out", str(stack.root / "report.md"))
        assert done.code == 0, done.text
    finally:
        auditor.terminate()
        auditor.wait(timeout=10)
    markdown = (stack.root / "report.md").read_text()
    summary = dict((row[0], row[1]) for row in table(markdown, "Summary"))
    assert int(summary["Canary analyses inconclusive"]) >= 3, summary
    decisions = {row[0]: row[1:] for row in table(markdown, "Policy decisions")}
    assert int(decisions["canary"][2]) >= 3, decisions  # the Inconclusive column
    assert not any("too little traffic" in row[2] for row in table(markdown, "Policy violations"))
    assert any("inconclusive, holding" in row[2] for row in table(markdown, "Deployment timeline"))
    assert history.exists()
