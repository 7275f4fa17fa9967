"""A watched promotion (`canary.bake`) and `rollback --to`, one tick at a time on the in-memory
runtime (the same fixtures as test_rollout_phases.py). The same stories on real containers,
nginx and the real services: test_orchestrator_bake_docker.py."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from services.orchestrator import operations, phases, plans
from swiftdeploy_core.bus import streams
from swiftdeploy_core.bus.events import MetricsSnapshot
from swiftdeploy_core.client.dashboard import bake_line
from swiftdeploy_core.project.state import Phase
from tests.orchestrator.conftest import PROJECT, given, names
from tests.orchestrator.fakes import FakeHarness, Split

pytestmark = pytest.mark.usefixtures("redis_url")

DIGEST_1 = "swiftdeploy/workload@sha256:" + "1" * 64


@pytest.fixture
def canary_spec() -> dict[str, Any]:
    return {"steps": [10, 50], "bake": 60, "no_data": "fail"}


async def stable_figures(r: FakeHarness, version: str, error_rate: float) -> None:
    """What the collector stores for the stable track."""
    snapshot = MetricsSnapshot(
        project=PROJECT, track="stable", version=version, window_seconds=5.0, request_rate=20.0,
        error_rate=error_rate, p99_latency_ms=20.0, requests=100.0, at=datetime.now(UTC),
    )  # fmt: skip
    await r.store.redis.set(streams.latest_snapshot_key(PROJECT, "stable"), snapshot.model_dump_json())


async def deployed(r: FakeHarness, phase: Phase = Phase.stable) -> None:
    """1.0.0 serving by digest, recorded as a release (as a deploy records it); in `phase`, with
    a complete 2.0.0 canary unless stable."""
    await given(r, phase, step=1, canary=phase != Phase.stable)
    assert r.record.stable is not None
    [spec] = plans.track_specs(r.manifest, "stable", "s1")
    settings = plans.settings_of(spec.model_copy(update={"digest": DIGEST_1}), r.service_env())
    stable = r.record.stable.model_copy(update={"digest": DIGEST_1, "settings": settings})
    release = plans.release_of(stable, r.record.manifest)
    r.record = await r.store.save(r.record.model_copy(update={"stable": stable, "releases": [release]}))


async def promoted(r: FakeHarness) -> tuple[str, ...]:
    """1.0.0 serving with a complete 2.0.0 canary, then `promote stable`: the old stable's
    instance names."""
    await deployed(r, Phase.canary_complete)
    old = names(r, "stable")
    await operations.PromoteStable(r).run()
    r.driver.calls.clear()
    r.events.clear()
    r.gate.asked.clear()
    return old


async def test_a_promotion_with_a_bake_keeps_the_previous_release_until_the_deadline(rollout):
    before = datetime.now(UTC)
    await promoted(rollout)
    record = rollout.record
    assert record.phase == Phase.baking and record.stable.version == "2.0.0" and record.canary is None
    bake = record.bake
    assert bake is not None and bake.version == "2.0.0"
    assert timedelta(seconds=59) < bake.until - before < timedelta(seconds=61)
    previous = bake.previous
    assert (previous.version, previous.digest) == ("1.0.0", DIGEST_1)
    assert previous == record.releases[0]  # the release the deploy recorded
    assert bake_line(record) == f"2.0.0 baking until {bake.until:%H:%M:%S} UTC (a denial goes back to 1.0.0)"


async def test_failure_limit_denials_during_the_bake_go_back_to_the_previous_digest(rollout):
    baked = (await promoted(rollout), names(rollout, "stable"))[1]
    await stable_figures(rollout, "2.0.0", error_rate=0.5)
    rollout.gate.answers = [False, False]
    assert await phases.advance(rollout) == Phase.baking  # one denial: still baking
    assert await phases.advance(rollout) == Phase.reverting
    assert [domain for domain, _ in rollout.gate.asked] == ["canary", "canary"]
    assert rollout.gate.asked[0][1]["error_rate"] == 0.5  # the stable track's own figures
    assert await phases.settle(rollout) == Phase.stable

    record = rollout.record
    assert (record.stable.version, record.stable.digest, record.bake, record.reverting_to) == (
        "1.0.0", DIGEST_1, None, None,
    )  # fmt: skip
    back = names(rollout, "stable")
    assert rollout.driver.instances[back[0]].spec.digest == DIGEST_1  # the image by digest
    assert rollout.driver.env_of(back[0]) == {"MODE": "stable", "VERSION": "1.0.0"}
    # The previous release starts and is healthy, all traffic moves to it, then the baked one goes.
    assert rollout.driver.calls == [
        *(f"start {n}" for n in back), "router stable=1 canary=0 weight=0", *(f"stop {n}" for n in baked),
    ]  # fmt: skip
    assert rollout.driver.split == Split(back, (), 0, conf="")
    assert rollout.types() == ["bake.analysis", "bake.analysis", "bake.failed", "rollback.completed"]
    failed, done = rollout.events[2], rollout.events[3]
    assert (failed.version, failed.previous_version, failed.reasons) == (
        "2.0.0",
        "1.0.0",
        ["error_rate 50.0% exceeds 1.0%"],
    )
    assert (done.version, done.automatic, done.replaced, done.digest) == ("1.0.0", True, "2.0.0", DIGEST_1)
    assert done.reasons == ["error_rate 50.0% exceeds 1.0%"]


async def test_a_healthy_bake_ends_at_its_deadline_and_drops_the_previous_release(rollout):
    await promoted(rollout)
    await stable_figures(rollout, "2.0.0", error_rate=0.0)
    assert await phases.advance(rollout) == Phase.baking
    assert rollout.types() == ["bake.analysis"] and rollout.events[0].allow
    assert rollout.record.bake is not None
    bake = rollout.record.bake.model_copy(update={"until": datetime.now(UTC) - timedelta(seconds=1)})
    await rollout.save(bake=bake)
    assert await phases.advance(rollout) == Phase.stable
    assert rollout.record.bake is None and rollout.record.stable.version == "2.0.0"
    assert (await rollout.store.load(PROJECT)).bake is None
    done = rollout.events[-1]
    assert (done.type, done.version, done.previous_version) == ("bake.completed", "2.0.0", "1.0.0")
    assert rollout.driver.calls == []  # nothing restarted, nothing moved
    assert bake_line(rollout.record) is None


async def test_a_stale_snapshot_of_the_old_stable_is_no_verdict_on_the_new_one(rollout):
    await promoted(rollout)
    await stable_figures(rollout, "1.0.0", error_rate=0.9)  # the collector has not seen 2.0.0 yet
    assert await phases.advance(rollout) == Phase.baking
    assert rollout.gate.asked == [] and rollout.events == []  # the warm-up: no data is no failure yet


async def test_new_work_waits_for_the_bake_and_rollback_ends_it_on_the_previous_version(rollout):
    await promoted(rollout)
    with pytest.raises(
        operations.Refused, match=r"^2\.0\.0 is baking until .* UTC \(canary\.bake\); .*`rollback` to 1\.0\.0$"
    ):
        await operations.StartCanary(rollout, "cmd-canary-2").run()
    with pytest.raises(operations.Refused, match="is baking until"):
        await operations.Deploy(rollout, "cmd-deploy-2").run()
    await operations.Rollback(rollout, "it looks off").run()
    assert (rollout.record.phase, rollout.record.stable.version, rollout.record.bake) == (Phase.stable, "1.0.0", None)
    done = rollout.events[-1]
    assert (done.type, done.automatic, done.reasons, done.replaced) == (
        "rollback.completed",
        False,
        ["it looks off"],
        "2.0.0",
    )


async def test_without_a_bake_a_promotion_rests_on_stable(rollout):
    manifest = {**rollout.record.manifest, "canary": {**rollout.record.manifest["canary"], "bake": 0}}
    rollout.record = rollout.record.model_copy(update={"manifest": manifest})
    rollout._manifest = None
    await promoted(rollout)
    assert (rollout.record.phase, rollout.record.bake) == (Phase.stable, None)


# --- rollback --to ------------------------------------------------------------------------------


async def test_rollback_to_an_earlier_version_starts_its_release_through_the_infra_gate(rollout):
    await promoted(rollout)
    await rollout.save(phase=Phase.stable, bake=None)  # the bake ended
    first = rollout.record.releases[0]
    assert [r.version for r in rollout.record.releases] == ["1.0.0", "2.0.0"]
    promoted_names = names(rollout, "stable")

    await operations.RollbackTo(rollout, "1.0.0", "back to the known good", "cmd-rollback").run()
    assert [domain for domain, _ in rollout.gate.asked] == ["infra"]
    record = rollout.record
    assert (record.phase, record.stable.version, record.stable.digest) == (Phase.stable, "1.0.0", DIGEST_1)
    assert record.stable.settings == first.settings  # the same service as it was deployed
    assert all(n not in rollout.driver.instances for n in promoted_names)
    assert rollout.driver.env_of(names(rollout, "stable")[0]) == {"MODE": "stable", "VERSION": "1.0.0"}
    assert [r.version for r in record.releases] == ["2.0.0", "1.0.0"]  # the newest last
    done = rollout.events[-1]
    assert (done.type, done.version, done.replaced, done.automatic) == ("rollback.completed", "1.0.0", "2.0.0", False)

    # ...and forward again to the promoted release (its canary settings, in stable mode).
    await operations.RollbackTo(rollout, "2.0.0", "forward again", "cmd-rollback-2").run()
    assert rollout.record.stable.version == "2.0.0"
    assert rollout.driver.env_of(names(rollout, "stable")[0]) == {"MODE": "stable", "VERSION": "2.0.0"}


async def test_rollback_to_an_unknown_version_is_refused_listing_the_known_ones(rollout):
    await deployed(rollout)
    before = rollout.record.model_dump(exclude={"updated_at"})
    rollout.driver.calls.clear()
    rollout.gate.asked.clear()
    with pytest.raises(
        operations.Refused, match=r"^version 9\.9\.9 is not recorded for sdo-phase; known versions: 1\.0\.0$"
    ):
        await operations.RollbackTo(rollout, "9.9.9", "typo", "cmd-rollback").run()
    with pytest.raises(operations.Refused, match=r"^version 1\.0\.0 already serves$"):
        await operations.RollbackTo(rollout, "1.0.0", "again", "cmd-rollback").run()
    assert (await rollout.store.load(PROJECT)).model_dump(exclude={"updated_at"}) == before
    assert (rollout.driver.calls, rollout.gate.asked) == ([], [])


async def test_rollback_to_denied_by_the_infra_policy_changes_nothing(rollout):
    await deployed(rollout)
    older = plans.release_of(rollout.record.stable.model_copy(update={"version": "0.9.0"}), rollout.record.manifest)
    await rollout.save(releases=[older, *rollout.record.releases])
    rollout.driver.calls.clear()
    rollout.gate.answers = [False]
    rollout.events.clear()
    await operations.RollbackTo(rollout, "0.9.0", "older", "cmd-rollback").run()
    assert rollout.types() == ["deploy.blocked"] and rollout.record.phase == Phase.stable
    assert rollout.driver.calls == []
