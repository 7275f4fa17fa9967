"""External gates (`canary.gates`) on the real orchestrator and gatekeeper, with a real gate
server on loopback: the OPA policy allows, the gate still decides; 403 holds (exit 3 with the
gate's reason, nothing changed), 200 lets the promotion through; a step gate holds the weight."""

from __future__ import annotations

import asyncio

from services.orchestrator.gates import ask
from swiftdeploy_core.bus import streams
from swiftdeploy_core.bus.events import Event
from swiftdeploy_core.project.manifest import GateSpec
from tests.orchestration import write_snapshot
from tests.servers import free_port
from tests.webhooks import Receiver

SECRET = "gate-secret-for-the-tests"
ORCHESTRATOR_ENV = {"GATE_TEST_SECRET": SECRET}
MANIFEST: dict = {}


async def gate_events(redis) -> list:
    found = []
    for _, fields in await redis.xrange(streams.EVENTS):
        event = Event.from_json(fields[b"event"])
        if event.type == "gate.checked":
            found.append(event.payload)
    return found


async def test_a_gate_answering_403_holds_the_promotion_and_200_lets_it_through(stack):
    async with Receiver(SECRET, status=403, text="change freeze until Friday") as gate:
        gates = [{"on": "promotion", "url": f"{gate.url}/confirm", "timeout": 2, "secret": "${GATE_TEST_SECRET}"}]
        stack.manifest(canary={"gates": gates})
        assert (await stack.sd("deploy")).code == 0
        await write_snapshot(stack.redis, stack.project, "2.0.0", error_rate=0.0)
        assert (await stack.sd("promote", "canary", "--wait")).code == 0
        before = await stack.record()

        held = await stack.sd("promote", "stable")
        assert held.code == 3, held.text
        assert held.line == (
            f"error: denied: gate {gate.url} held the promotion (HTTP 403): change freeze until Friday"
        )
        after = await stack.record()
        assert after.phase.value == "canary_complete" and after.canary.instances == before.canary.instances
        asked = gate.received[-1]
        assert asked.signed and asked.path == "/confirm"
        assert asked.body["on"] == "promotion" and asked.body["canary_version"] == "2.0.0"

        gate.status, gate.text, gate.delay = 200, "ok", 3.0  # slower than the gate's timeout: fail closed
        late = await stack.sd("promote", "stable")
        assert late.code == 3 and late.line == f"error: denied: gate {gate.url} did not answer within 2s"

        gate.delay = 0.0
        promoted = await stack.sd("promote", "stable")
        assert promoted.code == 0, promoted.text
        assert (await stack.record()).stable.version == "2.0.0"
    checked = [(g.on, g.allow, g.status) for g in await gate_events(stack.redis) if g.url == gate.url]
    assert checked == [("promotion", False, 403), ("promotion", False, None), ("promotion", True, 200)]


async def test_a_step_gate_holds_the_weight_until_it_allows(stack):
    async with Receiver(SECRET, status=403, text="not now") as gate:
        stack.manifest(
            canary={"gates": [{"on": "step", "url": gate.url, "timeout": 1, "secret": "${GATE_TEST_SECRET}"}]}
        )
        assert (await stack.sd("deploy")).code == 0
        await write_snapshot(stack.redis, stack.project, "2.0.0", error_rate=0.0)
        assert (await stack.sd("promote", "canary")).code == 0
        await asyncio.sleep(2.5)  # five intervals: each analysis allows, the gate holds
        held = await stack.record()
        assert (held.phase.value, held.canary.weight) == ("progressing", 10)
        assert len(gate.received) >= 2 and all(r.body["next_step"] == 1 for r in gate.received)
        gate.status = 204
        moved = await stack.phase("canary_complete", timeout=10)
        assert moved.canary.weight == 50


async def test_a_gate_fails_closed_when_its_secret_is_unset_or_it_is_unreachable():
    unset = GateSpec(on="promotion", url="http://127.0.0.1:9/confirm", secret="${SWIFTDEPLOY_TEST_UNSET_GATE_SECRET}")
    assert await ask(unset, {"on": "promotion"}) == (
        False,
        "gate http://127.0.0.1:9: secret ${SWIFTDEPLOY_TEST_UNSET_GATE_SECRET} is not set in the orchestrator's environment",
        None,
    )
    port = free_port()  # nothing listens there
    allow, reason, status = await ask(GateSpec(on="step", url=f"http://127.0.0.1:{port}/x", timeout=2), {"on": "step"})
    assert (allow, status) == (False, None) and reason.startswith(f"gate http://127.0.0.1:{port} unreachable: ")
