"""The orchestrator: pure plans, the phase table, the lease lock and the real drivers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from services.orchestrator import plans
from services.orchestrator.rollout import RecordStore
from swiftdeploy_core.bus import streams
from swiftdeploy_core.project.manifest import load_manifest
from swiftdeploy_core.project.state import Phase
from tests.orchestration import write_manifest
from tests.orchestrator.fakes import FakeDriver, FakeHarness, harness

PROJECT = "sdo-phase"


@pytest.fixture
def canary_spec() -> dict[str, Any]:
    """The manifest's `canary` section for the phase tests; a module overrides it to try others."""
    return {"steps": [10, 25, 50]}


@pytest.fixture
async def rollout(tmp_path: Path, redis_url: str, canary_spec: dict[str, Any]):
    """A rollout of PROJECT on the in-memory runtime, its record in the real Redis."""
    loaded = load_manifest(write_manifest(tmp_path, PROJECT, canary=canary_spec))
    redis = aioredis.Redis.from_url(redis_url)
    yield harness(loaded, FakeDriver(PROJECT, tmp_path / "state"), RecordStore(redis), FakeHarness)
    # A record left behind would be a real project to the next real orchestrator on this Redis
    # (its recovery and self-healing watch would start nginx and workloads for it).
    await redis.delete(streams.rollout_key(PROJECT))
    await redis.aclose()


async def given(r: FakeHarness, phase: Phase, step: int = 0, *, canary: bool = True, **extra: Any) -> None:
    """The stored record in `phase` (the canary at `step`'s weight), the runtime matching it."""
    stable_specs = plans.track_specs(r.manifest, "stable", "s1")
    stable = plans.track_state(stable_specs, [await r.driver.start_instance(s) for s in stable_specs], 100)
    track = None
    if canary:
        specs = plans.track_specs(r.manifest, "canary", "c1")
        weight = r.manifest.canary.weight_at(step)
        track = plans.track_state(specs, [await r.driver.start_instance(s) for s in specs], weight)
    record = r.record.model_copy(
        update={
            "phase": phase, "stable": stable, "canary": track, "step": step if canary else -1,
            "correlation_id": "cmd-canary" if canary else "cmd-deploy", **extra,
        }
    )  # fmt: skip
    url = await r.route(record)
    r.record = await r.store.save(record.model_copy(update={"router_url": url}))
    r.driver.calls.clear()


def names(r: FakeHarness, track: str) -> tuple[str, ...]:
    found = r.record.stable if track == "stable" else r.record.canary
    return tuple(i.name for i in found.instances) if found else ()


def hold(r: FakeHarness) -> None:
    """`canary.no_data: hold` for this rollout: a tick without figures waits instead of failing."""
    manifest = {**r.record.manifest, "canary": {**r.record.manifest["canary"], "no_data": "hold"}}
    r.record = r.record.model_copy(update={"manifest": manifest})
    r._manifest = None
