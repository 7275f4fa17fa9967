"""Chaos for the canary: added latency or injected 500s on application traffic, and `POST /chaos`.

The body is read as JSON whatever the Content-Type says (the original's `curl -d` sends a form
type). Anything but one of the three documented shapes is a 400 with a JSON error, never a 500.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError
from quart import Quart, request

log = logging.getLogger("workload.chaos")

MAX_BODY_BYTES = 1024
EXEMPT_ENDPOINTS = frozenset({"metrics", "healthz", "chaos"})  # chaos never hides the truth
CHAOS_CODES = {"none": 0, "slow": 1, "error": 2}


class _Command(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class SlowChaos(_Command):
    """Add `duration` seconds of latency to every application request."""

    mode: Literal["slow"]
    duration: Annotated[float, Field(gt=0, le=30, allow_inf_nan=False)]


class ErrorChaos(_Command):
    """Answer 500 to a fraction `rate` of application requests."""

    mode: Literal["error"]
    rate: Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)]


class Recover(_Command):
    """Clear any chaos."""

    mode: Literal["recover"]


ChaosCommand = Annotated[SlowChaos | ErrorChaos | Recover, Field(discriminator="mode")]
_commands: TypeAdapter[SlowChaos | ErrorChaos | Recover] = TypeAdapter(ChaosCommand)


class ChaosRequestError(ValueError):
    """A `POST /chaos` body that is not one of the three documented commands."""


def parse_command(body: bytes) -> SlowChaos | ErrorChaos | Recover:
    """Validate a raw body into a chaos command; `ChaosRequestError` with one line otherwise."""
    try:
        data = json.loads(body, object_pairs_hook=_no_duplicates, parse_constant=_no_constants)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ChaosRequestError(f"body is not valid JSON ({_first_line(exc)})") from None
    if not isinstance(data, dict):
        raise ChaosRequestError(f"body must be a JSON object, got {type(data).__name__}")
    try:
        return _commands.validate_python(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"] if p not in ("slow", "error", "recover"))
        raise ChaosRequestError(f"{where or 'body'}: {err['msg']}") from None


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [key for key, _ in pairs]
    duplicated = {key for key in keys if keys.count(key) > 1}
    if duplicated:
        raise ValueError(f"duplicate key {sorted(duplicated)[0]!r}")
    return dict(pairs)


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _first_line(exc: BaseException) -> str:
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


@dataclass
class ChaosState:
    """The chaos currently injected into one app."""

    mode: Literal["none", "slow", "error"] = "none"
    duration: float = 0.0
    rate: float = 0.0
    rng: random.Random = field(default_factory=random.Random, repr=False)

    @property
    def code(self) -> int:
        return CHAOS_CODES[self.mode]

    def describe(self) -> dict[str, Any]:
        if self.mode == "slow":
            return {"mode": "slow", "duration": self.duration}
        if self.mode == "error":
            return {"mode": "error", "rate": self.rate}
        return {"mode": "none"}

    def apply(self, command: SlowChaos | ErrorChaos | Recover) -> None:
        previous = self.describe()
        self.mode = "none" if isinstance(command, Recover) else command.mode
        self.duration = command.duration if isinstance(command, SlowChaos) else 0.0
        self.rate = command.rate if isinstance(command, ErrorChaos) else 0.0
        log.warning("chaos changed: %s -> %s", json.dumps(previous), json.dumps(self.describe()))


def install_chaos(app: Quart, state: ChaosState, mode: str) -> None:
    """Register the injection hook and the `POST /chaos` route."""

    @app.before_request
    async def _inject() -> Any:
        if state.mode == "none" or request.endpoint in EXEMPT_ENDPOINTS:
            return None
        if state.mode == "slow":
            await asyncio.sleep(state.duration)
            return None
        if state.rng.random() < state.rate:
            return {"error": "injected by error chaos"}, 500
        return None

    @app.post("/chaos", endpoint="chaos")
    async def _chaos() -> Any:
        if mode != "canary":
            return {"error": f"chaos is only available in canary mode; this instance runs {mode}"}, 403
        try:
            command = parse_command(await _read_body(MAX_BODY_BYTES))
        except ChaosRequestError as exc:
            return {"error": str(exc)}, 400
        state.apply(command)
        return {"chaos": state.describe()}


async def _read_body(limit: int) -> bytes:
    if request.content_length is not None and request.content_length > limit:
        raise ChaosRequestError(f"body is larger than {limit} bytes")
    body = bytearray()
    async for chunk in request.body:
        body += chunk
        if len(body) > limit:
            raise ChaosRequestError(f"body is larger than {limit} bytes")
    return bytes(body)
