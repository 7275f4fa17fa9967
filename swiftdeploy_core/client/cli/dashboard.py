"""Command: `swiftdeploy dashboard` — the web dashboard, live from the bus (`client.web.server`)."""

from __future__ import annotations

import asyncio
import signal
import sys
from typing import Annotated

import typer
from aiohttp import web

from swiftdeploy_core.client.cli.common import ManifestOption, client_settings, connected, load_project, run
from swiftdeploy_core.client.web.server import Dashboard, new_token
from swiftdeploy_core.errors import ConfigError
from swiftdeploy_core.project.manifest import LoadedManifest
from swiftdeploy_core.settings import Settings


async def serve(settings: Settings, loaded: LoadedManifest, host: str, port: int, allow_actions: bool) -> None:
    async with connected(settings) as bus:
        dashboard = Dashboard(settings, loaded, bus, allow_actions=allow_actions, token=new_token(host))
        runner = web.AppRunner(dashboard.app(), access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        site = web.TCPSite(runner, host, port)
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            raise ConfigError(f"--host {host} --port {port}: cannot listen: {exc.strerror or exc}") from None
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        bound = runner.addresses[0][1] if runner.addresses else port
        shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
        query = f"?token={dashboard.token}" if dashboard.token else ""
        mode = "actions allowed" if allow_actions else "read-only"
        sys.stdout.write(f"dashboard on http://{shown}:{bound}/{query} ({mode}; Ctrl-C stops it)\n")
        sys.stdout.flush()
        try:
            await stop.wait()
        finally:
            await runner.cleanup()


def dashboard(
    manifest: ManifestOption = None,
    host: Annotated[
        str, typer.Option("--host", help="Address to listen on; anything but loopback needs the printed token.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=0, max=65535, help="Port to listen on (0: any free port).")] = 8090,
    allow_actions: Annotated[
        bool, typer.Option("--allow-actions", help="Show promote canary / promote stable / rollback buttons.")
    ] = False,
) -> None:
    """Serve the live web dashboard: phase and steps, tracks and health, traffic charts, decisions, events, audit.

    Read-only unless --allow-actions. Bound to anything but loopback, the URL carries a random token.

    Examples:
      swiftdeploy dashboard
      swiftdeploy dashboard --port 9000 --allow-actions
      swiftdeploy dashboard --host 0.0.0.0
    """
    loaded = load_project(manifest)
    try:
        run(serve(client_settings(manifest), loaded, host, port, allow_actions))
    except KeyboardInterrupt:
        raise typer.Exit(0) from None


def register(app: typer.Typer) -> None:
    """Add `dashboard` to the app."""
    app.command()(dashboard)
