"""The OPA policy engine: a client of OPA's REST Data API.

`POST <url>/v1/data/<domain path>` with `{"input": ...}` answers `{"result": {"allow": ...,
"deny": [...]}}`, or `{}` when the document is undefined; errors are 4xx/5xx with
`{"code": ..., "message": ...}`. `GET <url>/health` answers 200 when OPA is ready. One pooled
aiohttp session per engine (over TCP, or a unix socket for `unix:///path/opa.sock`); every
request has a deadline. Every failure becomes a `PolicyEngineError` whose message says exactly
what happened and where, and so a deny.

Drift: the engine asks OPA which policies it serves (`GET /v1/policies` and the data under
data.json's keys, see `swiftdeploy_core.project.opa`) at most every SERVED_TTL_S, and at once when
the project's files change; each decision carries the revision OPA serves as its
`policy_revision`, and a line when that is not the project's files (`policy_drift`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from pathlib import Path
from typing import Any

import aiohttp

import policies
from services.gatekeeper.decide import UNDEFINED
from services.gatekeeper.engines import PolicyEngine
from services.gatekeeper.folder import FolderWatch
from swiftdeploy_core.errors import PolicyEngineError
from swiftdeploy_core.project import opa as opa_api

log = logging.getLogger(__name__)

MAX_CONNECTIONS = 32
SERVED_TTL_S = 1.0  # how long the revision OPA serves is trusted before it is asked again
_JSON = {"Content-Type": "application/json"}


class OpaEngine(PolicyEngine):
    """Asks an OPA server; `folder` is where the project's policy files live (to compare with what
    OPA serves); `managed` when the control plane runs this OPA (and reloads it on drift)."""

    name = "opa"

    def __init__(self, url: str, timeout: float, folder: Path | None = None, managed: bool = False) -> None:
        self.url = url.rstrip("/")
        self.base = opa_api.base_url(self.url)
        self.timeout = timeout
        self.managed = managed
        self._watch = FolderWatch(folder) if folder is not None else None
        self._files_revision = ""
        self._data_keys: list[str] = []
        self._served = ""  # the revision OPA said it serves, "" until it said
        self._served_at = float("-inf")
        self._drift = ""
        self._session: aiohttp.ClientSession | None = None

    async def answer(self, domain: str, input: dict[str, Any]) -> tuple[Any, str]:
        await self.refresh_served()
        body = json.dumps({"input": input}, allow_nan=False)
        status, raw = await self._call("POST", f"/v1/data/{domain.replace('.', '/')}", body)
        if status != 200:
            raise PolicyEngineError(self._http_error(status, raw))
        try:
            answer = json.loads(raw)
        except ValueError as exc:
            raise PolicyEngineError(f"policy engine returned malformed JSON: {_first_line(exc)} ({self.url})") from None
        if not isinstance(answer, dict):
            raise PolicyEngineError(f"policy engine returned malformed JSON: not an object ({self.url})")
        if not self._served and self._watch is not None:  # OPA answered, but not what it serves: ask again
            await self.refresh_served(force=True)
        return answer.get("result", UNDEFINED), self._served

    async def health(self) -> str | None:
        try:
            status, raw = await self._call("GET", "/health", None)
        except PolicyEngineError as exc:
            return str(exc)
        return None if status == 200 else self._http_error(status, raw)

    def revision(self) -> str:
        """The revision OPA last said it serves ("" before it said)."""
        return self._served

    def files_revision(self) -> str:
        """The revision of the project's policy files ("" without a folder)."""
        self._poll_files()
        return self._files_revision

    def drift(self) -> str:
        return self._drift

    async def refresh(self) -> None:
        await self.refresh_served()

    async def refresh_served(self, force: bool = False) -> str:
        """Ask OPA what it serves when the last answer is older than SERVED_TTL_S or the project's
        files changed; returns the drift line ("" when OPA serves the project's files)."""
        changed = self._poll_files()
        if self._watch is None or not (force or changed or time.monotonic() - self._served_at > SERVED_TTL_S):
            return self._drift
        self._served_at = time.monotonic()
        try:
            async with asyncio.timeout(self.timeout):
                self._served = await opa_api.served_revision(self._pool(), self.url, self._data_keys)
        except (opa_api.ServedError, aiohttp.ClientError, TimeoutError, OSError) as exc:
            self._served, self._served_at = "", float("-inf")  # asked again on the next decision
            self._drift = (
                f"cannot tell which policies OPA serves: {_first_line(exc) or type(exc).__name__} ({self.url})"
            )
            return self._drift
        drift = opa_api.drift_line(self._served, self._files_revision, self.managed)
        if drift and drift != self._drift:
            log.warning("%s", drift)
        self._drift = drift
        return drift

    def _poll_files(self) -> bool:
        if self._watch is None:
            return False
        try:
            contents = self._watch.poll()
        except OSError:
            contents = None
        if contents is None:
            return False
        self._files_revision = policies.revision(contents)
        self._data_keys = policies.data_keys(contents)
        return True

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _call(self, method: str, path: str, body: str | None) -> tuple[int, bytes]:
        """One HTTP exchange: (status, body bytes); PolicyEngineError when there is no answer."""
        try:
            async with self._pool().request(
                method, self.base + path, data=body, headers=_JSON if body else None
            ) as resp:
                return resp.status, await resp.read()
        except TimeoutError:
            raise PolicyEngineError(self._unavailable(f"no answer within {self.timeout:g}s")) from None
        except aiohttp.ClientConnectorError as exc:
            refused = isinstance(exc.os_error, ConnectionRefusedError)
            reason = "connection refused" if refused else f"cannot connect ({exc.os_error.strerror or exc.os_error})"
            raise PolicyEngineError(self._unavailable(reason)) from None
        except aiohttp.ClientError as exc:
            raise PolicyEngineError(self._unavailable(_first_line(exc) or type(exc).__name__)) from None

    def _pool(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = opa_api.session(self.url, self.timeout, MAX_CONNECTIONS)
        return self._session

    def _unavailable(self, reason: str) -> str:
        return f"policy engine unavailable: {reason} ({self.url})"

    def _http_error(self, status: int, raw: bytes) -> str:
        """`policy engine error: HTTP 400 invalid_parameter: <message> (url)`, from OPA's error body."""
        detail = ""
        try:
            error = json.loads(raw)
            if isinstance(error, dict) and isinstance(error.get("message"), str):
                code = error.get("code")
                detail = (
                    f" {code}: {_first_line(error['message'])}"
                    if isinstance(code, str)
                    else f": {_first_line(error['message'])}"
                )
        except ValueError:
            pass
        return f"policy engine error: HTTP {status}{detail} ({self.url})"


def _first_line(value: object) -> str:
    text = str(value).strip()
    return text.splitlines()[0][:200] if text else ""
