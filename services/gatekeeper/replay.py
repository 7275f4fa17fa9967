"""Replay: decide the history's recorded decisions again under other policies, and say what changes.

Each `decision.made` line of history.jsonl carries the exact input it was decided on. A replay
reads them (optionally from `since` on, of one domain), decides each again exactly as a live
decision is decided (the input schema of the replayed folder first, then the policies, through the
embedded engine on that folder) and compares the outcome and reasons with the recorded ones.
The client only prints the answer: allow/deny is decided here, in the gatekeeper.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from services.gatekeeper.engines import PolicyEngine
from swiftdeploy_core.bus.events import DecisionMade, DecisionRequested, PolicyReplayed, ReplayedDecision

DECISION = "decision.made"
Decide = Callable[[DecisionRequested, str], Awaitable[DecisionMade]]


def moment(text: str) -> datetime:
    """An ISO-8601 time (`Z` or an offset; naive means UTC); ValueError otherwise."""
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def recorded_decisions(history: Path, since: datetime | None, domain: str | None) -> Iterator[dict[str, Any]]:
    """The history's `decision.made` lines with an input, oldest first (unreadable lines skipped:
    `swiftdeploy audit --verify` is the place that reports them)."""
    if not history.exists():
        return
    with history.open("rb") as handle:
        for raw in handle:
            try:
                entry = json.loads(raw)
            except ValueError:
                continue
            if not isinstance(entry, dict) or entry.get("type") != DECISION or not isinstance(entry.get("input"), dict):
                continue
            if domain is not None and entry.get("domain") != domain:
                continue
            if since is not None and moment(str(entry.get("timestamp", "1970-01-01T00:00:00Z"))) < since:
                continue
            yield entry


def change(entry: dict[str, Any], now: DecisionMade) -> ReplayedDecision | None:
    """The recorded decision beside its replay, when the outcome or the reasons differ."""
    was_allow, was_reasons = bool(entry.get("allow")), sorted(entry.get("reasons") or [])
    if (was_allow, was_reasons) == (now.allow, sorted(now.reasons)):
        return None
    return ReplayedDecision(
        decision_id=str(entry.get("decision_id", "")),
        timestamp=str(entry.get("timestamp", "")),
        domain=now.domain,
        policy_revision=str(entry.get("policy_revision") or ""),
        was_allow=was_allow,
        was_reasons=was_reasons,
        now_allow=now.allow,
        now_reasons=sorted(now.reasons),
    )


async def replay(
    decide: Decide, engine: PolicyEngine, folder: Path, history: Path, since: datetime | None, domain: str | None
) -> PolicyReplayed:
    """Decide every recorded decision again with `decide` (the gatekeeper's own decision path, on
    an engine and schemas of `folder`)."""
    changes: list[ReplayedDecision] = []
    count = 0
    for entry in recorded_decisions(history, since, domain):
        request = DecisionRequested(domain=str(entry.get("domain")), input=entry["input"])
        found = change(entry, await decide(request, f"replay:{entry.get('event_id', count)}"))
        count += 1
        if found is not None:
            changes.append(found)
    await engine.health()  # the files are loaded by now; without a decision, this loads them
    return PolicyReplayed(
        policies=str(folder),
        revision=engine.revision(),
        history=str(history),
        decisions=count,
        allow_to_deny=sum(1 for c in changes if c.was_allow and not c.now_allow),
        deny_to_allow=sum(1 for c in changes if not c.was_allow and c.now_allow),
        reasons_changed=sum(1 for c in changes if c.was_allow == c.now_allow),
        changes=changes,
    )
