"""Commands: deploy, promote canary|stable, rollback, chaos, teardown.

Each one is thin: send the command to the orchestrator with the manifest, follow the events that
carry its correlation id with a line of progress each (`cli.common.send_command`), and exit 0
(done), 3 (blocked or rolled back by policy, reasons printed) or 1 (any other failure).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from swiftdeploy_core.bus import streams
from swiftdeploy_core.bus.events import (
    AnyPayload,
    CanaryRequested,
    ChaosRequested,
    DeployRequested,
    Event,
    PromotionRequested,
    RollbackRequested,
    TeardownRequested,
)
from swiftdeploy_core.client.cli.common import (
    ManifestOption,
    client_settings,
    connected,
    finish,
    load_project,
    run,
    send_command,
)
from swiftdeploy_core.client.cli.errors import EXIT_DENIED, EXIT_ERROR, EXIT_OK
from swiftdeploy_core.errors import ControlPlaneDown
from swiftdeploy_core.project.manifest import LoadedManifest
from swiftdeploy_core.settings import Settings

DEFAULT_TIMEOUT = 300.0
TimeoutOption = typer.Option(DEFAULT_TIMEOUT, "--timeout", help="Give up waiting after this many seconds.")

# Which event ends a command, and with which exit code (command.rejected and operation.failed
# always end one with EXIT_ERROR: common.ALWAYS_FAIL).
DEPLOY_END = {"deploy.completed": EXIT_OK, "deploy.blocked": EXIT_DENIED, "deploy.failed": EXIT_ERROR}
CANARY_END = {"canary.weight_changed": EXIT_OK, "rollback.completed": EXIT_DENIED}
CANARY_WAIT_END = {"canary.completed": EXIT_OK, "rollback.completed": EXIT_DENIED}
CONTINUE_END = {"canary.resumed": EXIT_OK}
PROMOTE_END = {"mode.changed": EXIT_OK, "promotion.blocked": EXIT_DENIED}
ROLLBACK_END = {"rollback.completed": EXIT_OK}
ROLLBACK_TO_END = {"rollback.completed": EXIT_OK, "deploy.blocked": EXIT_DENIED}
TEARDOWN_END = {"teardown.completed": EXIT_OK}
CHAOS_END = {"chaos.injected": EXIT_OK}


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


def deploy(manifest: ManifestOption = None, timeout: float = TimeoutOption) -> None:
    """Deploy the stable track behind nginx, after the infra policy allows it.

    Example: swiftdeploy deploy
    """
    loaded = load_project(manifest)
    payload = DeployRequested(manifest=as_data(loaded), manifest_sha256=loaded.sha256, root=str(loaded.root))
    _send(payload, DEPLOY_END, timeout, manifest)


def promote_canary(
    manifest: ManifestOption = None,
    wait: bool = typer.Option(False, "--wait", help="Follow the canary until its last step or a rollback."),
    resume: bool = typer.Option(False, "--continue", help="Release the pause the running canary waits at."),
    replace: bool = typer.Option(
        False, "--replace", help="Replace a running canary with this revision, from the first step."
    ),
    timeout: float = TimeoutOption,
) -> None:
    """Start the canary beside stable and shift traffic through canary.steps (weights and pauses).

    Example: swiftdeploy promote canary --wait
    """
    if resume and replace:
        raise typer.BadParameter("--continue and --replace do not go together", param_hint="--continue")
    loaded = load_project(manifest)
    payload = CanaryRequested(
        manifest=as_data(loaded), manifest_sha256=loaded.sha256, root=str(loaded.root), resume=resume, replace=replace
    )
    ends = CONTINUE_END if resume else CANARY_WAIT_END if wait else CANARY_END
    _send(payload, ends, timeout, manifest)


def promote_stable(manifest: ManifestOption = None, timeout: float = TimeoutOption) -> None:
    """Ask the canary gate; on allow the canary's version becomes stable at 100%.

    Example: swiftdeploy promote stable
    """
    _send(PromotionRequested(project=load_project(manifest).manifest.project), PROMOTE_END, timeout, manifest)


def rollback(
    manifest: ManifestOption = None,
    reason: str = typer.Option("requested by operator", "--reason", help="Recorded with the rollback."),
    to: str | None = typer.Option(
        None, "--to", metavar="VERSION", help="Start an earlier recorded version as stable (infra gate as deploy)."
    ),
    timeout: float = TimeoutOption,
) -> None:
    """Abort the canary (all traffic back to stable, canary removed), end a bake on the version it
    replaced, or with --to start an earlier recorded version again.

    Examples: swiftdeploy rollback --reason "latency looks off"; swiftdeploy rollback --to 1.0.0
    """
    _send(
        RollbackRequested(project=load_project(manifest).manifest.project, reason=reason, to=to),
        ROLLBACK_TO_END if to else ROLLBACK_END,
        timeout,
        manifest,
    )


def chaos(
    mode: str = typer.Argument(..., help="slow, error or recover."),
    rate: float | None = typer.Option(None, "--rate", min=0.0, max=1.0, help="error: share of requests that fail."),
    duration: float | None = typer.Option(None, "--duration", min=0.0, help="slow: seconds each request sleeps."),
    router: bool = typer.Option(
        False, "--router", help="error/recover at nginx: for a service with no /chaos of its own."
    ),
    manifest: ManifestOption = None,
    timeout: float = TimeoutOption,
) -> None:
    """Inject chaos into every canary instance, or with --router at nginx (and record it).

    Example: swiftdeploy chaos error --rate 0.5 --router
    """
    if mode not in ("slow", "error", "recover"):
        raise typer.BadParameter(f"must be slow, error or recover (got {mode!r})", param_hint="MODE")
    project = load_project(manifest).manifest.project
    at = "router" if router else "app"
    payload = ChaosRequested(mode=mode, rate=rate, duration=duration, project=project, at=at)  # type: ignore[arg-type]
    _send(payload, CHAOS_END, timeout, manifest)


def teardown(manifest: ManifestOption = None, timeout: float = TimeoutOption) -> None:
    """Remove every container, network, volume and process of this project; files stay.

    Example: swiftdeploy teardown
    """
    loaded = load_project(manifest)
    payload = TeardownRequested(project=loaded.manifest.project, root=str(loaded.root), manifest=as_data(loaded))
    _send(payload, TEARDOWN_END, timeout, manifest)


# --- sending and following ---------------------------------------------------------------------


def as_data(loaded: LoadedManifest) -> dict[str, Any]:
    return loaded.manifest.model_dump(mode="json")


def _send(payload: AnyPayload, ends: dict[str, int], timeout: float, manifest: Path | None = None) -> None:
    settings = client_settings(manifest)
    run(_require_orchestrator(settings))
    outcome = run(send_command(
        payload, streams.ORCHESTRATOR_INBOX, settings=settings, outcomes=ends, timeout=timeout, on_event=_details,
    ))  # fmt: skip
    finish(outcome)


async def _require_orchestrator(settings: Settings) -> None:
    """Fail at once, rather than after the timeout, when no orchestrator replica is alive."""
    async with connected(settings) as bus:
        async for _ in bus.redis.scan_iter(streams.health_key("orchestrator", "*"), count=100):
            return
    raise ControlPlaneDown("the orchestrator is not running: run swiftdeploy up")


def _details(event: Event) -> None:
    """What a progress line leaves out: the failing instance's last log lines, one per line."""
    for line in getattr(event.payload, "logs", None) or []:
        typer.echo(f"  | {line}", err=True)
