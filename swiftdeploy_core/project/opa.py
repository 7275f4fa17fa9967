"""Talking to an OPA server, as the gatekeeper and the control plane both do: where it listens
(`http(s)://host:port` or `unix:///path/to/opa.sock`), and which policy revision it serves.

OPA's REST API names what it has loaded: `GET /v1/policies` lists every module with its source
text (`raw`) under an id ending in the file name, and `GET /v1/data/<key>` answers the data
under that key. `served_revision` hashes those the way `policies.revision` hashes the project's
files, so the two are equal exactly when OPA serves the project's files.
"""

from __future__ import annotations

import json
from pathlib import Path, PurePosixPath
from typing import Any

import aiohttp
from pydantic import BaseModel

import policies

UNIX_SCHEME = "unix://"
UNIX_BASE = "http://opa"  # the host part of a request over a unix socket (any name; no DNS)


def is_unix(url: str) -> bool:
    return url.startswith(UNIX_SCHEME)


def socket_path(url: str) -> str:
    """`unix:///run/opa.sock` → `/run/opa.sock`."""
    return url[len(UNIX_SCHEME) :]


def base_url(url: str) -> str:
    """The base requests are made against: the URL itself, or a fixed one over a unix socket."""
    return UNIX_BASE if is_unix(url) else url.rstrip("/")


def connector(url: str, limit: int) -> aiohttp.BaseConnector:
    """A pooled connector for `url`: TCP, or the unix socket it names."""
    if is_unix(url):
        return aiohttp.UnixConnector(path=socket_path(url), limit=limit)
    return aiohttp.TCPConnector(limit=limit)


def session(url: str, timeout: float, limit: int = 4) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(connector=connector(url, limit), timeout=aiohttp.ClientTimeout(total=timeout))


class ServedError(Exception):
    """OPA did not say what it serves; the message is one line."""


async def served_revision(http: aiohttp.ClientSession, url: str, data_keys: list[str]) -> str:
    """The revision of the policies and data an OPA serves (see `policies.served_revision`).

    Raises ServedError (or aiohttp/timeout errors) when OPA does not answer as documented."""
    base = base_url(url)
    async with http.get(f"{base}/v1/policies") as resp:
        if resp.status != 200:
            raise ServedError(f"GET /v1/policies answered HTTP {resp.status}")
        listing = await _json(resp)
    result = listing.get("result") if isinstance(listing, dict) else None
    if not isinstance(result, list):
        raise ServedError("GET /v1/policies answered no list of modules")
    modules: dict[str, str] = {}
    for module in result:
        if isinstance(module, dict) and isinstance(module.get("id"), str) and isinstance(module.get("raw"), str):
            modules[PurePosixPath(module["id"]).name] = module["raw"]
    data: dict[str, Any] = {}
    for key in data_keys:
        async with http.get(f"{base}/v1/data/{key}") as resp:
            if resp.status != 200:
                raise ServedError(f"GET /v1/data/{key} answered HTTP {resp.status}")
            answer = await _json(resp)
        if isinstance(answer, dict) and "result" in answer:
            data[key] = answer["result"]
    return policies.served_revision(modules, data)


async def _json(resp: aiohttp.ClientResponse) -> Any:
    try:
        return json.loads(await resp.read())
    except ValueError:
        raise ServedError(f"{resp.url.path} answered malformed JSON") from None


def drift_line(served: str, files: str, managed: bool) -> str:
    """The one line said about a mismatch (empty when there is none)."""
    if not served or served == files:
        return ""
    action = "the control plane reloads it" if managed else "restart it, or run it with --watch"
    return f"OPA serves policy revision {served}, but the project's policies/ is revision {files}: {action}"


async def health(url: str, timeout: float) -> str | None:
    """None when the OPA at `url` answers `GET /health` with 200; otherwise one line saying why."""
    try:
        async with session(url, timeout) as http, http.get(f"{base_url(url)}/health") as resp:
            return None if resp.status == 200 else f"GET /health answered HTTP {resp.status}"
    except TimeoutError:
        return f"no answer within {timeout:g}s"
    except (aiohttp.ClientError, OSError) as exc:
        return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


# --- an OPA the control plane runs: its record ---------------------------------------------------

MANAGED_RECORD = Path(".swiftdeploy") / "opa.json"  # beside the manifest, written by the supervisor


class ManagedOpa(BaseModel):
    """The OPA `swiftdeploy up` runs (policy.opa: process or container): what and where."""

    mode: str  # "process" or "container"
    url: str  # unix:///.../opa.sock, or http://<bridge ip>:8181
    pid: int | None = None  # process
    container: str | None = None  # container: its name
    network: str | None = None  # container: the internal network only it and the gatekeeper use
    restarts: int = 0
    reloads: int = 0  # restarts because OPA served other policies than the project's files


def read_managed(root: Path) -> ManagedOpa | None:
    try:
        return ManagedOpa.model_validate_json((root / MANAGED_RECORD).read_text())
    except (OSError, ValueError):
        return None
