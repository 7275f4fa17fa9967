"""The OPA policy engine: a client of OPA's REST Data API.

`POST <url>/v1/data/<domain path>` with `{"input": ...}` answers `{"result": {"allow": ...,
"deny": [...]}}`, or `{}` when the document is undefined; errors are 4xx/5xx with
`{"code": ..., "message": ...}`. `GET <url>/health` answers 200 when OPA is ready. One pooled
aiohttp session per engine; every request has a deadline. Every failure becomes a
`PolicyEngineError` whose message says exactly what happened and where, and so a deny.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import aiohttp

import policies
from services.gatekeeper.decide import UNDEFINED
from services.gatekeeper.engines import PolicyEngine
from services.gatekeeper.folder import FolderWatch
from swiftdeploy_core.errors import PolicyEngineError

log = logging.getLogger(__name__)

MAX_CONNECTIONS = 32
_JSON = {"Content-Type": "application/json"}


class OpaEngine(PolicyEngine):
    """Asks an OPA server; `folder` is where its policy files live (for the revision only)."""

    name = "opa"

    def __init__(self, url: str, timeout: float, folder: Path | None = None) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout
        self._watch = FolderWatch(folder) if folder is not None else None
        self._revision = ""
        self._session: aiohttp.ClientSession | None = None

    async def answer(self, domain: str, input: dict[str, Any]) -> tuple[Any, str]:
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
        return answer.get("result", UNDEFINED), self.revision()

    async def health(self) -> str | None:
        try:
            status, raw = await self._call("GET", "/health", None)
        except PolicyEngineError as exc:
            return str(exc)
        return None if status == 200 else self._http_error(status, raw)

    def revision(self) -> str:
        if self._watch is not None:
            try:
                contents = self._watch.poll()
            except OSError:
                contents = None
            if contents is not None:
                self._revision = policies.revision(contents)
        return self._revision

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _call(self, method: str, path: str, body: str | None) -> tuple[int, bytes]:
        """One HTTP exchange: (status, body bytes); PolicyEngineError when there is no answer."""
        try:
            async with self._pool().request(
                method, self.url + path, data=body, headers=_JSON if body else None
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
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=MAX_CONNECTIONS),
                timeout=aiohttp.ClientTimeout(total=self.timeout),
            )
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
