"""Host stats for the infra policy: free disk where the runtime keeps its data, load, CPUs, memory.

The one measure of the host: the collector publishes it (what `status` shows) and the orchestrator
asks the infra policy with it before a deploy, so both judge the host by the same figures. For the
docker runtime the data lives under Docker's data root (`DockerRootDir` from the engine's
info); for the process runtime, in the project's folder. GB here are 10**9 bytes.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import aiodocker
import psutil

from swiftdeploy_core.bus.events import HostStats

log = logging.getLogger("swiftdeploy.host")

GB = 1_000_000_000
INFRA_FIELDS = {"disk_free_gb", "cpu_load"}  # what the infra policy judges of the host stats
DATA_ROOT_TTL = 60.0  # seconds a looked-up Docker data root is trusted


def host_stats(path: Path) -> HostStats:
    """Stats of this machine, with free disk measured on the filesystem that holds `path`."""
    path = _existing(path)
    disk = psutil.disk_usage(str(path))
    return HostStats(
        disk_free_gb=round(disk.free / GB, 3),
        cpu_load=round(psutil.getloadavg()[0], 3),
        cpu_count=psutil.cpu_count() or 1,
        memory_available_gb=round(psutil.virtual_memory().available / GB, 3),
        path=str(path),
    )


class DataRoots:
    """Where each runtime keeps its data; Docker's answer is cached for a minute."""

    def __init__(self, docker_url: str | None = None) -> None:
        self.docker_url = docker_url
        self._docker_root: tuple[float, Path | None] | None = None

    async def for_runtime(self, runtime: str, project_root: Path) -> Path:
        if runtime == "docker":
            root = await self._docker()
            if root is not None and root.exists():
                return root
        return project_root

    async def _docker(self) -> Path | None:
        now = time.monotonic()
        if self._docker_root is not None and now - self._docker_root[0] < DATA_ROOT_TTL:
            return self._docker_root[1]
        root = None
        try:
            async with aiodocker.Docker(url=self.docker_url) as docker:
                info = await docker.system.info()
            root = Path(info["DockerRootDir"])
        except (aiodocker.DockerError, OSError, KeyError, ValueError) as exc:
            log.warning("cannot ask dockerd for its data root (%s); measuring the project folder", exc)
        self._docker_root = (now, root)
        return root


def _existing(path: Path) -> Path:
    """The nearest existing ancestor: a project folder may not have been created yet."""
    path = path.resolve()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path
