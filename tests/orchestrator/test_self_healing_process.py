"""Self-healing on the process runtime: the real orchestrator and gatekeeper services, real nginx
and workload processes, a real Redis. An instance killed with `kill -9` under 100 req/s through
nginx is restarted (the event, the count in `status`); a crash-looping canary is rolled back with
that reason. Each story fails without the watch (nothing restarts a dead process)."""

from __future__ import annotations

import asyncio
import os
import signal

from tests.orchestration import PYTHON
from tests.orchestrator.drills import kill_under_load, restarted_events, status_json

MANIFEST: dict = {}  # the process runtime with the defaults of tests.orchestration.write_manifest
WATCH = {"interval": 0.5, "timeout": 1}  # services.health: the orchestrator looks twice a second


async def kill_9(instance) -> None:
    os.kill(int(instance.id), signal.SIGKILL)  # the process runtime's instance id is its pid


async def test_a_stable_instance_killed_with_kill_9_at_100_rps_is_restarted_and_with_two_replicas_no_request_fails(
    stack,
):
    stack.manifest(services={"replicas": 2, "health": WATCH})
    assert (await stack.sd("deploy")).code == 0
    drill = await kill_under_load(stack, kill_9)
    print(drill.line())
    assert drill.event.track == "stable" and drill.event.reason == "was killed by SIGKILL"
    assert drill.event.restarts == 1
    assert drill.load.failed == 0, drill.line()  # the other replica took every request meanwhile
    assert drill.load.sent >= 0.8 * 100 * drill.seconds
    shown = await status_json(stack)
    (stable,) = [t for t in shown["tracks"] if t["track"] == "stable"]
    assert stable["restarts"] == 1 and sorted(i["restarts"] for i in stable["instances"]) == [0, 1]
    text = await stack.sd("status", "--once")
    assert "2/2 healthy · 1 restart" in text.out


async def test_a_lone_stable_instance_killed_with_kill_9_is_restarted_on_its_port_and_serves_again(stack):
    stack.manifest(services={"health": WATCH})
    assert (await stack.sd("deploy")).code == 0
    port = (await stack.record()).stable.instances[0].url
    drill = await kill_under_load(stack, kill_9)
    print(drill.line())
    # One instance: what nginx sent while it was down failed (nowhere else to go); nothing after.
    assert drill.event.restarts == 1 and drill.failed_after_back == 0, drill.line()
    assert drill.load.failed <= 100 * (drill.back_after + 0.5), drill.line()
    now = (await stack.record()).stable.instances[0]
    assert now.url == port and now.restarts == 1  # same port: nginx's upstream never changed


# Healthy at first, then exits with code 1 three seconds after every start.
CRASHING = [PYTHON, "-c", "import os, runpy, threading; threading.Timer(3, os._exit, (1,)).start(); "
            "runpy.run_module('workload', run_name='__main__', alter_sys=True)"]  # fmt: skip


async def test_a_crash_looping_canary_is_rolled_back_with_the_crash_loop_reason(stack):
    stack.manifest(
        services={"health": WATCH},
        canary={"command": CRASHING, "crash_loop": {"restarts": 3, "window": 60}, "interval": 0.5},
    )
    assert (await stack.sd("deploy")).code == 0
    follower = asyncio.create_task(stack.sd("promote", "canary", "--wait", timeout=90))
    canary = (await stack.phase("progressing", timeout=30)).canary.instances[0].name
    waited = await follower
    assert waited.code == 3, waited.text
    reason = f"canary instance {canary} restarted 3 times in 60 s"
    assert reason in waited.line
    back = await stack.record()
    assert back.phase.value == "stable" and back.canary is None and back.last_reasons == [reason]
    restarts = [e for e in await restarted_events(stack) if e.instance == canary]
    assert [e.restarts for e in restarts] == [1, 2, 3]
    assert all(e.reason == "exited with code 1" for e in restarts)
