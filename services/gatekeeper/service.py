"""The gatekeeper service: the only place where allow/deny is decided.

It consumes `decision.requested` {domain, input} on its inbox, checks the input against the
domain's JSON Schema (`policies/schemas/<domain>.json`: an absent, extra or mistyped field denies
before any engine is asked), asks its policy engine (embedded regopy or OPA, as the manifest's
`policy.engine` says), and emits `decision.made` with the verdict,
the engine, a decision id, the policy revision and the time the engine took; a denial also emits
`policy.violation`. The engine fails closed, so every request gets an answer.

Every revision it decides with is kept under the state folder (`archive.py`), and
`policy.replay.requested` decides the history's recorded decisions again under a policies folder
or a kept revision, answered with `policy.replayed` (`replay.py`).
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import policies
from policies import default_dir as default_policy_dir
from services.gatekeeper import decide, replay
from services.gatekeeper.archive import PolicyArchive
from services.gatekeeper.embedded import EmbeddedEngine
from services.gatekeeper.engines import PolicyEngine, UnavailableEngine, Verdict
from services.gatekeeper.opa import OpaEngine
from services.gatekeeper.schemas import InputSchemas
from swiftdeploy_core.bus import streams
from swiftdeploy_core.bus.events import (
    CommandRejected,
    DecisionMade,
    DecisionRequested,
    Event,
    PolicyReplayRequested,
    PolicyViolation,
)
from swiftdeploy_core.bus.worker import Context, ServiceSpec
from swiftdeploy_core.errors import ManifestError
from swiftdeploy_core.limits import INPUT_MAX_DEPTH, INPUT_MAX_DIGITS, InputTooLarge, check_value
from swiftdeploy_core.project.manifest import PolicyEngine as EngineName
from swiftdeploy_core.project.manifest import load_manifest
from swiftdeploy_core.settings import STATE_DIR, Settings

NAME = "gatekeeper"
CONCURRENCY = 16  # decisions in flight: overlaps Redis round trips (and OPA's, with that engine)
_DECISIONS = uuid.UUID("0b6f3c1e-6a52-4a41-9d0e-5c3f2a7e8d11")

log = logging.getLogger("swiftdeploy.gatekeeper")


def decision_id(request_id: str) -> str:
    """The same request (even redelivered) always gets the same decision id."""
    return uuid.uuid5(_DECISIONS, request_id).hex


@dataclass(frozen=True)
class Places:
    """Where the project's policies, history and kept revisions are (from the manifest)."""

    policies: Path
    history: Path
    state: Path
    fallback: Path | None = field(default_factory=default_policy_dir)


