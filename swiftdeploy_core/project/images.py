"""Image references, registry credentials and pull failures, as the docker runtime and `validate`
see them. Pure except for reading a Docker config file.

A reference is `[registry/]repository[:tag][@sha256:digest]`, with Docker's rule for the first
component: it names a registry when it holds a `.` or a `:` or is `localhost`; otherwise the image
is on Docker Hub (`docker.io`, `library/` added to a one-part name). Credentials come from a Docker
config file: the manifest's `images.credentials`, else `$DOCKER_CONFIG/config.json`, else
`~/.docker/config.json`, read as the docker CLI reads it: the registry's `credHelpers` entry, else
the `credsStore`, runs `docker-credential-<name> get` (the credential helper protocol: the server
URL on stdin, `{"Username", "Secret"}` on stdout; a `<token>` user is an identity token); without
either, `auths.<registry>.auth` (base64 `user:password`). Nothing a helper prints is kept.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from swiftdeploy_core.errors import ConfigError, ManifestError

DOCKER_HUB = "docker.io"
HUB_KEYS = ("https://index.docker.io/v1/", "index.docker.io", "registry-1.docker.io", "docker.io")
HUB_SERVER_URL = "https://index.docker.io/v1/"  # what the docker CLI asks credential helpers for Hub
HELPER_TIMEOUT = 10.0  # seconds for one `docker-credential-<name> get`
IDENTITY_TOKEN_USER = "<token>"  # a helper's Username for an identity (OAuth refresh) token
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_REFERENCE = re.compile(
    rf"^(?:(?P<registry>[A-Za-z0-9.-]+(?::[0-9]+)?)/)?(?P<path>{_COMPONENT}(?:/{_COMPONENT})*)"
    r"(?::(?P<tag>[\w][\w.-]{0,127}))?(?:@(?P<digest>sha256:[a-f0-9]{64}))?$"
)


class ImageRef(BaseModel):
    """One parsed image reference."""

    model_config = ConfigDict(frozen=True)

    registry: str  # docker.io for Docker Hub
    repository: str  # as docker names it locally: no docker.io/ prefix, no library/ for Hub images
    tag: str | None = None
    digest: str | None = None  # sha256:...

    @property
    def pinned(self) -> bool:
        return self.digest is not None


def parse_reference(reference: str) -> ImageRef:
    """Parse a reference; ValueError naming what is wrong."""
    match = _REFERENCE.match(reference)
    if match is None:
        raise ValueError(
            f"{reference!r} is not an image reference ([registry/]name[:tag][@sha256:digest], lowercase name)"
        )
    registry, path = match["registry"], match["path"]
    if registry is not None and not ("." in registry or ":" in registry or registry == "localhost"):
        if registry != registry.lower():  # a Hub namespace, which docker wants lowercase
            raise ValueError(f"{reference!r} is not an image reference (the name must be lowercase)")
        path, registry = f"{registry}/{path}", None  # e.g. `swiftdeploy/workload`
    repository = path if registry not in (None, DOCKER_HUB) else path.removeprefix("library/")
    return ImageRef(registry=registry or DOCKER_HUB, repository=_local_name(registry, repository),
                    tag=match["tag"], digest=match["digest"])  # fmt: skip


def _local_name(registry: str | None, repository: str) -> str:
    return repository if registry in (None, DOCKER_HUB) else f"{registry}/{repository}"


def docker_config_file(credentials: Path | None, docker_config: str | None, home: Path) -> Path:
    """Which Docker config file holds the credentials (it may not exist)."""
    if credentials is not None:
        return credentials
    if docker_config:
        return Path(docker_config) / "config.json"
    return home / ".docker" / "config.json"


RegistryAuth = str | dict[str, str]  # base64 `user:password`, or aiodocker's auth mapping


@dataclass(frozen=True)
class Credentials:
    """What a Docker config file says about registry credentials (see the module's docstring)."""

    path: Path
    auths: Mapping[str, str] = field(default_factory=dict)  # registry host -> base64 `user:password`
    helpers: Mapping[str, str] = field(default_factory=dict)  # credHelpers: registry host -> helper name
    store: str | None = None  # credsStore: the helper for every registry without its own

    def for_registry(self, registry: str) -> RegistryAuth | None:
        """The credentials to present to `registry`, or None (anonymous). A helper that cannot
        answer is a one-line ConfigError; one that has no credentials for it is anonymous."""
        host = DOCKER_HUB if registry in HUB_KEYS else registry
        helper = self.helpers.get(host) or self.store
        if helper is None:
            return self.auths.get(host)
        return run_credential_helper(helper, HUB_SERVER_URL if host == DOCKER_HUB else host, self.path)


def load_credentials(path: Path) -> Credentials:
    """The credentials of a Docker config file. A missing file is no credentials; an unreadable or
    malformed one is a one-line ManifestError."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return Credentials(path)
    except (OSError, ValueError) as exc:
        raise ManifestError(f"credentials file {path}: cannot be read as a Docker config ({exc})") from None
    if not isinstance(data, dict):
        raise ManifestError(f"credentials file {path}: cannot be read as a Docker config (not an object)")
    auths: dict[str, str] = {}
    for key, entry in (data.get("auths") or {}).items():
        if isinstance(entry, dict) and isinstance(entry.get("auth"), str) and entry["auth"]:
            _check_auth(path, key, entry["auth"])
            auths[_host(key)] = entry["auth"]
    helpers = {
        _host(key): name for key, name in (data.get("credHelpers") or {}).items() if isinstance(name, str) and name
    }
    store = data.get("credsStore")
    return Credentials(path, auths, helpers, store if isinstance(store, str) and store else None)


def run_credential_helper(name: str, server_url: str, config: Path) -> RegistryAuth | None:
    """`docker-credential-<name> get` for `server_url`: aiodocker's auth mapping, or None when the
    helper has no credentials for it."""
    binary = f"docker-credential-{name}"
    where = f"credential helper {binary} for {server_url} (named in {config})"
    try:
        done = subprocess.run([binary, "get"], input=server_url, capture_output=True, text=True,
                              timeout=HELPER_TIMEOUT, check=False)  # fmt: skip
    except FileNotFoundError:
        raise ConfigError(f"{where}: not found on PATH; install it, or remove it from the config") from None
    except subprocess.TimeoutExpired:
        raise ConfigError(f"{where}: no answer within {HELPER_TIMEOUT:g}s") from None
    except OSError as exc:
        raise ConfigError(f"{where}: cannot run it ({exc.strerror or exc})") from None
    if done.returncode != 0:
        said = " ".join((done.stdout or done.stderr).split())
        if "credentials not found" in said.lower():
            return None
        raise ConfigError(f"{where}: exited with code {done.returncode} ({said[:200] or 'no output'})")
    try:
        answer = json.loads(done.stdout)
        username, secret = answer["Username"], answer["Secret"]
        if not isinstance(username, str) or not isinstance(secret, str):
            raise TypeError
    except (ValueError, KeyError, TypeError):
        raise ConfigError(f"{where}: its answer is not the helper protocol's {{Username, Secret}} JSON") from None
    if username == IDENTITY_TOKEN_USER:
        return {"identitytoken": secret}
    return {"username": username, "password": secret}


def _check_auth(path: Path, key: str, auth: str) -> None:
    try:
        ok = b":" in base64.b64decode(auth, validate=True)
    except (binascii.Error, ValueError):
        ok = False
    if not ok:
        raise ManifestError(f"credentials file {path}: auths.{key}.auth is not base64 of user:password")


def _host(key: str) -> str:
    """`https://index.docker.io/v1/` -> `index.docker.io`; `127.0.0.1:5000` stays."""
    host = key.split("://", 1)[-1].split("/", 1)[0]
    return DOCKER_HUB if host in HUB_KEYS else host


def pull_cause(message: str) -> str:
    """The cause of a failed pull or registry query, from dockerd's message."""
    text = message.lower()
    if any(s in text for s in ("unauthorized", "no basic auth credentials", "authentication required", "denied")):
        return "unauthorized"
    if any(s in text for s in ("not found", "manifest unknown", "name unknown", "does not exist")):
        return "not found"
    unreachable = ("connection refused", "no such host", "dial tcp", "timeout", "i/o timeout", "no route", "eof")
    if any(s in text for s in unreachable):
        return "unreachable"
    return "refused"


def pull_error(image: str, message: str, *, credentials: Path | None = None) -> str:
    """One line naming the image, its registry and the cause (with dockerd's words after it)."""
    registry = parse_reference(image).registry
    cause = pull_cause(message)
    hint = {
        "unauthorized": f"; add credentials for {registry} to {credentials or 'your Docker config'}",
        "unreachable": f"; is the registry {registry} running and reachable from dockerd?",
        "not found": "; push it, or fix the name or tag",
    }.get(cause, "")
    detail = " ".join(message.split())[-200:]
    return f"cannot pull image {image!r} from {registry}: {cause} ({detail}){hint}"
