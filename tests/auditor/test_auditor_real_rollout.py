"""A real rollout audited end to end: the real orchestrator, gatekeeper, nginx and workload
processes (tests.orchestration), an auditor process, and the real CLI. Deploy, canary, chaos,
a blocked promotion and the automatic rollback end up in history.jsonl, and `swiftdeploy audit`
renders a report whose rows match it."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys

import pytest
import redis

from services.auditor.chain import verify
from swiftdeploy_core.bus import streams
from tests.auditor.test_report import denied_gates, outcomes, table
from tests.orchestration import env_for, write_snapshot
from tests.projects import wait_until
from tests.servers import REPO_ROOT

MANIFEST: dict = {}


def start_auditor(stack) -> subprocess.Popen:
    """An auditor that sees only what happens from now on (the session's Redis is shared)."""
    client = redis.Redis.from_url(stack.redis_url)
    for stream in (streams.EVENTS, streams.AUDITOR_INBOX):
        client.xadd(stream, {"type": "test.marker"})  # make sure the stream exists
        try:
            client.xgroup_create(stream, streams.group("auditor"), id="$")
        except redis.ResponseError:
            client.xgroup_setid(stream, streams.group("auditor"), id="$")
    client.close()
    env = env_for(
        stack.redis_url,
        SWIFTDEPLOY_MANIFEST=str(stack.root / "manifest.yaml"),
        SWIFTDEPLOY_INSTANCE="auditor-e2e",
        SWIFTDEPLOY_AUDIT_FSYNC="false",
    )
    log = (stack.root / "auditor.log").open("ab")
    return subprocess.Popen(
        [sys.executable, "-m", "services.auditor"], cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
    )


def types(history) -> list[str]:
    return [json.loads(line)["type"] for line in history.read_text().splitlines()] if history.exists() else []


@pytest.mark.slow
async def test_a_real_rollout_is_audited_and_reported(stack) -> None:
    stack.manifest(canary={"interval": 6, "failure_limit": 2})  # room for promote stable
    auditor = start_auditor(stack)
    history = stack.root / "history.jsonl"
    try:
        assert (await stack.sd("deploy")).code == 0
        await write_snapshot(stack.redis, stack.project, "2.0.0", error_rate=0.0)
        follower = asyncio.create_task(stack.sd("promote", "canary", "--wait"))
        await stack.phase("progressing")
        assert (await stack.sd("chaos", "error", "--rate", "0.5")).code == 0
        await write_snapshot(stack.redis, stack.project, "2.0.0", error_rate=0.5)  # what the collector sees
        blocked = await stack.sd("promote", "stable")
        assert blocked.code == 3, blocked.text
        assert (await follower).code == 3  # rolled back automatically
        await stack.phase("stable")
        wait_until(
            lambda: types(history)[-2:] == ["rollback.completed", "mode.changed"],
            timeout=20,
            what="the rollback in the history",
        )

        done = await stack.sd("audit", "--out", str(stack.root / "report.md"))
        assert done.code == 0, done.text
        verified = await stack.sd("audit", "--verify")
        assert verified.code == 0 and "the hash chain is valid" in verified.out
    finally:
        auditor.terminate()
        auditor.wait(timeout=10)

    lines = [json.loads(line) for line in history.read_text().splitlines()]
    assert verify(history).ok
    assert len({line["event_id"] for line in lines}) == len(lines)
    markdown = (stack.root / "report.md").read_text()
    seen = [line["type"] for line in lines]
    for kind in ("deploy.completed", "canary.started", "chaos.injected", "promotion.blocked", "rollback.completed"):
        assert kind in seen, (kind, seen)
    violations = table(markdown, "Policy violations")
    assert sorted(tuple(r) for r in violations) == sorted(
        (e["timestamp"], e["domain"], "; ".join(e["reasons"]), e["input"].get("source") or "—")
        for e in denied_gates(lines).values()
    )
    assert len(violations) >= 2  # the blocked promotion and the failing analyses
    counts = {row[0]: [int(n) for n in row[1:]] for row in table(markdown, "Policy decisions")}
    for policy, row in counts.items():
        mine = [e for e in lines if e["type"] == "decision.made" and e["domain"] == policy]
        assert tuple(row) == outcomes(mine)
    assert [(r[1], r[2]) for r in table(markdown, "Mode changes")] == [("stable", "canary"), ("canary", "stable")]
    assert any(r[1] == "chaos.injected" for r in table(markdown, "Chaos injections"))
    summary = dict((row[0], row[1]) for row in table(markdown, "Summary"))
    assert (summary["Promotions blocked"], summary["Rollbacks (automatic)"]) == ("1", "1")
    assert table(markdown, "Policy revision")[0][1] == "embedded"
    assert "automatic rollback :crit, milestone" in markdown
