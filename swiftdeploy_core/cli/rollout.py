"""Commands: deploy, promote canary|stable, rollback, chaos, teardown.

Each one is thin: send the command to the orchestrator with the manifest, follow the events that
carry its correlation id with a line of progress each, and exit 0 (done), 3 (blocked or rolled
back by policy, reasons printed) or 1 (any other failure).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Optional

import typer

from swiftdeploy_core import streams
from swiftdeploy_core.cli.errors import EXIT_DENIED, EXIT_ERROR, EXIT_OK
from swiftdeploy_core.errors import ControlPlaneDown, RequestTimeout
from swiftdeploy_core.events import (
    CanaryRequested,
    ChaosRequested,
    DeployRequested,
    Event,
    Payload,
    PromotionRequested,
    RollbackRequested,
    Source,
    TeardownRequested,
)
from swiftdeploy_core.manifest import LoadedManifest, load_manifest
from swiftdeploy_core.settings import Settings

DEFAULT_TIMEOUT = 300.0
ManifestOption = typer.Option(None, "--manifest", "-m", help="Path to manifest.yaml (default: ./manifest.yaml).")
TimeoutOption = typer.Option(DEFAULT_TIMEOUT, "--timeout", help="Give up waiting after this many seconds.")

# Which event ends a command, and with which exit code.
DEPLOY_END = {"deploy.completed": EXIT_OK, "deploy.blocked": EXIT_DENIED, "deploy.failed": EXIT_ERROR}
CANARY_END = {"canary.weight_changed": EXIT_OK, "rollback.completed": EXIT_DENIED, "operation.failed": EXIT_ERROR}
CANARY_WAIT_END = {"canary.completed": EXIT_OK, "rollback.completed": EXIT_DENIED, "operation.failed": EXIT_ERROR}
PROMOTE_END = {"mode.changed": EXIT_OK, "promotion.blocked": EXIT_DENIED, "operation.failed": EXIT_ERROR}
ROLLBACK_END = {"rollback.completed": EXIT_OK, "operation.failed": EXIT_ERROR}
TEARDOWN_END = {"teardown.completed": EXIT_OK, "operation.failed": EXIT_ERROR}
CHAOS_END = {"chaos.injected": EXIT_OK, "operation.failed": EXIT_ERROR}
ALWAYS_END = {"command.rejected": EXIT_ERROR}


def register(app: typer.Typer) -> None:
    """Add this module's commands to the app."""
    promote = typer.Typer(help="Move traffic: start a canary, or make the canary stable.", no_args_is_help=True)
    app.command()(deploy)
    promote.command("canary")(promote_canary)
    promote.command("stable")(promote_stable)
    app.add_typer(promote, name="promote")
    app.command()(rollback)
    app.command()(chaos)
    app.command()(teardown)


def deploy(manifest: Optional[Path] = ManifestOption, timeout: float = TimeoutOption) -> None:
    """Deploy the stable track behind nginx, after the infra policy allows it.

    Example: swiftdeploy deploy
    """
    loaded = _load(manifest)
    payload = DeployRequested(manifest=_as_data(loaded), manifest_sha256=loaded.sha256, root=str(loaded.root))
    _send(payload, DEPLOY_END, timeout)


def promote_canary(
    manifest: Optional[Path] = ManifestOption,
    wait: bool = typer.Option(False, "--wait", help="Follow the canary until its last step or a rollback."),
    timeout: float = TimeoutOption,
) -> None:
    """Start the canary beside stable and shift traffic through canary.steps.

    Example: swiftdeploy promote canary --wait
    """
    loaded = _load(manifest)
    payload = CanaryRequested(manifest=_as_data(loaded), manifest_sha256=loaded.sha256, root=str(loaded.root))
    _send(payload, CANARY_WAIT_END if wait else CANARY_END, timeout)


def promote_stable(manifest: Optional[Path] = ManifestOption, timeout: float = TimeoutOption) -> None:
    """Ask the canary gate; on allow the canary's version becomes stable at 100%.

    Example: swiftdeploy promote stable
    """
    _send(PromotionRequested(project=_load(manifest).manifest.project), PROMOTE_END, timeout)


def rollback(
    manifest: Optional[Path] = ManifestOption,
    reason: str = typer.Option("requested by operator", "--reason", help="Recorded with the rollback."),
    timeout: float = TimeoutOption,
) -> None:
    """Abort the canary: all traffic back to stable, canary removed.

    Example: swiftdeploy rollback --reason "latency looks off"
    """
    _send(RollbackRequested(project=_load(manifest).manifest.project, reason=reason), ROLLBACK_END, timeout)


def chaos(
    mode: str = typer.Argument(..., help="slow, error or recover."),
    rate: Optional[float] = typer.Option(None, "--rate", min=0.0, max=1.0, help="error: share of requests that fail."),
    duration: Optional[float] = typer.Option(None, "--duration", min=0.0, help="slow: seconds each request sleeps."),
    manifest: Optional[Path] = ManifestOption,
    timeout: float = TimeoutOption,
) -> None:
    """Inject chaos into every canary instance (and record it).

    Example: swiftdeploy chaos error --rate 0.5
    """
    if mode not in ("slow", "error", "recover"):
        raise typer.BadParameter(f"must be slow, error or recover (got {mode!r})", param_hint="MODE")
    project = _load(manifest).manifest.project
    _send(ChaosRequested(mode=mode, rate=rate, duration=duration, project=project), CHAOS_END, timeout)  # type: ignore[arg-type]


