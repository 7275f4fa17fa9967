"""Real servers for tests: free ports, redis-server, and the rule for a missing server.

Under SWIFTDEPLOY_REQUIRE_SERVERS=1 (set by .ci/run) a test whose real server is missing FAILS;
on a developer's machine without it, it is skipped with the reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest

REQUIRE_SERVERS = os.environ.get("SWIFTDEPLOY_REQUIRE_SERVERS") == "1"


def missing(what: str) -> None:
    """Fail (under REQUIRE_SERVERS, as in CI) or skip a test whose real server is not here."""
    message = f"{what} is not available"
    if REQUIRE_SERVERS:
        pytest.fail(f"{message} (SWIFTDEPLOY_REQUIRE_SERVERS=1)", pytrace=False)
    pytest.skip(message)  # REQUIRE_SERVERS is off: a developer machine


def require_binary(name: str) -> str:
    path = shutil.which(name) or next(
        (p for p in (f"/usr/sbin/{name}", f"/usr/bin/{name}") if os.access(p, os.X_OK)), None
    )
    if path is None:
        missing(f"the {name} binary")
    return path  # type: ignore[return-value]


def free_port() -> int:
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, timeout: float = 10.0, host: str = "127.0.0.1") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.2):
            return
        time.sleep(0.02)
    raise TimeoutError(f"nothing listens on {host}:{port} after {timeout}s")


@dataclass
class RedisServer:
    """A real redis-server process on a loopback port, restartable in place (same data dir)."""

    binary: str
    workdir: Path
    port: int = field(default_factory=free_port)
    appendonly: bool = False
    process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        self.workdir.mkdir(parents=True, exist_ok=True)
        args = [
            self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.workdir),
            "--save", "", "--appendonly", "yes" if self.appendonly else "no",
            "--appendfsync", "always", "--daemonize", "no", "--logfile", str(self.workdir / "redis.log"),
        ]  # fmt: skip
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for_port(self.port)
        return self

    def stop(self, kill: bool = False) -> None:
        if self.process and self.process.poll() is None:
            self.process.kill() if kill else self.process.terminate()
            self.process.wait(timeout=10)
        self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()


@dataclass
class RegistryServer:
    """A real Docker registry (Debian's docker-registry, distribution v2) on a loopback port,
    storing under `workdir`. With `users` it asks for HTTP basic auth (an htpasswd file of bcrypt
    hashes). dockerd allows plain HTTP to 127.0.0.0/8 registries by default."""

    binary: str
    workdir: Path
    users: dict[str, str] = field(default_factory=dict)
    port: int = field(default_factory=free_port)
    process: subprocess.Popen | None = None

    @property
    def host(self) -> str:
        """The registry part of an image reference: `127.0.0.1:PORT`."""
        return f"127.0.0.1:{self.port}"

    def start(self) -> RegistryServer:
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = {
            "version": 0.1,
            "log": {"level": "warn"},
            "storage": {"filesystem": {"rootdirectory": str(self.workdir / "data")}, "delete": {"enabled": True}},
            "http": {"addr": self.host},
        }
        if self.users:
            htpasswd = self.workdir / "htpasswd"
            htpasswd.write_text("".join(f"{user}:{_bcrypt(password)}\n" for user, password in self.users.items()))
            config["auth"] = {"htpasswd": {"realm": "swiftdeploy-tests", "path": str(htpasswd)}}
        (self.workdir / "config.yml").write_text(json.dumps(config))  # JSON is YAML
        log = (self.workdir / "registry.log").open("ab")
        self.process = subprocess.Popen(
            [self.binary, "serve", str(self.workdir / "config.yml")], stdout=log, stderr=subprocess.STDOUT
        )
        wait_for_port(self.port)
        return self

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)
        self.process = None


def _bcrypt(password: str) -> str:
    """An htpasswd line's hash, from apache2-utils' htpasswd (the registry accepts bcrypt only)."""
    done = subprocess.run(
        [require_binary("htpasswd"), "-nbB", "-C", "4", "user", password], capture_output=True, text=True, check=True
    )
    return done.stdout.strip().split(":", 1)[1]


def docker_socket_alive(path: str = "/var/run/docker.sock") -> bool:
    if not os.path.exists(path):
        return False
    with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(2)
        sock.connect(path)
        sock.sendall(b"GET /_ping HTTP/1.0\r\n\r\n")
        return b"OK" in sock.recv(1024)
    return False


@dataclass
class NginxProcess:
    """A real, non-daemon nginx serving one rendered config from a private prefix."""

    binary: str
    prefix: Path
    conf: Path
    process: subprocess.Popen | None = None

    def command(self, *extra: str) -> list[str]:
        return [self.binary, "-p", str(self.prefix), "-c", str(self.conf), *extra]

    def start(self, port: int) -> NginxProcess:
        self.process = subprocess.Popen(
            self.command("-g", "daemon off;"), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        try:
            wait_for_port(port)
        except TimeoutError:
            self.stop()
            raise
        return self

    def reload(self, timeout: float = 10.0) -> None:
        """Graceful reload (SIGHUP); returns once every old worker has exited, so only the new
        configuration answers from then on."""
        import signal

        import psutil

        assert self.process is not None
        master = psutil.Process(self.process.pid)
        old = {child.pid for child in master.children()}
        self.process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            now = {child.pid for child in master.children()}
            if now and not now & old:
                return
            time.sleep(0.02)
        raise TimeoutError(f"nginx workers {sorted(old)} still running {timeout}s after a reload")

    def stop(self) -> str:
        """Stop (QUIT: graceful) and return what nginx wrote to stderr."""
        import signal

        if self.process is None:
            return ""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGQUIT)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        err = self.process.stderr.read().decode(errors="replace") if self.process.stderr else ""
        self.process = None
        return err


def split_router(prefix: Path, stable_port: int, canary_port: int, canary_weight: int) -> tuple[Any, NginxProcess]:
    """A real nginx on a free port splitting traffic between two loopback services, its config
    rendered from the project's template (logs, pid and temp files under `prefix`)."""
    from swiftdeploy_core.project.router import RouterPlan, Upstream, nginx_binary, render_nginx_conf

    nginx = nginx_binary() or require_binary("nginx")
    (prefix / "tmp").mkdir(parents=True)
    port = free_port()
    plan = RouterPlan(
        listen_port=port, stable=[Upstream(host="127.0.0.1", port=stable_port)],
        canary=[Upstream(host="127.0.0.1", port=canary_port)], canary_weight=canary_weight,
        access_log=str(prefix / "access.log"), error_log=str(prefix / "error.log"),
        pid=str(prefix / "nginx.pid"), temp_dir=str(prefix / "tmp"),
    )  # fmt: skip
    conf = prefix / "nginx.conf"
    conf.write_text(render_nginx_conf(plan, "test"))
    return plan, NginxProcess(nginx, prefix, conf).start(port)


REPO_ROOT = Path(__file__).resolve().parent.parent


@dataclass
class WorkloadServer:
    """A real `python -m workload` (hypercorn) on a loopback port; its log is kept in `log_path`."""

    workdir: Path
    mode: str = "canary"
    version: str = "1.0.0"
    metrics: bool = True
    port: int = field(default_factory=free_port)
    process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.workdir / f"workload-{self.port}.log"

    def start(self, timeout: float = 20.0) -> WorkloadServer:
        self.workdir.mkdir(parents=True, exist_ok=True)
        env = {
            **os.environ, "PYTHONPATH": str(REPO_ROOT), "HOST": "127.0.0.1", "PORT": str(self.port),
            "MODE": self.mode, "VERSION": self.version, "WORKLOAD_METRICS": "1" if self.metrics else "0",
        }  # fmt: skip
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "workload"], env=env, cwd=REPO_ROOT, stdout=log, stderr=log
            )
        try:
            wait_for_port(self.port, timeout=timeout)
        except TimeoutError:
            self.stop(kill=True)
            raise TimeoutError(f"workload did not start: {self.log_path.read_text()[-2000:]}") from None
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, kill: bool = False) -> None:
        if self.process and self.process.poll() is None:
            self.process.kill() if kill else self.process.terminate()
            self.process.wait(timeout=10)
        self.process = None


