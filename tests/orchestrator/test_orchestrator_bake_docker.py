"""A watched promotion and `rollback --to` on the docker runtime, nothing written by hand: the
real orchestrator, gatekeeper (the packaged canary policy), collector and CLI, nginx and workload
containers from the built images, 100 req/s through nginx (each request on a new connection).

The bad release: 2.0.0 is healthy while it is a canary and answers half its requests with error
chaos's 500 once it runs in stable mode (its `canary.command` turns the workload's own error chaos
on at start-up when MODE is stable; `swiftdeploy chaos` reaches canary instances only, and a
stable instance refuses /chaos). Those 500s are the fault, counted apart (`LoadLoop.injected`);
any other failure (a refused connection, a 502, a timeout) once the bake or `rollback --to`
began is one they caused (the deploy, canary and promotion before are other tests' stories).
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import time

import pytest

from swiftdeploy_core.bus import streams
from swiftdeploy_core.bus.events import Event
from tests.orchestration import LoadLoop, get_json

pytestmark = pytest.mark.docker
INTERVAL = 1.0
FAILURE_LIMIT = 2
RATE = 100
COLLECTOR = {"interval": 0.5, "window": 3}
MANIFEST: dict = {}  # filled with the built images' tags by `docker_images`

# 2.0.0's command: the workload, with its error chaos at 50% from the start when it runs as stable.
BROKEN_ONCE_STABLE = [
    "python", "-c",
    "import asyncio\n"
    "from workload.__main__ import hypercorn_config, serve\n"
    "from workload.app import create_app\n"
    "from workload.chaos import ErrorChaos\n"
    "from workload.settings import WorkloadSettings\n"
    "settings = WorkloadSettings()\n"
    "app = create_app(settings)\n"
    "if settings.mode == 'stable':\n"
    "    app.extensions['workload']['chaos'].apply(ErrorChaos(mode='error', rate=0.5))\n"
    "asyncio.run(serve(app, hypercorn_config(settings)))\n",
]  # fmt: skip


@pytest.fixture(scope="module")
def release_2(workload_image: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    """2.0.0's image: the workload image with one more label, so it has an image id of its own."""
    context = tmp_path_factory.mktemp("release-2")
    (context / "Dockerfile").write_text(f"FROM {workload_image}\nLABEL swiftdeploy.test.release=2.0.0\n")
    tag = "swiftdeploy/workload-bake:2.0.0"
    subprocess.run(["docker", "build", "-q", "-t", tag, str(context)], check=True, capture_output=True)
    return tag


@pytest.fixture(autouse=True)
def docker_images(
    request: pytest.FixtureRequest, docker_daemon: str, workload_image: str, nginx_image: str, release_2: str
) -> None:
    request.module.MANIFEST = {
        "runtime": "docker",
        "services": {"image": workload_image, "replicas": 2},
        "nginx": {"image": nginx_image},
        "collector": COLLECTOR,  # the project's warm-up follows its collector
        "canary": canary(image=release_2),
    }


def canary(**extra: object) -> dict:
    """The canary section: 2.0.0 on its own image, one step, judged every INTERVAL."""
    image = MANIFEST.get("canary", {}).get("image")
    return {
        "version": "2.0.0", "image": image, "steps": [50], "interval": INTERVAL, "failure_limit": FAILURE_LIMIT,
        "no_data": "fail", **extra,
    }  # fmt: skip


def image_ids(names: list[str]) -> set[str]:
    """The image id each container was created from (`docker inspect`)."""
    out = subprocess.run(["docker", "inspect", *names], capture_output=True, text=True, check=True).stdout
    return {c["Image"] for c in json.loads(out)}


def image_id(ref: str) -> str:
    out = subprocess.run(["docker", "image", "inspect", ref], capture_output=True, text=True, check=True).stdout
    return str(json.loads(out)[0]["Id"])


async def events(stack, correlation_id: str | None, *types: str) -> list[Event]:
    """The history's events of one command (and the ticks that continue it)."""
    found = []
    for _, fields in await stack.redis.xrange(streams.EVENTS):
        event = Event.from_json(fields[b"event"])
        if event.correlation_id == correlation_id and event.type in types:
            found.append(event)
    return found


async def under_load(stack) -> tuple[LoadLoop, asyncio.Task]:
    load = LoadLoop(await stack.url(), rate=RATE)
    return load, asyncio.create_task(load.run())


async def canary_complete(stack) -> None:
    promoted = await stack.sd("promote", "canary", "--wait", timeout=90)
    assert promoted.code == 0, promoted.text


