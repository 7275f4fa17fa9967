"""One short human sentence per event, for the audit report, `status` and command progress.

Works on the flat form the history stores (payload fields at the top, a chaos mode as
`chaos_mode`); `event_fields` gives that form for a live `Event`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from swiftdeploy_core.bus.events import Event, RouterSplit

Entry = dict[str, Any]
# Keys of a history line that are not the event's own figures.
RESERVED = ("timestamp", "type", "mode", "event_id", "correlation_id", "causation_id", "source", "prev", "hash")


def event_fields(event: Event) -> Entry:
    """An event's payload as flat fields, named as in a history line (without the envelope)."""
    fields: Entry = {"type": event.type}
    for key, value in event.payload.model_dump(mode="json", exclude={"type"}).items():
        if key == "mode" and event.type.startswith("chaos."):
            key = "chaos_mode"  # a chaos mode (slow/error/recover) is not the serving mode
        elif key in RESERVED and key != "mode":
            key = f"payload_{key}"
        fields.setdefault(key, value)
    return fields


def _reasons(entry: Entry) -> str:
    return "; ".join(entry.get("reasons") or []) or "no reason given"


def _count(entry: Entry, key: str, noun: str) -> str:
    number = len(entry.get(key) or [])
    return f"{number} {noun}{'' if number == 1 else 's'}"


def _pct(value: Any) -> str:
    return "n/a" if value is None else f"{value}%"


def _chaos(entry: Entry) -> str:
    parts = [str(entry.get("chaos_mode", "?"))]
    if entry.get("rate") is not None:
        parts.append(f"rate {entry['rate']}")
    if entry.get("duration") is not None:
        parts.append(f"duration {entry['duration']}s")
    if entry.get("instances"):
        parts.append(f"on {_count(entry, 'instances', 'instance')}")
    return ", ".join(parts)


def _analysis(entry: Entry) -> str:
    if entry.get("allow"):
        verdict = "passed"
    elif entry.get("inconclusive"):
        verdict = f"inconclusive, holding: {_reasons(entry)}"
    else:
        verdict = f"failed: {_reasons(entry)}"
    inconclusive = entry.get("inconclusive_checks") or 0
    return (
        f"step {entry.get('step')} at {_pct(entry.get('weight'))}: {verdict} "
        f"(failures in a row: {entry.get('consecutive_failures', 0)}"
        + (f", inconclusive: {inconclusive}" if inconclusive else "")
        + ")"
    )


def _rollback(entry: Entry) -> str:
    how = "automatic" if entry.get("automatic") else "manual"
    reasons = f": {_reasons(entry)}" if entry.get("reasons") else ""
    runs = f" ({entry['digest']})" if entry.get("digest") else ""
    replaced = f", {entry['replaced']} removed" if entry.get("replaced") else ""
    return f"back on {entry.get('version')}{runs} ({how}{replaced}){reasons}"


def _progress(entry: Entry) -> str:
    current, total = int(entry.get("current") or 0), int(entry.get("total") or 0)
    size = f" {current / 1e6:.1f}/{total / 1e6:.1f} MB" if total else (f" {current / 1e6:.1f} MB" if current else "")
    return f"{entry.get('status') or 'pulling'}{size}"


def _decision(entry: Entry) -> str:
    verdict = (
        "allow"
        if entry.get("allow")
        else f"{'inconclusive' if entry.get('inconclusive') else 'deny'}: {_reasons(entry)}"
    )
    return f"{entry.get('domain')}: {verdict}"


