"""The bus's wire format: how an event sits in a stream entry, and the raw XADD arguments.

An entry on a stream has three fields: `event` (the envelope as JSON), `type` and `cid` (the
correlation id), so readers can filter without parsing.
"""

from __future__ import annotations

import fnmatch
import itertools
from collections.abc import Collection
from typing import Any

from redis.typing import EncodableT, FieldT

from swiftdeploy_core.bus import streams
from swiftdeploy_core.bus.events import Event
from swiftdeploy_core.settings import Settings

FIELD_EVENT = "event"
FIELD_TYPE = "type"
FIELD_CORRELATION = "cid"
B_EVENT, B_TYPE, B_CORRELATION = FIELD_EVENT.encode(), FIELD_TYPE.encode(), FIELD_CORRELATION.encode()  # as read


def entry_fields(event: Event) -> dict[FieldT, EncodableT]:
    """The fields of the stream entry that carries `event`."""
    return {FIELD_EVENT: event.to_json(), FIELD_TYPE: event.type, FIELD_CORRELATION: event.correlation_id}


def xadd_head(settings: Settings, stream: str) -> list[str]:
    """XADD's arguments before the fields (after the command name): `stream`, capped like `publish`."""
    return [stream, "MAXLEN", "~", str(maxlen_for(settings, stream)), "*"]


def xadd_args(settings: Settings, stream: str, event: Event) -> list[EncodableT]:
    """XADD's arguments (after the command name) that add `event` to `stream`."""
    return [*xadd_head(settings, stream), *itertools.chain.from_iterable(entry_fields(event).items())]


def decode(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _resp(parts: list[bytes]) -> bytes:
    """One command in the Redis protocol (RESP2 array of bulk strings)."""
    out = [b"*%d\r\n" % len(parts)]
    for part in parts:
        out += (b"$%d\r\n" % len(part), part, b"\r\n")
    return b"".join(out)


def id_ms(entry_id: str) -> int:
    """The millisecond part of a stream entry id ("1700000000000-3" -> 1700000000000)."""
    return int(entry_id.split("-", 1)[0])


def matches(event_type: str, patterns: Collection[str] | None) -> bool:
    """True when `event_type` matches one of the glob `patterns` (None matches everything)."""
    return patterns is None or any(fnmatch.fnmatchcase(event_type, p) for p in patterns)


def maxlen_for(settings: Settings, stream: str) -> int:
    return settings.metrics_maxlen if stream == streams.METRICS else settings.stream_maxlen
