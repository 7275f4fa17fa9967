"""Runtime drivers behind one interface (`base.RuntimeDriver`): docker and local processes."""

from __future__ import annotations

from pathlib import Path

from services.orchestrator.drivers.base import RuntimeDriver
from swiftdeploy_core.project.manifest import Manifest, Runtime
from swiftdeploy_core.project.router import runtime_dir


def state_dir(manifest: Manifest, root: str | Path) -> Path:
    """Where the runtime keeps a project's pids, ports, logs and rendered router config."""
    return runtime_dir(manifest, root)


def make_driver(manifest: Manifest, root: str | Path, runtime: str | None = None) -> RuntimeDriver:
    """The driver the manifest (or a stored record's `runtime`) asks for."""
    kind = Runtime(runtime or manifest.runtime)
    if kind == Runtime.process:
        from services.orchestrator.drivers.process import ProcessDriver

        return ProcessDriver(manifest.project, state_dir(manifest, root), Path(root))
    from services.orchestrator.drivers.docker import DockerDriver

    return DockerDriver(manifest.project, state_dir(manifest, root))