DESCRIBERS: dict[str, Callable[[Entry], str]] = {
    "deploy.requested": lambda e: f"manifest {str(e.get('manifest_sha256', ''))[:12]}",
    "deploy.started": lambda e: f"{e.get('project')} {e.get('version')} on {e.get('runtime')}",
    "deploy.step": lambda e: f"{e.get('step')}" + (f": {e['detail']}" if e.get("detail") else ""),
    "image.pulling": lambda e: f"{e.get('image')} from {e.get('registry')}: {_progress(e)}",
    "image.pulled": lambda e: (
        f"{e.get('image')} -> {e.get('digest')}"
        + (f" (pulled in {float(e.get('seconds') or 0):.1f}s)" if str(e.get("pulled")).lower() in ("true", "1") else "")
    ),
    "deploy.blocked": _reasons,
    "deploy.completed": lambda e: (
        f"{e.get('version')} serving at {e.get('url')} ({_count(e, 'instances', 'instance')})"
        + (f" running {e['digest']}" if e.get("digest") else "")
    ),
    "deploy.failed": lambda e: str(e.get("error")),
    "canary.requested": lambda e: f"manifest {str(e.get('manifest_sha256', ''))[:12]}",
    "canary.started": lambda e: f"{e.get('version')} ({e.get('digest') or e.get('image')}) at {_pct(e.get('weight'))}",
    "canary.weight_changed": lambda e: f"step {e.get('step')}: {_pct(e.get('previous'))} → {_pct(e.get('weight'))}",
    "canary.analysis": _analysis,
    "canary.paused": lambda e: (
        f"step {e.get('step')} at {_pct(e.get('weight'))}: "
        + (f"paused until {e['until']}" if e.get("until") else "paused until `promote canary --continue`")
    ),
    "canary.resumed": lambda e: f"step {e.get('step')}: pause released",
    "canary.replaced": lambda e: (
        f"{e.get('previous_version')} (at step {e.get('step')}) → {e.get('version')}, from the first step"
    ),
    "router.drift_repaired": lambda e: (
        "nginx served "
        + RouterSplit.model_validate(e.get("found") or {}).describe()
        + "; put back to "
        + RouterSplit.model_validate(e.get("expected") or {}).describe()
    ),
    "instance.restarted": lambda e: (
        f"{e.get('instance')} ({e.get('track')}) {e.get('reason')}; restart {e.get('restarts')}"
    ),
    "canary.completed": lambda e: f"{e.get('version')} at {_pct(e.get('weight'))}, awaiting promote stable",
    "rollback.requested": lambda e: str(e.get("reason", "")),
    "rollback.completed": _rollback,
    "promotion.requested": lambda e: "promote the canary to stable",
    "promotion.blocked": _reasons,
    "promotion.completed": lambda e: f"{e.get('previous_version')} → {e.get('version')}",
    "bake.started": lambda e: f"{e.get('version')} baking until {e.get('until')}, {e.get('previous_version')} kept",
    "bake.analysis": lambda e: (
        f"{e.get('version')}: "
        + ("allow" if e.get("allow") else f"deny ({e.get('consecutive_failures')}): {_reasons(e)}")
    ),
    "bake.completed": lambda e: f"{e.get('version')} baked; {e.get('previous_version')}'s record dropped",
    "bake.failed": lambda e: f"{e.get('version')} denied, back to {e.get('previous_version')}: {_reasons(e)}",
    "mode.changed": lambda e: f"{e.get('previous')} → {e.get('mode')} ({e.get('version')})",
    "teardown.requested": lambda e: f"{e.get('project')}",
    "teardown.completed": lambda e: f"removed {_count(e, 'removed', 'object')}",
    "operation.failed": lambda e: f"{e.get('command')}: {e.get('error')}",
    "command.rejected": lambda e: f"{e.get('command')}: {e.get('reason')}",
    "chaos.requested": _chaos,
    "chaos.injected": _chaos,
    "chaos.detected": lambda e: f"{e.get('target')} ({e.get('track')}): {e.get('previous')} → {e.get('current')}",
    "decision.made": _decision,
    "policy.violation": lambda e: f"{e.get('domain')}: {_reasons(e)}",
    "target.down": lambda e: f"{e.get('url')} ({e.get('track')}): {e.get('error')}",
    "target.up": lambda e: f"{e.get('url')} ({e.get('track')})",
    "notification.sent": lambda e: (
        f"{e.get('event_type')} to {e.get('url')}: HTTP {e.get('status')} ({e.get('attempts')} attempt(s))"
    ),
    "notification.failed": lambda e: (
        f"{e.get('event_type')} to {e.get('url')}: {e.get('error')} after {e.get('attempts')} attempt(s)"
    ),
    "audit.rendered": lambda e: (
        f"history verified ({e.get('lines')} lines)"
        if e.get("chain_ok")
        else f"history chain broken at line {e.get('first_bad_line')}: {e.get('problem')}"
    ),
    "gate.checked": lambda e: (
        f"{e.get('on')} gate {e.get('url')}: {'allow' if e.get('allow') else 'hold'}: {e.get('reason')}"
    ),
}


def describe_event(event: Event) -> str:
    return describe(event_fields(event))


def describe(entry: Entry) -> str:
    """A one-line description of an entry; unknown types list their figures."""
    describer = DESCRIBERS.get(entry.get("type", ""))
    if describer is not None:
        return describer(entry)
    figures = (f"{k}={v}" for k, v in entry.items() if k not in RESERVED and not k.startswith("payload_"))
    return ", ".join(figures)


def cell(text: Any) -> str:
    """Make any value safe inside one Markdown table cell."""
    return str(text).replace("\\", "\\\\").replace("|", "\\|").replace("\r", " ").replace("\n", " ")
