"""Conventions every `swiftdeploy` command shares: options, the manifest, the bus, progress, --json.

A command that drives the control plane reads like this:

    @app.command()
    def deploy(manifest: ManifestOption = None, as_json: JsonOption = False) -> None:
        '''Deploy the stable track.  Example: swiftdeploy deploy --manifest manifest.yaml'''
        loaded = load_project(manifest)
        payload = DeployRequested(manifest=..., manifest_sha256=loaded.sha256, root=str(loaded.root))
        outcome = run(send_command(
            payload, streams.ORCHESTRATOR_INBOX, settings=client_settings(manifest),
            outcomes={"deploy.completed": EXIT_OK, "deploy.blocked": EXIT_DENIED, "deploy.failed": EXIT_ERROR},
            timeout=300, progress=not as_json,
        ))
        finish(outcome, as_json)          # prints the result (or one JSON object) and exits with its code

`send_command` publishes the command and follows every event that carries its correlation id
(showing each as a progress line on stderr) until one whose type is in `outcomes`.
`command.rejected` and `operation.failed` always end a command with exit 1.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, TypeVar

import typer
from rich.console import Console

from swiftdeploy_core.bus.describe import describe_event
from swiftdeploy_core.bus.events import AnyPayload, Event, Source
from swiftdeploy_core.client.cli.errors import EXIT_DENIED, EXIT_ERROR, EXIT_OK
from swiftdeploy_core.errors import ControlPlaneDown, RequestTimeout
from swiftdeploy_core.project.manifest import LoadedManifest, load_manifest
from swiftdeploy_core.settings import Settings, load_settings

if TYPE_CHECKING:
    from swiftdeploy_core.bus.connection import Bus

T = TypeVar("T")
CLOSE_TIMEOUT_S = 2.0
NEXT_STEP_UP = "the control plane is not running: run swiftdeploy up"
ALWAYS_FAIL = {"command.rejected": EXIT_ERROR, "operation.failed": EXIT_ERROR}

ManifestOption = Annotated[
    Path | None,
    typer.Option(
        "--manifest",
        "-m",
        help="The manifest file; its folder is the project folder. Default: ./manifest.yaml (or $SWIFTDEPLOY_MANIFEST).",
        show_default=False,
        readable=False,  # the manifest loader says what is wrong with the file, in one line
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print one JSON object instead of text.")]

stderr = Console(stderr=True)


def manifest_path(option: Path | None, settings: Settings | None = None) -> Path:
    """`--manifest` when given, else SWIFTDEPLOY_MANIFEST, else ./manifest.yaml."""
    return option if option is not None else (settings or load_settings()).manifest


def load_project(option: Path | None) -> LoadedManifest:
    """Load and validate the manifest `--manifest` names (`ManifestError`, one line, on any problem)."""
    return load_manifest(manifest_path(option))


def client_settings(manifest: Path | None = None) -> Settings:
    """The client's settings; `--manifest` wins over SWIFTDEPLOY_MANIFEST."""
    settings = load_settings()
    return settings.model_copy(update={"manifest": manifest}) if manifest is not None else settings


SINCE_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_since(text: str, now: datetime | None = None) -> datetime:
    """An ISO-8601 time (naive = UTC) or a duration back from now: `90s`, `30m`, `2h`, `1d`."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd])\s*", text)
    if match:
        seconds = float(match.group(1)) * SINCE_UNITS[match.group(2)]
        return (now or datetime.now(UTC)) - timedelta(seconds=seconds)
    try:
        moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(
            f"--since {text!r} is neither an ISO-8601 time (2026-01-02T03:04:05Z) nor a duration (30m, 2h, 1d)"
        ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def client_source(settings: Settings) -> Source:
    return Source(service="cli", instance=settings.instance)


def run(coroutine: Awaitable[T]) -> T:
    """Run a command's async body; Ctrl-C leaves through `run_app` as exit 130."""
    return asyncio.run(coroutine)  # type: ignore[arg-type]


