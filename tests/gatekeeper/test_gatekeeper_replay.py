"""`swiftdeploy policy replay` on a history written by the real auditor from the real gatekeeper's
decisions (real redis-server, both services as their own processes): the recorded story of a
deploy, a bad canary rolled back, a good canary and its promotion. Under the same files nothing
changes (exit 0); under a policy whose error-rate threshold is raised to 60% exactly the bad
canary's decisions change, the two that flip to allow make it exit 3; every revision decided with
is kept under .swiftdeploy/policies/<revision>/ and replays exactly."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import policies
from swiftdeploy_core.bus import streams
from swiftdeploy_core.bus.connection import Bus
from swiftdeploy_core.bus.events import DecisionRequested, Event, Source
from swiftdeploy_core.settings import Settings
from tests.servers import REPO_ROOT, run_swiftdeploy

ORCHESTRATOR = Source(service="orchestrator", instance="story")
HOST = {"disk_free_gb": 50, "cpu_load": 0.5}
ROUTER = {"source": "router", "window_seconds": 60, "samples": 400, "metrics": {}, "metric_reasons": {}}
BAD = {"error_rate": 0.52, "p99_latency_ms": 120, "requests": 400, **ROUTER}  # 52% errors: rolled back
BAD_AND_SLOW = {"error_rate": 0.52, "p99_latency_ms": 900, "requests": 400, **ROUTER}
GOOD = {"error_rate": 0.002, "p99_latency_ms": 180, "requests": 400, **ROUTER}
# (domain, input) in the order the orchestrator asks them in the story.
STORY = [
    ("infra", HOST),  # deploy
    ("infra", HOST),  # canary v2 starts
    ("canary", BAD),  # step 1: denied
    ("canary", BAD),  # step 1 again: denied, rolled back
    ("canary", BAD_AND_SLOW),  # a last analysis before the rollback landed: denied twice over
    ("infra", HOST),  # canary v3 starts
    ("canary", GOOD),  # steps 1..3 pass
    ("canary", GOOD),
    ("canary", GOOD),
    ("canary", GOOD),  # the promotion gate
]


def service(name: str, project: Path, redis_url: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "REDIS_URL": redis_url, "SWIFTDEPLOY_MANIFEST": str(project / "manifest.yaml"),
           "SWIFTDEPLOY_BLOCK_MS": "100", "PYTHONPATH": str(REPO_ROOT)}  # fmt: skip
    log = open(project / f"{name}.log", "wb")
    return subprocess.Popen([sys.executable, "-m", f"services.{name}"], cwd=project, env=env, stdout=log, stderr=log)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "manifest.yaml").write_text((REPO_ROOT / "manifest.yaml").read_text())
    policies.write_default_policies(tmp_path)
    return tmp_path


@pytest.fixture
def control_plane(project: Path, redis_url: str) -> Iterator[None]:
    processes = [service("gatekeeper", project, redis_url), service("auditor", project, redis_url)]
    yield
    for process in processes:
        process.terminate()
    for process, name in zip(processes, ("gatekeeper", "auditor"), strict=True):
        assert process.wait(timeout=15) == 0, (project / f"{name}.log").read_text()[-2000:]


def decisions_in(history: Path) -> list[dict]:
    if not history.exists():
        return []
    return [line for line in map(json.loads, history.read_text().splitlines()) if line["type"] == "decision.made"]


async def record(redis_url: str, project: Path, story: list[tuple[str, dict]]) -> list[dict]:
    """Ask the real gatekeeper each decision of the story, as the orchestrator does, and wait until
    the auditor has written them all to history.jsonl."""
    history = project / "history.jsonl"
    before = len(decisions_in(history))
    bus = await Bus.connect(Settings(redis_url=redis_url, block_ms=100))
    try:
        for domain, document in story:
            request = Event(payload=DecisionRequested(domain=domain, input=document), source=ORCHESTRATOR)
            await bus.request(streams.GATEKEEPER_INBOX, request, expect={"decision.made"}, timeout=20)
    finally:
        await bus.close()
    deadline = time.monotonic() + 20
    while len(decisions_in(history)) < before + len(story):
        assert time.monotonic() < deadline, "the auditor did not record every decision"
        await asyncio.sleep(0.1)
    return decisions_in(history)


async def replay(project: Path, redis_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(
        run_swiftdeploy, "policy", "replay", *args, cwd=project,
        env={"REDIS_URL": redis_url, "SWIFTDEPLOY_MANIFEST": str(project / "manifest.yaml")},
    )  # fmt: skip


def loosened(project: Path, where: Path) -> Path:
    """A copy of the project's policies with the error-rate threshold raised to 60%."""
    shutil.copytree(project / "policies", where)
    data = json.loads((where / "data.json").read_text())
    data["thresholds"]["error_rate"] = 0.6
    (where / "data.json").write_text(json.dumps(data, indent=2))
    return where


