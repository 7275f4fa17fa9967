"""The `swiftdeploy` Typer client.

Each command group lives in its own module with a `register(app)` function. The client never
decides allow/deny and never talks to Docker or OPA: it sends commands on the bus, follows the
events carrying the command's correlation id, and exits with a code (see `cli.errors`).
"""

from __future__ import annotations

import importlib
import sys

import typer

from swiftdeploy_core.client.cli.errors import run_app

COMMAND_MODULES = (
    "project",  # init, validate
    "controlplane",  # up, down, ps
    "events",  # events
    "rollout",  # deploy, promote canary|stable, rollback, chaos, teardown
    "policy",  # policy check
    "status",  # status
    "audit",  # audit
    "dashboard",  # dashboard (web)
)

app = typer.Typer(
    name="swiftdeploy",
    help="Policy-gated canary deployments behind nginx, decided by Open Policy Agent.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=True,
)


@app.command()
def version() -> None:
    """Print SwiftDeploy's version.

    Example: swiftdeploy version
    """
    from swiftdeploy_core import __version__

    typer.echo(__version__)


for _name in COMMAND_MODULES:
    importlib.import_module(f"swiftdeploy_core.client.cli.{_name}").register(app)


def main() -> None:
    sys.exit(run_app(app))
