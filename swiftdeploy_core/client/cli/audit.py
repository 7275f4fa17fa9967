"""Command: `swiftdeploy audit` — the auditor renders the report, or checks the history's chain."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from swiftdeploy_core.bus import streams
from swiftdeploy_core.bus.events import AuditRendered, AuditRequested, Event
from swiftdeploy_core.client.cli.common import (
    JsonOption,
    ManifestOption,
    client_settings,
    client_source,
    connected,
    parse_since,
    print_json,
    run,
)
from swiftdeploy_core.client.cli.errors import EXIT_ERROR, EXIT_OK, EXIT_USAGE, fail
from swiftdeploy_core.settings import Settings


async def ask_auditor(settings: Settings, request: AuditRequested, timeout: float) -> AuditRendered:
    async with connected(settings) as bus:
        event = Event(payload=request, source=client_source(settings))
        reply = await bus.request(streams.AUDITOR_INBOX, event, expect={"audit.rendered"}, timeout=timeout)
    return reply.payload  # type: ignore[return-value]


def audit(
    manifest: ManifestOption = None,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out", "-o", help="Where to write the report (default: the manifest's paths.report, audit_report.md)."
        ),
    ] = None,
    since: Annotated[
        str | None,
        typer.Option(
            "--since",
            help="Only history from this time: ISO-8601 (2026-01-02T03:04:05Z) or a duration back (30m, 2h, 1d).",
        ),
    ] = None,
    verify: Annotated[
        bool, typer.Option("--verify", help="Check the history's hash chain; exit 1 naming the first bad line.")
    ] = False,
    as_json: JsonOption = False,
    timeout: Annotated[float, typer.Option("--timeout", help="Seconds to wait for the auditor.")] = 30.0,
) -> None:
    """Render the audit report from history.jsonl, or verify the history's hash chain.

    The auditor service does the work; this command asks it over the bus.

    Examples:
      swiftdeploy audit
      swiftdeploy audit --out reports/today.md --since 24h
      swiftdeploy audit --verify
    """
    try:
        since_iso = parse_since(since).isoformat() if since else None
    except ValueError as exc:
        fail(str(exc), EXIT_USAGE)
    request = AuditRequested(out=str(out.resolve()) if out else None, since=since_iso, verify=verify)
    rendered = run(ask_auditor(client_settings(manifest), request, timeout))
    code = EXIT_OK if rendered.chain_ok or not verify else EXIT_ERROR
    if as_json:
        print_json({**rendered.model_dump(mode="json"), "ok": code == EXIT_OK})
        raise typer.Exit(code)
    broken = f"{rendered.path if verify else 'the history'} line {rendered.first_bad_line}: {rendered.problem}"
    if verify:
        if rendered.chain_ok and rendered.repairs:  # valid, but not untouched: say what was repaired
            typer.echo(f"{rendered.path}: the hash chain is valid ({rendered.lines} lines), repaired:")
            for repair in rendered.repairs:
                typer.echo(f"  - {repair}")
        elif rendered.chain_ok:
            typer.echo(f"{rendered.path}: the hash chain is valid ({rendered.lines} lines)")
        else:
            typer.echo(f"error: {broken}", err=True)
        raise typer.Exit(code)
    if not rendered.chain_ok:
        typer.echo(f"warning: {broken} (the report says so too)", err=True)
    typer.echo(f"wrote {rendered.path} ({rendered.lines} history lines)")


def register(app: typer.Typer) -> None:
    """Add `audit` to the app."""
    app.command()(audit)