def teardown(manifest: Optional[Path] = ManifestOption, timeout: float = TimeoutOption) -> None:
    """Remove every container, network, volume and process of this project; files stay.

    Example: swiftdeploy teardown
    """
    loaded = _load(manifest)
    payload = TeardownRequested(project=loaded.manifest.project, root=str(loaded.root), manifest=_as_data(loaded))
    _send(payload, TEARDOWN_END, timeout)


# --- sending and following ---------------------------------------------------------------------


def _load(path: Optional[Path]) -> LoadedManifest:
    return load_manifest(path or Settings().manifest)


def _as_data(loaded: LoadedManifest) -> dict:
    return loaded.manifest.model_dump(mode="json")


def _send(payload: Payload, ends: dict[str, int], timeout: float) -> None:
    code = asyncio.run(_send_and_follow(Settings(), payload, {**ALWAYS_END, **ends}, timeout))
    raise typer.Exit(code)


async def _send_and_follow(settings: Settings, payload: Payload, ends: dict[str, int], timeout: float) -> int:
    from swiftdeploy_core.bus import Bus

    bus = await Bus.connect(settings)
    try:
        await _require_orchestrator(bus)
        command = Event(payload=payload, source=Source(service="cli", instance=settings.instance))
        since = await bus.cursor()
        await bus.publish(streams.ORCHESTRATOR_INBOX, command)
        try:
            return await asyncio.wait_for(_follow(bus, command.correlation_id, since, ends), timeout)
        except asyncio.TimeoutError:
            raise RequestTimeout(f"no outcome from the orchestrator within {timeout:g}s (`swiftdeploy events` shows what happened)") from None
    finally:
        await bus.close()


async def _require_orchestrator(bus) -> None:  # noqa: ANN001
    async for _ in bus.redis.scan_iter(streams.health_key("orchestrator", "*"), count=100):
        return
    raise ControlPlaneDown("the orchestrator is not running; start the control plane with `swiftdeploy up`")


async def _follow(bus, correlation_id: str, since: str, ends: dict[str, int]) -> int:  # noqa: ANN001
    async for event in bus.follow(correlation_id=correlation_id, since=since):
        line = describe(event)
        if line:
            typer.echo(line)
        if event.type in ends:
            return ends[event.type]
    return EXIT_ERROR


def describe(event: Event) -> str:
    """One line (plus indented reasons or log lines) of progress for an event."""
    p = event.payload
    render: Callable[[object], str] | None = _LINES.get(event.type)
    return render(p) if render else ""


def _reasons(reasons: list[str]) -> str:
    return "".join(f"\n  - {r}" for r in reasons)


_LINES: dict[str, Callable[..., str]] = {
    "command.rejected": lambda p: f"✗ {p.command} rejected: {p.reason}",
    "deploy.started": lambda p: f"→ deploying {p.project} {p.version} ({p.runtime} runtime)",
    "deploy.step": lambda p: f"  ✓ {p.step}: {p.detail}",
    "deploy.blocked": lambda p: f"✗ deploy blocked by the infra policy:{_reasons(p.reasons)}",
    "deploy.completed": lambda p: f"✓ deployed {p.project} {p.version} at {p.url}",
    "deploy.failed": lambda p: f"✗ deploy failed (undone): {p.error}" + "".join(f"\n  | {line}" for line in p.logs),
    "canary.started": lambda p: f"→ canary {p.version} started ({p.image})",
    "canary.weight_changed": lambda p: f"  → canary weight {p.previous}% → {p.weight}% (step {p.step + 1})",
    "canary.analysis": lambda p: (
        f"  ✓ analysis at {p.weight}%: allowed" if p.allow
        else f"  ✗ analysis at {p.weight}%: denied ({p.consecutive_failures} in a row){_reasons(p.reasons)}"
    ),  # fmt: skip
    "canary.completed": lambda p: f"✓ canary {p.version} reached its last step ({p.weight}%); `promote stable` when ready",
    "rollback.completed": lambda p: (
        f"{'✗ rolled back automatically' if p.automatic else '✓ rolled back'}: all traffic on {p.version}{_reasons(p.reasons)}"
    ),
    "promotion.blocked": lambda p: f"✗ promotion blocked by the canary policy:{_reasons(p.reasons)}",
    "promotion.completed": lambda p: f"✓ promoted {p.version} to stable (was {p.previous_version})",
    "mode.changed": lambda p: f"  mode: {p.previous} → {p.mode} ({p.version})",
    "chaos.injected": lambda p: f"✓ chaos {p.mode} injected into {', '.join(p.instances)}",
    "teardown.completed": lambda p: f"✓ removed {len(p.removed)} object(s)" + "".join(f"\n  - {r}" for r in p.removed),
    "operation.failed": lambda p: f"✗ {p.command} failed: {p.error}",
}