async def test_replay_under_the_same_files_changes_nothing(project, redis_url, control_plane):
    recorded = await record(redis_url, project, STORY)
    assert [d["allow"] for d in recorded] == [True, True, False, False, False, True, True, True, True, True]
    assert all(d["input"] == document for d, (_, document) in zip(recorded, STORY, strict=True))

    result = await replay(project, redis_url)
    assert result.returncode == 0, result.stdout + result.stderr
    revision = recorded[0]["policy_revision"]
    assert result.stdout.strip() == (
        f"10 decisions replayed under {project / 'policies'} (revision {revision}): "
        "0 would change (0 allow->deny, 0 deny->allow, 0 other reasons)"
    )
    print(result.stdout)


async def test_a_loosened_error_rate_threshold_lists_exactly_the_flips_and_exits_3(
    project, redis_url, control_plane, tmp_path
):
    recorded = await record(redis_url, project, STORY)
    folder = loosened(project, tmp_path / "pr-policies")

    result = await replay(project, redis_url, "--policies", str(folder))
    print(result.stdout)
    assert result.returncode == 3, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    bad = [d for d in recorded if d["input"] in (BAD, BAD_AND_SLOW)]
    new_revision = policies.revision({p.name: p.read_bytes() for p in policies.policy_files(folder)})
    assert lines == [
        f"{bad[0]['timestamp']} canary decision {bad[0]['decision_id'][:12]} (revision {bad[0]['policy_revision']}): DENY -> ALLOW",
        "  - error rate 52% is above the maximum of 1%",
        f"{bad[1]['timestamp']} canary decision {bad[1]['decision_id'][:12]} (revision {bad[1]['policy_revision']}): DENY -> ALLOW",
        "  - error rate 52% is above the maximum of 1%",
        f"{bad[2]['timestamp']} canary decision {bad[2]['decision_id'][:12]} (revision {bad[2]['policy_revision']}): DENY -> DENY",
        "  - error rate 52% is above the maximum of 1%",
        f"10 decisions replayed under {folder} (revision {new_revision}): "
        "3 would change (0 allow->deny, 2 deny->allow, 1 other reasons)",
    ]  # fmt: skip

    as_json = await replay(project, redis_url, "--policies", str(folder), "--json", "--domain", "canary")
    assert as_json.returncode == 3, as_json.stderr
    answer = json.loads(as_json.stdout)
    assert (answer["decisions"], answer["deny_to_allow"], answer["allow_to_deny"]) == (7, 2, 0)
    assert [c["decision_id"] for c in answer["changes"]] == [d["decision_id"] for d in bad]
    assert answer["changes"][2]["now_reasons"] == ["P99 latency 900 ms is above the maximum of 500 ms"]

    infra_only = await replay(project, redis_url, "--policies", str(folder), "--domain", "infra")
    assert infra_only.returncode == 0 and infra_only.stdout.startswith("3 decisions replayed"), infra_only.stdout


async def test_every_revision_decided_with_is_kept_and_replays_exactly(project, redis_url, control_plane):
    first = await record(redis_url, project, STORY)
    old = first[0]["policy_revision"]
    kept = project / ".swiftdeploy" / "policies" / old
    assert sorted(p.name for p in kept.iterdir()) == ["canary.rego", "data.json", "infra.rego", "lib.rego", "schemas"]
    assert (kept / "schemas" / "canary.json").read_bytes() == (project / "policies/schemas/canary.json").read_bytes()

    # The team loosens the project's own threshold; the live gatekeeper decides with it at once.
    data = project / "policies" / "data.json"
    data.write_text(data.read_text().replace('"error_rate": 0.01', '"error_rate": 0.6'))
    later = await record(redis_url, project, [("canary", BAD)])
    new = later[-1]["policy_revision"]
    assert new != old and later[-1]["allow"] is True
    assert (project / ".swiftdeploy" / "policies" / new / "data.json").read_bytes() == data.read_bytes()

    # The old revision decides exactly as it did: the 11th decision (allowed under the new one) flips back.
    under_old = await replay(project, redis_url, "--revision", old)
    assert under_old.returncode == 0, under_old.stdout + under_old.stderr
    assert under_old.stdout.splitlines()[-1].endswith("1 would change (1 allow->deny, 0 deny->allow, 0 other reasons)")
    assert f"(revision {new}): ALLOW -> DENY" in under_old.stdout
    under_new = await replay(project, redis_url, "--revision", new[:8], "--json")
    assert under_new.returncode == 3
    assert json.loads(under_new.stdout)["deny_to_allow"] == 2

    unknown = await replay(project, redis_url, "--revision", "0123456789abcdef")
    assert unknown.returncode == 2 and unknown.stdout == ""
    assert unknown.stderr.strip() == (
        "error: the gatekeeper cannot replay: policy revision 0123456789abcdef was never decided with here "
        f"(nothing in {project / '.swiftdeploy' / 'policies'})"
    )
    since_now = await replay(project, redis_url, "--since", "0s")
    assert since_now.returncode == 0 and since_now.stdout.startswith("0 decisions replayed"), since_now.stdout
