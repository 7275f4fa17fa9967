"""The OPA the control plane runs (`policy.engine: opa` with `policy.opa: process` or `container`).

`swiftdeploy up` starts it before the gatekeeper, on the project's `policies/` (read-only, with
`--watch`, so an edited file is served at once), supervises it like a replica (restarted when it
exits, with the same back-off), reloads it when it serves other policies than the project's files,
and stops it with `down`. It is reachable by the gatekeeper only:

- **process**: `opa_binary` (on PATH, or a path) listening only on a unix socket,
  `.swiftdeploy/opa/opa.sock`, in a folder only its owner can enter (0700); no TCP port at all.
- **container**: `opa_image` on an internal Docker network of its own (`internal: true`: no route
  off the host) that no other container joins, with no published port. The gatekeeper, a host
  process, reaches it at its bridge address; nginx and the app's containers are on other networks
  and cannot. Policies are bind-mounted read-only; the root file system is read-only, every
  capability dropped.

The supervisor writes what it runs to `.swiftdeploy/opa.json` (`project.opa.ManagedOpa`), which
`validate` and `down` read. Kept apart from the supervisor's own code so both can change alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import psutil

import policies
from swiftdeploy_core.errors import ConfigError, ManifestError
from swiftdeploy_core.project import opa as opa_api
from swiftdeploy_core.project.manifest import LoadedManifest, OpaRun, PolicyEngine, load_manifest
from swiftdeploy_core.settings import Settings

OPA_PORT = 8181  # inside the container
READY_S = 20.0  # how long `up` waits for OPA's /health before starting the gatekeeper anyway
DRIFT_EVERY_S = 2.0  # how often the supervisor compares what OPA serves with the files
DRIFT_GRACE = 2  # consecutive mismatches (OPA's --watch reloads first) before a reload
RESTART_MAX_S = 10.0
LABEL = "swiftdeploy.controlplane"  # not swiftdeploy.project: the app stack's teardown never touches it


def wanted(settings: Settings) -> LoadedManifest | None:
    """The manifest when it asks for an OPA the control plane runs; None otherwise (or unreadable:
    the gatekeeper then denies every decision, saying why)."""
    try:
        loaded = load_manifest(settings.manifest)
    except ManifestError:
        return None
    spec = loaded.manifest.policy
    if spec.engine is not PolicyEngine.opa or spec.opa is OpaRun.external:
        return None
    return loaded


def preflight(settings: Settings) -> None:
    """Before `up` starts anything: the OPA binary or image is there. ConfigError otherwise."""
    loaded = wanted(settings)
    if loaded is None:
        return
    spec = loaded.manifest.policy
    if spec.opa is OpaRun.process:
        find_binary(spec.opa_binary)
    else:
        asyncio.run(ensure_image(spec.opa_image))


def find_binary(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        raise ConfigError(
            f"policy.opa: process needs an OPA binary: {name!r} is not on PATH "
            "(install OPA, or set policy.opa_binary to its path)"
        )
    return found


async def ensure_image(image: str) -> None:
    """The image is on this docker host (one place to make this pull instead). ConfigError if not."""
    import aiodocker

    try:
        async with aiodocker.Docker() as docker:
            await docker.images.inspect(image)
    except aiodocker.DockerError as exc:
        if exc.status == 404:
            raise ConfigError(
                f"policy.opa: container needs the image {image!r}, which is not on this docker host"
            ) from None
        raise ConfigError(f"policy.opa: container: dockerd: {exc.message}") from None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"policy.opa: container needs dockerd, which does not answer: {exc}") from None


def opa_args(addr: str, policy_folder: str) -> list[str]:
    """`opa run` as the control plane runs it: the REST API only on `addr`, files watched, the
    input schemas (JSON, but not data) left out."""
    return ["run", "--server", "--watch", "--disable-telemetry", f"--addr={addr}", "--unix-socket-perm=600",
            f"--ignore={policies.SCHEMA_DIR}", policy_folder]  # fmt: skip


class ManagedOpaRunner:
    """Starts, watches and stops one managed OPA; the supervisor calls `supervise` on every tick."""

    def __init__(self, settings: Settings, loaded: LoadedManifest, state_dir: Path) -> None:
        self.settings = settings
        self.spec = loaded.manifest.policy
        self.project = loaded.manifest.project
        self.root = loaded.root
        self.folder = policies.project_dir(loaded.root).resolve()
        self.state_dir = state_dir
        self.record = opa_api.ManagedOpa(mode=self.spec.opa.value, url="")
        self.proc: subprocess.Popen[bytes] | None = None
        self._crashes: list[float] = []
        self._checked = 0.0
        self._ticked = 0.0
        self._mismatches = 0

    # --- lifecycle ----------------------------------------------------------------------------

    def start(self) -> str:
        """Start OPA and wait (a while) for it to answer; returns the URL the gatekeeper uses."""
        self.folder.mkdir(parents=True, exist_ok=True)
        if self.spec.opa is OpaRun.process:
            self._start_process()
        else:
            asyncio.run(self._start_container())
        self._write()
        problem = self.wait_ready(READY_S)
        if problem:
            print(f"managed OPA not ready after {READY_S:g}s (decisions deny until it is): {problem}", flush=True)
        return self.record.url

    def wait_ready(self, timeout: float) -> str | None:
        deadline = time.monotonic() + timeout
        problem: str | None = "not started"
        while time.monotonic() < deadline:
            problem = asyncio.run(opa_api.health(self.record.url, 1.0))
            if problem is None:
                return None
            time.sleep(0.1)
        return problem

    def supervise(self) -> bool:
        """Restart OPA when it died, reload it when it serves other policies than the files.
        Returns True when the URL changed (the gatekeeper must be restarted to use the new one)."""
        if time.monotonic() - self._ticked < 1.0:  # the supervisor ticks 4 times a second
            return False
        self._ticked = time.monotonic()
        before = self.record.url
        if not self.alive():
            recent = [t for t in self._crashes if time.time() - t < 60]
            if recent and time.time() - recent[-1] < min(RESTART_MAX_S, 0.5 * 2 ** len(recent)):
                return False
            self._crashes = [*recent, time.time()]
            print("managed OPA exited; restarting", flush=True)
            self.record.restarts += 1
            self._restart()
        elif time.monotonic() - self._checked >= DRIFT_EVERY_S:
            self._checked = time.monotonic()
            if self._drifted():
                self._mismatches += 1
                if self._mismatches >= DRIFT_GRACE:
                    print("managed OPA serves other policies than policies/; reloading it", flush=True)
                    self.record.reloads += 1
                    self._mismatches = 0
                    self._restart()
            else:
                self._mismatches = 0
        return self.record.url != before

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.spec.opa is OpaRun.container:
            asyncio.run(remove_container(self.container_name(), self.network_name()))
        with contextlib.suppress(OSError):
            (self.root / opa_api.MANAGED_RECORD).unlink()

    def alive(self) -> bool:
        if self.spec.opa is OpaRun.process:
            return self.proc is not None and self.proc.poll() is None
        return asyncio.run(self._container_running())

    def _restart(self) -> None:
        if self.spec.opa is OpaRun.process:
            if self.proc is not None and self.proc.poll() is None:
                self.proc.terminate()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.proc.wait(timeout=10)
            self._start_process()
        else:
            asyncio.run(self._start_container())
        self._write()
        self.wait_ready(5.0)

    def _drifted(self) -> bool:
        try:
            contents = {path.name: path.read_bytes() for path in policies.policy_files(self.folder)}
        except OSError:
            return False
        files = policies.revision(contents)

        async def served() -> str:
            async with opa_api.session(self.record.url, 2.0) as http:
                return await opa_api.served_revision(http, self.record.url, policies.data_keys(contents))

        try:
            return asyncio.run(served()) != files
        except Exception:  # OPA not answering is the liveness check's business
            return False

    def _write(self) -> None:
        path = self.root / opa_api.MANAGED_RECORD
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(self.record.model_dump_json(indent=2))
        tmp.replace(path)

    # --- process ------------------------------------------------------------------------------

    def socket_dir(self) -> Path:
        return self.state_dir / "opa"

    def _start_process(self) -> None:
        folder = self.socket_dir()
        folder.mkdir(parents=True, exist_ok=True)
        os.chmod(folder, 0o700)  # only its owner may enter: the socket inside is theirs alone
        socket = folder / "opa.sock"
        with contextlib.suppress(FileNotFoundError):
            socket.unlink()
        binary = find_binary(self.spec.opa_binary)
        log = open(self.state_dir / "logs" / "opa.log", "ab")
        self.proc = subprocess.Popen([binary, *opa_args(f"unix://{socket}", str(self.folder))], stdout=log,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)  # fmt: skip
        log.close()
        self.record.pid = self.proc.pid
        self.record.url = f"unix://{socket}"

    # --- container ----------------------------------------------------------------------------

    def container_name(self) -> str:
        return f"{self.project}-controlplane-opa"

    def network_name(self) -> str:
        return f"{self.project}-controlplane-opa"

    async def _start_container(self) -> None:
        import aiodocker

        name, network = self.container_name(), self.network_name()
        labels = {LABEL: self.project, "swiftdeploy.role": "policy"}
        async with aiodocker.Docker() as docker:
            existing = {n["Name"] for n in await docker.networks.list()}
            if network not in existing:
                await docker.networks.create({"Name": network, "Driver": "bridge", "Internal": True,
                                              "Labels": labels, "CheckDuplicate": True})  # fmt: skip
            config: dict[str, Any] = {
                "Image": self.spec.opa_image,
                "Cmd": opa_args(f"0.0.0.0:{OPA_PORT}", "/policies"),
                "Labels": labels,
                "ExposedPorts": {},
                "HostConfig": {
                    "NetworkMode": network,
                    "Binds": [f"{self.folder}:/policies:ro"],
                    "PortBindings": {},
                    "PublishAllPorts": False,
                    "ReadonlyRootfs": True,
                    "CapDrop": ["ALL"],
                    "SecurityOpt": ["no-new-privileges"],
                    "RestartPolicy": {"Name": "no"},  # the supervisor restarts it
                },
            }
            container = await docker.containers.create_or_replace(name=name, config=config)
            await container.start()
            info = await container.show()
        address = info["NetworkSettings"]["Networks"][network]["IPAddress"]
        self.record.container, self.record.network = name, network
        self.record.url = f"http://{address}:{OPA_PORT}"

    async def _container_running(self) -> bool:
        import aiodocker

        try:
            async with aiodocker.Docker() as docker:
                info = await (await docker.containers.get(self.container_name())).show()
        except (aiodocker.DockerError, OSError):
            return False
        return bool(info["State"]["Running"])


async def remove_container(name: str, network: str) -> None:
    """Remove the managed OPA container and its network, if they exist."""
    import aiodocker

    with contextlib.suppress(aiodocker.DockerError, OSError):
        async with aiodocker.Docker() as docker:
            with contextlib.suppress(aiodocker.DockerError):
                container = await docker.containers.get(name)
                await container.delete(force=True)
            with contextlib.suppress(aiodocker.DockerError):
                await (await docker.networks.get(network)).delete()


def cleanup(settings: Settings) -> None:
    """What `down` does after the supervisor stopped: remove any managed OPA still left (a
    supervisor that was killed cannot stop it)."""
    root = settings.manifest.parent.resolve()
    record = opa_api.read_managed(root)
    if record is None:
        return
    if record.pid:
        with contextlib.suppress(psutil.Error):
            proc = psutil.Process(record.pid)
            if "run" in proc.cmdline() and "--server" in proc.cmdline():
                proc.terminate()
                try:
                    proc.wait(timeout=10)
                except psutil.TimeoutExpired:
                    proc.kill()
    if record.container and record.network:
        asyncio.run(remove_container(record.container, record.network))
    with contextlib.suppress(OSError):
        (root / opa_api.MANAGED_RECORD).unlink()


def runner_for(settings: Settings, state_dir: Path) -> ManagedOpaRunner | None:
    loaded = wanted(settings)
    return ManagedOpaRunner(settings, loaded, state_dir) if loaded is not None else None