def run_swiftdeploy(
    *args: str,
    cwd: Path,
    env: dict[str, str] | None = None,
    prefix: list[str] | None = None,
    timeout: float = 120.0,
) -> subprocess.CompletedProcess[str]:
    """Run the real `swiftdeploy` CLI (`python -m swiftdeploy_core`) in a subprocess.

    `env` is added to this process's environment; `prefix` wraps the command (e.g. setpriv).
    """
    import sys

    full_env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), **(env or {})}
    command = [*(prefix or []), sys.executable, "-m", "swiftdeploy_core", *args]
    return subprocess.run(command, cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout)


def build_images(*only: str, timeout: float = 900) -> dict[str, str]:
    """Run scripts/build-images for `only` these images (default all; the base always): image
    name -> tag pinned to the hash of its inputs. About a second when cached, minutes when cold."""
    import sys

    which = ["--only", ",".join(only)] if only else []
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "scripts" / "build-images"), "--quiet", *which],
        capture_output=True, text=True, timeout=timeout, cwd=REPO_ROOT,
    )  # fmt: skip
    if result.returncode != 0:
        pytest.fail(f"scripts/build-images failed: {result.stderr.strip()[-3000:]}", pytrace=False)
    images = {}
    for line in result.stdout.splitlines():
        _status, name, pinned, *_ = line.split()
        images[name] = pinned
    return images


