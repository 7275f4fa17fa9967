"""A stand-in OPA server for tests: OPA's REST Data API over real HTTP, on a loopback port.

No OPA binary can be installed here, so this aiohttp app speaks the documented API and evaluates
with the same regopy engine the gatekeeper embeds (so the two paths can be compared answer for
answer):

- `POST /v1/data/<path>` with `{"input": ...}` → 200 `{"result": <document>}`, or 200 `{}` when
  the document is undefined; a body that is not JSON → 400 `{"code": "invalid_parameter", ...}`.
- `GET /health` → 200 `{}`.

A test can replace any answer with `server.respond = (status, body)` or make it `hang`.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web

from tests.servers import free_port


@dataclass
class OpaApiServer:
    folder: Path
    port: int = field(default_factory=free_port)
    respond: tuple[int, bytes | str] | None = None  # a canned answer for every request
    hang: bool = False  # never answer
    requests: list[tuple[str, str, object]] = field(default_factory=list)
    peers: set[object] = field(default_factory=set)  # client (host, port) pairs: one per connection
    _runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> OpaApiServer:
        from services.gatekeeper import embedded, rego

        modules, data = embedded.split_files(embedded.read_folder(self.folder, include_tests=False))
        self._policies = rego.compile_policies(modules, data)
        app = web.Application()
        app.router.add_post("/v1/data/{path:.+}", self._data)
        app.router.add_get("/health", self._health)
        self._stopping = asyncio.Event()
        self._runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=0.1)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            self._stopping.set()  # releases hanging handlers
            await self._runner.cleanup()
            self._runner = None

    def _record(self, method: str, request: web.Request, body: bytes | None) -> None:
        self.requests.append((method, request.path, body))
        self.peers.add(request.transport.get_extra_info("peername") if request.transport else None)

    async def _canned(self) -> web.Response | None:
        if self.hang:
            await self._stopping.wait()
        if self.respond is not None:
            status, body = self.respond
            return web.Response(status=status, body=body, content_type="application/json")
        return None

    async def _health(self, request: web.Request) -> web.Response:
        self._record("GET", request, None)
        return await self._canned() or web.json_response({})

    async def _data(self, request: web.Request) -> web.Response:
        from services.gatekeeper.decide import UNDEFINED

        raw = await request.read()
        self._record("POST", request, raw)
        canned = await self._canned()
        if canned is not None:
            return canned
        try:
            body = json.loads(raw) if raw else {}
        except ValueError as exc:
            return _error(400, "invalid_parameter", f"body contains malformed input document: {exc}")
        domain = request.match_info["path"].strip("/").replace("/", ".")
        document = self._policies.query(domain, body.get("input", {}))
        return web.json_response({} if document is UNDEFINED else {"result": document})


def _error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"code": code, "message": message}, status=status)
