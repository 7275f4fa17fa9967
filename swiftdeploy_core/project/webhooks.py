"""Signed webhook POSTs, shared by the notifier (notifications) and the orchestrator (gates).

The body is JSON; with a secret, `X-SwiftDeploy-Signature: sha256=<hex>` is the HMAC-SHA256 of
the exact body bytes, so the receiver verifies before it parses. The secret is resolved from this
process's environment at the moment of signing (`settings.secret_from_env`); it is never logged,
stored or put on the bus. `origin()` is what events record of a URL (a webhook's path often is a
credential itself, like Slack's).
"""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any
from urllib.parse import urlsplit

SIGNATURE_HEADER = "X-SwiftDeploy-Signature"
EVENT_ID_HEADER = "X-SwiftDeploy-Event-Id"
EVENT_TYPE_HEADER = "X-SwiftDeploy-Event-Type"
IDEMPOTENCY_HEADER = "Idempotency-Key"


def sign(secret: str, body: bytes) -> str:
    """The signature header's value for `body`."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def verify(secret: str, body: bytes, header: str | None) -> bool:
    """True when `header` is the signature of `body` with `secret` (constant-time)."""
    return header is not None and hmac.compare_digest(sign(secret, body), header)


def encode(data: Any) -> bytes:
    return json.dumps(data, sort_keys=True, separators=(",", ":"), default=str).encode()


def signed_headers(body: bytes, secret: str | None, event_id: str | None = None) -> dict[str, str]:
    headers = {"Content-Type": "application/json", "User-Agent": "swiftdeploy"}
    if secret:
        headers[SIGNATURE_HEADER] = sign(secret, body)
    if event_id:
        headers[EVENT_ID_HEADER] = event_id
        headers[IDEMPOTENCY_HEADER] = event_id
    return headers


def origin(url: str) -> str:
    """scheme://host[:port] of a URL: what events and logs show of a webhook target."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc.rsplit('@', 1)[-1]}"
