"""The audit report: history entries in, Markdown out (jinja2, `templates/audit_report.md.j2`).

`build_report` is pure: it sorts the entries into the report's sections. Decisions asked by
`swiftdeploy status` refreshes (same correlation id as a `status.checked` entry) are observations,
not gates: they are counted apart and are never listed as policy violations.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jinja2

from services.auditor.chain import Verification, iso_utc
from services.auditor.gantt import rollout_gantt
from swiftdeploy_core.bus.describe import cell, describe

Entry = dict[str, Any]
TEMPLATES = Path(__file__).parent / "templates"

TIMELINE_TYPES = (
    "deploy.requested", "deploy.started", "deploy.step", "image.pulled", "deploy.blocked", "deploy.completed",
    "deploy.failed", "canary.requested", "canary.started", "canary.weight_changed",
    "canary.analysis", "canary.paused", "canary.resumed", "canary.replaced", "canary.completed", "promotion.requested", "promotion.blocked",
    "promotion.completed", "bake.started", "bake.analysis", "bake.completed", "bake.failed", "rollback.requested", "rollback.completed", "mode.changed",
    "chaos.injected", "teardown.requested", "teardown.completed", "operation.failed",
    "command.rejected",
)  # fmt: skip
CHAOS_TYPES = ("chaos.injected", "chaos.detected")


@dataclass(frozen=True)
class Row:
    timestamp: str
    kind: str
    details: str
    extra: str = ""
    source: str = ""  # violations: where the judged figures came from (router, app), if given


@dataclass(frozen=True)
class PolicyCount:
    policy: str
    allowed: int
    denied: int
    inconclusive: int = 0  # neither allowed nor denied: too few samples to judge

    @property
    def total(self) -> int:
        return self.allowed + self.denied + self.inconclusive


@dataclass(frozen=True)
class Revision:
    revision: str
    engine: str
    decisions: int
    first: str
    last: str


@dataclass
class Report:
    """Everything the template shows, already sorted into sections."""

    project: str
    history_path: str
    generated_at: str
    since: str | None
    verification: Verification
    entries: int
    first: str | None
    last: str | None
    mode: str
    counts: dict[str, int]
    timeline: list[Row] = field(default_factory=list)
    mode_changes: list[Row] = field(default_factory=list)
    chaos: list[Row] = field(default_factory=list)
    violations: list[Row] = field(default_factory=list)
    policy_counts: list[PolicyCount] = field(default_factory=list)
    status_decisions: int = 0
    revisions: list[Revision] = field(default_factory=list)
    gantt: list[str] = field(default_factory=list)


def build_report(
    entries: list[Entry],
    *,
    project: str,
    history_path: Path | str,
    verification: Verification,
    since: datetime | None = None,
    now: datetime | None = None,
) -> Report:
    """Sort history entries (oldest first) into the report's sections."""
    entries = sorted(entries, key=lambda e: e.get("timestamp", ""))
    status_ids = {e.get("correlation_id") for e in entries if e.get("type") == "status.checked"}
    decisions = [e for e in entries if e.get("type") == "decision.made"]
    gating = [e for e in decisions if e.get("correlation_id") not in status_ids]

    return Report(
        project=project,
        history_path=str(history_path),
        generated_at=iso_utc(now or datetime.now(UTC)),
        since=iso_utc(since) if since else None,
        verification=verification,
        entries=len(entries),
        first=entries[0].get("timestamp") if entries else None,
        last=entries[-1].get("timestamp") if entries else None,
        mode=entries[-1].get("mode", "stable") if entries else "stable",
        counts=summary_counts(entries),
        timeline=[_row(e) for e in entries if e.get("type") in TIMELINE_TYPES],
        mode_changes=[
            Row(e["timestamp"], str(e.get("previous")), str(e.get("mode")), str(e.get("version")))
            for e in entries
            if e.get("type") == "mode.changed"
        ],
        chaos=[_row(e, extra=e.get("source", "")) for e in entries if e.get("type") in CHAOS_TYPES],
        violations=policy_violations(entries, status_ids),
        policy_counts=policy_counts(gating),
        status_decisions=len(decisions) - len(gating),
        revisions=policy_revisions(decisions),
        gantt=rollout_gantt(entries, title=f"Rollout of {project}"),
    )


