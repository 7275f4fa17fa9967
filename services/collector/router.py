"""Router-measured figures: every request nginx served, per track, from its JSON access log.

nginx writes one JSON line per request (templates/nginx.conf.j2, `log_format swiftdeploy_json`)
with `msec` (when it ended), `track` (which upstream the split chose), `kind` (`app`, or `probe`,
`scrape`, `chaos` for the control plane's own requests, which never count), `status`,
`upstream_response_time` and `request_time`. `LogTail` follows the file incrementally (offset
kept, rotation and truncation noticed); `RouterWindow` keeps each track's samples for the window
and computes its figures exactly, no buckets:

    request rate   samples in (end - W, end] / W
    error rate     5xx samples / samples          (4xx counted apart: client_error_rate)
    P50, P90, P99  nearest rank over the samples' latencies: sorted[ceil(q * n) - 1]

A sample's latency is the upstream's response time (summed over retries), or nginx's own
`request_time` when no upstream answered (router chaos, a refused connection). Memory is
bounded: a track keeps at most `max_samples` samples; when more arrive in one window the oldest
go, and the snapshot's window shrinks to the span the kept ones cover (it says so).
"""

from __future__ import annotations

import json
import math
import os
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from swiftdeploy_core.bus.events import Track

MAX_READ_BYTES = 8_000_000  # per read: a backlog is caught up over several cycles, memory stays flat
MAX_SAMPLES = 200_000  # per track and window (3,300 req/s over 60 s)
APP_MARK = b'"kind":"app"'


@dataclass(frozen=True, slots=True)
class Sample:
    at: float  # unix seconds when nginx finished the request
    status: int
    latency: float  # seconds


def parse_line(line: bytes) -> tuple[Track, Sample] | None:
    """A log line's track and sample; None for the control plane's requests or a torn line."""
    if APP_MARK not in line:
        return None
    try:
        entry = json.loads(line)
        track: Track = "canary" if entry["track"] == "canary" else "stable"
        return track, Sample(float(entry["msec"]), int(entry["status"]), latency_of(entry))
    except (ValueError, KeyError, TypeError):
        return None


def latency_of(entry: dict[str, Any]) -> float:  # a parsed nginx JSON log line
    """The upstreams' response times summed ("0.004, 0.120" after a retry), else request_time."""
    times = [part.strip() for part in str(entry.get("upstream_response_time", "")).split(",")]
    try:
        return sum(float(t) for t in times)
    except ValueError:  # "-" or "": nginx answered itself
        return float(entry["request_time"])


class LogTail:
    """Reads what was appended to one file since the last call, across rotation and truncation.

    The open file is kept: after a rotation (the path names another inode) the old file is read to
    its end first, then the new one from its start; a file shorter than the offset was truncated
    and is read again from its start. On first sight only the last `start_bytes` are read.
    """

    def __init__(self, path: Path, start_bytes: int = MAX_READ_BYTES) -> None:
        self.path = path
        self.start_bytes = start_bytes
        self._file: IO[bytes] | None = None
        self._partial = b""

    def read_lines(self, limit: int = MAX_READ_BYTES) -> list[bytes]:
        lines: list[bytes] = []
        if self._file is None and not self._open(first=True):
            return lines
        assert self._file is not None
        lines += self._drain(limit)
        if self._rotated():
            self.close()
            if self._open(first=False):
                lines += self._drain(limit)
        return lines

    @property
    def opened(self) -> bool:
        """Whether the file has been found (a router that never wrote a line has no data)."""
        return self._file is not None

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        self._file, self._partial = None, b""

    def _open(self, *, first: bool) -> bool:
        try:
            handle = self.path.open("rb")
        except OSError:
            return False
        size = os.fstat(handle.fileno()).st_size
        if first and size > self.start_bytes:
            handle.seek(size - self.start_bytes)
            handle.readline()  # land on a line start
        self._file = handle
        return True

    def _drain(self, limit: int) -> list[bytes]:
        assert self._file is not None
        if os.fstat(self._file.fileno()).st_size < self._file.tell():
            self._file.seek(0)  # truncated (copytruncate rotation): start again
            self._partial = b""
        chunk = self._partial + self._file.read(limit)
        lines = chunk.split(b"\n")
        self._partial = lines.pop()  # an unfinished last line waits for the rest
        return lines

    def _rotated(self) -> bool:
        assert self._file is not None
        try:
            current = os.stat(self.path)
        except OSError:
            return False  # moved away and not recreated yet: keep reading the old file
        return current.st_ino != os.fstat(self._file.fileno()).st_ino


