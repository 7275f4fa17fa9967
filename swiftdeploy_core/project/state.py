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

RELEASES_KEPT = 10  # how many earlier stable versions `rollback --to` can go back to


class Phase(str, Enum):
    """Where a deployment is in its life."""

    empty = "empty"  # nothing deployed (or torn down)
    deploying = "deploying"  # a deploy is creating the stable track
    stable = "stable"  # only the stable track serves
    canary_starting = "canary_starting"  # the canary track is being created
    progressing = "progressing"  # the canary serves a step's weight and is analysed each interval
    canary_complete = "canary_complete"  # the canary reached the last step; awaiting promote stable
    promoting = "promoting"  # the canary is becoming stable
    baking = "baking"  # the promoted stable serves alone and is judged until `canary.bake` runs out
    reverting = "reverting"  # an earlier release is starting to replace the stable track (bake denied, rollback --to)
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
    # Self-healing (services/orchestrator/healing.py): how often the orchestrator (or docker's
    # restart policy) restarted this instance, when (the recent ones, for the crash-loop window),
    # whether nginx holds it out (`down`) until it answers again, and its failed checks in a row.
    restarts: int = 0
    restarted_at: list[datetime] = []
    down: bool = False
    failed_checks: int = 0
    started: str = ""  # the runtime's mark of this run (docker: State.StartedAt): a change is a restart


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

    @property
    def restarts(self) -> int:
        """Restarts of this track's instances (self-healing)."""
        return sum(i.restarts for i in self.instances)


class Pause(BaseModel):
    """The rollout waits at a pause step: until `until` (a timed pause) or until released by
    `promote canary --continue` (an open pause, `until` None)."""

    step: int
    until: datetime | None = None
    released: bool = False


class Release(BaseModel):
    """A version that served as the stable track, with what it takes to start it again: its image
    by digest, its settings' fingerprint, and the manifest it was started from (its env, command,
    secrets' sources — never a secret's value)."""

    version: str
    image: str
    digest: str | None = None
    settings: str = ""
    manifest: dict[str, Any] = {}
    promoted: bool = False  # it was started from that manifest's canary fields (a promotion)
    at: datetime = Field(default_factory=lambda: datetime.now(UTC))


class Bake(BaseModel):
    """The watch after `promote stable`: until `until`, a denial goes back to `previous`."""

    version: str
    since: datetime  # when the promoted stable began to serve alone (its warm-up counts from it)
    until: datetime
    previous: Release


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
    # The last analysis's outcome (`allow`, `deny`, `inconclusive`) and how many of this canary's
    # analyses were inconclusive (too few samples: the rollout held at its step, no failure counted).
    last_outcome: str | None = None
    inconclusive_checks: int = 0
    automatic: bool = False  # the rollback under way was decided by the rollout itself (not an operator)
    analysed_at: datetime | None = None  # the `at` of the last canary snapshot analysed
    last_reasons: list[str] = []
    router_url: str | None = None  # the public entry (nginx), e.g. http://127.0.0.1:8080
    # The command whose events the rollout's later ticks continue (so `promote canary --wait`
    # can follow its analysis and rollback); also seeds the names of the instances it starts.
    correlation_id: str | None = None
    bake: Bake | None = None  # set while the promoted stable bakes (phase baking)
    reverting_to: Release | None = None  # what phase reverting starts
    releases: list[Release] = []  # the versions that served as stable, oldest first (bounded: RELEASES_KEPT)
    fence: int | None = None  # the fencing number of the operation that wrote this record (lock.Lease.fence)
    updated_at: datetime = Field(default_factory=lambda: datetime.now(UTC))

    @property
    def mode(self) -> str:
        """Which mode serves: canary while a canary track takes traffic, else stable."""
        return "canary" if self.canary is not None and self.canary.weight > 0 else "stable"

    def instances(self) -> list[Instance]:
        tracks = [t for t in (self.stable, self.canary) if t is not None]
        return [instance for track in tracks for instance in track.instances]
