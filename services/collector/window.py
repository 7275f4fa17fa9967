"""Windowed figures of a track, computed exactly as PromQL computes them.

Pure maths, no I/O. Each target keeps the counters it was scraped for inside the window; a track's
figures are what Prometheus answers for the same samples:

    request rate  sum(rate(http_requests_total[W]))
    error rate    sum(rate(http_requests_total{status_code=~"5.."}[W])) / request rate
    P99           histogram_quantile(0.99, sum by (le) (rate(http_request_duration_seconds_bucket[W])))

`rate` follows promql/functions.go `extrapolatedRate` (counter resets add the value before the
drop; extrapolation to the window's edges when the first/last sample is within 1.1 average
intervals of them, else by half an interval; never extrapolated below zero) and the quantile
follows promql/quantile.go `bucketQuantile`, non-monotonic buckets included
(`ensureMonotonicAndIgnoreSmallDeltas`, PR 13153). The range is left-open, (end - W, end], as in
Prometheus 3; the zero clamp is applied after the half-interval rule (Prometheus >= 2.52).
No data is None, never 0.
"""

from __future__ import annotations

import itertools
import math
import sys
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TypeVar

Labels = tuple[tuple[str, str], ...]  # sorted (name, value) pairs, without `le`
BucketKey = tuple[Labels, float]  # (labels, le)
K = TypeVar("K", Labels, BucketKey)

EXTRAPOLATION_THRESHOLD = 1.1  # in average sample intervals, as in Prometheus
PRECISION_TOLERANCE = 1e-12  # quantile.go's smallDeltaTolerance: relative noise between buckets


def labels_of(mapping: Mapping[str, str], drop: str = "le") -> Labels:
    return tuple(sorted((k, v) for k, v in mapping.items() if k != drop))


@dataclass(frozen=True)
class Scrape:
    """What one scrape of one target contributes: the counters the figures need, at `at`."""

    at: float  # unix seconds when the scrape started (Prometheus stamps the scrape's start too)
    requests: Mapping[Labels, float] = field(default_factory=dict)
    buckets: Mapping[BucketKey, float] = field(default_factory=dict)
    chaos: int | None = None


@dataclass(frozen=True)
class Figures:
    """One track's figures over `window` seconds ending at `at`; None means no data."""

    at: float
    window: float
    requests: float | None = None
    request_rate: float | None = None
    error_rate: float | None = None
    p99_seconds: float | None = None

    @property
    def p99_ms(self) -> float | None:
        return None if self.p99_seconds is None else self.p99_seconds * 1000.0


def extrapolate(
    first: tuple[float, float], last: tuple[float, float], count: int, delta: float,
    start: float, end: float, is_counter: bool = True,
) -> float:  # fmt: skip
    """`increase` from a series' first/last sample, its sample count and its reset-corrected delta."""
    sampled = last[0] - first[0]
    average = sampled / (count - 1)
    threshold = average * EXTRAPOLATION_THRESHOLD
    to_start = first[0] - start
    to_end = end - last[0]
    if to_start >= threshold:
        to_start = average / 2
    if is_counter and delta > 0 and first[1] >= 0:
        # A counter cannot have been below zero: stop the extrapolation where it would cross it.
        to_start = min(to_start, sampled * (first[1] / delta))
    if to_end >= threshold:
        to_end = average / 2
    return delta * (sampled + to_start + to_end) / sampled


class CounterSeries:
    """One counter's samples in the window; its reset correction is kept as samples come and go."""

    __slots__ = ("_corrections", "_resets", "points")

    def __init__(self) -> None:
        self.points: deque[tuple[float, float, float]] = deque()  # (t, value, correction)
        self._corrections = 0.0
        self._resets = 0

    def add(self, t: float, value: float) -> None:
        if math.isnan(value):
            return  # a stale marker: range vectors skip it
        correction = 0.0
        if self.points:
            last_t, last_v, _ = self.points[-1]
            if t <= last_t:
                return  # out of order or duplicate, which Prometheus also refuses
            if value < last_v:
                correction = last_v  # a reset: the counter restarted from zero
                self._corrections += correction
                self._resets += 1
        self.points.append((t, value, correction))

    def prune(self, start: float) -> None:
        """Forget samples at or before `start`: the range is left-open."""
        points = self.points
        while points and points[0][0] <= start:
            points.popleft()
            if points and points[0][2]:
                # The reset between the dropped sample and the new first one left the window.
                t, value, correction = points[0]
                points[0] = (t, value, 0.0)
                self._resets -= 1
                self._corrections = self._corrections - correction if self._resets else 0.0

    def increase(self, start: float, end: float) -> float | None:
        """PromQL `increase` over (start, end]; None with fewer than two samples. Reads only.

        O(1) when the series is pruned to `start` and has nothing after `end` (the collector's
        cycle); otherwise the samples in the range are gathered and their resets recounted.
        """
        points = self.points
        if points and (points[0][0] <= start or points[-1][0] > end):
            return _increase_of([(t, v) for t, v, _ in points if start < t <= end], start, end)
        if len(points) < 2:
            return None
        first, last = points[0], points[-1]
        delta = last[1] - first[1] + self._corrections
        return extrapolate(first[:2], last[:2], len(points), delta, start, end)

    def __len__(self) -> int:
        return len(self.points)


