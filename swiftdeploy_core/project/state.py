"""The rollout's stored status record: one JSON document per project in Redis.

The orchestrator is its only writer (each tick reads it, acts idempotently, writes it back); the
collector reads it to learn its scrape targets, and `status` reads it to show what serves.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import Enum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from swiftdeploy_core.bus.events import Track


class Phase(str, Enum):
    """Where a deployment is in its life."""

    empty = "empty"  # nothing deployed (or torn down)
    deploying = "deploying"  # a deploy is creating the stable track
    stable = "stable"  # only the stable track serves
    canary_starting = "canary_starting"  # the canary track is being created
    progressing = "progressing"  # the canary serves a step's weight and is analysed each interval
    canary_complete = "canary_complete"  # the canary reached the last step; awaiting promote stable
    promoting = "promoting"  # the canary is becoming stable
    rolling_back = "rolling_back"  # traffic is returning to stable and the canary is being removed
    failed = "failed"  # an operation failed and was undone; stable (if any) still serves


class Instance(BaseModel):
    """One running workload instance, reachable at `url` from where the services run."""

    model_config = ConfigDict(frozen=True)

    id: str  # container id or pid
    name: str
    track: Track
    version: str
    url: str  # e.g. http://127.0.0.1:41234
    node: str = ""  # swarm runtime: the hostname of the node its task was started on


class TrackState(BaseModel):
    track: Track
    version: str
    image: str
    digest: str | None = None  # the exact image that runs (`repo@sha256:...`); None: process runtime
    settings: str = ""  # sha256 of version, image, env, secret names, command, args (never values)
    weight: int = 0  # percent of traffic
    instances: list[Instance] = []
    # Router chaos (`swiftdeploy chaos error --router`): nginx answers 500 to this percent of the
    # track's requests. Kept on the canary track, so it goes when the canary goes.
    router_error_percent: float = 0.0


class Pause(BaseModel):
    """The rollout waits at a pause step: until `until` (a timed pause) or until released by
    `promote canary --continue` (an open pause, `until` None)."""

    step: int
    until: datetime | None = None
    released: bool = False


class RolloutState(BaseModel):
    """Everything needed to continue, or roll back, after a restart."""

    project: str
    phase: Phase = Phase.empty
    runtime: str = "docker"
    root: str = ""  # the manifest's folder
    manifest: dict[str, Any] = {}
    stable: TrackState | None = None
    canary: TrackState | None = None
    step: int = -1  # index into canary.steps; -1 before the first step
    stepped_at: datetime | None = None  # when `step` was reached: the progress deadline counts from it
    pause: Pause | None = None  # set while the rollout waits at a pause step
    consecutive_failures: int = 0
    automatic: bool = False  # the rollback under way was decided by the rollout itself (not an operator)
    analysed_at: datetime | None = None  # the `at` of the last canary snapshot analysed
    last_reasons: list[str] = []
    router_url: str | None = None  # the public entry (nginx), e.g. http://127.0.0.1:8080
    # The command whose events the rollout's later ticks continue (so `promote canary --wait`
    # can follow its analysis and rollback); also seeds the names of the instances it starts.
    correlation_id: str | None = None
    updated_at: datetime = Field(default_factory=lambda: datetime.now(UTC))

    @property
    def mode(self) -> str:
        """Which mode serves: canary while a canary track takes traffic, else stable."""
        return "canary" if self.canary is not None and self.canary.weight > 0 else "stable"

    def instances(self) -> list[Instance]:
        tracks = [t for t in (self.stable, self.canary) if t is not None]
        return [instance for track in tracks for instance in track.instances]
