"""The history's line format and its hash chain: encode a line, verify a file, read entries.

Every line of `history.jsonl` is one JSON object:

    {"timestamp": "...Z", "type": "...", "mode": "...", <the event's figures>,
     "event_id": "...", ..., "prev": "<sha256 of the previous line>", "hash": "<sha256 of this line>"}

`prev` is the SHA-256 of the previous line's bytes (without its newline; 64 zeros for the first
line), so deleting, inserting or reordering a line breaks the link at that place. `hash` is the
SHA-256 of the line's own bytes up to (not including) `,"hash":…` closed with `}`, so editing a
line is caught on that very line. Both are plain SHA-256, not keyed: they detect accidents and
casual edits; someone who rewrites every later line can rebuild a valid chain.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from swiftdeploy_core.bus.describe import event_fields
from swiftdeploy_core.bus.events import Event

GENESIS = "0" * 64
RECOVERED = "history.recovered"  # a line the writer adds when it repaired a torn tail (not an event)
# Payload fields left out of a line: bulky, and fixed elsewhere (the manifest by its sha256).
OMITTED = {"manifest"}
_HASH_TAIL = re.compile(rb',"hash":"([0-9a-f]{64})"\}$')


def iso_utc(moment: datetime) -> str:
    """ISO-8601 in UTC with a `Z`, millisecond precision: `2026-11-26T07:03:16.123Z`."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_iso(text: str) -> datetime:
    """Read a timestamp written by `iso_utc` (or any ISO-8601 form); naive means UTC."""
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def history_entry(event: Event, mode: str) -> dict[str, Any]:
    """The line's content for one event (everything but `prev` and `hash`)."""
    entry: dict[str, Any] = {"timestamp": iso_utc(event.timestamp), "type": event.type, "mode": mode}
    fields = event_fields(event)
    entry.update((k, v) for k, v in fields.items() if k not in OMITTED and k != "type")
    entry.update(
        event_id=event.id,
        correlation_id=event.correlation_id,
        causation_id=event.causation_id,
        source=f"{event.source.service}/{event.source.instance}",
    )
    return entry


def line_digest(line: bytes) -> str:
    """The SHA-256 that the next line's `prev` names (the line without its newline)."""
    return hashlib.sha256(line.rstrip(b"\n")).hexdigest()


def encode_line(entry: dict[str, Any], prev: str) -> bytes:
    """One complete line, newline included, chained to `prev`."""
    body = json.dumps({**entry, "prev": prev}, separators=(",", ":"), ensure_ascii=False).encode()
    own = hashlib.sha256(body).hexdigest()
    return body[:-1] + b',"hash":"' + own.encode() + b'"}\n'


@dataclass(frozen=True)
class Verification:
    """The result of checking a history file: the first bad line (1-based) and what is wrong."""

    ok: bool
    lines: int
    first_bad_line: int | None = None
    problem: str | None = None
    last_hash: str = GENESIS
    repairs: tuple[str, ...] = ()  # each torn tail the writer recovered, as a sentence

    def describe(self) -> str:
        if self.ok:
            valid = f"the history's chain is valid ({self.lines} lines)"
            return f"{valid}, repaired: {'; '.join(self.repairs)}" if self.repairs else valid
        return f"line {self.first_bad_line}: {self.problem}"


def describe_repair(number: int, entry: dict[str, Any]) -> str:
    """One `history.recovered` line as a sentence for `verify` and the report."""
    ids = entry.get("event_ids") or []
    held = f"; it held {', '.join(map(str, ids))}" if ids else ""
    return (
        f"line {number} records a torn tail recovered from byte {entry.get('offset')} "
        f"({entry.get('bytes')} bytes moved to {entry.get('recovery_file')}{held}; its events were written again)"
    )


def _check(number: int, raw: bytes, prev: str) -> str | None:
    """What is wrong with one line given the previous line's digest, or None."""
    if not raw.endswith(b"\n"):
        return "the line is torn (it has no newline)"
    line = raw[:-1]
    try:
        entry = json.loads(line)
    except ValueError:
        return "the line is not valid JSON (it was edited or corrupted)"
    match = _HASH_TAIL.search(line)
    if not isinstance(entry, dict) or match is None:
        return "the line has no hash (it was edited or is not from the auditor)"
    if hashlib.sha256(line[: match.start()] + b"}").hexdigest() != match.group(1).decode():
        return "the line was edited (its content does not match its hash)"
    if entry.get("prev") != prev:
        if number == 1:
            return "the history does not start here (lines before it were deleted)"
        return f"the line does not follow line {number - 1} (a line was deleted, inserted or reordered here)"
    return None


def verify(path: Path, head: str | None = None) -> Verification:
    """Check the whole chain; `head` (the last digest the auditor wrote, if known) catches a cut tail."""
    prev, number, seen = GENESIS, 0, {GENESIS: 0}
    event_lines: dict[str, int] = {}
    repairs: list[str] = []
    for number, raw in enumerate(_raw_lines(path), start=1):
        problem = _check(number, raw, prev)
        if problem is None:
            entry = json.loads(raw)
            event_id = entry.get("event_id")
            if entry.get("type") == RECOVERED:
                repairs.append(describe_repair(number, entry))
            if event_id in event_lines:
                problem = f"the line repeats event {event_id} of line {event_lines[event_id]}"
            event_lines[event_id] = number
        if problem:
            return Verification(False, number, number, problem, prev)
        prev = line_digest(raw)
        seen[prev] = number
    if head is not None and head not in seen:
        problem = f"missing: the history ends at line {number} but the auditor wrote more (the end was cut)"
        return Verification(False, number, number + 1, problem, prev, tuple(repairs))
    return Verification(True, number, last_hash=prev, repairs=tuple(repairs))


def _raw_lines(path: Path) -> Iterator[bytes]:
    if not path.exists():
        return
    with path.open("rb") as handle:
        yield from handle


def read_entries(path: Path, since: datetime | None = None) -> list[dict[str, Any]]:
    """Every well-formed entry of a history file, oldest first, optionally from `since` on."""
    entries = []
    for raw in _raw_lines(path):
        try:
            entry = json.loads(raw)
        except ValueError:
            continue  # verify() reports it; a report still shows the rest
        if not isinstance(entry, dict):
            continue
        if since is not None and parse_iso(entry.get("timestamp", "1970-01-01T00:00:00Z")) < since:
            continue
        entries.append(entry)
    return entries


def tail_digest(data: bytes) -> tuple[str, int]:
    """The digest of the last complete line in `data` (the file's tail) and the offset where
    any torn remainder begins (len(data) when the tail ends cleanly)."""
    end = data.rfind(b"\n")
    if end < 0:
        return GENESIS, 0
    start = data.rfind(b"\n", 0, end) + 1
    return line_digest(data[start:end]), end + 1
