"""What the web dashboard shows, kept live from the bus: a pure model that events are applied to.

`LiveModel.apply(event)` folds one event in and returns the update to send to every browser
(None when the browsers need nothing); `snapshot()` is what a newly connected browser gets. The
rollout record and instance health are read by the server (`rollout_view`) and set here.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from swiftdeploy_core.bus.describe import describe_event
from swiftdeploy_core.bus.events import (
    AuditRendered,
    CanaryAnalysis,
    DecisionMade,
    Event,
    MetricsSnapshot,
)
from swiftdeploy_core.project.state import Phase, RolloutState

POINTS_KEPT = 300  # metrics points per track (a snapshot every collector interval)
EVENTS_KEPT = 60
DECISIONS_KEPT = 30
QUIET = {"ping.requested", "pong", "metrics.snapshot"}
# The last of these says how the rollout got where it rests (shown beside the phase).
OUTCOMES = {
    "rollback.completed": "rolled back",
    "promotion.completed": "promoted",
    "deploy.completed": "deployed",
    "canary.started": "canary started",
    "teardown.completed": "torn down",
}
Update = dict[str, Any]


def phase_label(phase: str, outcome: str | None) -> str:
    """The phase, with how a resting stable phase was reached: `stable (rolled back)`."""
    if phase == Phase.stable.value and outcome in ("rolled back", "promoted"):
        return f"{phase} ({outcome})"
    return phase


def rollout_view(record: RolloutState | None, health: dict[str, bool | None]) -> dict[str, Any]:
    """The record as the page draws it: phase, steps with the current one, tracks with health."""
    if record is None:
        return {"phase": Phase.empty.value, "steps": [], "step": -1, "weight": 0, "tracks": []}
    steps = list((record.manifest.get("canary") or {}).get("steps") or [])
    tracks = []
    for track in (record.stable, record.canary):
        if track is None:
            continue
        instances = [{"name": i.name, "url": i.url, "healthy": health.get(i.url)} for i in track.instances]
        tracks.append({"track": track.track, "version": track.version, "weight": track.weight, "instances": instances})
    return {
        "phase": record.phase.value,
        "steps": steps,
        "step": record.step,
        "weight": record.canary.weight if record.canary else 0,
        "tracks": tracks,
        "failures": record.consecutive_failures,
        "last_reasons": record.last_reasons,
        "last_outcome": record.last_outcome,
        "inconclusive_checks": record.inconclusive_checks,
        "router_url": record.router_url,
    }


def event_line(event: Event) -> dict[str, Any]:
    return {"id": event.id, "time": event.timestamp.isoformat(), "type": event.type, "summary": describe_event(event)}


class LiveModel:
    """The dashboard's state for one project."""

    def __init__(self, project: str, actions: bool = False) -> None:
        self.project = project
        self.actions = actions
        self.rollout: dict[str, Any] = rollout_view(None, {})
        self.outcome: str | None = None
        self.points: dict[str, deque[dict[str, Any]]] = {t: deque(maxlen=POINTS_KEPT) for t in ("stable", "canary")}
        self.events: deque[dict[str, Any]] = deque(maxlen=EVENTS_KEPT)
        self.decisions: deque[dict[str, Any]] = deque(maxlen=DECISIONS_KEPT)
        self.audit: dict[str, Any] | None = None

    def set_rollout(self, view: dict[str, Any]) -> Update | None:
        """A fresh read of the record; an update only when something the page shows changed."""
        if view == self.rollout:
            return None
        self.rollout = view
        return self.state_update()

    def state_update(self) -> Update:
        return {
            "kind": "state",
            "rollout": self.rollout,
            "phase_label": phase_label(self.rollout["phase"], self.outcome),
            "audit": self.audit,
        }

    def apply(self, event: Event) -> Update | None:
        payload = event.payload
        if isinstance(payload, MetricsSnapshot):
            return self._metric(event, payload)
        if event.type in QUIET:
            return None
        if event.type in OUTCOMES:
            self.outcome = OUTCOMES[event.type]
        if isinstance(payload, AuditRendered):
            self.audit = {
                "time": event.timestamp.isoformat(),
                "chain_ok": payload.chain_ok,
                "problem": payload.problem,
                "first_bad_line": payload.first_bad_line,
                "lines": payload.lines,
            }
        decision = self._decision(event)
        line = event_line(event)
        self.events.append(line)
        return {**self.state_update(), "kind": "event", "event": line, "decision": decision}

    def _metric(self, event: Event, snapshot: MetricsSnapshot) -> Update | None:
        if snapshot.project != self.project:
            return None
        point = {
            "t": event.timestamp.timestamp(),
            "rate": snapshot.request_rate,
            "error": snapshot.error_rate,
            "p99": snapshot.p99_latency_ms,
            "version": snapshot.version,
        }
        self.points[snapshot.track].append(point)
        return {"kind": "metric", "track": snapshot.track, "point": point}

    def _decision(self, event: Event) -> dict[str, Any] | None:
        payload = event.payload
        if isinstance(payload, DecisionMade):
            found = {"domain": payload.domain, "allow": payload.allow, "reasons": payload.reasons}
            found["inconclusive"] = payload.inconclusive
            found |= {"engine": payload.engine, "decision_id": payload.decision_id, "revision": payload.policy_revision}
        elif isinstance(payload, CanaryAnalysis):
            found = {"domain": f"canary analysis (step {payload.step}, {payload.weight}%)", "allow": payload.allow}
            found["inconclusive"] = payload.inconclusive
            found |= {"reasons": payload.reasons, "engine": "", "decision_id": payload.decision_id, "revision": ""}
        else:
            return None
        found["time"] = event.timestamp.isoformat()
        self.decisions.append(found)
        return found

    def snapshot(self) -> Update:
        """Everything a browser needs when it connects (or reconnects)."""
        return {
            **self.state_update(),
            "kind": "snapshot",
            "project": self.project,
            "actions": self.actions,
            "points": {track: list(points) for track, points in self.points.items()},
            "events": list(self.events),
            "decisions": list(self.decisions),
        }