def _increase_of(points: list[tuple[float, float]], start: float, end: float) -> float | None:
    if len(points) < 2:
        return None
    delta = points[-1][1] - points[0][1]
    delta += sum(prev[1] for prev, cur in itertools.pairwise(points) if cur[1] < prev[1])
    return extrapolate(points[0], points[-1], len(points), delta, start, end)


def bucket_quantile(q: float, buckets: Iterable[tuple[float, float]]) -> float | None:
    """PromQL `bucketQuantile` over (upper bound, cumulative count) pairs; None where it gives NaN."""
    if math.isnan(q):
        return None
    if q < 0:
        return -math.inf
    if q > 1:
        return math.inf
    ordered = _coalesce(sorted(buckets))
    if not ordered or not math.isinf(ordered[-1][0]):
        return None
    counts = _monotonic([count for _, count in ordered])
    if len(ordered) < 2 or counts[-1] == 0:
        return None
    rank = q * counts[-1]
    b = next(i for i in range(len(counts)) if i == len(counts) - 1 or counts[i] >= rank)
    if b == len(ordered) - 1:
        return ordered[-2][0]  # in the +Inf bucket: the highest finite bound
    if b == 0 and ordered[0][0] <= 0:
        return ordered[0][0]
    start, end, count = 0.0, ordered[b][0], counts[b]
    if b > 0:
        start = ordered[b - 1][0]
        count -= counts[b - 1]
        rank -= counts[b - 1]
    return start + (end - start) * (rank / count)


def _coalesce(ordered: list[tuple[float, float]]) -> list[tuple[float, float]]:
    merged: list[tuple[float, float]] = []
    for bound, count in ordered:
        if merged and merged[-1][0] == bound:
            merged[-1] = (bound, merged[-1][1] + count)
        else:
            merged.append((bound, count))
    return merged


def _monotonic(counts: list[float]) -> list[float]:
    """Prometheus' `ensureMonotonicAndIgnoreSmallDeltas` with its `smallDeltaTolerance`.

    One pass against the last accepted count: a difference `almost_equal` to it is float noise
    and is dropped whichever way it goes; a real decrease is lifted to it (the envelope); only a
    real increase becomes the new accepted count. A zero after a non-zero count is a decrease.
    """
    counts = list(counts)
    accepted = counts[0]
    for i in range(1, len(counts)):
        current = counts[i]
        if current == accepted:
            continue
        if almost_equal(accepted, current, PRECISION_TOLERANCE) or current < accepted:
            counts[i] = accepted
        else:
            accepted = current
    return counts


def almost_equal(a: float, b: float, epsilon: float) -> bool:
    """Prometheus' util/almost.Equal: `a` and `b` differ by less than `epsilon` of their sum."""
    if a == b or (math.isnan(a) and math.isnan(b)):
        return True
    abs_sum = abs(a) + abs(b)
    diff = abs(a - b)
    if a == 0 or b == 0 or abs_sum < sys.float_info.min:
        return diff < epsilon * sys.float_info.min
    return diff / min(abs_sum, sys.float_info.max) < epsilon


class TargetWindow:
    """One target's counters inside the window, fed one scrape at a time."""

    def __init__(self) -> None:
        self.requests: dict[Labels, CounterSeries] = {}
        self.buckets: dict[BucketKey, CounterSeries] = {}
        self.errors: set[Labels] = set()

    def add(self, scrape: Scrape) -> None:
        for labels, value in scrape.requests.items():
            series = self.requests.get(labels)
            if series is None:
                series = self.requests[labels] = CounterSeries()
                if dict(labels).get("status_code", "").startswith("5"):
                    self.errors.add(labels)
            series.add(scrape.at, value)
        for key, value in scrape.buckets.items():
            series = self.buckets.get(key)
            if series is None:
                series = self.buckets[key] = CounterSeries()
            series.add(scrape.at, value)

    def prune(self, start: float) -> None:
        """Forget what left the window; series with no sample left are dropped."""
        _prune(self.requests, start)
        _prune(self.buckets, start)
        self.errors &= self.requests.keys()


def _prune(table: dict[K, CounterSeries], start: float) -> None:
    empty = []
    for key, series in table.items():
        series.prune(start)
        if not series:
            empty.append(key)
    for key in empty:
        del table[key]


def figures(targets: Iterable[TargetWindow], end: float, window: float, q: float = 0.99) -> Figures:
    """The track's figures over (end - window, end], summed over its targets' series."""
    start = end - window
    total = errors = None
    by_le: dict[float, float] = {}
    for target in targets:
        for labels, series in target.requests.items():
            inc = series.increase(start, end)
            if inc is None:
                continue
            total = (total or 0.0) + inc
            if labels in target.errors:
                errors = (errors or 0.0) + inc
        for (_, le), series in target.buckets.items():
            inc = series.increase(start, end)
            if inc is not None:
                by_le[le] = by_le.get(le, 0.0) + inc / window
    if total is None:
        return Figures(at=end, window=window, p99_seconds=_quantile(q, by_le))
    return Figures(
        at=end,
        window=window,
        requests=total,
        request_rate=total / window,
        error_rate=(errors or 0.0) / total if total > 0 else None,
        p99_seconds=_quantile(q, by_le),
    )


def _quantile(q: float, by_le: dict[float, float]) -> float | None:
    return bucket_quantile(q, by_le.items()) if by_le else None
