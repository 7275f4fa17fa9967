"""JSON logs carrying correlation ids, and arq-style job lines (→ start, ← done, ↻ retry, ! failed).

`configure()` is called once by an entrypoint. While a handler runs, the event's ids sit in a
context variable, so every log line it writes carries them without passing them around.
"""

from __future__ import annotations

import contextvars
import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

from swiftdeploy_core.settings import Settings

START, DONE, RETRY, FAILED = "→", "←", "↻", "!"

_event_ctx: contextvars.ContextVar[dict[str, str] | None] = contextvars.ContextVar("swiftdeploy_event", default=None)
_static: dict[str, str] = {}


class JsonFormatter(logging.Formatter):
    """One JSON object a line: timestamp, level, logger, message, service ids, event ids."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "timestamp": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            **_static,
            **(_event_ctx.get() or {}),
        }
        for key in ("marker", "duration_ms", "error", "attempt"):
            if hasattr(record, key):
                line[key] = getattr(record, key)
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        ids = _event_ctx.get() or {}
        cid = f" [{ids['correlation_id'][:8]}]" if "correlation_id" in ids else ""
        return f"{datetime.now().strftime('%H:%M:%S.%f')[:-3]} {record.levelname[0]}{cid} {record.getMessage()}"


def configure(settings: Settings, service: str | None = None) -> None:
    """Send the `swiftdeploy` loggers to stderr, as JSON when settings.log_json."""
    _static.clear()
    if service:
        _static.update(service=service, instance=settings.instance)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if settings.log_json else TextFormatter())
    root = logging.getLogger("swiftdeploy")
    root.handlers[:] = [handler]
    root.setLevel(settings.log_level.upper())
    root.propagate = False


class event_context:  # lower case: used like the function it was, `with event_context(...)`
    """Log lines written inside carry the event's ids. A class, not a generator context manager:
    it is entered for every event a worker handles."""

    __slots__ = ("_ids", "_token")

    def __init__(self, event_id: str, event_type: str, correlation_id: str) -> None:
        self._ids = {"event_id": event_id, "event_type": event_type, "correlation_id": correlation_id}

    def __enter__(self) -> None:
        self._token = _event_ctx.set(self._ids)

    def __exit__(self, *exc: object) -> None:
        _event_ctx.reset(self._token)


def job(logger: logging.Logger, marker: str, text: str, level: int = logging.INFO, **extra: Any) -> None:
    """One job line: `<marker> <text>` with structured extras (duration_ms, error, attempt...)."""
    if logger.isEnabledFor(level):
        logger.log(level, f"{marker} {text}", extra={"marker": marker, **extra})
