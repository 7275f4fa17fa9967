"""What `swiftdeploy status` shows: a view model built from stored records, rendered with rich.

Pure: `build_view` turns the rollout record, the collector's snapshots, instance health, the
gatekeeper's decisions and recent events into a `StatusView`; `render` draws one frame;
`StatusView.to_json` is the `--json` object. Gathering those inputs is `swiftdeploy_core.client.status_probe`.
"""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel
from rich.console import Group, RenderableType
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from swiftdeploy_core.bus.events import Comparison, HostStats, MetricsSnapshot
from swiftdeploy_core.project.state import RolloutState, TrackState

Verdict = Literal["PASSING", "FAILING", "UNKNOWN"]
SPARK = "▁▂▃▄▅▆▇█"
SPARK_WIDTH = 30


class InstanceView(BaseModel):
    url: str
    name: str = ""
    node: str = ""  # swarm runtime: where its task runs
    healthy: bool | None = None  # None: not probed / no answer yet


class TrackView(BaseModel):
    track: str
    version: str
    image: str = ""
    digest: str | None = None  # `repo@sha256:...` that runs (docker runtime)
    weight: int
    replicas: int
    instances: list[InstanceView]
    request_rate: float | None = None
    error_rate: float | None = None
    p99_latency_ms: float | None = None
    chaos: str = "none"
    source: str | None = None  # where the figures came from: router (nginx's log) or app (/metrics)
    samples: int | None = None


class PolicyView(BaseModel):
    """One policy domain's compliance, as the gatekeeper decided it (or why it could not)."""

    domain: str
    status: Verdict
    allow: bool | None = None
    reasons: list[str] = []
    decision_id: str | None = None
    input: dict[str, Any] = {}
    policy_revision: str | None = None  # the revision the decision came from (with OPA: what it serves)
    policy_drift: str | None = None  # set when that is not the project's files

    @classmethod
    def unknown(cls, domain: str, reason: str, input: dict[str, Any] | None = None) -> PolicyView:
        return cls(domain=domain, status="UNKNOWN", reasons=[reason], input=input or {})

    @classmethod
    def decided(
        cls, domain: str, allow: bool, reasons: list[str], decision_id: str, input: dict[str, Any],
        revision: str | None = None, drift: str | None = None,
    ) -> PolicyView:  # fmt: skip
        verdict: Verdict = "PASSING" if allow else "FAILING"
        return cls(domain=domain, status=verdict, allow=allow, reasons=reasons, decision_id=decision_id, input=input,
                   policy_revision=revision, policy_drift=drift)  # fmt: skip


class EventLine(BaseModel):
    timestamp: datetime
    type: str
    summary: str = ""


class ServiceQueue(BaseModel):
    """One service's share of the bus: entries delivered to its group but not acknowledged
    (`pending`), not delivered yet (`undelivered`, counted up to `BACKLOG_CAP` per stream), and
    entries it dead-lettered (counted among the last `BACKLOG_CAP` of the dead-letter stream)."""

    service: str
    pending: int = 0
    undelivered: int = 0
    dead_letters: int = 0


class BusView(BaseModel):
    """The bus's backlog. `auditor_lag`: events on the events stream not yet in the history
    (the auditor group's pending plus undelivered entries; None when no auditor group exists)."""

    auditor_lag: int | None = None
    services: list[ServiceQueue] = []
    capped: bool = False  # a count reached BACKLOG_CAP: the figures are lower bounds


class StatusView(BaseModel):
    """One refresh of the dashboard."""

    project: str
    phase: str
    mode: str
    chaos: str
    router_url: str | None = None
    step: str | None = None  # "2 of 5", with the pause and its deadline when waiting at one
    tracks: list[TrackView]
    request_rate: float | None
    error_rate: float | None
    p99_latency_ms: float | None
    comparison: Comparison | None = None  # the canary against stable over the same window
    host: HostStats | None = None
    policies: dict[str, PolicyView]
    events: list[EventLine] = []
    error_history: list[float] = []
    p99_history: list[float] = []
    bus: BusView | None = None
    checked_at: datetime

    def to_json(self) -> dict[str, Any]:
        data = self.model_dump(mode="json")
        data["policies"] = {name: {k: v for k, v in p.items() if k != "domain"} for name, p in data["policies"].items()}
        return data


def serving_track(rollout: RolloutState | None) -> str:
    """Whose figures the headline shows: the canary's while one runs, else stable's."""
    return "canary" if rollout is not None and rollout.canary is not None else "stable"


def _track_view(track: TrackState, snapshot: MetricsSnapshot | None, health: dict[str, bool | None]) -> TrackView:
    return TrackView(
        track=track.track,
        version=track.version,
        image=track.image,
        digest=track.digest,
        weight=track.weight,
        replicas=len(track.instances),
        instances=[
            InstanceView(url=i.url, name=i.name, node=i.node, healthy=health.get(i.url)) for i in track.instances
        ],
        request_rate=snapshot.request_rate if snapshot else None,
        error_rate=snapshot.error_rate if snapshot else None,
        p99_latency_ms=snapshot.p99_latency_ms if snapshot else None,
        chaos=snapshot.chaos if snapshot else "none",
        source=snapshot.source if snapshot else None,
        samples=snapshot.samples if snapshot else None,
    )