@contextlib.asynccontextmanager
async def connected(settings: Settings) -> AsyncIterator[Bus]:
    """The bus, or `ControlPlaneDown` whose message names the next step."""
    from swiftdeploy_core.bus.connection import UP_HINT, Bus

    try:
        bus = await Bus.connect(settings)
    except ControlPlaneDown as exc:
        raise ControlPlaneDown(f"{NEXT_STEP_UP} ({str(exc).removesuffix(UP_HINT)})") from None
    try:
        yield bus
    finally:
        # Bounded: a client exits promptly even if a blocking read is slow to cancel.
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(bus.close(), CLOSE_TIMEOUT_S)


@dataclass
class Outcome:
    """How a command ended: its last event, every event seen, and the exit code."""

    event: Event | None
    exit_code: int
    events: list[Event] = field(default_factory=list)
    message: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.exit_code == EXIT_OK,
            "exit_code": self.exit_code,
            "result": self.event.type if self.event else None,
            "message": self.message,
            "payload": self.event.payload.model_dump(mode="json") if self.event else None,
            "correlation_id": self.event.correlation_id if self.event else None,
            "events": [{"type": e.type, "timestamp": e.timestamp.isoformat(), "summary": describe_event(e)}
                       for e in self.events],
        }  # fmt: skip


async def send_command(
    payload: AnyPayload,
    inbox: str,
    *,
    settings: Settings,
    outcomes: Mapping[str, int],
    timeout: float,
    progress: bool = True,
    on_event: Callable[[Event], None] | None = None,
) -> Outcome:
    """Publish a command, follow its correlation id until an outcome event; `RequestTimeout` after `timeout`."""
    ends = {**ALWAYS_FAIL, **outcomes}
    async with connected(settings) as bus:
        event = Event(payload=payload, source=client_source(settings))
        since = await bus.cursor()  # taken before publishing: no reply can slip past
        await bus.publish(inbox, event)
        seen: list[Event] = []
        status = stderr.status(f"{event.type} sent; waiting for the control plane…") if progress else None
        with status or contextlib.nullcontext():
            try:
                replies = bus.follow(correlation_id=event.correlation_id, since=since)
                async with asyncio.timeout(timeout) as deadline, contextlib.aclosing(replies):
                    async for reply in replies:
                        seen.append(reply)
                        if reply.type == "image.pulling":  # a long pull that progresses is not a hang
                            deadline.reschedule(asyncio.get_running_loop().time() + timeout)
                        if on_event:
                            on_event(reply)
                        if progress:
                            _progress_line(reply, reply.type in ends and ends[reply.type] != EXIT_OK)
                        if reply.type in ends:
                            return Outcome(reply, ends[reply.type], seen, describe_event(reply))
            except TimeoutError:
                raise RequestTimeout(
                    f"no outcome for {event.type} within {timeout:g}s (check `swiftdeploy ps`; it may still finish)"
                ) from None
    raise RequestTimeout(f"the event stream ended before {event.type} finished")  # pragma: no cover


def _progress_line(event: Event, bad: bool) -> None:
    mark = "[red]✗[/]" if bad else "[green]✓[/]"
    stderr.print(f"{mark} [cyan]{event.type}[/] {describe_event(event)}", highlight=False, markup=True)


def print_json(data: Any) -> None:
    """One JSON object on stdout."""
    sys.stdout.write(json.dumps(data, default=str) + "\n")
    sys.stdout.flush()


def finish(outcome: Outcome, as_json: bool = False) -> NoReturn:
    """Report a command's outcome (text or JSON) and exit with its code."""
    if as_json:
        print_json(outcome.to_json())
    elif outcome.exit_code == EXIT_OK:
        typer.echo(outcome.message or "done")
    else:
        word = "denied" if outcome.exit_code == EXIT_DENIED else "failed"
        typer.echo(f"error: {word}: {outcome.message}", err=True)
    raise typer.Exit(outcome.exit_code)
