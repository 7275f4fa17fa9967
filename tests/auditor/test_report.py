"""The audit report: every section, its rows checked against the history it was rendered from."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from pathlib import Path

from services.auditor.chain import GENESIS, encode_line, history_entry, line_digest, read_entries, verify
from services.auditor.report import TIMELINE_TYPES, build_report, render_report
from tests.auditor.test_auditor_script import ERROR_REASON, REVISION, scripted_rollout

AUDITED_OUT = {"pong"}


def write_scripted_history(path: Path) -> None:
    """What the auditor writes for the script: mode follows mode.changed; pong is skipped."""
    prev, mode, lines = GENESIS, "stable", []
    for event in scripted_rollout():
        if event.type in AUDITED_OUT:
            continue
        if event.type == "mode.changed":
            mode = event.payload.mode
        line = encode_line(history_entry(event, mode), prev)
        lines.append(line)
        prev = line_digest(line)
    path.write_bytes(b"".join(lines))


def table(markdown: str, heading: str) -> list[list[str]]:
    """The body rows of the first table under `## heading`, as lists of cells."""
    section = markdown.split(f"## {heading}\n", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("|")]
    return [[c.strip() for c in re.split(r"(?<!\\)\|", row)[1:-1]] for row in rows[2:]]


def denied_gates(lines: list[dict]) -> dict[str, dict]:
    """From the history itself: the first entry of each denied decision that gated an operation
    (a policy.violation, or a decision.made with allow=false that is not inconclusive), leaving out
    status refreshes."""
    status = {e["correlation_id"] for e in lines if e["type"] == "status.checked"}
    denied: dict[str, dict] = {}
    for e in lines:
        refused = e["type"] == "decision.made" and not e["allow"] and not e.get("inconclusive")
        if (e["type"] == "policy.violation" or refused) and e["correlation_id"] not in status:
            denied.setdefault(e["decision_id"], e)
    return denied


def outcomes(decisions: list[dict]) -> tuple[int, int, int, int]:
    """Allowed, denied, inconclusive and all of these `decision.made` entries."""
    inconclusive = sum(bool(e.get("inconclusive")) for e in decisions)
    allowed = sum(e["allow"] for e in decisions)
    return allowed, len(decisions) - allowed - inconclusive, inconclusive, len(decisions)


def history(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def render(path: Path, since: datetime | None = None) -> str:
    report = build_report(
        read_entries(path, since),
        project="app",
        history_path=path,
        verification=verify(path),
        since=since,
        now=datetime(2026, 11, 26, 8, 0, tzinfo=UTC),
    )
    return render_report(report)


def test_the_report_has_every_section(tmp_path: Path) -> None:
    path = tmp_path / "history.jsonl"
    write_scripted_history(path)
    markdown = render(path)
    for heading in (
        "Summary",
        "Deployment timeline",
        "Mode changes",
        "Chaos injections",
        "Policy violations",
        "Policy decisions",
        "Policy revision",
        "Rollout picture",
    ):
        assert f"\n## {heading}\n" in markdown
    assert "| Timestamp | Policy | Details |" in markdown
    assert "```mermaid\ngantt\n" in markdown


def test_violation_rows_are_the_denied_gating_decisions_of_the_history(tmp_path: Path) -> None:
    path = tmp_path / "history.jsonl"
    write_scripted_history(path)
    denied = denied_gates(history(path))
    rows = table(render(path), "Policy violations")
    assert len(rows) == len(denied) == 3  # dec-3, dec-4, dec-6; the status refresh's dec-5 is not a gate
    expected = sorted(
        (e["timestamp"], e["domain"], "; ".join(e["reasons"]), (e.get("input") or {}).get("source") or "—")
        for e in denied.values()
    )
    assert sorted(tuple(row) for row in rows) == expected
    assert any(ERROR_REASON in row[2] and "p99 latency" in row[2] for row in rows)


def test_decision_counts_match_the_history_per_policy(tmp_path: Path) -> None:
    path = tmp_path / "history.jsonl"
    write_scripted_history(path)
    lines = history(path)
    status = {e["correlation_id"] for e in lines if e["type"] == "status.checked"}
    gating = [e for e in lines if e["type"] == "decision.made" and e["correlation_id"] not in status]
    rows = {row[0]: [int(n) for n in row[1:]] for row in table(render(path), "Policy decisions")}
    for policy, (allowed, denied, inconclusive, total) in rows.items():
        mine = [e for e in gating if e["domain"] == policy]
        assert (allowed, denied, inconclusive, total) == outcomes(mine)
    assert rows == {"canary": [1, 3, 0, 4], "infra": [1, 0, 0, 1]}
    assert "_1 decision asked by `swiftdeploy status` refreshes are not counted above._" in render(path)


def test_timeline_mode_and_chaos_rows_match_the_history(tmp_path: Path) -> None:
    path = tmp_path / "history.jsonl"
    write_scripted_history(path)
    lines, markdown = history(path), render(path)
    timeline = table(markdown, "Deployment timeline")
    assert [row[1] for row in timeline] == [e["type"] for e in lines if e["type"] in TIMELINE_TYPES]
    modes = table(markdown, "Mode changes")
    assert [(r[1], r[2]) for r in modes] == [(e["previous"], e["mode"]) for e in lines if e["type"] == "mode.changed"]
    chaos = table(markdown, "Chaos injections")
    assert [r[1] for r in chaos] == ["chaos.injected", "chaos.detected"]
    assert "error, rate 0.5, on 1 instance" in chaos[0][2]


def test_the_summary_counts_the_story_and_names_the_policy_revision(tmp_path: Path) -> None:
    path = tmp_path / "history.jsonl"
    write_scripted_history(path)
    markdown = render(path)
    summary = dict((row[0], row[1]) for row in table(markdown, "Summary"))
    assert summary["History entries"] == str(len(history(path)))
    assert summary["Hash chain"] == f"✓ valid ({len(history(path))} lines)"
    assert (summary["Deployments"], summary["Promotions blocked"], summary["Rollbacks (automatic)"]) == ("1", "1", "1")
    assert (summary["Chaos injections"], summary["Policy violations"], summary["Current mode"]) == ("1", "3", "stable")
    revision = table(markdown, "Policy revision")
    assert revision == [[f"`{REVISION}`", "embedded", "6", "2026-11-26T07:00:01.000Z", "2026-11-26T07:00:19.000Z"]]


def test_the_rollout_picture_shows_versions_weights_and_incidents(tmp_path: Path) -> None:
    path = tmp_path / "history.jsonl"
    write_scripted_history(path)
    chart = render(path).split("```mermaid\n", 1)[1].split("```", 1)[0]
    assert "dateFormat YYYY-MM-DD HH:mm:ss.SSS" in chart
    assert "stable 1.0.0 :done, s1, 2026-11-26 07:00:04.000, 2026-11-26 07:00:22.000" in chart
    assert "canary 1.1.0 :active, c1, 2026-11-26 07:00:05.000, 2026-11-26 07:00:21.000" in chart
    assert "automatic rollback :crit, milestone" in chart and "promotion blocked :crit, milestone" in chart
    assert "chaos error rate 0.5 :milestone" in chart


def test_a_broken_chain_is_named_in_the_summary(tmp_path: Path) -> None:
    path = tmp_path / "history.jsonl"
    write_scripted_history(path)
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(b"".join(lines[:2] + lines[3:]))
    summary = dict((row[0], row[1]) for row in table(render(path), "Summary"))
    assert summary["Hash chain"].startswith("✗ BROKEN at line 3:")


def test_since_limits_the_report_to_later_entries(tmp_path: Path) -> None:
    path = tmp_path / "history.jsonl"
    write_scripted_history(path)
    markdown = render(path, since=datetime(2026, 11, 26, 7, 0, 21, tzinfo=UTC))
    assert [r[1] for r in table(markdown, "Deployment timeline")] == ["rollback.completed", "mode.changed"]
    assert "entries since 2026-11-26T07:00:21.000Z" in markdown


def test_an_empty_history_renders_every_section_with_a_note(tmp_path: Path) -> None:
    markdown = render(tmp_path / "history.jsonl")
    assert "_No policy violations in this period._" in markdown
    assert "_Nothing was rolled out in this period._" in markdown


def test_a_violation_names_where_the_judged_figures_came_from(tmp_path: Path) -> None:
    entry = {
        "timestamp": "2026-01-01T00:00:00.000Z", "type": "decision.made", "allow": False, "domain": "canary",
        "reasons": ["error rate 52% is above the maximum of 1%"], "input": {"error_rate": 0.52, "source": "router"},
        "decision_id": "d", "event_id": "e", "correlation_id": "c",
    }  # fmt: skip
    path = tmp_path / "history.jsonl"
    path.write_bytes(encode_line(entry, GENESIS))
    (row,) = table(render(path), "Policy violations")
    assert row[1:] == ["canary", "error rate 52% is above the maximum of 1%", "router"]


def test_a_pipe_in_a_reason_does_not_break_the_table(tmp_path: Path) -> None:
    entry = {
        "timestamp": "2026-01-01T00:00:00.000Z",
        "type": "policy.violation",
        "mode": "stable",
        "domain": "infra",
        "reasons": ["disk | full"],
        "decision_id": "d",
        "event_id": "e",
        "correlation_id": "c",
    }
    path = tmp_path / "history.jsonl"
    path.write_bytes(encode_line(entry, GENESIS))
    assert table(render(path), "Policy violations") == [["2026-01-01T00:00:00.000Z", "infra", "disk \\| full", "—"]]


def test_a_held_external_gate_is_a_violation_row_and_an_allowing_one_is_not(tmp_path: Path) -> None:
    from swiftdeploy_core.bus.events import Event, GateChecked, Source

    source = Source(service="orchestrator", instance="o-1")
    reason = "gate http://127.0.0.1:9 held the promotion (HTTP 403): change freeze"
    events = [
        Event(payload=GateChecked(on="promotion", url="http://127.0.0.1:9", allow=False, reason=reason, status=403), source=source),
        Event(payload=GateChecked(on="step", url="http://127.0.0.1:9", allow=True, reason="allowed", status=200), source=source),
    ]  # fmt: skip
    prev, lines = GENESIS, []
    for event in events:
        lines.append(encode_line(history_entry(event, "canary"), prev))
        prev = line_digest(lines[-1])
    path = tmp_path / "history.jsonl"
    path.write_bytes(b"".join(lines))
    rows = table(render(path), "Policy violations")
    assert [row[1:] for row in rows] == [["gate:promotion", reason, "—"]]