def build_view(
    project: str,
    rollout: RolloutState | None,
    snapshots: dict[str, MetricsSnapshot],
    *,
    host: HostStats | None = None,
    health: dict[str, bool | None] | None = None,
    policies: dict[str, PolicyView] | None = None,
    events: list[EventLine] | None = None,
    history: list[MetricsSnapshot] | None = None,
    bus: BusView | None = None,
    now: datetime | None = None,
) -> StatusView:
    """Assemble one refresh from what the stores hold; missing pieces show as no data."""
    tracks = [t for t in (rollout.stable, rollout.canary) if t is not None] if rollout else []
    views = [_track_view(t, snapshots.get(t.track), health or {}) for t in tracks]
    serving = snapshots.get(serving_track(rollout))
    chaos = next((v.chaos for v in views if v.track == "canary" and v.chaos != "none"), None)
    history = history or []
    return StatusView(
        project=project,
        phase=rollout.phase.value if rollout else "empty",
        mode=rollout.mode if rollout else "stable",
        chaos=chaos or next((v.chaos for v in views if v.chaos != "none"), "none"),
        router_url=rollout.router_url if rollout else None,
        step=step_line(rollout),
        tracks=views,
        request_rate=serving.request_rate if serving else None,
        error_rate=serving.error_rate if serving else None,
        p99_latency_ms=serving.p99_latency_ms if serving else None,
        comparison=serving.comparison if serving else None,
        host=host,
        policies=policies or {},
        events=events or [],
        error_history=[s.error_rate for s in history if s.error_rate is not None],
        p99_history=[s.p99_latency_ms for s in history if s.p99_latency_ms is not None],
        bus=bus,
        checked_at=now or datetime.now(UTC),
    )


# --- rendering --------------------------------------------------------------------------------


def sparkline(values: list[float], width: int = SPARK_WIDTH) -> str:
    """The last `width` values as block characters scaled between their min and max."""
    values = values[-width:]
    if not values:
        return ""
    low, high = min(values), max(values)
    span = (high - low) or 1.0
    return "".join(SPARK[min(len(SPARK) - 1, int((v - low) / span * (len(SPARK) - 1) + 0.5))] for v in values)


def fmt_rate(value: float | None) -> str:
    return "—" if value is None else f"{value:.1f}/s"


def fmt_pct(value: float | None) -> str:
    return "—" if value is None else f"{value * 100:.2f}%"


def fmt_ms(value: float | None) -> str:
    return "—" if value is None else f"{value:.0f} ms"


def _replicas(track: TrackView) -> str:
    """`2`, or on a swarm the tasks per node: `2 (node-a 1, node-b 1)`."""
    nodes = Counter(i.node for i in track.instances if i.node)
    per_node = ", ".join(f"{node} {count}" for node, count in sorted(nodes.items()))
    return f"{track.replicas} ({per_node})" if per_node else str(track.replicas)


def _health(track: TrackView) -> Text:
    up = sum(1 for i in track.instances if i.healthy)
    unknown = sum(1 for i in track.instances if i.healthy is None)
    style = "green" if up == track.replicas and track.replicas else ("yellow" if unknown else "red")
    mark = "✓" if style == "green" else ("?" if style == "yellow" else "✗")
    return Text(f"{mark} {up}/{track.replicas} healthy", style=style)


def step_line(rollout: RolloutState | None) -> str | None:
    """`step 2 of 5`, `step 2 of 5, paused until 12:03:01 UTC`, `... paused until promote canary --continue`."""
    if rollout is None or rollout.canary is None or rollout.step < 0:
        return None
    steps = len(rollout.manifest.get("canary", {}).get("steps", [])) or rollout.step + 1
    line = f"step {rollout.step + 1} of {steps}"
    pause = rollout.pause
    if pause is None:
        return line
    if pause.released:
        return f"{line}, pause released"
    if pause.until is None:
        return f"{line}, paused until `promote canary --continue`"
    return f"{line}, paused until {pause.until:%H:%M:%S} UTC"


def _header(view: StatusView) -> Text:
    text = Text.assemble(("SwiftDeploy ", "bold"), (view.project, "bold cyan"), f" · phase {view.phase} · mode ")
    text.append(view.mode.upper(), style="bold magenta" if view.mode == "canary" else "bold green")
    text.append(" · chaos ")
    text.append(view.chaos, style="bold red" if view.chaos != "none" else "green")
    if view.step:
        text.append(f" · {view.step}")
    text.append(f" · checked {view.checked_at:%H:%M:%S} UTC", style="dim")
    return text


