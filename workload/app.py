"""The workload's Quart app: `/`, `/healthz`, `/chaos` and `/metrics`."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

from quart import Quart, Response
from werkzeug.exceptions import HTTPException

from workload.chaos import ChaosState, install_chaos
from workload.metrics import CONTENT_TYPE, Metrics, instrument
from workload.settings import WorkloadSettings

WELCOME = "Welcome to SwiftDeploy"


def create_app(settings: WorkloadSettings | None = None) -> Quart:
    """One workload app with its own metrics registry and chaos state."""
    settings = settings or WorkloadSettings()
    app = Quart("workload")
    chaos = ChaosState()
    metrics = Metrics(settings.mode, lambda: chaos.code, started=time.monotonic())
    if settings.metrics:
        instrument(app, metrics)  # first, so its timer spans the chaos hook too
    install_chaos(app, chaos, settings.mode)
    _add_routes(app, settings, metrics)
    _add_error_handlers(app)
    app.extensions["workload"] = {"settings": settings, "metrics": metrics, "chaos": chaos}
    return app


def _add_routes(app: Quart, settings: WorkloadSettings, metrics: Metrics) -> None:
    @app.get("/", endpoint="index")
    async def index() -> dict[str, Any]:
        return {
            "message": WELCOME,
            "mode": settings.mode,
            "version": settings.version,
            "timestamp": _utc_now(),
        }

    @app.get("/healthz", endpoint="healthz")
    async def healthz() -> dict[str, Any]:
        return {"status": "ok", "uptime_seconds": round(time.monotonic() - metrics.started, 3)}

    @app.get("/metrics", endpoint="metrics")
    async def metrics_endpoint() -> Response:
        return Response(metrics.exposition(), content_type=CONTENT_TYPE)


def _add_error_handlers(app: Quart) -> None:
    @app.errorhandler(HTTPException)
    async def http_error(error: HTTPException) -> Any:
        return {"error": error.description or error.name}, error.code or 500

    @app.errorhandler(Exception)
    async def unexpected(error: Exception) -> Any:
        app.logger.exception("unhandled error", exc_info=error)
        return {"error": "internal error"}, 500


def _utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
