"""A webhook receiver on loopback for the tests: records every request, verifies signatures, and
answers from a script (e.g. 500 twice per event id, then 200)."""

from __future__ import annotations

import asyncio
import json
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from swiftdeploy_core.project.webhooks import EVENT_ID_HEADER, SIGNATURE_HEADER, verify
from tests.servers import free_port


@dataclass
class Received:
    path: str
    body: dict[str, Any]
    event_id: str | None
    signed: bool  # the signature verified with the receiver's secret
    status: int  # what the receiver answered


@dataclass
class Receiver:
    """`fail_first`: answer 500 this many times per event id before succeeding; `status`/`text`:
    the answer otherwise (a gate's verdict)."""

    secret: str
    fail_first: int = 0
    status: int = 200
    text: str = ""
    delay: float = 0.0  # seconds before answering (a gate that times out)
    received: list[Received] = field(default_factory=list)
    tries: Counter = field(default_factory=Counter)
    port: int = field(default_factory=free_port)
    _runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def handle(self, request: web.Request) -> web.Response:
        raw = await request.read()
        if self.delay:
            await asyncio.sleep(self.delay)
        event_id = request.headers.get(EVENT_ID_HEADER)
        self.tries[event_id] += 1
        status = 500 if event_id and self.tries[event_id] <= self.fail_first else self.status
        signed = verify(self.secret, raw, request.headers.get(SIGNATURE_HEADER))
        self.received.append(Received(request.path, json.loads(raw), event_id, signed, status))
        return web.Response(status=status, text=self.text if status != 500 else "try again")

    def accepted(self) -> dict[str | None, int]:
        """Event id -> how many times the receiver answered 2xx for it."""
        counts: dict[str | None, int] = defaultdict(int)
        for r in self.received:
            if 200 <= r.status < 300:
                counts[r.event_id] += 1
        return dict(counts)

    async def __aenter__(self) -> Receiver:
        app = web.Application()
        app.router.add_post("/{tail:.*}", self.handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
