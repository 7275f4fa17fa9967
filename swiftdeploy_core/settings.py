"""Process settings. Built once in each entrypoint and passed down; nothing else reads os.environ."""

from __future__ import annotations

import os
import socket
from pathlib import Path

from pydantic import AliasChoices, Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from swiftdeploy_core.errors import ConfigError

STATE_DIR = ".swiftdeploy"  # beside the manifest: the control plane's state, data and logs


class Settings(BaseSettings):
    """Settings shared by the client and every service (`SWIFTDEPLOY_` prefix, plus `REDIS_URL`)."""

    model_config = SettingsConfigDict(env_prefix="SWIFTDEPLOY_", extra="ignore")

    redis_url: str | None = Field(default=None, validation_alias=AliasChoices("REDIS_URL", "SWIFTDEPLOY_REDIS_URL"))
    manifest: Path = Path("manifest.yaml")
    instance: str = Field(default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}")
    health_port: int = 0  # 0: pick a free port
    health_host: str = "127.0.0.1"
    log_level: str = "INFO"
    log_json: bool = True
    # Bus tuning.
    stream_maxlen: int = 100_000
    metrics_maxlen: int = 10_000
    block_ms: int = 1_000
    batch_size: int = 100
    lease_ms: int = 30_000  # a pending entry idle this long is reclaimed by another replica
    max_deliveries: int = 5  # after this many failed tries an entry is dead-lettered
    shutdown_grace: float = 4.0  # the whole budget from a stop request to exit, in-flight work included
    request_timeout: float = 10.0
    # How long an orchestrator's lease on a project lasts without a renewal (renewed every third):
    # a replica that lost Redis for longer stops its operation before the next effect.
    operation_lease: float = 30.0
    # Set by the control plane for the gatekeeper when it runs OPA itself (policy.opa: process or
    # container): where that OPA listens (unix:///... or http://<bridge ip>:8181), and that it is
    # managed (a drift is reloaded, not only reported).
    opa_url: str | None = None
    opa_managed: bool = False
    # Where the control plane that `swiftdeploy up` runs records its Redis URL, read by every
    # process when REDIS_URL is unset. None: `.swiftdeploy/redis-url.json` beside the manifest.
    redis_url_file: Path | None = None
    # Docker's own variable: the folder of the config.json holding registry credentials.
    docker_config: str | None = Field(default=None, validation_alias=AliasChoices("DOCKER_CONFIG"))

    def redis_url_record(self) -> Path:
        """The file `redis_url_file` names (or its default beside the manifest)."""
        return self.redis_url_file or self.manifest.parent.resolve() / STATE_DIR / "redis-url.json"


def secret_from_env(reference: str) -> str | None:
    """The value of a manifest secret reference `${NAME}` in this process's environment (None: unset).
    Secrets are read here, at the moment of signing, so they never travel in a manifest or event."""
    name = reference.strip().removeprefix("${").removesuffix("}")
    return os.environ.get(name) or None


def load_settings() -> Settings:
    """The settings from the environment; a bad variable is a one-line ConfigError."""
    try:
        return Settings()
    except ValidationError as exc:
        first = exc.errors()[0]
        raise ConfigError(f"setting {'.'.join(map(str, first['loc']))}: {first['msg']}") from exc
