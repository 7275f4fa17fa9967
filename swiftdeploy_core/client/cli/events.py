"""Command: `events` — read or follow the event stream."""

from __future__ import annotations

import asyncio
import json
import re
from datetime import UTC, datetime
from typing import Annotated

import typer

from swiftdeploy_core.bus.events import Event
from swiftdeploy_core.client.cli.common import parse_since
from swiftdeploy_core.errors import ConfigError


def since_to_id(value: str, now: float | None = None) -> str:
    """`--since` as a stream id: "0" (from the start: Redis' minimal id), an entry id
    ("1700000000000-0"), epoch ms, an ISO-8601 time, or a relative time ("10m", "2h"); ConfigError
    otherwise."""
    if value.strip() == "0":
        return "0-0"
    if re.fullmatch(r"\d+-\d+", value):
        return value
    if re.fullmatch(r"\d{10,}", value):
        return f"{value}-0"
    try:
        moment = parse_since(value, None if now is None else datetime.fromtimestamp(now, UTC))
    except ValueError:
        raise ConfigError(f"--since {value!r}: expected an entry id, an ISO-8601 time or an age like 10m") from None
    return f"{int(moment.timestamp() * 1000)}-0"


def describe(event: Event) -> str:
    """One readable line: time, type, source, short correlation id, payload fields."""
    fields = event.payload.model_dump(exclude={"type"}, exclude_defaults=True)
    details = " ".join(f"{k}={json.dumps(v, default=str) if not isinstance(v, str) else v}" for k, v in fields.items())
    if len(details) > 160:
        details = details[:157] + "..."
    stamp = event.timestamp.astimezone(UTC).strftime("%H:%M:%S.%f")[:-3]
    source = f"{event.source.service}/{event.source.instance}"
    return f"{stamp}  {event.type:<22} {source:<28} [{event.correlation_id[:8]}]  {details}".rstrip()


async def _print_events(follow: bool, types: list[str] | None, since: str | None, as_json: bool,
                        correlation_id: str | None) -> None:  # fmt: skip
    from swiftdeploy_core.bus.connection import Bus, history
    from swiftdeploy_core.settings import load_settings

    start = since_to_id(since) if since else None
    bus = await Bus.connect(load_settings())
    try:
        if not follow:
            source = history(bus, since=start or "0", types=types, correlation_id=correlation_id)
        else:
            source = bus.follow(since=start or "$", types=types, correlation_id=correlation_id)
        async for event in source:
            typer.echo(event.to_json() if as_json else describe(event))
    finally:
        await bus.close()


def events(
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing new events until Ctrl-C.")] = False,
    type_: Annotated[
        list[str] | None, typer.Option("--type", "-t", help="Only these types; globs like 'deploy.*' (repeatable).")
    ] = None,
    since: Annotated[
        str | None,
        typer.Option(help="Start after an entry id, an ISO-8601 time, or an age (10m, 2h); 0 for the start."),
    ] = None,
    correlation_id: Annotated[
        str | None, typer.Option("--correlation-id", "-c", help="Only one operation's events.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON event a line.")] = False,
) -> None:
    """Print the events on the bus: everything retained, or with --follow new ones as they come.

    \b
    Examples:
      swiftdeploy events --type 'deploy.*'
      swiftdeploy events --follow --since 10m
      swiftdeploy events --json --type decision.made | jq .payload.allow
    """
    try:
        asyncio.run(_print_events(follow, type_, since, as_json, correlation_id))
    except KeyboardInterrupt:
        pass


def register(app: typer.Typer) -> None:
    """Add this module's commands to the app."""
    app.command()(events)