LEDGER = REPO_ROOT / "tests" / "fixtures" / "ledger"


def docker_cli(*args: str, config: Path | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """The docker CLI; `config` is a DOCKER_CONFIG folder (a login never touches the user's own)."""
    env = {**os.environ, "DOCKER_BUILDKIT": "0", **({"DOCKER_CONFIG": str(config)} if config else {})}
    return subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout, env=env)


def build_ledger(base: str) -> str:
    """The ledger test service's image on `base`, tagged by the hash of its inputs (built once)."""
    import hashlib

    inputs = b"".join((LEDGER / name).read_bytes() for name in ("Dockerfile", "app.py")) + base.encode()
    tag = f"swiftdeploy-test/ledger:{hashlib.sha256(inputs).hexdigest()[:12]}"
    if docker_cli("image", "inspect", tag).returncode != 0:
        built = docker_cli(
            "build", "--quiet", "--network", "none", "--build-arg", f"BASE={base}", "--tag", tag, str(LEDGER)
        )
        if built.returncode != 0:
            pytest.fail(f"building {tag} failed: {built.stderr.strip()[-2000:]}", pytrace=False)
    return tag


def push_image(local: str, reference: str, config: Path | None = None) -> str:
    """Push `local` as `reference`, then drop the local `reference` tag (a deploy must pull it)."""
    for args in (("tag", local, reference), ("push", reference)):
        done = docker_cli(*args, config=config)
        if done.returncode != 0:
            pytest.fail(f"docker {' '.join(args)} failed: {done.stderr.strip()[-1000:]}", pytrace=False)
    forget_image(reference)
    return reference


def forget_image(reference: str) -> None:
    """Remove a local tag (and its digest reference), so the next deploy has to pull it again."""
    repository = reference.split("@")[0].rsplit(":", 1)[0] if "@" not in reference else reference.split("@")[0]
    listed = docker_cli("image", "inspect", "--format", "{{json .RepoDigests}}", reference).stdout.strip()
    names = [reference, *(d for d in json.loads(listed or "[]") if d.startswith(f"{repository}@"))]
    for name in names:
        docker_cli("rmi", name)