class Gatekeeper:
    """Turns decision requests into decisions: the input schemas first, then one policy engine."""

    def __init__(self, engine: PolicyEngine, schemas: InputSchemas, places: Places | None = None) -> None:
        self.engine = engine
        self.schemas = schemas
        self.places = places
        self.archive = PolicyArchive(places.state) if places else None

    async def decide(self, request: DecisionRequested, request_id: str) -> DecisionMade:
        started = time.perf_counter()
        verdict = await self.check_schema(request.domain, request.input) or await self.engine.evaluate(
            request.domain, request.input
        )
        return DecisionMade(
            domain=request.domain,
            allow=verdict.allow,
            reasons=list(verdict.reasons),
            input=request.input,
            engine=self.engine.name,
            decision_id=decision_id(request_id),
            policy_revision=verdict.revision,
            duration_ms=round((time.perf_counter() - started) * 1000, 3),
            policy_drift=verdict.drift or None,
            inconclusive=verdict.inconclusive,
        )

    async def check_schema(self, domain: str, input: object) -> Verdict | None:
        """A deny naming every absent, extra or mistyped field; None when the input fits (or when
        the domain or input is not even well formed: the engine's own checks say so)."""
        if decide.domain_problem(domain) or decide.input_problem(input) or not isinstance(input, dict):
            return None
        problems = self.schemas.problems(domain, decide.engine_input(input))
        if not problems:
            return None
        await self.engine.refresh()  # the revision and drift the engine has now (OPA: what it serves)
        return self.engine.stamp(Verdict.deny(*problems))

    async def handle(self, request: DecisionRequested, event: Event, ctx: Context) -> None:
        """`decision.requested` → `decision.made` (and `policy.violation` when denied); an input
        beyond the user-input bounds → `command.rejected` to the requester, never a timeout."""
        try:
            check_value(request.input, INPUT_MAX_DEPTH, INPUT_MAX_DIGITS, where="input")
        except InputTooLarge as exc:
            log.info("refused decision request %s: %s", event.id, exc)
            ctx.emit_on_commit(CommandRejected(command=event.type, reason=str(exc)), cause=event)
            return
        made = await self.decide(request, event.id)
        self._keep(made.policy_revision)
        ctx.emit_on_commit(made, cause=event)
        if not made.allow and not made.inconclusive:  # too little to judge is no violation
            violation = PolicyViolation(
                domain=made.domain, reasons=made.reasons, input=made.input, decision_id=made.decision_id
            )
            ctx.emit_on_commit(violation, cause=event)
        log.log(
            logging.DEBUG if made.allow else logging.INFO,  # every decision is on record as an event
            "decision %s %s %s in %.2f ms (engine %s, revision %s)%s",
            made.decision_id[:12], made.domain, made.outcome.upper(), made.duration_ms,
            made.engine, made.policy_revision, "" if made.allow else ": " + "; ".join(made.reasons),
        )  # fmt: skip

    def _keep(self, revision: str) -> None:
        """Keep the revision a decision was made with (once; a failure to keep never fails it)."""
        if self.archive is None or self.places is None:
            return
        sources = [self.places.policies, *([self.places.fallback] if self.places.fallback else [])]
        try:
            self.archive.keep(revision, sources)
        except OSError as exc:
            log.warning("cannot keep policy revision %s in %s: %s", revision, self.archive.root, exc)

    async def replay(self, request: PolicyReplayRequested, event: Event, ctx: Context) -> None:
        """`policy.replay.requested` → `policy.replayed`; a request that cannot be replayed →
        `command.rejected` with one line."""
        try:
            folder, history, since = self._replay_places(request)
        except (LookupError, ValueError) as exc:
            ctx.emit_on_commit(CommandRejected(command=event.type, reason=str(exc)), cause=event)
            return
        engine = EmbeddedEngine(folder)
        judge = Gatekeeper(engine, InputSchemas(folder))
        try:
            answer = await replay.replay(judge.decide, engine, folder, history, since, request.domain)
        finally:
            await engine.close()
        log.info(
            "replayed %d decisions under %s (revision %s): %d would change",
            answer.decisions, folder, answer.revision, len(answer.changes),
        )  # fmt: skip
        ctx.emit_on_commit(answer, cause=event)

    def _replay_places(self, request: PolicyReplayRequested) -> tuple[Path, Path, datetime | None]:
        if self.places is None:
            raise LookupError("this gatekeeper has no project (no manifest): nothing to replay")
        if request.policies and request.revision:
            raise ValueError("give at most one of --policies DIR and --revision REV")
        if request.domain is not None and decide.domain_problem(request.domain):
            raise ValueError(decide.domain_problem(request.domain) or "")
        try:
            since = replay.moment(request.since) if request.since else None
        except ValueError:
            raise ValueError(f"since {request.since!r} is not an ISO-8601 time") from None
        if request.revision:
            folder = PolicyArchive(self.places.state).folder(request.revision)
        elif request.policies:
            folder = Path(request.policies)
            if not policies.policy_files(folder):
                raise LookupError(f"{folder} holds no policy files (*.rego, data.json)")
        else:
            folder = self.places.policies
            if not policies.has_policies(folder) and self.places.fallback is not None:
                folder = self.places.fallback
        history = Path(request.history) if request.history else self.places.history
        if not history.exists():
            raise LookupError(f"no history at {history}: nothing was decided yet")
        return folder, history, since

    async def on_start(self, ctx: Context) -> None:
        problem = await self.engine.health()
        if problem:
            log.warning("policy engine %s is not ready (decisions deny until it is): %s", self.engine.name, problem)
        else:
            await self.engine.refresh()
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
        # A control plane that runs OPA itself says where it listens; otherwise the manifest does.
        return OpaEngine(settings.opa_url or spec.external_url, spec.timeout, folder, managed=settings.opa_managed)
    return EmbeddedEngine(folder, fallback=policies.default_dir())


def policy_folder(root: Path) -> Path:
    """The project's policies folder. While it has none, the embedded engine decides with the
    packaged defaults, and switches to the project's files as soon as `init` writes them."""
    folder = policies.project_dir(root)
    if not policies.has_policies(folder):
        log.warning("no policies in %s yet (run `swiftdeploy init`): using the packaged defaults", folder)
    return folder


def places_for(settings: Settings) -> Places:
    """The project's policies, history and state folder, as the manifest names them."""
    manifest_path = Path(settings.manifest)
    root = manifest_path.resolve().parent
    try:
        loaded = load_manifest(manifest_path) if manifest_path.exists() else None
    except ManifestError:
        loaded = None  # engine_for says so; decisions deny
    if loaded is None:
        return Places(policies.project_dir(root), root / "history.jsonl", root / STATE_DIR)
    paths = loaded.manifest.paths
    return Places(policies.project_dir(loaded.root), loaded.resolve(paths.history), loaded.resolve(paths.state))


def schemas_for(settings: Settings) -> InputSchemas:
    """The input schemas of the project's policies (the packaged ones while it has none)."""
    root = Path(settings.manifest).resolve().parent
    return InputSchemas(policies.project_dir(root), fallback=policies.default_dir())


def build_spec(settings: Settings, engine: PolicyEngine | None = None) -> ServiceSpec:
    """The gatekeeper as the worker runs it."""
    gatekeeper = Gatekeeper(engine or engine_for(settings), schemas_for(settings), places_for(settings))
    return ServiceSpec(
        name=NAME,
        streams=[streams.GATEKEEPER_INBOX],
        handlers={DecisionRequested: gatekeeper.handle, PolicyReplayRequested: gatekeeper.replay},
        on_start=gatekeeper.on_start,
        on_stop=gatekeeper.on_stop,
        concurrency=CONCURRENCY,
        side_effect_free=True,  # a decision is a pure function of its input; replies go out at commit
        # Decisions are events (`swiftdeploy events`, the audit history): a line for each allow
        # would repeat them at up to thousands a second. Denials are logged above, at INFO.
        done_log_level=logging.DEBUG,
    )
