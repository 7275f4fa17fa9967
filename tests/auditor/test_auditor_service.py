"""The auditor service as real processes on a real Redis: history lines, the report, `audit`."""

from __future__ import annotations

import contextlib
import json
import os
import re

import redis

from services.auditor.chain import verify
from swiftdeploy_core.bus import streams
from swiftdeploy_core.bus.events import AuditRequested, Event, PromotionBlocked, Source
from swiftdeploy_core.client.cli.common import connected
from tests.auditor.test_auditor_script import scripted_rollout
from tests.auditor.test_report import denied_gates, table
from tests.projects import Project, wait_until

CLIENT = Source(service="cli", instance="test")


async def publish_rollout(project: Project) -> list[Event]:
    events = scripted_rollout()
    async with connected(project.settings()) as bus:
        for event in events:
            await bus.publish(streams.EVENTS, event)
    return events


async def test_the_auditor_writes_one_line_per_audit_event_and_skips_pongs(project: Project) -> None:
    project.start_auditor("aud-1")
    events = await publish_rollout(project)
    audited = [e for e in events if e.type != "pong"]
    project.wait_for_lines(len(audited))
    lines = [json.loads(line) for line in project.history.read_text().splitlines()]
    assert [line["event_id"] for line in lines] == [e.id for e in audited]
    assert verify(project.history).ok
    first = lines[0]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", first["timestamp"])
    assert (first["type"], first["mode"], first["version"]) == ("deploy.started", "stable", "1.0.0")
    violation = next(line for line in lines if line["type"] == "policy.violation")
    assert violation["reasons"] and violation["mode"] == "canary"  # after mode.changed to canary


async def test_audit_renders_the_scripted_rollout_and_its_rows_match_the_history(project: Project) -> None:
    project.start_auditor("aud-1")
    events = await publish_rollout(project)
    project.wait_for_lines(len(events) - 1)
    done = project.cli("audit", "--out", "report.md")
    assert done.returncode == 0, done.stderr
    assert f"wrote {project.root / 'report.md'} ({len(events) - 1} history lines)" in done.stdout
    markdown = (project.root / "report.md").read_text()
    lines = [json.loads(line) for line in project.history.read_text().splitlines()]
    denied = denied_gates(lines)
    violations = table(markdown, "Policy violations")
    assert sorted((r[0], r[1], r[2]) for r in violations) == sorted(
        (e["timestamp"], e["domain"], "; ".join(e["reasons"])) for e in denied.values()
    )
    assert len(violations) == 3
    counts = {row[0]: row[1:] for row in table(markdown, "Policy decisions")}
    assert counts["canary"] == ["1", "3", "0", "4"] and counts["infra"] == ["1", "0", "0", "1"]
    assert [r[1] for r in table(markdown, "Mode changes")] == ["stable", "canary"]
    assert "automatic rollback :crit, milestone" in markdown


async def test_audit_verify_names_the_deleted_reordered_or_edited_line(project: Project) -> None:
    project.start_auditor("aud-1")
    events = await publish_rollout(project)
    project.wait_for_lines(len(events) - 1)
    ok = project.cli("audit", "--verify")
    assert ok.returncode == 0 and "the hash chain is valid (23 lines)" in ok.stdout, ok.stderr
    original = project.history.read_bytes()
    lines = original.splitlines(keepends=True)
    tamperings = {
        "deleted": (lines[:6] + lines[7:], 7),
        "reordered": ([*lines[:9], lines[10], lines[9], *lines[11:]], 10),
        "edited": ([*lines[:14], lines[14].replace(b'"allow":false', b'"allow":true'), *lines[15:]], 15),
        "cut at the end": (lines[:-1], 23),
    }
    for how, (content, bad_line) in tamperings.items():
        project.history.write_bytes(b"".join(content))
        done = project.cli("audit", "--verify")
        assert done.returncode == 1, (how, done.stdout, done.stderr)
        assert f"history.jsonl line {bad_line}:" in done.stderr, (how, done.stderr)
        assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr
    project.history.write_bytes(original)
    as_json = json.loads(project.cli("audit", "--verify", "--json").stdout)
    assert (as_json["chain_ok"], as_json["lines"], as_json["ok"]) == (True, 23, True)


async def test_audit_through_the_bus_answers_with_audit_rendered(project: Project) -> None:
    project.start_auditor("aud-1")
    async with connected(project.settings()) as bus:
        request = Event(payload=AuditRequested(verify=True), source=CLIENT)
        reply = await bus.request(streams.AUDITOR_INBOX, request, expect={"audit.rendered"}, timeout=20)
    assert reply.payload.chain_ok and reply.payload.lines == 0
    assert reply.correlation_id == request.correlation_id


def test_audit_without_a_control_plane_says_what_to_do(project: Project) -> None:
    project.env["REDIS_URL"] = "redis://127.0.0.1:1/0"
    done = project.cli("audit")
    assert done.returncode == 1
    assert done.stderr.startswith("error: the control plane is not running: run swiftdeploy up")
    assert len(done.stderr.strip().splitlines()) == 1


def test_a_bad_since_is_one_line_and_exit_2(project: Project) -> None:
    done = project.cli("audit", "--since", "yesterday-ish")
    assert done.returncode == 2 and "--since 'yesterday-ish' is neither" in done.stderr


async def test_a_full_disk_keeps_the_event_pending_with_a_clear_error_until_space_returns(
    project: Project, tiny_filesystem
) -> None:
    history = tiny_filesystem / "history.jsonl"
    filler = tiny_filesystem / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    with contextlib.suppress(OSError):  # fill the 64 KiB filesystem to the last byte
        while True:
            os.write(fd, b"x" * 512)
    os.close(fd)
    project.start_auditor("aud-1", SWIFTDEPLOY_AUDIT_HISTORY=str(history))
    event = Event(payload=PromotionBlocked(reasons=["error rate " + "x" * 9_000]), source=CLIENT)
    async with connected(project.settings()) as bus:
        await bus.publish(streams.EVENTS, event)
    wait_until(lambda: "stays pending and is retried" in project.log_of("aud-1"), what="the error in the log")
    assert "cannot append to the history" in project.log_of("aud-1")
    client = redis.Redis.from_url(project.redis_url)
    assert client.xpending(streams.EVENTS, streams.group("auditor"))["pending"] == 1
    assert not history.exists() or history.read_bytes() == b""  # nothing torn
    filler.unlink()
    wait_until(lambda: history.exists() and history.read_bytes().count(b"\n") == 1, what="the line once space returned")
    wait_until(lambda: client.xpending(streams.EVENTS, streams.group("auditor"))["pending"] == 0, what="the ack")
    assert json.loads(history.read_bytes())["event_id"] == event.id and verify(history).ok
    client.close()
