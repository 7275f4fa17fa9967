"""Command: `swiftdeploy status` — the live dashboard, one frame, or one JSON object."""

from __future__ import annotations

import asyncio
from typing import Annotated

import typer
from rich.console import Console
from rich.live import Live

from swiftdeploy_core.client.cli.common import (
    JsonOption,
    ManifestOption,
    client_settings,
    client_source,
    connected,
    load_project,
    print_json,
    run,
)
from swiftdeploy_core.client.dashboard import render
from swiftdeploy_core.client.status_probe import gather_status
from swiftdeploy_core.settings import Settings


async def show(
    settings: Settings, project: str, *, interval: float, once: bool, as_json: bool, policy_timeout: float
) -> None:
    source = client_source(settings)
    loop = asyncio.get_running_loop()
    async with connected(settings) as bus:
        started = loop.time()
        view = await gather_status(bus, project, source, policy_timeout)
        if as_json or once:
            print_json(view.to_json()) if as_json else Console().print(render(view))
            return
        with Live(render(view), auto_refresh=False, screen=False, transient=False) as live:
            while True:
                await asyncio.sleep(max(0.0, interval - (loop.time() - started)))
                started = loop.time()
                live.update(render(await gather_status(bus, project, source, policy_timeout)), refresh=True)


def status(
    manifest: ManifestOption = None,
    interval: Annotated[float, typer.Option("--interval", min=0.2, help="Seconds between refreshes.")] = 2.0,
    once: Annotated[bool, typer.Option("--once", help="Print one frame and exit.")] = False,
    as_json: JsonOption = False,
    policy_timeout: Annotated[
        float,
        typer.Option(
            "--policy-timeout", min=0.1, help="Seconds to wait for each gatekeeper decision before showing UNKNOWN."
        ),
    ] = 2.0,
) -> None:
    """Show the deployment live: mode, chaos, tracks, traffic, policy compliance, last events.

    Refreshes every --interval seconds until Ctrl-C. Each refresh asks the gatekeeper for the infra and canary decisions and is recorded in the history as status.checked.

    Examples:
      swiftdeploy status
      swiftdeploy status --once
      swiftdeploy status --json | jq .policies
    """
    project = load_project(manifest).manifest.project
    settings = client_settings(manifest)
    try:
        run(show(settings, project, interval=interval, once=once, as_json=as_json, policy_timeout=policy_timeout))
    except KeyboardInterrupt:
        raise typer.Exit(0) from None  # Ctrl-C is how a live dashboard ends


def register(app: typer.Typer) -> None:
    """Add `status` to the app."""
    app.command()(status)