def docker_login(registry: RegistryServer, user: str, password: str, config: Path) -> Path:
    """`docker login` into a fresh DOCKER_CONFIG folder; returns its config.json (auths.<host>.auth)."""
    config.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ["docker", "login", "--username", user, "--password-stdin", registry.host],
        input=password, capture_output=True, text=True, timeout=60, env={**os.environ, "DOCKER_CONFIG": str(config)},
    )  # fmt: skip
    if done.returncode != 0:
        pytest.fail(f"docker login {registry.host} failed: {done.stderr.strip()}", pytrace=False)
    return config / "config.json"


def credential_helper(folder: Path, name: str, known: dict[str, tuple[str, str]]) -> Path:
    """A real `docker-credential-<name>` executable in `folder` speaking the credential helper
    protocol: `get` reads a server URL on stdin and answers `{"ServerURL", "Username", "Secret"}`
    for the `known` ones (server -> (user, secret)), else "credentials not found" with exit 1."""
    folder.mkdir(parents=True, exist_ok=True)
    script = folder / f"docker-credential-{name}"
    script.write_text(
        f"#!{sys.executable}\n"
        "import json, sys\n"
        f"known = {known!r}\n"
        "server = sys.stdin.read().strip()\n"
        "if sys.argv[1:] != ['get'] or server not in known:\n"
        "    print('credentials not found in native keychain')\n"
        "    sys.exit(1)\n"
        "user, secret = known[server]\n"
        "print(json.dumps({'ServerURL': server, 'Username': user, 'Secret': secret}))\n"
    )
    script.chmod(0o755)
    return script


@dataclass
class PrometheusServer:
    """A real Prometheus scraping `targets` every second, with its own config and storage."""

    binary: str
    workdir: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, targets: list[str], labels: dict[str, str] | None = None) -> PrometheusServer:
        """Scrape each `http://host:port` target's /metrics every second (job "workload"),
        with `labels` added to every series."""
        config = self.workdir / "prometheus.yml"
        hosts = ", ".join(f"'{t.removeprefix('http://')}'" for t in targets)
        extra = ", ".join(f"{k}: '{v}'" for k, v in (labels or {}).items())
        config.write_text(
            "global: {scrape_interval: 1s, scrape_timeout: 900ms, evaluation_interval: 1s}\n"
            f"scrape_configs:\n  - job_name: workload\n    static_configs: [{{targets: [{hosts}], labels: {{{extra}}}}}]\n"
        )
        log = (self.workdir / "prometheus.log").open("ab")
        self.process = subprocess.Popen(
            [self.binary, f"--config.file={config}", f"--storage.tsdb.path={self.workdir / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
            stdout=log, stderr=log,
        )  # fmt: skip
        wait_for_port(self.port, timeout=20)
        return self

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=20)

    async def query(self, session: aiohttp.ClientSession, expr: str, at_ms: int) -> list[dict]:
        params = {"query": expr, "time": f"{at_ms / 1000:.3f}"}
        async with session.get(f"{self.url}/api/v1/query", params=params) as response:
            body = await response.json()
        assert body["status"] == "success", body
        return body["data"]["result"]

    async def scraping(self, session: aiohttp.ClientSession, count: int, timeout: float = 20) -> None:
        """Wait until every target has been scraped once (discovery starts scraping after ~5 s)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(aiohttp.ContentTypeError):  # 503 text while it starts
                if len(await self.query(session, "up == 1", int(time.time() * 1000))) == count:
                    return
            await asyncio.sleep(0.2)
        raise TimeoutError(f"Prometheus did not scrape {count} targets within {timeout}s")

    async def scalar(self, session: aiohttp.ClientSession, expr: str, at_ms: int) -> float | None:
        result = await self.query(session, expr, at_ms)
        value = float(result[0]["value"][1]) if result else None
        return None if value is None or value != value else value


@dataclass
class NotOursService:
    """`python -m tests.not_ours` on a free port."""

    env: dict[str, str]
    log: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> NotOursService:
        env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "PORT": str(self.port), **self.env}
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "tests.not_ours"], env=env, cwd=REPO_ROOT, stdout=out, stderr=out
            )
        wait_for_port(self.port, timeout=20)
        return self

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)