@dataclass(frozen=True)
class RouterFigures:
    """One track's router figures over `window` seconds; None means no data."""

    window: float
    samples: int
    request_rate: float
    error_rate: float | None
    client_error_rate: float | None
    p50_seconds: float | None
    p90_seconds: float | None
    p99_seconds: float | None


def nearest_rank(ordered: list[float], q: float) -> float | None:
    """The q-quantile of sorted values by nearest rank; None for no values."""
    if not ordered:
        return None
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


class RouterWindow:
    """One track's samples inside the window, oldest first."""

    def __init__(self, max_samples: int = MAX_SAMPLES) -> None:
        self.samples: deque[Sample] = deque(maxlen=max_samples)
        self.dropped = False  # the cap pushed samples of the current window out

    def add(self, sample: Sample) -> None:
        if len(self.samples) == self.samples.maxlen:
            self.dropped = True
        self.samples.append(sample)

    def prune(self, start: float) -> None:
        samples = self.samples
        while samples and samples[0].at <= start:
            samples.popleft()
        if len(samples) < (samples.maxlen or 0):
            self.dropped = False

    def kept(self, start: float, end: float) -> list[Sample]:
        """The samples in (start, end]."""
        return [s for s in self.samples if start < s.at <= end]

    def figures(self, end: float, window: float) -> RouterFigures:
        """Figures over (end - window, end]; samples after `end` wait for the next evaluation."""
        self.prune(end - window)
        kept = [s for s in self.samples if s.at <= end]
        if self.dropped and kept:
            window = end - kept[0].at  # the cap shortened the window to what the samples cover
        n = len(kept)
        errors = sum(1 for s in kept if s.status >= 500)
        client = sum(1 for s in kept if 400 <= s.status < 500)
        ordered = sorted(s.latency for s in kept)
        return RouterFigures(
            window=window,
            samples=n,
            request_rate=n / window if window > 0 else 0.0,
            error_rate=errors / n if n else None,
            client_error_rate=client / n if n else None,
            p50_seconds=nearest_rank(ordered, 0.50),
            p90_seconds=nearest_rank(ordered, 0.90),
            p99_seconds=nearest_rank(ordered, 0.99),
        )


class RouterLog:
    """One project's access log and its tracks' windows. A track whose identity (its version and
    its instances) changes starts empty: the old version's requests are not the new one's, and a
    fresh canary of the same version (its instances new) is not the one rolled back before it.

    A track has figures once it has been watched for a whole window (`covered`), as the seed's
    /metrics figures need samples spanning the window: exact counts over a half-filled window
    would read as too little traffic and fail a young canary's first analyses.
    """

    def __init__(self, path: Path, max_samples: int = MAX_SAMPLES) -> None:
        self.tail = LogTail(path)
        self.max_samples = max_samples
        self.tracks: dict[Track, RouterWindow] = {}
        self.versions: dict[Track, str | None] = {}  # each track's identity (see `figures`)
        self.since: dict[Track, float] = {}  # when the collector began watching that identity

    def covered(self, track: Track, end: float, window: float) -> bool:
        return end - self.since.get(track, end) >= window

    def read(self) -> int:
        """Take in what nginx appended; returns how many application requests it held."""
        count = 0
        for line in self.tail.read_lines():
            parsed = parse_line(line)
            if parsed is None:
                continue
            track, sample = parsed
            self._window(track).add(sample)
            count += 1
        return count

    def figures(self, track: Track, version: str | None, end: float, window: float) -> RouterFigures:
        """The track's figures; `version` names what runs on it (its version and instances): when
        it changes, the window starts again."""
        if track not in self.versions:
            self.since[track] = end
        elif self.versions[track] != version:
            self.tracks.pop(track, None)
            self.since[track] = end
        self.versions[track] = version
        return self._window(track).figures(end, window)

    def close(self) -> None:
        self.tail.close()

    def _window(self, track: Track) -> RouterWindow:
        found = self.tracks.get(track)
        if found is None:
            found = self.tracks[track] = RouterWindow(self.max_samples)
        return found
