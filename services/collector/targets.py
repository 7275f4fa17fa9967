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

from services.collector.scrape import Target
from swiftdeploy_core.bus import streams
from swiftdeploy_core.bus.events import Track
from swiftdeploy_core.project.manifest import LoadedManifest
from swiftdeploy_core.project.state import RolloutState

log = logging.getLogger("swiftdeploy.collector.targets")

TRACKS = get_args(Track)


@dataclass(frozen=True)
class Project:
    """Where a project's host stats come from: its runtime and its folder."""

    name: str
    runtime: str  # "docker" or "process"
    root: Path


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
        found.projects[state.project] = Project(state.project, state.runtime, Path(state.root or "."))
        for instance in state.instances():
            by_url[instance.url] = Target(instance.url, state.project, instance.track, instance.version)
    if manifest is not None:
        project = manifest.manifest.project
        found.projects.setdefault(project, Project(project, manifest.manifest.runtime.value, manifest.root))
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
        targets.append(Target(url=url, project=spec.project, track=track, version=version))  # type: ignore[arg-type]
    return targets


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