def _row(entry: Entry, extra: str = "") -> Row:
    return Row(entry.get("timestamp", ""), entry.get("type", ""), describe(entry), extra)


def summary_counts(entries: list[Entry]) -> dict[str, int]:
    kinds = Counter(e.get("type") for e in entries)
    rollbacks = [e for e in entries if e.get("type") == "rollback.completed"]
    return {
        "deployments": kinds["deploy.completed"],
        "deploys blocked": kinds["deploy.blocked"],
        "deploys failed": kinds["deploy.failed"],
        "canaries started": kinds["canary.started"],
        "promotions": kinds["promotion.completed"],
        "promotions blocked": kinds["promotion.blocked"],
        "canary analyses inconclusive": sum(
            1 for e in entries if e.get("type") == "canary.analysis" and e.get("inconclusive")
        ),
        "rollbacks (automatic)": sum(1 for e in rollbacks if e.get("automatic")),
        "rollbacks (manual)": sum(1 for e in rollbacks if not e.get("automatic")),
        "mode changes": kinds["mode.changed"],
        "chaos injections": kinds["chaos.injected"],
        "status checks": kinds["status.checked"],
    }


def policy_violations(entries: list[Entry], status_ids: set[Any]) -> list[Row]:
    """One row per denied gating decision: a `policy.violation`, a denying `decision.made`, or an
    external gate that held (`gate.checked`, policy `gate:<on>`)."""
    rows: dict[str, Row] = {}
    for entry in entries:
        kind = entry.get("type")
        if kind == "gate.checked" and entry.get("allow") is False:
            key = entry.get("event_id", "")
            rows[key] = Row(entry["timestamp"], f"gate:{entry.get('on')}", str(entry.get("reason")), str(key))
            continue
        denied = kind == "policy.violation" or (
            kind == "decision.made" and entry.get("allow") is False and not entry.get("inconclusive")
        )
        if not denied or entry.get("correlation_id") in status_ids:
            continue
        key = entry.get("decision_id") or entry.get("event_id", "")
        if key not in rows:
            reasons = "; ".join(entry.get("reasons") or []) or "denied"
            source = (entry.get("input") or {}).get("source") or ""
            rows[key] = Row(entry["timestamp"], str(entry.get("domain")), reasons, str(key), str(source))
    return list(rows.values())


def policy_counts(decisions: list[Entry]) -> list[PolicyCount]:
    allowed: Counter[str] = Counter()
    denied: Counter[str] = Counter()
    inconclusive: Counter[str] = Counter()
    for entry in decisions:
        outcome = allowed if entry.get("allow") else (inconclusive if entry.get("inconclusive") else denied)
        outcome[str(entry.get("domain"))] += 1
    names = sorted(set(allowed) | set(denied) | set(inconclusive))
    return [PolicyCount(p, allowed[p], denied[p], inconclusive[p]) for p in names]


def policy_revisions(decisions: list[Entry]) -> list[Revision]:
    seen: dict[tuple[str, str], list[str]] = {}
    for entry in decisions:
        key = (str(entry.get("policy_revision")), str(entry.get("engine")))
        seen.setdefault(key, []).append(entry["timestamp"])
    return [Revision(rev, engine, len(ts), ts[0], ts[-1]) for (rev, engine), ts in seen.items()]


def render_report(report: Report) -> str:
    """The report as Markdown."""
    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        autoescape=False,  # Markdown, not HTML; table cells go through the `cell` filter
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        undefined=jinja2.StrictUndefined,
    )
    environment.filters["cell"] = cell
    text = environment.get_template("audit_report.md.j2").render(report=report)
    return re.sub(r"\n{3,}", "\n\n", text)
