"""The process runtime: workload instances and nginx as local processes on loopback ports.

Each instance and the router get a small JSON record (pid, start time, port, labels) under the
project's state folder, so an orchestrator that was killed and restarted finds them again. Children
run in their own session: killing the orchestrator never takes the deployment down with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import psutil
from pydantic import BaseModel

from services.orchestrator import fencing, plans
from services.orchestrator.drivers.base import (
    LABEL_TRACK,
    LABEL_VERSION,
    Examined,
    InstanceFailed,
    InstanceSpec,
    NetworkSpec,
    Reason,
    Role,
    RuntimeDriver,
    RuntimeObject,
    ensure_port_free,
    http_problem,
    read_text,
    wait_drained,
    wait_listening,
)
from services.orchestrator.drivers.health import wait_http_ok
from swiftdeploy_core.errors import RuntimeDriverError, RuntimeUnavailable
from swiftdeploy_core.project import router
from swiftdeploy_core.project.manifest import Manifest
from swiftdeploy_core.project.router import conf_dirs, render_nginx_conf, router_container
from swiftdeploy_core.project.state import Instance

REPO_ROOT = Path(__file__).resolve().parents[3]  # where the bundled `workload` package lives
STOP_GRACE = 5.0  # seconds between SIGTERM and SIGKILL
ROUTER = "router"

_children: dict[int, subprocess.Popen[bytes]] = {}  # processes this orchestrator started (to reap them)


class ProcessRecord(BaseModel):
    """What the state folder remembers about one process."""

    name: str
    pid: int
    started: float  # psutil create_time, so a recycled pid is never mistaken for ours
    port: int
    labels: dict[str, str] = {}
    image: str = ""
    log: str = ""


class ProcessDriver(RuntimeDriver):
    name = "process"

    def __init__(self, project: str, state_dir: Path, root: Path) -> None:
        self.project = project
        self.dir = state_dir
        self.root = root
        self.nginx_conf = state_dir / "nginx" / "nginx.conf"

    # --- pre-flight and networks ---------------------------------------------------------------

    async def preflight(self, manifest: Manifest, *, router_running: bool) -> None:
        nginx_binary()
        command = manifest.services.command
        if command and shutil.which(command[0], path=_search_path(self.root)) is None:
            raise RuntimeDriverError(f"services.command: {command[0]!r} was not found (process runtime)")
        if not router_running:
            ensure_port_free(manifest.nginx.port)

    async def ensure_networks(self, networks: list[NetworkSpec]) -> list[str]:
        return []  # loopback needs no network

    def describe_networks(self, networks: list[NetworkSpec]) -> str:
        return "loopback"

    # --- instances -----------------------------------------------------------------------------

    async def start_instance(self, spec: InstanceSpec) -> Instance:
        existing = self._read(spec.name)
        if existing and _alive(existing):
            return _instance(existing)
        return self._spawn(spec, free_port())

    def _spawn(self, spec: InstanceSpec, port: int) -> Instance:
        command = [*(spec.command or plans.DEFAULT_COMMAND), *spec.args]
        log = self.dir / "logs" / f"{spec.name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        env = child_env(self.root, {"PORT": str(port), "HOST": "127.0.0.1", **spec.environment()})
        try:
            with log.open("ab") as out:
                proc = subprocess.Popen(
                    command, cwd=self.root, env=env, stdin=subprocess.DEVNULL, stdout=out,
                    stderr=subprocess.STDOUT, start_new_session=True,
                )  # fmt: skip
        except OSError as exc:
            raise InstanceFailed(spec.name, f"{spec.name}: cannot run {command[0]!r}: {exc.strerror or exc}") from exc
        _children[proc.pid] = proc
        record = ProcessRecord(
            name=spec.name, pid=proc.pid, started=_create_time(proc.pid), port=port,
            labels=spec.labels, image=spec.image, log=str(log),
        )  # fmt: skip
        self._write(record)
        return _instance(record)

    async def wait_healthy(self, instance: Instance, timeout: float, path: str = "/healthz") -> None:
        record = self._read(instance.name)
        if record is None:
            raise InstanceFailed(instance.name, f"{instance.name} is not running")

        async def exited() -> str | None:
            return _exit_reason(record)

        await wait_http_ok(f"{instance.url}{path}", timeout, name=instance.name, alive=exited)

    async def examine(self, instance: Instance, path: str, timeout: float) -> Examined:
        record = self._read(instance.name)
        if record is None:
            return Examined(state="exited", reason="is gone (no process record)")
        reason = _exit_reason(record)
        if reason is not None:
            return Examined(state="exited", reason=_signal_named(reason))
        problem = await http_problem(f"{instance.url}{path}", timeout)
        return Examined(state="healthy") if problem is None else Examined(state="unhealthy", reason=problem)

    async def restart_instance(self, instance: Instance, spec: InstanceSpec) -> Instance:
        """Kill what is left of it, start it again on its port (nginx's upstream stays as it is), or
        on a new one when something else took that port meanwhile."""
        record = self._read(spec.name)
        if record is not None:
            await _terminate(record, signal.SIGKILL)
        port = record.port if record is not None and _port_free(record.port) else free_port()
        return self._spawn(spec, port)

    async def stop_instance(self, name: str) -> None:
        record = self._read(name)
        if record is not None:
            await _terminate(record, signal.SIGTERM)
            self._path(name).unlink(missing_ok=True)

    # --- router --------------------------------------------------------------------------------

    def render_router(
        self, manifest: Manifest, stable: list[Instance], canary: list[Instance], weight: int,
        canary_error_percent: float = 0.0,
    ) -> str:  # fmt: skip
        plan = plans.process_router_plan(manifest, self.dir, stable, canary, weight, canary_error_percent)
        return render_nginx_conf(plan, plans.ROUTER_HEADER)

    async def apply_router(
        self, manifest: Manifest, stable: list[Instance], canary: list[Instance], weight: int,
        canary_error_percent: float = 0.0,
    ) -> str:  # fmt: skip
        plan = plans.process_router_plan(manifest, self.dir, stable, canary, weight, canary_error_percent)
        conf = self.render_router(manifest, stable, canary, weight, canary_error_percent)
        running = self._router()
        if running and _alive(running) and fencing.unstamped(read_text(self.nginx_conf)) == conf:
            return plan.url
        await self._install_conf(fencing.stamped(conf, self.fence_stamp))
        if running and _alive(running):
            await _reload_nginx(running)
        else:
            await self._start_nginx(plan.listen_port, plans.labels(self.project, Role.router))
        return plan.url

    async def router_running(self) -> bool:
        record = self._router()
        return record is not None and _alive(record)

    async def _install_conf(self, conf: str) -> None:
        for folder in conf_dirs(conf):
            folder.mkdir(parents=True, exist_ok=True)
        candidate = self.nginx_conf.with_suffix(f".conf.{os.getpid()}.new")  # one per orchestrator process
        candidate.write_text(conf)
        proc = await asyncio.create_subprocess_exec(
            nginx_binary(), "-t", "-q", "-p", str(self.nginx_conf.parent), "-c", str(candidate),
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        _, err = await proc.communicate()
        if proc.returncode != 0:
            raise RuntimeDriverError(f"nginx refused the rendered config: {_last_line(err)}")
        # Another orchestrator of this host may be writing too: compare stamps and replace as one step.
        async with fencing.file_lock(self.nginx_conf.with_suffix(".lock")):
            fencing.check_newer(read_text(self.nginx_conf), self.fence_stamp, f"the router of {self.project}")
            os.replace(candidate, self.nginx_conf)

    async def _start_nginx(self, port: int, labels: dict[str, str]) -> None:
        ensure_port_free(port)
        stderr_path = self.nginx_conf.parent / "stderr.log"
        with stderr_path.open("ab") as err:
            proc = subprocess.Popen(
                [nginx_binary(), "-p", str(self.nginx_conf.parent), "-c", str(self.nginx_conf), "-g", "daemon off;"],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err, start_new_session=True,
            )  # fmt: skip
        _children[proc.pid] = proc
        record = ProcessRecord(
            name=router_container(self.project), pid=proc.pid, started=_create_time(proc.pid),
            port=port, labels=labels, image="nginx", log=str(stderr_path),
        )  # fmt: skip
        self._write(record, ROUTER)
        try:
            await wait_listening("127.0.0.1", port, _router_exited(record), public=port, timeout=5.0)
        except RuntimeDriverError:
            await _terminate(record, signal.SIGQUIT)
            self._path(ROUTER).unlink(missing_ok=True)
            raise

    # --- labelled objects ----------------------------------------------------------------------

    async def list_objects(self) -> list[RuntimeObject]:
        found = []
        for path in sorted((self.dir / "instances").glob("*.json")):
            record = ProcessRecord.model_validate_json(path.read_text())
            found.append(_object(record, url=_instance(record).url))
        router = self._router()
        if router is not None:
            found.append(_object(router, url=f"http://127.0.0.1:{router.port}"))
        return found

    async def remove(self, obj: RuntimeObject) -> None:
        if obj.role == Role.router.value:
            record = self._router()
            if record is not None:
                await _terminate(record, signal.SIGQUIT)
            self._path(ROUTER).unlink(missing_ok=True)
        else:
            await self.stop_instance(obj.name)

    async def logs_tail(self, name: str, lines: int = 20) -> list[str]:
        record = self._router() if name in (ROUTER, router_container(self.project)) else self._read(name)
        path = Path(record.log) if record else self.dir / "logs" / f"{name}.log"
        return tail(path, lines)

    # --- the state folder ----------------------------------------------------------------------

    def _path(self, name: str) -> Path:
        return self.dir / ("router.json" if name == ROUTER else f"instances/{name}.json")

    def _read(self, name: str) -> ProcessRecord | None:
        with contextlib.suppress(FileNotFoundError, ValueError):
            return ProcessRecord.model_validate_json(self._path(name).read_text())
        return None

    def _router(self) -> ProcessRecord | None:
        return self._read(ROUTER)

    def _write(self, record: ProcessRecord, name: str | None = None) -> None:
        path = self._path(name or record.name)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(record.model_dump_json())
        os.replace(tmp, path)


# --- helpers -----------------------------------------------------------------------------------


def nginx_binary() -> str:
    found = router.nginx_binary()
    if found is None:
        raise RuntimeUnavailable(
            "nginx is not installed; the process runtime runs it as a subprocess (apt-get install nginx)"
        )
    return found


def free_port() -> int:
    with contextlib.closing(socket.socket()) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def child_env(root: Path, extra: dict[str, str]) -> dict[str, str]:
    """A workload's environment: ours, the bundled workload importable, plus PORT/MODE/VERSION."""
    env = dict(os.environ)
    paths = [str(REPO_ROOT), str(root), *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    env.update(extra)
    return env


def _port_free(port: int) -> bool:
    try:
        ensure_port_free(port)
    except RuntimeDriverError:
        return False
    return True


def _signal_named(reason: str) -> str:
    """`exited with code -9` as `was killed by SIGKILL` (a negative code is the signal)."""
    code = reason.removeprefix("exited with code ")
    if code.startswith("-") and code[1:].isdigit():
        with contextlib.suppress(ValueError):
            return f"was killed by {signal.Signals(-int(code)).name}"
    return reason


def _search_path(root: Path) -> str:
    return os.pathsep.join([str(root), os.environ.get("PATH", os.defpath)])


def _create_time(pid: int) -> float:
    with contextlib.suppress(psutil.Error):
        return psutil.Process(pid).create_time()
    return 0.0


def _exit_reason(record: ProcessRecord) -> str | None:
    """None while the process runs; otherwise how it ended."""
    child = _children.get(record.pid)
    if child is not None:
        code = child.poll()
        return None if code is None else f"exited with code {code}"
    return None if _alive(record) else "is no longer running"


def _alive(record: ProcessRecord) -> bool:
    child = _children.get(record.pid)
    if child is not None:
        return child.poll() is None
    try:
        proc = psutil.Process(record.pid)
        return abs(proc.create_time() - record.started) < 1.0 and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


async def _terminate(record: ProcessRecord, sig: signal.Signals) -> None:
    """Signal the process's group, wait a bounded grace, then kill what is left."""
    if not _alive(record):
        _children.pop(record.pid, None)
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(record.pid, sig)
    deadline = time.monotonic() + STOP_GRACE
    while _alive(record) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    if _alive(record):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(record.pid, signal.SIGKILL)
        while _alive(record):
            await asyncio.sleep(0.02)
    _children.pop(record.pid, None)


async def _reload_nginx(record: ProcessRecord) -> None:
    """SIGHUP the master; return once new workers serve and every old worker has drained."""

    async def workers() -> set[int]:
        with contextlib.suppress(psutil.Error):
            return {child.pid for child in psutil.Process(record.pid).children()}
        return set()

    old = await workers()
    os.kill(record.pid, signal.SIGHUP)
    await wait_drained(workers, old)


def _router_exited(record: ProcessRecord) -> Reason:
    async def exited() -> str | None:
        reason = _exit_reason(record)
        return None if reason is None else f"nginx {reason}: {(tail(Path(record.log), 1) or ['no output'])[-1]}"

    return exited


def _instance(record: ProcessRecord) -> Instance:
    return Instance(
        id=str(record.pid), name=record.name, track=record.labels.get(LABEL_TRACK, "stable"),  # type: ignore[arg-type]
        version=record.labels.get(LABEL_VERSION, ""), url=f"http://127.0.0.1:{record.port}",
    )  # fmt: skip


def _object(record: ProcessRecord, url: str) -> RuntimeObject:
    return RuntimeObject(
        kind="process", name=record.name, id=str(record.pid), labels=record.labels,
        running=_alive(record), url=url, image=record.image,
    )  # fmt: skip


def tail(path: Path, lines: int) -> list[str]:
    with contextlib.suppress(FileNotFoundError):
        with path.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - 64 * 1024))
            text = fh.read().decode(errors="replace")
        return [line for line in text.splitlines() if line.strip()][-lines:]
    return []


def _last_line(raw: bytes) -> str:
    lines = [line for line in raw.decode(errors="replace").splitlines() if line.strip()]
    return lines[-1] if lines else "no output"
