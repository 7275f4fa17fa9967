"""The pull's progress events, from dockerd's stream as aiodocker yields it. The stream is
scripted here (a pull from the real registry takes 0.1 s, too short to report progress); the
real pulls are in test_orchestrator_registry.py."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from services.orchestrator.drivers import docker as docker_driver
from swiftdeploy_core.bus.events import ImagePulling, Payload
from swiftdeploy_core.errors import ImagePullError

STREAM = [
    {"status": "Pulling from team/app", "id": "1"},
    {"status": "Downloading", "id": "a", "progressDetail": {"current": 1_000_000, "total": 4_000_000}},
    {"status": "Downloading", "id": "b", "progressDetail": {"current": 500_000, "total": 1_000_000}},
    {"status": "Downloading", "id": "a", "progressDetail": {"current": 4_000_000, "total": 4_000_000}},
]


class ScriptedImages:
    def __init__(self, items: list[dict[str, Any]]) -> None:
        self.items = items

    async def pull(self, name: str, *, auth: str | None = None, stream: bool = False) -> AsyncIterator[dict]:
        for item in self.items:
            yield item


class ScriptedDocker:
    def __init__(self, items: list[dict[str, Any]]) -> None:
        self.images = ScriptedImages(items)


def driver_with(items: list[dict[str, Any]], tmp_path: Path) -> docker_driver.DockerDriver:
    driver = docker_driver.DockerDriver("p", tmp_path)
    driver._docker = ScriptedDocker(items)  # type: ignore[assignment]
    return driver


async def test_a_long_pull_reports_the_bytes_of_every_layer_so_far(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(docker_driver, "PROGRESS_EVERY", 0.0)
    seen: list[Payload] = []

    async def progress(payload: Payload) -> None:
        seen.append(payload)

    await driver_with(STREAM, tmp_path)._pull("127.0.0.1:5000/team/app:1", None, progress)
    sizes = [(p.status, p.current, p.total) for p in seen if isinstance(p, ImagePulling)]
    assert sizes[0] == ("pulling", 0, 0)
    assert sizes[-1] == ("Downloading", 4_500_000, 5_000_000)
    assert {p.registry for p in seen if isinstance(p, ImagePulling)} == {"127.0.0.1:5000"}


async def test_an_error_in_the_stream_is_one_line_naming_image_registry_and_cause(tmp_path: Path):
    async def progress(payload: Payload) -> None:
        pass

    items = [{"error": "manifest for 127.0.0.1:5000/team/app:1 not found: manifest unknown"}]
    with pytest.raises(
        ImagePullError, match=r"^cannot pull image '127.0.0.1:5000/team/app:1' from 127.0.0.1:5000: not found"
    ):
        await driver_with(items, tmp_path)._pull("127.0.0.1:5000/team/app:1", None, progress)