def _tracks_table(view: StatusView) -> Table:
    table = Table(title="Tracks", expand=True, title_justify="left")
    for column in ("Track", "Version", "Image", "Weight", "Replicas", "Health", "Req/s", "Errors", "P99", "Source"):
        table.add_column(column, no_wrap=column in ("Health", "Track"), overflow="fold")
    for t in view.tracks:
        table.add_row(
            t.track,
            t.version,
            t.digest or t.image,
            f"{t.weight}%",
            _replicas(t),
            _health(t),
            fmt_rate(t.request_rate),
            fmt_pct(t.error_rate),
            fmt_ms(t.p99_latency_ms),
            _source(t),
        )
    if not view.tracks:
        table.add_row("—", "nothing deployed", "", "", "", "", "", "", "")
    return table


def _source(track: TrackView) -> str:
    if track.source is None:
        return "—"
    return track.source if track.samples is None else f"{track.source} · {track.samples} samples"


def _policies_table(view: StatusView) -> Table:
    table = Table(title="Policy compliance (decided by the gatekeeper)", expand=True, title_justify="left")
    table.add_column("Policy")
    table.add_column("Status")
    table.add_column("Reasons", ratio=1)
    styles = {
        "PASSING": ("✓ PASSING", "bold green"),
        "FAILING": ("✗ FAILING", "bold red"),
        "UNKNOWN": ("? UNKNOWN", "bold yellow"),
    }
    for name, policy in view.policies.items():
        label, style = styles[policy.status]
        table.add_row(name, Text(label, style=style), "; ".join(policy.reasons) or "—")
    drifts = sorted({policy.policy_drift for policy in view.policies.values() if policy.policy_drift})
    if drifts:  # OPA decides with other policies than the project's files
        table.caption = Text("\n".join(f"warning: {drift}" for drift in drifts), style="bold yellow")
        table.caption_justify = "left"
    return table


def _traffic(view: StatusView) -> Text:
    return Text.assemble(
        ("Traffic ", "bold"), f"{fmt_rate(view.request_rate)}   ",
        ("error rate ", "bold"), f"{fmt_pct(view.error_rate)} ", (sparkline(view.error_history), "red"),
        ("   P99 ", "bold"), f"{fmt_ms(view.p99_latency_ms)} ", (sparkline(view.p99_history), "yellow"),
    )  # fmt: skip


def comparison_line(comparison: Comparison | None) -> str:
    """`vs stable  latency median 53 vs 2 ms (x26.5, p 1e-95, 277/283) · errors 0% vs 0% (p 1)`."""
    if comparison is None:
        return ""
    parts = []
    latency, errors = comparison.latency, comparison.errors
    if latency is not None:
        ratio = f"x{latency.ratio:.2f}, " if latency.ratio is not None else ""
        parts.append(f"latency median {latency.canary_median_ms:g} vs {latency.stable_median_ms:g} ms "
                     f"({ratio}p {latency.p_value:.3g}, {latency.canary_samples}/{latency.stable_samples})")  # fmt: skip
    else:
        parts.append(f"latency: {comparison.reasons.get('latency', 'not compared')}")
    if errors is not None:
        parts.append(
            f"errors {errors.canary_error_rate:.2%} vs {errors.stable_error_rate:.2%} (p {errors.p_value:.3g})"
        )
    return "vs stable  " + " · ".join(parts)


def _events_table(view: StatusView) -> Table:
    table = Table(title="Last events", expand=True, title_justify="left", show_header=False)
    table.add_column("When", style="dim", no_wrap=True)
    table.add_column("Type", style="cyan", no_wrap=True)
    table.add_column("Details", ratio=1)
    for event in view.events:
        table.add_row(f"{event.timestamp:%H:%M:%S}", event.type, event.summary)
    if not view.events:
        table.add_row("—", "", "no events yet")
    return table


def _bus_line(view: StatusView) -> Text:
    """`Bus  auditor lag 12 events · orchestrator 0 pending 0 dead · …` (dead letters in red)."""
    if view.bus is None:
        return Text("")
    plus = "+" if view.bus.capped else ""
    lag = "-" if view.bus.auditor_lag is None else f"{view.bus.auditor_lag}{plus}"
    parts: list[str | tuple[str, str]] = [("Bus ", "bold"), ("auditor lag ", "bold"), f"{lag} events"]
    for queue in view.bus.services:
        waiting = queue.pending + queue.undelivered
        parts += [" · ", f"{queue.service} {waiting}{plus} waiting "]
        parts.append((f"{queue.dead_letters} dead", "red" if queue.dead_letters else ""))
    return Text.assemble(*parts)


def render(view: StatusView) -> RenderableType:
    """One dashboard frame."""
    host = ""
    if view.host is not None:
        host = f"host: disk free {view.host.disk_free_gb:.1f} GB · CPU load {view.host.cpu_load:.2f}"
    compared = [Text(comparison_line(view.comparison))] if view.comparison is not None else []
    body = Group(
        _header(view),
        _traffic(view),
        *compared,
        _tracks_table(view),
        _policies_table(view),
        _events_table(view),
        _bus_line(view),
        Text(host, style="dim"),
    )
    return Panel(body, title="swiftdeploy status", subtitle=view.router_url or "", border_style="blue")
