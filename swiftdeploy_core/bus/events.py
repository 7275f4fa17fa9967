"""The event catalogue: every event type SwiftDeploy puts on the bus, with its payload model.

Nothing else invents an event shape. An `Event` is an envelope (id, type, correlation and
causation ids, source, timestamp) around one typed payload; on the wire it is JSON.
Commands are named `<thing>.requested`; facts are past tense.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Annotated, Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, model_validator

from swiftdeploy_core.limits import EVENT_MAX_DEPTH, check_json_text

Track = Literal["stable", "canary"]
ModeName = Literal["stable", "canary"]
ChaosMode = Literal["none", "slow", "error"]


class Payload(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    type: str  # each payload narrows it to its own Literal event type


# --- control plane -----------------------------------------------------------------------------


class PingRequested(Payload):
    """Asks one service (or every one, when `service` is None) to answer with `pong`."""

    type: Literal["ping.requested"] = "ping.requested"
    service: str | None = None


class Pong(Payload):
    """A service instance is alive and consuming its inbox."""

    type: Literal["pong"] = "pong"
    service: str
    instance: str


class CommandRejected(Payload):
    """A command was refused before any effect (another operation holds the lock, bad input...)."""

    type: Literal["command.rejected"] = "command.rejected"
    command: str
    reason: str


# --- deploy ------------------------------------------------------------------------------------


class DeployRequested(Payload):
    """`swiftdeploy deploy`: the client's validated manifest, as data."""

    type: Literal["deploy.requested"] = "deploy.requested"
    manifest: dict[str, Any]
    manifest_sha256: str
    root: str  # the manifest's folder: where generated/, policies/ and paths live


class DeployStarted(Payload):
    """A deploy passed the infra gate and began creating the stable track."""

    type: Literal["deploy.started"] = "deploy.started"
    project: str
    version: str
    runtime: str


class DeployStep(Payload):
    """One named step of a multi-step operation finished (network created, nginx healthy...)."""

    type: Literal["deploy.step"] = "deploy.step"
    step: str
    detail: str = ""


class ImagePulling(Payload):
    """A pull is under way (at its start, then at most once a second): bytes so far of the layers
    dockerd reported."""

    type: Literal["image.pulling"] = "image.pulling"
    image: str
    registry: str
    status: str = ""  # dockerd's last status line, e.g. "Downloading"
    current: int = 0  # bytes
    total: int = 0  # bytes (0: not known yet)


class ImagePulled(Payload):
    """An image is on the docker host; `digest` is exactly what runs (`repo@sha256:...`)."""

    type: Literal["image.pulled"] = "image.pulled"
    image: str
    digest: str
    pulled: bool  # False: it was there already (pull policy `missing` or `never`)
    seconds: float = 0.0


class DeployBlocked(Payload):
    """The infra policy denied the deploy; nothing was created."""

    type: Literal["deploy.blocked"] = "deploy.blocked"
    reasons: list[str]
    decision_id: str | None = None


class DeployCompleted(Payload):
    """The stable track is healthy behind nginx at `url`."""

    type: Literal["deploy.completed"] = "deploy.completed"
    project: str
    version: str
    url: str
    instances: list[str] = []
    image: str = ""
    digest: str | None = None  # `repo@sha256:...` that runs; None on the process runtime


class DeployFailed(Payload):
    """The deploy failed and what it had created was removed."""

    type: Literal["deploy.failed"] = "deploy.failed"
    error: str
    logs: list[str] = []


# --- canary, promotion, rollback ---------------------------------------------------------------


class CanaryRequested(Payload):
    """`swiftdeploy promote canary`."""

    type: Literal["canary.requested"] = "canary.requested"
    manifest: dict[str, Any]
    manifest_sha256: str
    root: str
    resume: bool = False  # `--continue`: release the pause the running canary waits at
    replace: bool = False  # `--replace`: a new revision replaces a running canary from the first step


