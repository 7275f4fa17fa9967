"""External gates (`canary.gates`): a URL that must answer 2xx before a promotion or a step.

Like Flagger's confirm-promotion / confirm-traffic-increase webhooks. The OPA policy decides
first; a gate is an extra condition. Each gate gets a signed POST of the rollout's state; 2xx
allows, any other answer, a timeout or a connection error holds (fail closed) with the reason.
Every answer is recorded as `gate.checked` (history, audit report). Called from the phase
handlers and `PromoteStable`; returns the first hold's reason, or None when all allowed.
"""

from __future__ import annotations

import time
from typing import Literal

import aiohttp

from services.orchestrator.rollout import Rollout
from swiftdeploy_core.bus.events import GateChecked
from swiftdeploy_core.project.manifest import GateSpec
from swiftdeploy_core.project.webhooks import encode, origin, signed_headers
from swiftdeploy_core.settings import secret_from_env

GateOn = Literal["promotion", "step"]
REASON_BODY_CHARS = 200


def gate_state(rollout: Rollout, on: GateOn, step: int) -> dict[str, object]:
    """What a gate is told: the transition asked for and the rollout's state."""
    record = rollout.record
    return {
        "on": on,
        "project": record.project,
        "phase": record.phase.value,
        "step": record.step,
        "next_step": step,
        "weight": record.canary.weight if record.canary else 0,
        "stable_version": record.stable.version if record.stable else None,
        "canary_version": record.canary.version if record.canary else None,
        "consecutive_failures": record.consecutive_failures,
        "last_reasons": record.last_reasons,
    }


async def ask(gate: GateSpec, state: dict[str, object]) -> tuple[bool, str, int | None]:
    """One gate's answer: (allow, reason, HTTP status)."""
    secret = secret_from_env(gate.secret) if gate.secret else None
    where = origin(gate.url)
    if gate.secret and secret is None:
        return False, f"gate {where}: secret {gate.secret} is not set in the orchestrator's environment", None
    body = encode(state)
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=gate.timeout)) as session:
            async with session.post(gate.url, data=body, headers=signed_headers(body, secret)) as response:
                text = (await response.text(errors="replace")).strip()[:REASON_BODY_CHARS]
                if 200 <= response.status < 300:
                    return True, f"gate {where} allowed (HTTP {response.status})", response.status
                said = f": {text}" if text else ""
                return False, f"gate {where} held the {state['on']} (HTTP {response.status}){said}", response.status
    except TimeoutError:
        return False, f"gate {where} did not answer within {gate.timeout:g}s", None
    except (aiohttp.ClientError, OSError) as exc:
        return False, f"gate {where} unreachable: {type(exc).__name__}: {exc}", None


async def hold(rollout: Rollout, on: GateOn, step: int = -1) -> str | None:
    """Ask every gate for `on` in order; the first hold's reason (None: every gate allowed)."""
    for gate in (g for g in rollout.manifest.canary.gates if g.on == on):
        started = time.monotonic()
        allow, reason, status = await ask(gate, gate_state(rollout, on, step))
        elapsed = round((time.monotonic() - started) * 1000, 1)
        await rollout.emit(
            GateChecked(
                on=on, url=origin(gate.url), allow=allow, reason=reason, status=status, step=step, duration_ms=elapsed
            )
        )
        if not allow:
            return reason
    return None
