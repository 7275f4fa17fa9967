"""Which instances to scrape: every project's rollout record, plus the manifest's static targets.

The orchestrator writes one `RolloutState` per project; each running instance in it is a target
with its track and version. `collector.targets` in the collector's own manifest adds targets that
SwiftDeploy did not start (a URL may end in `#canary` to put it on the canary track).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import get_args
from urllib.parse import urldefrag

import redis.asyncio as aioredis
from pydantic import ValidationError

from services.collector.scrape import SEED_NAMES, MetricNames, Target
from swiftdeploy_core.bus import streams
from swiftdeploy_core.bus.events import MetricSource, Track
from swiftdeploy_core.project.manifest import AnalysisSpec, LoadedManifest, Manifest
from swiftdeploy_core.project.router import router_access_log
from swiftdeploy_core.project.state import RolloutState

log = logging.getLogger("swiftdeploy.collector.targets")

TRACKS = get_args(Track)


@dataclass(frozen=True)
class Project:
    """Where a project's host stats come from (its runtime and folder), and its figures: nginx's
    access log (`source` "router") or its instances' /metrics ("app"), plus analysis queries."""

    name: str
    runtime: str  # "docker" or "process"
    root: Path
    source: MetricSource = "app"  # a record without a readable manifest keeps the seed's source
    router_log: Path | None = None
    analysis: AnalysisSpec = field(default_factory=AnalysisSpec)
    names: MetricNames = SEED_NAMES  # what the `app` source reads in /metrics

    @classmethod
    def of(cls, name: str, runtime: str, root: Path, manifest: Manifest | None) -> Project:
        if manifest is None:
            return cls(name, runtime, root)
        source = manifest.services.metrics
        log = router_access_log(manifest, root) if source == "router" else None
        return cls(name, runtime, root, source, log, manifest.analysis, names_of(manifest))


@dataclass
class Discovery:
    targets: list[Target] = field(default_factory=list)
    projects: dict[str, Project] = field(default_factory=dict)


async def discover(redis: aioredis.Redis, manifest: LoadedManifest | None = None) -> Discovery:
    """Targets from every rollout record in Redis, then the manifest's static ones."""
    found = Discovery()
    by_url: dict[str, Target] = {}
    async for key in redis.scan_iter(match=streams.rollout_key("*"), count=100):
        state = await _read_state(redis, key)
        if state is None:
            continue
        project = Project.of(state.project, state.runtime, Path(state.root or "."), _manifest_of(state))
        found.projects[state.project] = project
        for instance in state.instances():
            by_url[instance.url] = Target(
                instance.url,
                state.project,
                instance.track,
                instance.version,
                project.source,
                project.names,
                instance.id,
            )
    if manifest is not None:
        spec = manifest.manifest
        # Static targets are /metrics endpoints: without a rollout record, the project is scraped.
        found.projects.setdefault(spec.project, Project(spec.project, spec.runtime.value, manifest.root))
        for target in static_targets(manifest):
            by_url.setdefault(target.url, target)
    found.targets = sorted(by_url.values(), key=lambda target: target.url)
    return found


def static_targets(manifest: LoadedManifest) -> list[Target]:
    spec = manifest.manifest
    targets = []
    for raw in spec.collector.targets:
        url, fragment = urldefrag(raw)
        track = fragment if fragment in TRACKS else "stable"
        version = spec.canary_version if track == "canary" else spec.services.version
        targets.append(Target(url=url, project=spec.project, track=track, version=version, names=names_of(spec)))  # type: ignore[arg-type]
    return targets


def names_of(manifest: Manifest) -> MetricNames:
    return MetricNames(**manifest.services.app_metrics.model_dump())


def _manifest_of(state: RolloutState) -> Manifest | None:
    try:
        return Manifest.model_validate(state.manifest) if state.manifest else None
    except ValidationError:
        return None


async def _read_state(redis: aioredis.Redis, key: bytes | str) -> RolloutState | None:
    try:
        raw = await redis.get(key)
    except aioredis.ResponseError:  # not a string: not a record this collector understands
        return None
    if raw is None:
        return None  # removed between SCAN and GET
    try:
        return RolloutState.model_validate_json(raw)
    except ValidationError as exc:
        log.warning("skipping unreadable rollout record %s: %s", key, exc.errors()[0]["msg"])
        return None
