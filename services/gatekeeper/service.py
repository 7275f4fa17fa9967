"""The gatekeeper service's spec: the streams its group consumes and its handlers.

The worker answers `ping.requested` on the inbox for every service; the gatekeeper's own handlers
are registered here.
"""

from __future__ import annotations

from swiftdeploy_core import streams
from swiftdeploy_core.settings import Settings
from swiftdeploy_core.worker import ServiceSpec

NAME = "gatekeeper"


def build_spec(settings: Settings) -> ServiceSpec:
    """The gatekeeper as the worker runs it."""
    return ServiceSpec(name=NAME, streams=[streams.GATEKEEPER_INBOX], handlers={})
