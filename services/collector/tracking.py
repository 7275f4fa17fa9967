"""What the collector remembers between scrape cycles, and what each cycle tells the world.

A `Tracker` keeps one window per target, whether it answered last time and its chaos gauge. One
`cycle()` scrapes every target, feeds the windows, and reports the per-track snapshots plus the
edges seen: `target.down` / `target.up` only when answering changes, `chaos.detected` only when
the gauge changes. No I/O but the scrapes, so it runs the same under the service and in tests.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from services.collector.scrape import Outcome, Scraper, Target
from services.collector.window import TargetWindow, figures
from swiftdeploy_core.bus.events import (
    AnyPayload,
    ChaosDetected,
    ChaosMode,
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

    async def cycle(self, targets: Sequence[Target]) -> CycleReport:
        self.sync(targets)
        outcomes = await self.scraper.scrape_all(targets)
        events = [event for outcome in outcomes for event in self.record(outcome)]
        end = time.time()
        return CycleReport(end, outcomes, self.snapshots(end), events)

    def sync(self, targets: Iterable[Target]) -> None:
        """Follow the current target list: new targets start empty, removed ones are forgotten."""
        wanted = {target.url: target for target in targets}
        for url in list(self.states):
            if url not in wanted:
                del self.states[url]
        for url, target in wanted.items():
            state = self.states.get(url)
            if state is None or (state.target.project, state.target.track) != (target.project, target.track):
                self.states[url] = TargetState(target)  # its old samples belong to another track
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
        return [self._snapshot(project, track, states, end) for (project, track), states in sorted(groups.items())]

    def _snapshot(self, project: str, track: Track, states: list[TargetState], end: float) -> MetricsSnapshot:
        for state in states:
            state.window.prune(end - self.window)
        track_figures = figures((state.window for state in states), end=end, window=self.window)
        up = [state for state in states if state.up]
        chaos: ChaosMode = next((s.chaos for s in up if s.chaos is not None and s.chaos != "none"), "none")
        versions = [state.target.version for state in states if state.target.version]
        return MetricsSnapshot(
            project=project,
            track=track,
            version=max(set(versions), key=versions.count) if versions else None,
            window_seconds=self.window,
            request_rate=track_figures.request_rate,
            error_rate=track_figures.error_rate,
            p99_latency_ms=track_figures.p99_ms,
            requests=track_figures.requests,
            chaos=chaos,
            targets=sorted(state.target.url for state in states),
            targets_up=len(up),
        )
