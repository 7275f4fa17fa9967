"""Commands: `policy check` — ask the gatekeeper for a decision and show it; `policy replay` —
ask it what the recorded decisions would be under other policies.

The client never evaluates Rego: it sends `decision.requested` (or `policy.replay.requested`) to
the gatekeeper's inbox and prints the `decision.made` (or `policy.replayed`) that comes back.
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
    """Ask the gatekeeper whether an input passes a policy; print ALLOW, DENY or INCONCLUSIVE (too
    few samples to judge) with every reason.

    Exit code 0 when allowed, 3 when denied or inconclusive.

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
    verdict = "ALLOW" if made["allow"] else ("INCONCLUSIVE" if made.get("inconclusive") else "DENY")
    head = (
        f"{verdict} {made['domain']} (engine {made['engine']}, policy revision {made['policy_revision'] or '-'}, "
        f"decision {made['decision_id'][:12]}, {made['duration_ms']:.2f} ms)"
    )
    drift = [f"warning: {made['policy_drift']}"] if made.get("policy_drift") else []
    return "\n".join([head, *(f"  - {reason}" for reason in made["reasons"]), *drift])


@policy_app.command("replay")
def replay(
    since: Annotated[
        str | None,
        typer.Option("--since", help="Only decisions from this time: ISO-8601 or a duration back (30m, 2h, 1d)."),
    ] = None,
    domain: Annotated[
        str | None, typer.Option("--domain", help="Only decisions of this domain: infra or canary.")
    ] = None,
    folder: Annotated[
        Path | None, typer.Option("--policies", help="A policies folder to decide with (default: the project's).")
    ] = None,
    revision: Annotated[
        str | None, typer.Option("--revision", help="A policy revision the gatekeeper decided with before.")
    ] = None,
    history: Annotated[
        Path | None, typer.Option("--history", help="The history file (default: the manifest's paths.history).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the policy.replayed payload as JSON.")] = False,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the gatekeeper.")] = 60.0,
) -> None:
    """Decide every recorded decision again under other policies; print each that would change.

    Exit code 0 when none would flip to allow, 3 when any would (a change that loosens the policy),
    2 for a bad option, a revision never decided with or a missing history.

    \b
    Examples:
      swiftdeploy policy replay                      # the current files: did anything change?
      swiftdeploy policy replay --policies ../pr/policies --domain canary --since 7d
      swiftdeploy policy replay --revision 6948fc1dac599533 --json
    """
    from swiftdeploy_core.bus.events import PolicyReplayRequested
    from swiftdeploy_core.client.cli.common import client_settings, parse_since

    if folder is not None and revision is not None:
        fail("give at most one of --policies DIR and --revision REV", EXIT_USAGE)
    if folder is not None and not folder.is_dir():
        fail(f"--policies {folder}: no such folder", EXIT_USAGE)
    try:
        since_iso = parse_since(since).isoformat() if since else None
    except ValueError as exc:
        fail(str(exc), EXIT_USAGE)
    request = PolicyReplayRequested(
        since=since_iso,
        domain=domain,
        policies=str(folder.resolve()) if folder else None,
        revision=revision,
        history=str(history.resolve()) if history else None,
    )
    answer = asyncio.run(ask_replay(client_settings(), request, timeout))
    typer.echo(json.dumps(answer, indent=2) if as_json else describe_replay(answer))
    raise typer.Exit(EXIT_DENIED if answer["deny_to_allow"] else EXIT_OK)


async def ask_replay(settings: Any, request: Any, timeout: float) -> dict[str, Any]:
    """Send policy.replay.requested to the gatekeeper and wait for its policy.replayed payload."""
    from swiftdeploy_core.bus import streams
    from swiftdeploy_core.bus.events import CommandRejected, Event
    from swiftdeploy_core.client.cli.common import client_source, connected

    async with connected(settings) as bus:
        event = Event(payload=request, source=client_source(settings))
        expect = {"policy.replayed", "command.rejected"}
        reply = await bus.request(streams.GATEKEEPER_INBOX, event, expect=expect, timeout=timeout)
    if isinstance(reply.payload, CommandRejected):
        fail(f"the gatekeeper cannot replay: {reply.payload.reason}", EXIT_USAGE)
    return reply.payload.model_dump(mode="json")


def _verdict(allow: bool) -> str:
    return "ALLOW" if allow else "DENY"


def describe_replay(answer: dict[str, Any]) -> str:
    """Each decision that would change (old vs new), then the summary line."""
    lines = []
    for change in answer["changes"]:
        lines.append(
            f"{change['timestamp']} {change['domain']} decision {change['decision_id'][:12]} "
            f"(revision {change['policy_revision'] or '-'}): "
            f"{_verdict(change['was_allow'])} -> {_verdict(change['now_allow'])}"
        )
        was, now = set(change["was_reasons"]), set(change["now_reasons"])
        lines += [f"  - {reason}" for reason in change["was_reasons"] if reason not in now]
        lines += [f"  + {reason}" for reason in change["now_reasons"] if reason not in was]
    n = answer["decisions"]
    lines.append(
        f"{n} decision{'' if n == 1 else 's'} replayed under {answer['policies']} (revision {answer['revision']}): "
        f"{len(answer['changes'])} would change ({answer['allow_to_deny']} allow->deny, "
        f"{answer['deny_to_allow']} deny->allow, {answer['reasons_changed']} other reasons)"
    )
    return "\n".join(lines)


def register(app: typer.Typer) -> None:
    """Add this module's commands to the app."""
    app.add_typer(policy_app, name="policy")
