"""Session-scoped real servers and factory fixtures that clean up what they create."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.servers import RedisServer, RegistryServer, docker_socket_alive, missing, require_binary

# Fixtures shared across folders: the orchestration stack and the scratch project.
pytest_plugins = ["tests.orchestration", "tests.projects", "tests.swarm", "tests.swarm_nodes"]


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One real redis-server for the whole session."""
    server = RedisServer(require_binary("redis-server"), tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """The session's redis-server, emptied before each test."""
    import redis

    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    client.close()
    return redis_server.url


@pytest.fixture
def make_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    """Factory for a private redis-server a test may stop, kill and restart."""
    servers: list[RedisServer] = []

    def make(appendonly: bool = True) -> RedisServer:
        server = RedisServer(
            require_binary("redis-server"), tmp_path_factory.mktemp("redis-own"), appendonly=appendonly
        ).start()
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.stop(kill=True)


@pytest.fixture(scope="session")
def docker_daemon() -> str:
    """The dockerd that .ci/run (or scripts/start-servers) started."""
    if not docker_socket_alive():
        missing("dockerd (/var/run/docker.sock; run scripts/start-servers)")
    return "unix:///var/run/docker.sock"


@pytest.fixture
def make_workload(tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    """Factory for real workload servers (`python -m workload` on a free loopback port).

    make_workload(mode="canary", version="1.0.0", metrics=True) -> WorkloadServer (.url, .port, .log())
    """
    from tests.servers import WorkloadServer

    servers: list[WorkloadServer] = []

    def make(mode: str = "canary", version: str = "1.0.0", metrics: bool = True) -> WorkloadServer:
        server = WorkloadServer(tmp_path_factory.mktemp("workload"), mode, version, metrics).start()
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.stop()


@pytest.fixture(scope="session")
def swiftdeploy_images(docker_daemon: str) -> dict[str, str]:
    """Every SwiftDeploy image, built by scripts/build-images when missing: name (base, workload,
    nginx, controlplane) -> a tag pinned to the hash of that image's inputs, so another checkout
    re-tagging `latest` cannot change what a test runs. A cold build takes a few minutes (once per
    machine), a cached one about a second. Prefer the one-image fixtures below: they build less."""
    from tests.servers import build_images

    return build_images()


@pytest.fixture(scope="session")
def workload_image(docker_daemon: str) -> str:
    """The workload image (`python -m workload` on 0.0.0.0:3000; MODE, VERSION from the environment)."""
    from tests.servers import build_images

    return build_images("workload")["workload"]


@pytest.fixture(scope="session")
def nginx_image(docker_daemon: str) -> str:
    """The router image: Debian's nginx in the foreground (`nginx -g 'daemon off;'`)."""
    from tests.servers import build_images

    return build_images("nginx")["nginx"]


@pytest.fixture(scope="session")
def controlplane_image(docker_daemon: str) -> str:
    """redis-server plus the whole swiftdeploy package in /opt/venv (on PATH)."""
    from tests.servers import build_images

    return build_images("controlplane")["controlplane"]


@pytest.fixture(scope="session")
def opa_standin_image(docker_daemon: str) -> str:
    """The stand-in OPA image: the controlplane image running tests/bin/opa (OPA's arguments)."""
    from tests.servers import build_images

    return build_images("opa-standin")["opa-standin"]


@pytest.fixture(scope="session")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryServer]:
    """A real Docker registry (Debian's docker-registry) on a free loopback port, open to all."""
    server = RegistryServer(require_binary("docker-registry"), tmp_path_factory.mktemp("registry")).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def auth_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryServer]:
    """A second registry that asks for basic auth: user `team`, its password in `.users`."""
    import secrets

    users = {"team": secrets.token_urlsafe(12)}
    workdir = tmp_path_factory.mktemp("registry-auth")
    server = RegistryServer(require_binary("docker-registry"), workdir, users=users).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def ledger_image(docker_daemon: str) -> str:
    """The `ledger` test service (tests/fixtures/ledger: health on /status, no /metrics)."""
    from tests.servers import build_images, build_ledger

    return build_ledger(build_images("base")["base"])


@pytest.fixture
async def opa_api(tmp_path):
    """A stand-in OPA server (tests/opa_api.py) serving a copy of the default policies."""
    import shutil

    from policies import default_dir, policy_files
    from tests.opa_api import OpaApiServer

    folder = tmp_path / "opa-policies"
    folder.mkdir()
    for path in policy_files(default_dir(), include_tests=True):
        shutil.copy(path, folder / path.name)
    server = await OpaApiServer(folder).start()
    yield server
    await server.stop()
