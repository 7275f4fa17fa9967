"""The service's environment at deploy time: `env_file`, `env`, the canary's `env`, and the
secrets' values.

Secret values are read here, where the orchestrator runs (its environment, or files relative to
the manifest), kept as `SecretStr` (never printed), and handed only to the runtime. Everything that
is written or sent (generated files, events, the record, history, logs, the report) names a secret
and shows `***`; `redact` masks a value that a service itself printed into its log lines.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from pathlib import Path

from pydantic import BaseModel, ConfigDict, SecretStr

from swiftdeploy_core.errors import SecretUnavailable
from swiftdeploy_core.project.manifest import RESERVED_ENV, Manifest, SecretSpec

MASK = "***"
MAX_SECRET_BYTES = 64 * 1024


class ServiceEnv(BaseModel):
    """What one track's instances get on top of HOST, PORT, MODE and VERSION."""

    model_config = ConfigDict(frozen=True)

    env: dict[str, str] = {}
    secrets: dict[str, SecretStr] = {}

    def values(self) -> dict[str, str]:
        """The whole environment, secrets revealed: for the runtime only."""
        return {**self.env, **{k: v.get_secret_value() for k, v in self.secrets.items()}}

    def secret_values(self) -> list[str]:
        return [v.get_secret_value() for v in self.secrets.values() if v.get_secret_value()]


def resolve(manifest: Manifest, root: Path, environ: Mapping[str, str], *, canary: bool = False) -> ServiceEnv:
    """The track's environment; SecretUnavailable (one line, naming the source) when a value
    cannot be read."""
    svc = manifest.services
    from_file = read_env_file(_under(root, svc.env_file)) if svc.env_file else {}
    env = {**from_file, **(manifest.canary_env if canary else svc.env)}
    secrets = {s.name: SecretStr(_secret(s, root, environ)) for s in svc.secrets}
    return ServiceEnv(env={k: v for k, v in env.items() if k not in secrets}, secrets=secrets)


def read_env_file(path: Path) -> dict[str, str]:
    """`KEY=VALUE` lines (blank lines and `#` comments skipped, one pair of quotes stripped)."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise SecretUnavailable(f"services.env_file {path}: cannot be read ({exc.strerror or exc})") from None
    found: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.removeprefix("export ").partition("=")
        key = key.strip()
        if not sep or not key.isidentifier():
            raise SecretUnavailable(f"services.env_file {path}, line {number}: expected KEY=VALUE")
        if key in RESERVED_ENV:
            raise SecretUnavailable(f"services.env_file {path}, line {number}: {key} is set by SwiftDeploy")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        found[key] = value
    return found


def _secret(spec: SecretSpec, root: Path, environ: Mapping[str, str]) -> str:
    if spec.file is not None:
        path = _under(root, spec.file)
        try:
            with path.open("rb") as handle:
                raw = handle.read(MAX_SECRET_BYTES + 1)
        except OSError as exc:
            raise SecretUnavailable(
                f"secret {spec.name}: {spec.source} cannot be read ({exc.strerror or exc})"
            ) from None
        if len(raw) > MAX_SECRET_BYTES:
            raise SecretUnavailable(f"secret {spec.name}: {spec.source} is larger than 64 KiB")
        return raw.decode(errors="replace").rstrip("\r\n")
    name = spec.env or spec.name
    if name not in environ:
        raise SecretUnavailable(
            f"secret {spec.name}: {spec.source} is not set where the orchestrator runs "
            "(export it before `swiftdeploy up`, or give the secret a file)"
        )
    return environ[name]


def _under(root: Path, path: Path) -> Path:
    return path if path.is_absolute() else root / path


def redact(lines: Iterable[str], secrets: Iterable[str]) -> list[str]:
    """Log lines with every secret value replaced by `***`."""
    values = sorted({s for s in secrets if s}, key=len, reverse=True)
    out = []
    for line in lines:
        for value in values:
            line = line.replace(value, MASK)
        out.append(line)
    return out


def fingerprint(version: str, image: str, env: ServiceEnv, command: Iterable[str] | None, args: Iterable[str]) -> str:
    """What makes two tracks the same service: version, image (by digest when known), env,
    secret names (not values), command and args. A canary with stable's fingerprint is refused."""
    data = {
        "version": version, "image": image, "env": env.env, "secrets": sorted(env.secrets),
        "command": list(command or []), "args": list(args),
    }  # fmt: skip
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()
