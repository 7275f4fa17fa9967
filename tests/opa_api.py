"""A stand-in OPA server for tests: OPA's REST API over real HTTP, on a loopback port or a unix
socket (`unix_socket=`).

No OPA binary can be installed here, so this aiohttp app speaks the documented API and evaluates
with the same regopy engine the gatekeeper embeds (so the two paths can be compared answer for
answer):

- `POST /v1/data/<path>` with `{"input": ...}` → 200 `{"result": <document>}`, or 200 `{}` when
  the document is undefined; a body that is not JSON → 400 `{"code": "invalid_parameter", ...}`.
- `GET /v1/data/<path>` → the same without input (data.json's keys answer their data).
- `GET /v1/policies` → 200 `{"result": [{"id": <path>, "raw": <source>}, ...]}`: every module
  loaded, tests included, as OPA lists them.
- `GET /health` → 200 `{}`.

With `watch=True` (OPA's `--watch`) the folder is re-read when a file changes, before the next
request; policies that fail to compile are logged and the last good ones kept, as OPA does. Only
the folder's top level is loaded (OPA loads sub-folders too; SwiftDeploy runs it with
`--ignore=schemas`, the only sub-folder). `tests/bin/opa` runs this server as an `opa`
executable, and the stand-in OPA image runs that.

A test can replace any answer with `server.respond = (status, body)` or make it `hang`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

log = logging.getLogger("opa-standin")


def _free_port() -> int:
    from tests.servers import free_port  # imported late: the stand-in image has no test helpers

    return free_port()


@dataclass
class OpaApiServer:
    folder: Path
    port: int = field(default_factory=_free_port)
    host: str = "127.0.0.1"
    unix_socket: Path | None = None  # listen on this socket instead of a TCP port
    socket_mode: int = 0o755  # OPA's --unix-socket-perm default
    watch: bool = False  # OPA's --watch: reload when the files change
    respond: tuple[int, bytes | str] | None = None  # a canned answer for every request
    hang: bool = False  # never answer
    requests: list[tuple[str, str, object]] = field(default_factory=list)
    peers: set[object] = field(default_factory=set)  # client (host, port) pairs: one per connection
    _runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        if self.unix_socket is not None:
            return f"unix://{self.unix_socket}"
        return f"http://{self.host}:{self.port}"

    async def start(self) -> OpaApiServer:
        self._signature = self._scan()
        self._load()
        app = web.Application()
        app.router.add_post("/v1/data/{path:.+}", self._data)
        app.router.add_get("/v1/data/{path:.+}", self._data)
        app.router.add_get("/v1/policies", self._modules)
        app.router.add_get("/health", self._health)
        self._stopping = asyncio.Event()
        self._runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=0.1)
        await self._runner.setup()
        if self.unix_socket is not None:
            await web.UnixSite(self._runner, str(self.unix_socket)).start()
            os.chmod(self.unix_socket, self.socket_mode)
        else:
            await web.TCPSite(self._runner, self.host, self.port).start()
        return self

    def _scan(self) -> tuple[tuple[str, int, int], ...]:
        import policies

        return tuple(
            (path.name, path.stat().st_mtime_ns, path.stat().st_size)
            for path in policies.policy_files(self.folder, include_tests=True)
        )

    def _load(self) -> None:
        """Compile the folder (as `opa run` loads it: tests included); raises when it does not compile."""
        from services.gatekeeper import embedded, rego

        contents = embedded.read_folder(self.folder, include_tests=True)
        modules, data = embedded.split_files(contents)
        # OPA starts on an empty folder and serves nothing; regopy cannot compile nothing.
        self._policies = rego.compile_policies(modules, data) if modules else None
        self._modules_loaded = {str(self.folder / name): text for name, text in modules.items()}
        self._data_loaded: Any = json.loads(data) if data else {}

    def _reload_if_changed(self) -> None:
        if not self.watch:
            return
        signature = self._scan()
        if signature == self._signature:
            return
        self._signature = signature
        try:
            self._load()
            log.info("reloaded the policies of %s", self.folder)
        except Exception as exc:  # OPA keeps serving the last policies that compiled
            log.error("policies of %s do not compile, keeping the last good ones: %s", self.folder, exc)

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

    async def _modules(self, request: web.Request) -> web.Response:
        self._record("GET", request, None)
        canned = await self._canned()
        if canned is not None:
            return canned
        self._reload_if_changed()
        listing = [{"id": module_id, "raw": raw} for module_id, raw in sorted(self._modules_loaded.items())]
        return web.json_response({"result": listing})

    async def _data(self, request: web.Request) -> web.Response:
        from services.gatekeeper.decide import UNDEFINED

        raw = await request.read()
        self._record(request.method, request, raw if request.method == "POST" else None)
        canned = await self._canned()
        if canned is not None:
            return canned
        self._reload_if_changed()
        try:
            body = json.loads(raw) if raw else {}
        except ValueError as exc:
            return _error(400, "invalid_parameter", f"body contains malformed input document: {exc}")
        path = request.match_info["path"].strip("/").split("/")
        if path[0] in self._data_loaded:  # a data document: its value at the path, if there is one
            document: Any = self._data_loaded
            for key in path:
                document = document.get(key, UNDEFINED) if isinstance(document, dict) else UNDEFINED
        elif self._policies is None:
            document = UNDEFINED
        else:
            document = self._policies.query(".".join(path), body.get("input", {}))
        return web.json_response({} if document is UNDEFINED else {"result": document})


def write_opa_executable(folder: Path) -> Path:
    """An `opa` in `folder` that runs the stand-in (tests/bin/opa) with this interpreter; put
    `folder` first on PATH (or name the file as policy.opa_binary)."""
    import sys

    folder.mkdir(parents=True, exist_ok=True)
    script = Path(__file__).resolve().parent / "bin" / "opa"
    target = folder / "opa"
    target.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{script}" "$@"\n')
    target.chmod(0o755)
    return target


def _error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"code": code, "message": message}, status=status)