async def test_a_bad_stable_during_its_bake_goes_back_to_the_previous_digest_with_no_failed_request(stack):
    stack.manifest(canary=canary(bake=60, command=BROKEN_ONCE_STABLE))
    assert (await stack.sd("deploy")).code == 0
    first = (await stack.record()).stable
    assert first is not None and first.digest
    load, runner = await under_load(stack)
    try:
        await canary_complete(stack)  # healthy as a canary
        promoted = await stack.sd("promote", "stable")
        assert promoted.code == 0, promoted.text
        bad_since, before = time.monotonic(), load.unplanned
        baking = await stack.phase("baking", timeout=5)
        assert baking.stable.version == "2.0.0" and baking.bake.previous.digest == first.digest
        status = await stack.sd("status", "--json")
        shown = json.loads(status.out)["bake"]
        assert shown == f"2.0.0 baking until {baking.bake.until:%H:%M:%S} UTC (a denial goes back to 1.0.0)"
        back = await stack.phase("stable", timeout=45)
        elapsed = time.monotonic() - bad_since
        await asyncio.sleep(1.0)  # requests keep flowing after the switch
    finally:
        load.stop()
        await runner
    print(
        f"bad stable to rollback: {elapsed:.2f}s; {load.sent} requests, {load.injected} injected 500s, "
        f"{load.unplanned - before} other failures from the bake on ({load.unplanned} in all); "
        f"versions {dict(load.versions)}; reasons {back.last_reasons}"
    )
    [failed] = await events(stack, back.correlation_id, "bake.failed")
    [done] = await events(stack, back.correlation_id, "rollback.completed")
    reverting = [t for t in load.failed_at if failed.timestamp.timestamp() <= t <= done.timestamp.timestamp() + 1]
    print(
        f"bake.failed to rollback.completed: {(done.timestamp - failed.timestamp).total_seconds():.2f}s, "
        f"{len(reverting)} failures in it (+1 s)"
    )
    assert load.unplanned - before == 0, (load.statuses, load.errors[:5])
    assert load.injected > 0  # the bad stable did serve, and was judged on it
    assert (back.stable.version, back.stable.digest, back.bake) == ("1.0.0", first.digest, None)
    assert image_ids([i.name for i in back.stable.instances]) == {image_id(first.digest)}
    assert image_id(first.digest) != image_id(baking.stable.digest)  # not the baked image
    assert (await get_json(await stack.url()))["version"] == "1.0.0"
    assert failed.payload.previous_version == "1.0.0" and "error rate" in " ".join(failed.payload.reasons)
    assert (done.payload.automatic, done.payload.replaced, done.payload.digest) == (True, "2.0.0", first.digest)
    containers = {o.name for o in await stack.objects() if o.role == "instance"}
    assert containers == {i.name for i in back.stable.instances}  # the baked 2.0.0 is gone


async def test_a_healthy_bake_ends_at_its_deadline_and_drops_the_previous_release(stack):
    bake = 8.0
    stack.manifest(canary=canary(bake=bake))
    assert (await stack.sd("deploy")).code == 0
    load, runner = await under_load(stack)
    try:
        await canary_complete(stack)
        assert (await stack.sd("promote", "stable")).code == 0
        before = load.failed
        baking = await stack.phase("baking", timeout=5)
        assert baking.bake is not None and baking.bake.previous.version == "1.0.0"
        done = await stack.phase("stable", timeout=bake + 10)
    finally:
        load.stop()
        await runner
    print(f"healthy bake: {load.failed - before} failed requests ({load.failed} of {load.sent} in all)")
    assert load.failed - before == 0, (load.statuses, load.errors[:5])
    assert done.bake is None and done.stable.version == "2.0.0"
    judged = await events(stack, done.correlation_id, "bake.analysis")
    assert judged and all(e.payload.allow for e in judged), [e.payload for e in judged]
    [ended] = await events(stack, done.correlation_id, "bake.completed")
    assert ended.timestamp >= baking.bake.until
    assert (await get_json(await stack.url()))["version"] == "2.0.0"


async def test_rollback_to_an_earlier_version_redeploys_its_digest_and_an_unknown_one_is_refused(stack):
    stack.manifest(canary=canary())
    assert (await stack.sd("deploy")).code == 0
    first = (await stack.record()).stable
    load, runner = await under_load(stack)
    try:
        await canary_complete(stack)
        assert (await stack.sd("promote", "stable")).code == 0
        serving = await stack.phase("stable", timeout=5)
        assert serving.stable.version == "2.0.0" and serving.bake is None  # no canary.bake: no bake

        unknown = await stack.sd("rollback", "--to", "9.9.9")
        assert unknown.code == 1
        assert unknown.line == (
            f"error: failed: rollback: version 9.9.9 is not recorded for {stack.project}; known versions: 1.0.0, 2.0.0"
        )
        assert (await stack.record()).model_dump(exclude={"updated_at"}) == serving.model_dump(exclude={"updated_at"})

        before = load.failed
        back = await stack.sd("rollback", "--to", "1.0.0", "--reason", "2.0.0 breaks reports")
        assert back.code == 0, back.text
        await asyncio.sleep(1.0)  # requests keep flowing after the switch
    finally:
        load.stop()
        await runner
    print(f"rollback --to: {load.failed - before} failed requests ({load.failed} of {load.sent} in all)")
    assert load.failed - before == 0, (load.statuses, load.errors[:5])
    now = await stack.record()
    assert (now.phase.value, now.stable.version, now.stable.digest) == ("stable", "1.0.0", first.digest)
    assert image_ids([i.name for i in now.stable.instances]) == {image_id(first.digest)}
    assert (await get_json(await stack.url()))["version"] == "1.0.0"
    assert [r.version for r in now.releases] == ["2.0.0", "1.0.0"]
    assert "back on 1.0.0" in back.text and "2.0.0 removed" in back.text
