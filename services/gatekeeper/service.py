"""The gatekeeper service: the only place where allow/deny is decided.

It consumes `decision.requested` {domain, input} on its inbox, asks its policy engine (embedded
regopy or OPA, as the manifest's `policy.engine` says), and emits `decision.made` with the verdict,
the engine, a decision id, the policy revision and the time the engine took; a denial also emits
`policy.violation`. The engine fails closed, so every request gets an answer.
"""

from __future__ import annotations

import logging
import time
import uuid
from pathlib import Path

import policies
from services.gatekeeper.embedded import EmbeddedEngine
from services.gatekeeper.engines import PolicyEngine, UnavailableEngine
from services.gatekeeper.opa import OpaEngine
from swiftdeploy_core.bus import streams
from swiftdeploy_core.bus.events import CommandRejected, DecisionMade, DecisionRequested, Event, PolicyViolation
from swiftdeploy_core.bus.worker import Context, ServiceSpec
from swiftdeploy_core.errors import ManifestError
from swiftdeploy_core.limits import INPUT_MAX_DEPTH, INPUT_MAX_DIGITS, InputTooLarge, check_value
from swiftdeploy_core.project.manifest import PolicyEngine as EngineName
from swiftdeploy_core.project.manifest import load_manifest
from swiftdeploy_core.settings import Settings

NAME = "gatekeeper"
CONCURRENCY = 16  # decisions in flight: overlaps Redis round trips (and OPA's, with that engine)
_DECISIONS = uuid.UUID("0b6f3c1e-6a52-4a41-9d0e-5c3f2a7e8d11")

log = logging.getLogger("swiftdeploy.gatekeeper")


def decision_id(request_id: str) -> str:
    """The same request (even redelivered) always gets the same decision id."""
    return uuid.uuid5(_DECISIONS, request_id).hex


class Gatekeeper:
    """Turns decision requests into decisions with one policy engine."""

    def __init__(self, engine: PolicyEngine) -> None:
        self.engine = engine

    async def decide(self, request: DecisionRequested, request_id: str) -> DecisionMade:
        started = time.perf_counter()
        verdict = await self.engine.evaluate(request.domain, request.input)
        return DecisionMade(
            domain=request.domain,
            allow=verdict.allow,
            reasons=list(verdict.reasons),
            input=request.input,
            engine=self.engine.name,
            decision_id=decision_id(request_id),
            policy_revision=verdict.revision,
            duration_ms=round((time.perf_counter() - started) * 1000, 3),
        )

    async def handle(self, event: Event, ctx: Context) -> None:
        """`decision.requested` → `decision.made` (and `policy.violation` when denied); an input
        beyond the user-input bounds → `command.rejected` to the requester, never a timeout."""
        try:
            check_value(event.payload.input, INPUT_MAX_DEPTH, INPUT_MAX_DIGITS, where="input")
        except InputTooLarge as exc:
            log.info("refused decision request %s: %s", event.id, exc)
            ctx.emit_on_commit(CommandRejected(command=event.type, reason=str(exc)), cause=event)
            return
        made = await self.decide(event.payload, event.id)
        ctx.emit_on_commit(made, cause=event)
        if not made.allow:
            violation = PolicyViolation(
                domain=made.domain, reasons=made.reasons, input=made.input, decision_id=made.decision_id
            )
            ctx.emit_on_commit(violation, cause=event)
        log.log(
            logging.DEBUG if made.allow else logging.INFO,  # every decision is on record as an event
            "decision %s %s %s in %.2f ms (engine %s, revision %s)%s",
            made.decision_id[:12], made.domain, "ALLOW" if made.allow else "DENY", made.duration_ms,
            made.engine, made.policy_revision, "" if made.allow else ": " + "; ".join(made.reasons),
        )  # fmt: skip

    async def on_start(self, ctx: Context) -> None:
        problem = await self.engine.health()
        if problem:
            log.warning("policy engine %s is not ready (decisions deny until it is): %s", self.engine.name, problem)
        else:
            log.info("policy engine %s ready, policy revision %s", self.engine.name, self.engine.revision())

    async def on_stop(self, ctx: Context) -> None:
        await self.engine.close()


def engine_for(settings: Settings) -> PolicyEngine:
    """The engine the manifest asks for, on the project's policies (`policies/` beside it)."""
    manifest_path = Path(settings.manifest)
    if not manifest_path.exists():
        folder = policy_folder(manifest_path.resolve().parent)
        log.warning("no manifest at %s: embedded engine on %s", manifest_path, folder)
        return EmbeddedEngine(folder, fallback=policies.default_dir())
    try:
        loaded = load_manifest(manifest_path)
    except ManifestError as exc:
        log.error("cannot read the manifest, every decision will deny: %s", exc)
        return UnavailableEngine(f"policy engine not configured: {exc}")
    folder = policy_folder(loaded.root)
    spec = loaded.manifest.policy
    if spec.engine is EngineName.opa:
        return OpaEngine(spec.opa_url, spec.timeout, folder)
    return EmbeddedEngine(folder, fallback=policies.default_dir())


def policy_folder(root: Path) -> Path:
    """The project's policies folder. While it has none, the embedded engine decides with the
    packaged defaults, and switches to the project's files as soon as `init` writes them."""
    folder = policies.project_dir(root)
    if not policies.has_policies(folder):
        log.warning("no policies in %s yet (run `swiftdeploy init`): using the packaged defaults", folder)
    return folder


def build_spec(settings: Settings, engine: PolicyEngine | None = None) -> ServiceSpec:
    """The gatekeeper as the worker runs it."""
    gatekeeper = Gatekeeper(engine or engine_for(settings))
    return ServiceSpec(
        name=NAME,
        streams=[streams.GATEKEEPER_INBOX],
        handlers={"decision.requested": gatekeeper.handle},
        on_start=gatekeeper.on_start,
        on_stop=gatekeeper.on_stop,
        concurrency=CONCURRENCY,
        side_effect_free=True,  # a decision is a pure function of its input; replies go out at commit
        # Decisions are events (`swiftdeploy events`, the audit history): a line for each allow
        # would repeat them at up to thousands a second. Denials are logged above, at INFO.
        done_log_level=logging.DEBUG,
    )
