"""Every Redis stream, consumer group and key SwiftDeploy uses. Nothing else spells a key."""

from __future__ import annotations

PREFIX = "swiftdeploy"

# Streams. Commands and requests go to one service's inbox; facts go to EVENTS.
ORCHESTRATOR_INBOX = f"{PREFIX}:stream:orchestrator"
GATEKEEPER_INBOX = f"{PREFIX}:stream:gatekeeper"
COLLECTOR_INBOX = f"{PREFIX}:stream:collector"
AUDITOR_INBOX = f"{PREFIX}:stream:auditor"
NOTIFIER_INBOX = f"{PREFIX}:stream:notifier"
EVENTS = f"{PREFIX}:stream:events"  # the audit stream: everything that happened
METRICS = f"{PREFIX}:stream:metrics"  # metrics.snapshot, capped; never audited
DEAD_LETTER = f"{PREFIX}:stream:dead-letter"

INBOXES = {
    "orchestrator": ORCHESTRATOR_INBOX,
    "gatekeeper": GATEKEEPER_INBOX,
    "collector": COLLECTOR_INBOX,
    "auditor": AUDITOR_INBOX,
    "notifier": NOTIFIER_INBOX,
}


def group(service: str) -> str:
    """The consumer group that the replicas of one service share."""
    return f"{PREFIX}:group:{service}"


# Keys.
def processed_key(service: str) -> str:
    """Set of event ids a service has finished handling (idempotency)."""
    return f"{PREFIX}:processed:{service}"


def health_key(service: str, instance: str) -> str:
    """Heartbeat of one service instance, with a TTL."""
    return f"{PREFIX}:health:{service}:{instance}"


def rollout_key(project: str) -> str:
    """The one stored status record of a project's rollout."""
    return f"{PREFIX}:rollout:{project}"


def lock_key(project: str) -> str:
    """The lease lock that allows one operation at a time per deployment."""
    return f"{PREFIX}:lock:{project}"


def fence_key(project: str) -> str:
    """The deployment's fencing counter: each lease taken gets the next number (never reused)."""
    return f"{PREFIX}:fence:{project}"


def latest_snapshot_key(project: str, track: str) -> str:
    """The collector's latest metrics snapshot for one track."""
    return f"{PREFIX}:snapshot:{project}:{track}"


def host_stats_key(project: str) -> str:
    """The collector's latest host stats."""
    return f"{PREFIX}:host:{project}"


def notified_key(event_id: str) -> str:
    """Hash of notification target index -> outcome (`sent` / `failed`) for one event (no repeats)."""
    return f"{PREFIX}:notified:{event_id}"


NOTIFIER_SINCE = f"{PREFIX}:notifier:since"  # when the first notifier started: older events are not sent


def notify_claim_key(event_id: str, target: int) -> str:
    """A notifier replica's short lease on delivering one event to one target (no two at once)."""
    return f"{PREFIX}:notify:claim:{event_id}:{target}"


def delivery_count_key(service: str) -> str:
    """Hash of entry id -> failed attempts, for dead-lettering."""
    return f"{PREFIX}:failures:{service}"


def audit_claim_key(history_id: str, event_id: str) -> str:
    """The auditor's claim on one event for one history file: `pending:<offset>` or `written`."""
    return f"{PREFIX}:audit:claim:{history_id}:{event_id}"


def audit_head_key(history_id: str) -> str:
    """The hash of the last line the auditor appended to one history file (detects a cut tail)."""
    return f"{PREFIX}:audit:head:{history_id}"


def audit_mode_key(project: str) -> str:
    """The serving mode as of the last `mode.changed` the auditor recorded for a project."""
    return f"{PREFIX}:audit:mode:{project}"
