"""The auditor's own settings, on top of the shared ones (same `SWIFTDEPLOY_` prefix)."""

from __future__ import annotations

from pathlib import Path

from services.auditor.history import CLAIM_TTL_S
from swiftdeploy_core.settings import Settings


class AuditorSettings(Settings):
    """`SWIFTDEPLOY_AUDIT_FSYNC`, `SWIFTDEPLOY_AUDIT_HISTORY`, ... (see docs/auditor.md)."""

    audit_fsync: bool = True  # fsync each group commit: durable across power loss, one fsync a batch
    audit_history: Path | None = None  # overrides the manifest's paths.history
    audit_claim_ttl: int = CLAIM_TTL_S
    # How long a handler keeps retrying a line that cannot be written (full disk...) before it
    # gives the entry back to the worker as Retry; meanwhile the entry stays pending.
    audit_write_patience: float = 300.0
    # Events handled side by side: their lines share one write and one fsync (group commit).
    audit_concurrency: int = 1024

    @classmethod
    def from_settings(cls, settings: Settings) -> AuditorSettings:
        if isinstance(settings, cls):
            return settings
        shared = settings.model_dump(exclude={"redis_url"})  # redis_url is set by its alias only
        return cls(**shared).model_copy(update={"redis_url": settings.redis_url})
