"""Runtime drivers behind one interface (`base.RuntimeDriver`): docker, swarm and local processes."""

from __future__ import annotations

from pathlib import Path

from services.orchestrator.drivers.base import RuntimeDriver
from swiftdeploy_core.project.images import docker_config_file
from swiftdeploy_core.project.manifest import Manifest, Runtime
from swiftdeploy_core.project.router import runtime_dir


def state_dir(manifest: Manifest, root: str | Path) -> Path:
    """Where the runtime keeps a project's pids, ports, logs and rendered router config."""
    return runtime_dir(manifest, root)


def make_driver(
    manifest: Manifest, root: str | Path, runtime: str | None = None, docker_config: str | None = None
) -> RuntimeDriver:
    """The driver the manifest (or a stored record's `runtime`) asks for. `docker_config` is
    $DOCKER_CONFIG (where pull credentials are, unless the manifest names `images.credentials`)."""
    kind = Runtime(runtime or manifest.runtime)
    if kind == Runtime.process:
        from services.orchestrator.drivers.process import ProcessDriver

        return ProcessDriver(manifest.project, state_dir(manifest, root), Path(root))
    from services.orchestrator.drivers.docker import DockerDriver

    credentials = manifest.images.credentials
    if credentials is not None and not credentials.is_absolute():
        credentials = Path(root) / credentials
    config = docker_config_file(credentials, docker_config, Path.home())
    if kind == Runtime.swarm:
        from services.orchestrator.drivers.swarm import SwarmDriver

        return SwarmDriver(
            manifest.project, state_dir(manifest, root), docker_config=config, replicas=manifest.services.replicas,
            network=manifest.network.name, health=manifest.services.health, swarm=manifest.swarm,
        )  # fmt: skip
    return DockerDriver(manifest.project, state_dir(manifest, root), docker_config=config)
