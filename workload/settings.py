"""The workload's settings: the only place in the workload that reads the environment."""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class WorkloadSettings(BaseSettings):
    """`HOST`, `PORT`, `MODE`, `VERSION` as the runtimes set them; `WORKLOAD_METRICS=0` turns the
    request instrumentation off (the benchmark's baseline)."""

    model_config = SettingsConfigDict(extra="ignore", frozen=True, populate_by_name=True)

    host: str = "127.0.0.1"
    port: int = Field(default=3000, ge=0, le=65535)
    mode: Literal["stable", "canary"] = "stable"
    version: str = Field(default="0.0.0", min_length=1)
    metrics: bool = Field(default=True, validation_alias="WORKLOAD_METRICS")
    log_level: str = Field(default="INFO", validation_alias="WORKLOAD_LOG_LEVEL")
