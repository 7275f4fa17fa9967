"""`python -m workload`: serve the app with hypercorn on HOST:PORT until SIGTERM or SIGINT."""

from __future__ import annotations

import asyncio
import logging
import sys

from hypercorn.asyncio import serve
from hypercorn.config import Config
from pydantic import ValidationError

from workload.app import create_app
from workload.settings import WorkloadSettings

GRACEFUL_TIMEOUT = 3.0  # a slow-chaos request may still be sleeping when SIGTERM arrives


def hypercorn_config(settings: WorkloadSettings) -> Config:
    config = Config()
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    config.bind = [f"{host}:{settings.port}"]
    config.accesslog = None  # nginx writes the access log; the metrics count every request
    config.errorlog = logging.getLogger("hypercorn.error")  # through the root handler, once
    config.graceful_timeout = GRACEFUL_TIMEOUT
    return config


def main() -> int:
    try:
        settings = WorkloadSettings()
    except ValidationError as exc:
        err = exc.errors()[0]
        name = str(err["loc"][0]).upper() if err["loc"] else "settings"
        print(f"workload: {name}: {err['msg']} (got {err.get('input')!r})", file=sys.stderr)
        return 2
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("workload").info(
        "workload %s (%s) on %s:%s, metrics %s",
        settings.version, settings.mode, settings.host, settings.port, "on" if settings.metrics else "off",
    )  # fmt: skip
    try:
        asyncio.run(serve(create_app(settings), hypercorn_config(settings)))
    except OSError as exc:
        print(f"workload: cannot serve on {settings.host}:{settings.port}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
