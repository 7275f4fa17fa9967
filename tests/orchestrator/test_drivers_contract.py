"""The FakeDriver keeps the RuntimeDriver contract the real process driver keeps.

The same story runs on both: what the phase tests rely on from the fake (repeatable starts and
stops, the split the router serves, labelled objects, a failing instance named with its logs,
teardown leaving nothing) is checked here against real processes and nginx too.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from services.orchestrator import plans
from services.orchestrator.drivers import make_driver
from services.orchestrator.drivers.base import InstanceFailed, RuntimeDriver
from swiftdeploy_core.project.manifest import Manifest, load_manifest
from tests.orchestration import write_manifest
from tests.orchestrator.fakes import FakeDriver
from tests.servers import require_binary

CRASH = ("python3", "-c", "import sys; print('boom: missing config'); sys.exit(3)")


@pytest.fixture(params=["fake", "process"])
async def runtime(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[tuple[Manifest, RuntimeDriver]]:
    loaded = load_manifest(write_manifest(tmp_path, "sdo-contract"))
    if request.param == "fake":
        driver: RuntimeDriver = FakeDriver(loaded.manifest.project, tmp_path / "state")
    else:
        require_binary("nginx")
        driver = make_driver(loaded.manifest, loaded.root)
    yield loaded.manifest, driver
    await driver.teardown()


async def test_starts_and_stops_repeat_safely_and_the_router_serves_the_split_it_was_given(runtime):
    manifest, driver = runtime
    [stable_spec] = plans.track_specs(manifest, "stable", "s1")
    [canary_spec] = plans.track_specs(manifest, "canary", "c1")
    stable, canary = await driver.start_instance(stable_spec), await driver.start_instance(canary_spec)
    assert await driver.start_instance(stable_spec) == stable  # already running: reused, not doubled
    for instance in (stable, canary):
        await driver.wait_healthy(instance, 20)
    assert not await driver.router_running() and await driver.router_config() is None
    url = await driver.apply_router(manifest, [stable], [canary], 25)
    assert url == f"http://127.0.0.1:{manifest.nginx.port}" and await driver.router_running()
    assert "25%   app_canary" in await driver.router_config()
    assert await driver.apply_router(manifest, [stable], [], 25) == url
    assert "app_canary" not in await driver.router_config()  # no canary, no canary share
    objects = await driver.list_objects()
    assert sorted((o.role, o.track, o.version) for o in objects) == [
        ("instance", "canary", "2.0.0"), ("instance", "stable", "1.0.0"), ("router", None, None),
    ]  # fmt: skip
    await driver.stop_instance(canary.name)
    await driver.stop_instance(canary.name)  # gone already: nothing happens
    assert [o.name for o in await driver.list_objects() if o.role == "instance"] == [stable.name]
    removed = await driver.teardown()
    assert len(removed) == 2 and await driver.list_objects() == []


async def test_an_instance_that_never_gets_healthy_is_named_and_keeps_its_last_log_lines(runtime):
    manifest, driver = runtime
    spec = plans.track_specs(manifest, "stable", "b1")[0].model_copy(update={"command": CRASH})
    if isinstance(driver, FakeDriver):  # the fake is told what the real process does by itself
        driver.unhealthy[spec.name] = f"{spec.name} exited with code 3 before it became healthy"
        driver.logs[spec.name] = ["boom: missing config"]
    instance = await driver.start_instance(spec)
    with pytest.raises(InstanceFailed, match="exited with code 3 before it became healthy") as caught:
        await driver.wait_healthy(instance, 10)
    assert caught.value.name == spec.name
    assert await driver.logs_tail(spec.name) == ["boom: missing config"]


async def test_a_killed_instance_is_examined_as_exited_and_restarted_under_its_name(runtime):
    manifest, driver = runtime
    [spec] = plans.track_specs(manifest, "stable", "h1")
    instance = await driver.start_instance(spec)
    await driver.wait_healthy(instance, 20)
    assert (await driver.examine(instance, "/healthz", 2)).state == "healthy"
    if isinstance(driver, FakeDriver):  # the fake is told what kill -9 does to a real process
        driver.dead[spec.name] = "was killed by SIGKILL"
    else:
        os.kill(int(instance.id), signal.SIGKILL)
        await asyncio.sleep(0.2)
    found = await driver.examine(instance, "/healthz", 2)
    assert (found.state, found.reason) == ("exited", "was killed by SIGKILL")
    again = await driver.restart_instance(instance, spec)
    await driver.wait_healthy(again, 20)
    assert again.name == spec.name and (await driver.examine(again, "/healthz", 2)).state == "healthy"
    assert [o.name for o in await driver.list_objects() if o.role == "instance"] == [spec.name]