class CanaryStarted(Payload):
    """The canary track is running beside stable and takes its first step's weight."""

    type: Literal["canary.started"] = "canary.started"
    version: str
    image: str
    weight: int
    digest: str | None = None  # `repo@sha256:...` that runs; None on the process runtime


class CanaryWeightChanged(Payload):
    """Traffic moved: `weight` percent of requests now go to the canary."""

    type: Literal["canary.weight_changed"] = "canary.weight_changed"
    step: int
    weight: int
    previous: int


class CanaryAnalysis(Payload):
    """One analysis tick: the canary decision and the run of consecutive failures."""

    type: Literal["canary.analysis"] = "canary.analysis"
    step: int
    weight: int
    allow: bool
    reasons: list[str] = []
    decision_id: str | None = None
    consecutive_failures: int = 0
    # Too few samples to judge (some, fewer than min_requests): not allowed, not counted as a
    # failure; the rollout holds at its step (bounded by canary.progress_deadline).
    inconclusive: bool = False
    inconclusive_checks: int = 0  # inconclusive analyses of this canary so far


class CanaryPaused(Payload):
    """The rollout waits at a pause step, still analysed: until `until`, or (None) until
    `promote canary --continue`."""

    type: Literal["canary.paused"] = "canary.paused"
    step: int
    weight: int
    until: datetime | None = None


class CanaryResumed(Payload):
    """`promote canary --continue` released the pause; the next passing analysis moves on."""

    type: Literal["canary.resumed"] = "canary.resumed"
    step: int


class CanaryReplaced(Payload):
    """A new revision replaced the running canary (`promote canary --replace`): the old canary
    is removed and the analysis starts again at the first step."""

    type: Literal["canary.replaced"] = "canary.replaced"
    previous_version: str
    version: str
    step: int  # where the replaced canary was


class RouterSplit(BaseModel):
    """What a router serves: each track's servers and the canary's percent of requests."""

    model_config = ConfigDict(frozen=True)

    stable: list[str] = []
    canary: list[str] = []
    canary_weight: int = 0

    def describe(self) -> str:
        canary = f", canary {', '.join(self.canary) or '-'} at {self.canary_weight}%" if self.canary else ""
        return f"stable {', '.join(self.stable) or '-'}{canary}"


class RouterDriftRepaired(Payload):
    """nginx served something else than the record says (a hand edit, a restart with an old
    file): the orchestrator put the record's split back."""

    type: Literal["router.drift_repaired"] = "router.drift_repaired"
    found: RouterSplit
    expected: RouterSplit


class InstanceRestarted(Payload):
    """An instance exited or stopped answering its health check and was restarted (by the
    orchestrator's watch, or by docker's restart policy); `restarts` counts them for this instance."""

    type: Literal["instance.restarted"] = "instance.restarted"
    project: str
    track: Track
    instance: str
    reason: str
    restarts: int


class CanaryCompleted(Payload):
    """The canary reached the last step; it waits for `promote stable`."""

    type: Literal["canary.completed"] = "canary.completed"
    version: str
    weight: int


class RollbackRequested(Payload):
    """`swiftdeploy rollback`: abort the canary at whatever step it is (during a bake: back to the
    version it replaced); with `to`, start that earlier recorded version again."""

    type: Literal["rollback.requested"] = "rollback.requested"
    reason: str = "requested by operator"
    project: str | None = None  # None: the only deployed project
    to: str | None = None  # `rollback --to VERSION`: start that earlier recorded version as stable


class RollbackCompleted(Payload):
    """All traffic is back on stable and the canary is gone; or, after a denied bake or
    `rollback --to`, an earlier version serves again (`replaced` was removed, `digest` runs)."""

    type: Literal["rollback.completed"] = "rollback.completed"
    version: str
    reasons: list[str] = []
    automatic: bool = False
    replaced: str | None = None  # the version that served before, when an earlier one was started again
    digest: str | None = None  # the image that serves now, by digest (docker)


