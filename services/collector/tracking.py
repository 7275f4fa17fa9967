"""What the collector remembers between scrape cycles, and what each cycle tells the world.

A `Tracker` keeps one window per target, whether it answered last time and its chaos gauge. One
`cycle()` scrapes every target, feeds the windows, and reports the per-track snapshots plus the
edges seen: `target.down` / `target.up` only when answering changes, `chaos.detected` only when
the gauge changes. No I/O but the scrapes, so it runs the same under the service and in tests.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from services.collector import analysis, judge
from services.collector.router import RouterLog
from services.collector.scrape import Outcome, Scraper, Target
from services.collector.targets import Project
from services.collector.window import TargetWindow, figures
from swiftdeploy_core.bus.events import (
    AnyPayload,
    ChaosDetected,
    ChaosMode,
    Comparison,
    MetricsSnapshot,
    TargetDown,
    TargetUp,
    Track,
)

CHAOS_MODES: dict[int, ChaosMode] = {0: "none", 1: "slow", 2: "error"}


@dataclass
class TargetState:
    target: Target
    window: TargetWindow = field(default_factory=TargetWindow)
    up: bool | None = None  # None until the first scrape
    chaos: ChaosMode | None = None  # None until a scrape showed the gauge


@dataclass(frozen=True)
class CycleReport:
    at: float  # the evaluation time of the snapshots
    outcomes: list[Outcome]
    snapshots: list[MetricsSnapshot]
    events: list[AnyPayload]  # edges, in the order seen


class Tracker:
    """Per-target windows and edge state, advanced one scrape cycle at a time."""

    def __init__(self, scraper: Scraper, window: float) -> None:
        self.scraper = scraper
        self.window = window
        self.states: dict[str, TargetState] = {}
        self.routers: dict[str, RouterLog] = {}  # by project: its nginx access log, followed
        self.projects: Mapping[str, Project] = {}

    async def cycle(self, targets: Sequence[Target], projects: Mapping[str, Project] | None = None) -> CycleReport:
        """One scrape of every target; `projects` say which read nginx's log and which have
        analysis queries (without them every track is measured from /metrics, as in the seed)."""
        self.sync(targets)
        self.follow(projects or {})
        outcomes = await self.scraper.scrape_all(targets)
        events = [event for outcome in outcomes for event in self.record(outcome)]
        end = time.time()
        for router in self.routers.values():  # after `end`: a line stamped before it is in the file
            router.read()
        snapshots = self.snapshots(end)
        return CycleReport(end, outcomes, await self.analyse(snapshots, end), events)

    def follow(self, projects: Mapping[str, Project]) -> None:
        """Tail the access log of every project measured at the router; forget the others."""
        self.projects = projects
        for name in list(self.routers):
            project = projects.get(name)
            if project is None or project.router_log != self.routers[name].tail.path:
                self.routers.pop(name).close()
        for name, project in projects.items():
            if project.source == "router" and project.router_log and name not in self.routers:
                self.routers[name] = RouterLog(project.router_log)

    async def analyse(self, snapshots: list[MetricsSnapshot], end: float) -> list[MetricsSnapshot]:
        """Attach each project's analysis queries' values, evaluated per track at `end`."""

        async def one(snapshot: MetricsSnapshot) -> MetricsSnapshot:
            spec = getattr(self.projects.get(snapshot.project), "analysis", None)
            if spec is None or not spec.metrics or spec.prometheus is None:
                return snapshot
            values = {"track": snapshot.track, "version": snapshot.version or "", "project": snapshot.project,
                      "window": analysis.window_duration(self.window)}  # fmt: skip
            found = await analysis.evaluate(self.scraper.session, spec.prometheus.url, spec.metrics, values, end,
                                            self.scraper.timeout)  # fmt: skip
            return snapshot.model_copy(update={"metrics": found})

        return list(await asyncio.gather(*(one(snapshot) for snapshot in snapshots)))

    def sync(self, targets: Iterable[Target]) -> None:
        """Follow the current target list: new targets start empty, removed ones are forgotten."""
        wanted = {target.url: target for target in targets}
        for url in list(self.states):
            if url not in wanted:
                del self.states[url]
        for url, target in wanted.items():
            state = self.states.get(url)
            if state is None or _owner(state.target) != _owner(target):
                # Its old samples belong to another track, or to an instance removed before this one took
                # its address (docker hands a removed container's IP to the next one).
                self.states[url] = TargetState(target)
            else:
                state.target = target

    def record(self, outcome: Outcome) -> list[AnyPayload]:
        state = self.states.get(outcome.target.url)
        if state is None:
            return []
        target = outcome.target
        events: list[AnyPayload] = []
        if outcome.scrape is None:
            if state.up is not False:
                events.append(TargetDown(url=target.url, track=target.track, error=outcome.error or "unknown"))
            state.up = False
            return events
        if state.up is False:
            events.append(TargetUp(url=target.url, track=target.track))
        state.up = True
        state.window.add(outcome.scrape)
        if outcome.scrape.chaos is not None:
            chaos = CHAOS_MODES.get(outcome.scrape.chaos, "none")
            if chaos != (state.chaos or "none"):  # first sight of a chaos counts as a change
                events.append(ChaosDetected(target=target.url, track=target.track,
                                            previous=state.chaos or "none", current=chaos))  # fmt: skip
            state.chaos = chaos
        return events

    def snapshots(self, end: float) -> list[MetricsSnapshot]:
        groups: dict[tuple[str, Track], list[TargetState]] = {}
        for state in self.states.values():
            groups.setdefault((state.target.project, state.target.track), []).append(state)
        found = [self._snapshot(project, track, states, end) for (project, track), states in sorted(groups.items())]
        return [self._compared(snapshot, found, end) for snapshot in found]

    def _compared(self, snapshot: MetricsSnapshot, found: list[MetricsSnapshot], end: float) -> MetricsSnapshot:
        """A router-measured canary's snapshot with its comparison against stable over the same
        window (both tracks watched for a whole window; the shorter window when the cap cut one)."""
        router = self.routers.get(snapshot.project)
        if router is None or snapshot.track != "canary" or snapshot.source != "router" or snapshot.requests is None:
            return snapshot
        stable = next((s for s in found if s.project == snapshot.project and s.track == "stable"), None)
        if stable is None or stable.source != "router" or stable.requests is None:
            reason = "no stable figures over the window to compare with"
            return snapshot.model_copy(update={"comparison": Comparison(reasons={"latency": reason, "errors": reason})})
        start = end - min(snapshot.window_seconds, stable.window_seconds)
        canary_samples = router.tracks["canary"].kept(start, end)
        stable_samples = router.tracks["stable"].kept(start, end)
        return snapshot.model_copy(update={"comparison": judge.compare(canary_samples, stable_samples)})

    def _snapshot(self, project: str, track: Track, states: list[TargetState], end: float) -> MetricsSnapshot:
        for state in states:
            state.window.prune(end - self.window)
        track_figures = figures((state.window for state in states), end=end, window=self.window)
        up = [state for state in states if state.up]
        chaos: ChaosMode = next((s.chaos for s in up if s.chaos is not None and s.chaos != "none"), "none")
        versions = [state.target.version for state in states if state.target.version]
        version = max(set(versions), key=versions.count) if versions else None
        snapshot = MetricsSnapshot(
            project=project,
            track=track,
            version=version,
            window_seconds=self.window,
            request_rate=track_figures.request_rate,
            error_rate=track_figures.error_rate,
            p99_latency_ms=track_figures.p99_ms,
            requests=track_figures.requests,
            chaos=chaos,
            targets=sorted(state.target.url for state in states),
            targets_up=len(up),
            source="app",
            samples=max((len(s) for state in states for s in state.window.requests.values()), default=0),
        )
        router = self.routers.get(project)
        if router is None:
            return snapshot
        # A new generation, a new window: a new canary of the same version may sit at a removed
        # one's address (docker reuses bridge IPs), so the instances count, not just the URLs.
        instances = ",".join(sorted(f"{s.target.url}#{s.target.instance or ''}" for s in states))
        return router_snapshot(snapshot, router, end, self.window, identity=f"{version}@{instances}")


NO_FIGURES = {"source": "router", "request_rate": None, "error_rate": None, "p99_latency_ms": None, "requests": None}


def _owner(target: Target) -> tuple[str, str, str | None]:
    return target.project, target.track, target.instance


def router_snapshot(
    snapshot: MetricsSnapshot, router: RouterLog, end: float, window: float, identity: str
) -> MetricsSnapshot:
    """The track's snapshot with nginx's figures in place of /metrics' (no log yet: no data);
    `identity` names the track's generation (a new one starts a new window)."""
    if not router.tail.opened:
        return snapshot.model_copy(update={"samples": None, **NO_FIGURES})
    found = router.figures(snapshot.track, identity, end, window)
    if not router.covered(snapshot.track, end, window):  # watched for less than a window: no data yet
        return snapshot.model_copy(update={"samples": found.samples, **NO_FIGURES})
    return snapshot.model_copy(
        update={
            "source": "router",
            "window_seconds": found.window,
            "samples": found.samples,
            "requests": float(found.samples),
            "request_rate": found.request_rate,
            "error_rate": found.error_rate,
            "client_error_rate": found.client_error_rate,
            "p50_latency_ms": _ms(found.p50_seconds),
            "p90_latency_ms": _ms(found.p90_seconds),
            "p99_latency_ms": _ms(found.p99_seconds),
        }
    )


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1000.0
