"""Commands: `policy check` — ask the gatekeeper for a decision and show it.

The client never evaluates Rego: it sends `decision.requested` to the gatekeeper's inbox and
prints the `decision.made` that comes back (exit 0 allow, 3 deny).
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Annotated, Any

import typer

from swiftdeploy_core.client.cli.errors import EXIT_DENIED, EXIT_OK, EXIT_USAGE, fail

policy_app = typer.Typer(help="Ask the gatekeeper about policies.", no_args_is_help=True)


@policy_app.command("check")
def check(
    domain: Annotated[str, typer.Argument(help="The policy domain: infra or canary.")],
    input_text: Annotated[str | None, typer.Option("--input", "-i", help="The input document as JSON.")] = None,
    input_file: Annotated[
        Path | None, typer.Option("--input-file", "-f", help="A file holding the input JSON.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the decision.made payload as JSON.")] = False,
    timeout: Annotated[float | None, typer.Option(help="Seconds to wait for the decision.")] = None,
) -> None:
    """Ask the gatekeeper whether an input passes a policy; print ALLOW or DENY with every reason.

    Exit code 0 when allowed, 3 when denied.

    \b
    Examples:
      swiftdeploy policy check infra --input '{"disk_free_gb": 8.5, "cpu_load": 2.4}'
      swiftdeploy policy check canary --input '{"error_rate": 0.002, "p99_latency_ms": 180, "requests": 400}'
      swiftdeploy policy check canary --input-file snapshot.json --json
    """
    from swiftdeploy_core.settings import load_settings

    document = read_input(input_text, input_file)
    settings = load_settings()
    made = asyncio.run(ask(settings, domain, document, timeout or settings.request_timeout))
    typer.echo(json.dumps(made, indent=2) if as_json else describe(made))
    raise typer.Exit(EXIT_OK if made["allow"] else EXIT_DENIED)


def read_input(text: str | None, file: Path | None) -> dict[str, Any]:
    """The input document from --input or --input-file; one-line error and exit 2 otherwise."""
    from policies import json_safe
    from swiftdeploy_core.limits import INPUT_MAX_DEPTH, INPUT_MAX_DIGITS, InputTooLarge, check_json_text

    if (text is None) == (file is None):
        fail("give the input as exactly one of --input '{...}' or --input-file FILE", EXIT_USAGE)
    where = "--input"
    if file is not None:
        where = str(file)
        try:
            text = file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            fail(f"{file}: cannot be read ({getattr(exc, 'strerror', None) or exc})", EXIT_USAGE)
    try:
        check_json_text(text or "", INPUT_MAX_DEPTH, INPUT_MAX_DIGITS, what=where)
        document = json.loads(text or "")
    except InputTooLarge as exc:
        fail(str(exc), EXIT_USAGE)
    except ValueError as exc:
        fail(f"{where} is not valid JSON: {exc}", EXIT_USAGE)
    if not isinstance(document, dict):
        fail(
            f"{where} must be a JSON object such as '{{\"cpu_load\": 1.5}}' (got {type(document).__name__})", EXIT_USAGE
        )
    safe: dict[str, Any] = json_safe(document)
    return safe  # NaN reaches the gatekeeper as "NaN", not as null


async def ask(settings: Any, domain: str, document: dict[str, Any], timeout: float) -> dict[str, Any]:
    """Send decision.requested to the gatekeeper and wait for its decision.made payload."""
    from swiftdeploy_core.bus import streams
    from swiftdeploy_core.bus.connection import Bus
    from swiftdeploy_core.bus.events import CommandRejected, DecisionRequested, Event
    from swiftdeploy_core.client.cli.common import client_source

    bus = await Bus.connect(settings)  # its ControlPlaneDown names the URL tried and the next step
    try:
        request = Event(payload=DecisionRequested(domain=domain, input=document), source=client_source(settings))
        expect = {"decision.made", "command.rejected"}
        reply = await bus.request(streams.GATEKEEPER_INBOX, request, expect=expect, timeout=timeout)
    finally:
        await bus.close()
    if isinstance(reply.payload, CommandRejected):
        fail(f"the gatekeeper refused the request: {reply.payload.reason}", EXIT_USAGE)
    return reply.payload.model_dump(mode="json")


def describe(made: dict[str, Any]) -> str:
    verdict = "ALLOW" if made["allow"] else "DENY"
    head = (
        f"{verdict} {made['domain']} (engine {made['engine']}, policy revision {made['policy_revision'] or '-'}, "
        f"decision {made['decision_id'][:12]}, {made['duration_ms']:.2f} ms)"
    )
    return "\n".join([head, *(f"  - {reason}" for reason in made["reasons"])])


def register(app: typer.Typer) -> None:
    """Add this module's commands to the app."""
    app.add_typer(policy_app, name="policy")