class PromotionRequested(Payload):
    """`swiftdeploy promote stable`."""

    type: Literal["promotion.requested"] = "promotion.requested"
    project: str | None = None  # None: the only deployed project


class PromotionBlocked(Payload):
    """The canary policy denied `promote stable`; nothing changed."""

    type: Literal["promotion.blocked"] = "promotion.blocked"
    reasons: list[str]
    decision_id: str | None = None


class PromotionCompleted(Payload):
    """The canary is now the stable track at 100%; the old stable is gone."""

    type: Literal["promotion.completed"] = "promotion.completed"
    version: str
    previous_version: str


class BakeStarted(Payload):
    """`canary.bake`: the promoted stable is judged by the canary policy until `until`; a denial
    (failure_limit) goes back to `previous_version`, whose record is kept until then."""

    type: Literal["bake.started"] = "bake.started"
    version: str
    previous_version: str
    until: datetime


class BakeAnalysis(Payload):
    """One judgement of the baking stable track (its own window, the canary policy)."""

    type: Literal["bake.analysis"] = "bake.analysis"
    version: str
    allow: bool
    reasons: list[str] = []
    decision_id: str | None = None
    consecutive_failures: int = 0


class BakeCompleted(Payload):
    """The bake ran out with no denial at failure_limit: the previous version's record is dropped."""

    type: Literal["bake.completed"] = "bake.completed"
    version: str
    previous_version: str


class BakeFailed(Payload):
    """The baking stable was denied failure_limit times: it goes back to `previous_version`."""

    type: Literal["bake.failed"] = "bake.failed"
    version: str
    previous_version: str
    reasons: list[str] = []


class ModeChanged(Payload):
    """Which mode serves changed (stable <-> canary)."""

    type: Literal["mode.changed"] = "mode.changed"
    mode: ModeName
    previous: ModeName
    version: str


class TeardownRequested(Payload):
    """`swiftdeploy teardown`: remove every labelled object of the project."""

    type: Literal["teardown.requested"] = "teardown.requested"
    project: str
    root: str
    manifest: dict[str, Any] | None = None  # lets teardown find a runtime whose record was lost


class TeardownCompleted(Payload):
    """Every container, network, volume and process of the project is gone."""

    type: Literal["teardown.completed"] = "teardown.completed"
    removed: list[str] = []


class OperationFailed(Payload):
    """A command other than deploy failed after it started; `error` says why."""

    type: Literal["operation.failed"] = "operation.failed"
    command: str
    error: str


# --- chaos -------------------------------------------------------------------------------------


class ChaosRequested(Payload):
    """`swiftdeploy chaos ...`: inject into every canary instance, or (`--router`) at nginx."""

    type: Literal["chaos.requested"] = "chaos.requested"
    mode: Literal["slow", "error", "recover"]
    rate: float | None = None
    duration: float | None = None
    project: str | None = None  # None: the only deployed project
    at: Literal["app", "router"] = "app"  # the instances' /chaos, or nginx in front of them


class ChaosInjected(Payload):
    """Chaos was posted to every canary instance, or applied by nginx to the canary's requests."""

    type: Literal["chaos.injected"] = "chaos.injected"
    mode: Literal["slow", "error", "recover"]
    rate: float | None = None
    duration: float | None = None
    instances: list[str] = []
    at: Literal["app", "router"] = "app"


class ChaosDetected(Payload):
    """The collector saw a target's `chaos_active` change (also when injected by curl)."""

    type: Literal["chaos.detected"] = "chaos.detected"
    target: str
    track: Track
    previous: ChaosMode
    current: ChaosMode


# --- decisions ---------------------------------------------------------------------------------


class DecisionRequested(Payload):
    """Asks the gatekeeper for a decision in one policy domain (`infra`, `canary`)."""

    type: Literal["decision.requested"] = "decision.requested"
    domain: str
    input: dict[str, Any]


