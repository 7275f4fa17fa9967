"""The shared CLI conventions (`swiftdeploy_core/client/cli/common.py`) other commands build on:
send a command, follow its correlation id with progress, end with the outcome's exit code."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator

import pytest
import typer

from swiftdeploy_core.bus.events import (
    CommandRejected,
    DeployBlocked,
    DeployCompleted,
    DeployRequested,
    DeployStarted,
    DeployStep,
    Event,
    Source,
)
from swiftdeploy_core.client.cli.common import Outcome, connected, finish, send_command
from swiftdeploy_core.client.cli.errors import EXIT_DENIED, EXIT_ERROR, EXIT_OK
from swiftdeploy_core.errors import ControlPlaneDown, RequestTimeout
from swiftdeploy_core.settings import Settings

INBOX = "swiftdeploy:stream:test-orchestrator"
ORCHESTRATOR = Source(service="orchestrator", instance="stand-in")
OUTCOMES = {"deploy.completed": EXIT_OK, "deploy.blocked": EXIT_DENIED}


def settings(redis_url: str) -> Settings:
    return Settings().model_copy(update={"redis_url": redis_url})


def deploy() -> DeployRequested:
    return DeployRequested(manifest={}, manifest_sha256="abc", root="/tmp")


@contextlib.asynccontextmanager
async def stand_in(redis_url: str, answers: list) -> AsyncIterator[None]:
    """Answers the first command on INBOX with `answers` (payloads), as the orchestrator would."""

    async def serve(since: str) -> None:
        async with connected(settings(redis_url)) as bus:
            async for command in bus.follow(stream=INBOX, since=since):
                # Unrelated traffic with another correlation id must not end the command.
                await bus.publish(
                    "swiftdeploy:stream:events", Event(payload=DeployStep(step="someone else's"), source=ORCHESTRATOR)
                )
                for payload in answers:
                    await bus.publish("swiftdeploy:stream:events", command.caused(payload, ORCHESTRATOR))
                return

    async with connected(settings(redis_url)) as bus:
        since = await bus.cursor(INBOX)
    task = asyncio.create_task(serve(since))
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_a_command_is_followed_to_its_outcome_with_every_step(redis_url: str, capsys) -> None:
    answers = [
        DeployStarted(project="app", version="1.0.0", runtime="process"),
        DeployStep(step="nginx healthy"),
        DeployCompleted(project="app", version="1.0.0", url="http://127.0.0.1:8080"),
    ]
    async with stand_in(redis_url, answers):
        outcome = await send_command(deploy(), INBOX, settings=settings(redis_url), outcomes=OUTCOMES, timeout=10)
    assert outcome.exit_code == EXIT_OK
    assert [e.type for e in outcome.events] == ["deploy.started", "deploy.step", "deploy.completed"]
    assert outcome.message == "1.0.0 serving at http://127.0.0.1:8080 (0 instances)"
    progress = capsys.readouterr().err
    assert "✓ deploy.step nginx healthy" in progress and "someone else's" not in progress


async def test_a_blocked_command_ends_with_the_denied_exit_code(redis_url: str) -> None:
    async with stand_in(redis_url, [DeployBlocked(reasons=["disk free 2 GB is below 10 GB"])]):
        outcome = await send_command(
            deploy(), INBOX, settings=settings(redis_url), outcomes=OUTCOMES, timeout=10, progress=False
        )
    assert (outcome.exit_code, outcome.message) == (EXIT_DENIED, "disk free 2 GB is below 10 GB")


async def test_a_rejected_command_always_fails(redis_url: str) -> None:
    async with stand_in(redis_url, [CommandRejected(command="deploy", reason="another operation holds the lock")]):
        outcome = await send_command(
            deploy(), INBOX, settings=settings(redis_url), outcomes=OUTCOMES, timeout=10, progress=False
        )
    assert outcome.exit_code == EXIT_ERROR and "holds the lock" in outcome.message


async def test_no_outcome_in_time_is_a_request_timeout(redis_url: str) -> None:
    with pytest.raises(RequestTimeout, match=r"no outcome for deploy\.requested within 0\.5s"):
        await send_command(
            deploy(), INBOX, settings=settings(redis_url), outcomes=OUTCOMES, timeout=0.5, progress=False
        )


async def test_no_control_plane_names_the_next_step() -> None:
    with pytest.raises(ControlPlaneDown, match=r"^the control plane is not running: run swiftdeploy up"):
        async with connected(settings("redis://127.0.0.1:1/0")):
            pass


def test_finish_prints_one_json_object_and_exits_with_the_code(capsys) -> None:
    event = Event(payload=DeployBlocked(reasons=["cpu"]), source=ORCHESTRATOR)
    with pytest.raises(typer.Exit) as leaving:
        finish(Outcome(event, EXIT_DENIED, [event], "cpu"), as_json=True)
    assert leaving.value.exit_code == EXIT_DENIED
    data = json.loads(capsys.readouterr().out)
    assert (data["ok"], data["result"], data["payload"]["reasons"]) == (False, "deploy.blocked", ["cpu"])