class DecisionMade(Payload):
    """The gatekeeper's answer, with the reasons, engine and policy revision."""

    type: Literal["decision.made"] = "decision.made"
    domain: str
    allow: bool
    reasons: list[str]
    input: dict[str, Any]
    engine: str
    decision_id: str
    policy_revision: str  # the policies the answer came from (with OPA: the ones OPA serves)
    duration_ms: float
    # Set when the engine's policies are not the project's files (an OPA serving another
    # revision): one line saying so, and what is done about it.
    policy_drift: str | None = None
    # Not allowed, and no failure either: the policy saw some traffic, too little to judge (the
    # reasons say how little). A consumer that reads `allow` alone holds, as before.
    inconclusive: bool = False

    @property
    def outcome(self) -> str:
        """`allow`, `deny` or `inconclusive`."""
        return "allow" if self.allow else ("inconclusive" if self.inconclusive else "deny")


class PolicyViolation(Payload):
    """A decision denied; the reasons go to the audit report's violations table."""

    type: Literal["policy.violation"] = "policy.violation"
    domain: str
    reasons: list[str]
    input: dict[str, Any]
    decision_id: str


class PolicyReplayRequested(Payload):
    """`swiftdeploy policy replay`: decide the recorded decisions again under other policies.

    `policies` is a folder on the gatekeeper's host, `revision` a revision the gatekeeper kept
    (neither: the project's current files); `since` (ISO-8601) and `domain` filter the history's
    `decision.made` lines; `history` overrides the manifest's `paths.history`."""

    type: Literal["policy.replay.requested"] = "policy.replay.requested"
    since: str | None = None
    domain: str | None = None
    policies: str | None = None
    revision: str | None = None
    history: str | None = None


class ReplayedDecision(BaseModel):
    """One recorded decision whose outcome or reasons would change."""

    decision_id: str
    timestamp: str
    domain: str
    policy_revision: str  # the revision it was decided with
    was_allow: bool
    was_reasons: list[str]
    now_allow: bool
    now_reasons: list[str]


class PolicyReplayed(Payload):
    """The gatekeeper's answer to a replay: what it decided with, how many, what would change."""

    type: Literal["policy.replayed"] = "policy.replayed"
    policies: str  # the folder the replay decided with
    revision: str  # its revision
    history: str
    decisions: int
    allow_to_deny: int
    deny_to_allow: int
    reasons_changed: int  # same outcome, other reasons
    changes: list[ReplayedDecision]


# --- metrics -----------------------------------------------------------------------------------


class HostStats(BaseModel):
    model_config = ConfigDict(frozen=True)

    disk_free_gb: float
    cpu_load: float
    cpu_count: int
    memory_available_gb: float
    path: str = ""


MetricSource = Literal["router", "app"]  # nginx's per-request log, or the app's own /metrics


class CustomMetric(BaseModel):
    """One named analysis query's value (`analysis.metrics`); None with the reason it has none."""

    value: float | None = None
    reason: str | None = None  # why `value` is None: no data, NaN, a query error, unreachable


class LatencyComparison(BaseModel):
    """Canary vs stable latency over the same window: Mann-Whitney U, alternative "canary slower"."""

    model_config = ConfigDict(frozen=True)

    u: float  # the canary's U statistic (scipy.stats.mannwhitneyu(canary, stable).statistic)
    p_value: float
    canary_median_ms: float
    stable_median_ms: float
    ratio: float | None  # canary median / stable median; None when stable's median is 0
    canary_samples: int
    stable_samples: int


class ErrorComparison(BaseModel):
    """Canary vs stable error rate over the same window: a one-sided two-proportion z-test."""

    model_config = ConfigDict(frozen=True)

    z: float
    p_value: float
    canary_error_rate: float
    stable_error_rate: float
    canary_samples: int
    stable_samples: int


class Comparison(BaseModel):
    """The canary judged against stable; a comparison that could not be made is None, with its
    reason in `reasons` (by metric name)."""

    model_config = ConfigDict(frozen=True)

    latency: LatencyComparison | None = None
    errors: ErrorComparison | None = None
    reasons: dict[str, str] = {}


class MetricsSnapshot(Payload):
    """Windowed figures of one track; None means the window holds no data."""

    type: Literal["metrics.snapshot"] = "metrics.snapshot"
    project: str
    track: Track
    version: str | None = None
    window_seconds: float
    request_rate: float | None = None
    error_rate: float | None = None
    p99_latency_ms: float | None = None
    requests: float | None = None
    chaos: ChaosMode = "none"
    targets: list[str] = []
    targets_up: int = 0
    host: HostStats | None = None
    at: datetime | None = None  # when the collector published it: the orchestrator analyses each once
    # Where the figures came from (optional: a snapshot without them is the app's /metrics).
    source: MetricSource | None = None
    samples: int | None = None  # router: requests logged in the window; app: scrapes in the window
    client_error_rate: float | None = None  # router: 4xx share, counted apart from the error rate
    p50_latency_ms: float | None = None  # router: exact over the window
    p90_latency_ms: float | None = None
    metrics: dict[str, CustomMetric] = {}  # analysis.metrics, by name
    comparison: Comparison | None = None  # router, canary track: against stable over the same window


class TargetDown(Payload):
    """A scrape target stopped answering (edge-triggered)."""

    type: Literal["target.down"] = "target.down"
    url: str
    track: Track
    error: str


class TargetUp(Payload):
    """A scrape target answers again (edge-triggered)."""

    type: Literal["target.up"] = "target.up"
    url: str
    track: Track


# --- status and audit --------------------------------------------------------------------------


class StatusChecked(Payload):
    """One refresh of `swiftdeploy status`, so the history shows what operators saw."""

    type: Literal["status.checked"] = "status.checked"
    mode: ModeName
    chaos: ChaosMode = "none"
    request_rate: float | None = None
    error_rate: float | None = None
    p99_latency_ms: float | None = None
    policies: dict[str, Any] = {}


class AuditRequested(Payload):
    """`swiftdeploy audit`: render the report (or verify the chain)."""

    type: Literal["audit.requested"] = "audit.requested"
    out: str | None = None
    since: str | None = None
    verify: bool = False


class AuditRendered(Payload):
    """The auditor wrote the report; `chain_ok` tells whether history verified."""

    type: Literal["audit.rendered"] = "audit.rendered"
    path: str
    lines: int
    chain_ok: bool = True
    first_bad_line: int | None = None
    problem: str | None = None
    repairs: list[str] = []  # torn tails the auditor recovered (the chain is valid, but not untouched)


# --- notifications and gates ------------------------------------------------------------------


class NotificationSent(Payload):
    """A webhook of `notifications` answered 2xx to one event (`url` is the target's origin only)."""

    type: Literal["notification.sent"] = "notification.sent"
    url: str
    event_id: str
    event_type: str
    attempts: int
    status: int


class NotificationFailed(Payload):
    """A webhook kept failing for one event; delivery was given up after `attempts`."""

    type: Literal["notification.failed"] = "notification.failed"
    url: str
    event_id: str
    event_type: str
    attempts: int
    error: str


class GateChecked(Payload):
    """An external gate of `canary.gates` answered (or not) before a promotion or a step; not 2xx holds."""

    type: Literal["gate.checked"] = "gate.checked"
    on: Literal["promotion", "step"]
    url: str
    allow: bool
    reason: str
    status: int | None = None
    step: int = -1
    duration_ms: float = 0.0


AnyPayload = Annotated[
    PingRequested
    | Pong
    | CommandRejected
    | DeployRequested
    | DeployStarted
    | DeployStep
    | ImagePulling
    | ImagePulled
    | DeployBlocked
    | DeployCompleted
    | DeployFailed
    | CanaryRequested
    | CanaryStarted
    | CanaryWeightChanged
    | CanaryAnalysis
    | CanaryPaused
    | CanaryResumed
    | CanaryReplaced
    | CanaryCompleted
    | RouterDriftRepaired
    | InstanceRestarted
    | RollbackRequested
    | RollbackCompleted
    | PromotionRequested
    | PromotionBlocked
    | PromotionCompleted
    | BakeStarted
    | BakeAnalysis
    | BakeCompleted
    | BakeFailed
    | ModeChanged
    | TeardownRequested
    | TeardownCompleted
    | OperationFailed
    | ChaosRequested
    | ChaosInjected
    | ChaosDetected
    | DecisionRequested
    | DecisionMade
    | PolicyViolation
    | PolicyReplayRequested
    | PolicyReplayed
    | MetricsSnapshot
    | TargetDown
    | TargetUp
    | StatusChecked
    | AuditRequested
    | AuditRendered
    | NotificationSent
    | NotificationFailed
    | GateChecked,
    Field(discriminator="type"),
]


def type_of(model: type[Payload]) -> str:
    """The event type a payload class carries (its `type` literal's default)."""
    default = model.model_fields["type"].default if "type" in model.model_fields else None
    if not isinstance(default, str):
        raise TypeError(f"{model.__name__} has no `type` literal: not an event payload")
    return default


# The catalogue as data: event type -> payload class, in declaration order.
PAYLOADS: dict[str, type[Payload]] = {type_of(model): model for model in get_args(get_args(AnyPayload)[0])}
EVENT_TYPES: tuple[str, ...] = tuple(PAYLOADS)


class Source(BaseModel):
    model_config = ConfigDict(frozen=True)

    service: str
    instance: str


def _new_id() -> str:
    return uuid.uuid4().hex


def _now() -> datetime:
    return datetime.now(UTC)


class Event(BaseModel):
    """The envelope every bus message has."""

    model_config = ConfigDict(frozen=True)

    id: str = Field(default_factory=_new_id)
    type: str = ""
    correlation_id: str = Field(default_factory=_new_id)
    causation_id: str | None = None
    source: Source
    timestamp: datetime = Field(default_factory=_now)
    payload: AnyPayload

    @model_validator(mode="after")
    def _type_from_payload(self) -> Event:
        # After validation, not before: a "before" validator makes pydantic build the whole
        # document as Python objects first, on the bus's hot path (decoding every entry).
        if not self.type:
            object.__setattr__(self, "type", self.payload.type)  # frozen: set once, while validating
        elif self.type != self.payload.type:
            raise ValueError(f"envelope type {self.type!r} does not match payload {self.payload.type!r}")
        return self

    def caused(self, payload: AnyPayload, source: Source, id: str | None = None) -> Event:
        """A new event that follows from this one: same correlation id, causation = this id
        (and the given `id`, when the new event's id must be stable)."""
        return Event.of(
            payload, source, correlation_id=self.correlation_id, causation_id=self.id, **({"id": id} if id else {})
        )

    @classmethod
    def of(cls, payload: Payload, source: Source, **fields: Any) -> Event:
        """The envelope of `payload` (any class of the catalogue) from `source`; `fields` are
        the envelope's other fields (id, correlation_id, causation_id...)."""
        return cls.model_validate({"payload": payload, "source": source, **fields})

    def to_json(self) -> str:
        return self.model_dump_json()

    @classmethod
    def from_json(cls, raw: str | bytes) -> Event:
        """Decode an envelope; a ValueError (`InputTooLarge` first, before parsing) if it is not one."""
        check_json_text(raw, EVENT_MAX_DEPTH, None, what="the event")
        return cls.model_validate_json(raw)
