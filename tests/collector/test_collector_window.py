"""The collector's window maths gives what PromQL gives.

Hand-worked cases pin each rule of `extrapolatedRate` and `bucketQuantile`; randomised series
with resets and missed scrapes are checked against the real PromQL engine (promtool, Debian's
Prometheus) on the same samples.
"""

from __future__ import annotations

import math
import random
import re
import subprocess
from dataclasses import dataclass, field

import pytest

from services.collector.window import (
    CounterSeries,
    Scrape,
    TargetWindow,
    bucket_quantile,
    extrapolate,
    figures,
)
from tests.servers import require_binary


def series_of(points: list[tuple[float, float]]) -> CounterSeries:
    series = CounterSeries()
    for t, v in points:
        series.add(t, v)
    return series


# --- rate / increase --------------------------------------------------------------------------


def test_a_steady_counter_is_extrapolated_to_both_edges_of_the_window():
    # 10/s sampled every 10 s from t=5 to t=55, window (0, 60]: 5 s short of each edge.
    series = series_of([(t, 1000 + 10 * t) for t in range(5, 60, 10)])
    assert series.increase(0, 60) == pytest.approx(600)


def test_a_counter_reset_adds_the_value_before_the_drop_and_never_goes_negative():
    # 100, 110, 120 | restart | 5, 15: the increase is 20 + 5 + 10 = 35 over 40 s sampled.
    series = series_of([(10, 100), (20, 110), (30, 120), (40, 5), (50, 15)])
    increase = series.increase(5, 55)
    assert increase == pytest.approx(35 * 50 / 40)
    assert increase > 0


def test_a_reset_that_left_the_window_no_longer_counts():
    series = series_of([(10, 100), (20, 5), (30, 15), (40, 25)])
    assert series.increase(5, 45) == pytest.approx((25 - 100 + 100) * 40 / 30)
    # Once the sample before the drop is out of the window, the drop is too.
    assert series.increase(15, 45) == pytest.approx(20 * 30 / 20)
    assert series.increase(15, 45) > 0


def test_a_series_that_starts_late_is_extrapolated_by_half_an_interval_only():
    # First sample 30 s after the window opened (more than 1.1 intervals): extend by 5 s, not 30.
    series = series_of([(30, 500), (40, 600), (50, 700)])
    assert series.increase(0, 55) == pytest.approx(200 * (20 + 5 + 5) / 20)


def test_extrapolation_stops_where_the_counter_would_cross_zero():
    # 2 -> 12 -> 22: zero is 2 s before the first sample, closer than the 9 s to the edge.
    assert extrapolate((10, 2), (30, 22), 3, 20, start=1, end=30) == pytest.approx(20 * 22 / 20)


def test_fewer_than_two_samples_is_no_data():
    assert series_of([]).increase(0, 60) is None
    assert series_of([(10, 5)]).increase(0, 60) is None


def test_reading_the_increase_twice_gives_the_same_answer_and_leaves_the_series_unchanged():
    # A reset inside (0, 25] but before a later window's start: reading the later window must
    # not forget it for the earlier one, nor drop samples a reader still needs.
    series = series_of([(10, 100), (20, 5), (30, 15), (40, 25), (50, 35)])
    before = list(series.points)
    later = series.increase(25, 55)
    assert series.increase(25, 55) == later == pytest.approx(20 * 30 / 20)
    assert list(series.points) == before and len(series) == 5
    assert series.increase(5, 55) == pytest.approx((35 - 100 + 100) * 50 / 40)
    assert series.increase(5, 35) == pytest.approx((15 - 100 + 100) * 30 / 20)
    assert list(series.points) == before


def test_samples_beyond_the_end_are_not_used():
    series = series_of([(10, 100), (20, 110), (30, 120), (40, 1000)])
    assert series.increase(5, 35) == pytest.approx(20 * 30 / 20)


# --- histogram_quantile ----------------------------------------------------------------------

BOUNDS = [0.05, 0.1, 0.25, 0.5, 1.0, math.inf]


def cumulative(*counts: float) -> list[tuple[float, float]]:
    return list(zip(BOUNDS, counts))


def test_the_quantile_is_interpolated_linearly_inside_its_bucket():
    # 100 observations; rank 99 is the 9th of the 10 in (0.25, 0.5].
    assert bucket_quantile(0.99, cumulative(50, 80, 90, 100, 100, 100)) == pytest.approx(0.25 + 0.25 * 0.9)


def test_the_lowest_bucket_starts_at_zero():
    assert bucket_quantile(0.5, cumulative(100, 100, 100, 100, 100, 100)) == pytest.approx(0.025)


def test_a_quantile_in_the_inf_bucket_is_the_highest_finite_bound():
    assert bucket_quantile(0.99, cumulative(10, 20, 30, 40, 50, 100)) == 1.0


def test_non_monotonic_buckets_are_flattened_as_prometheus_does():
    # 0.25's count dips below 0.1's; treated as 80, so rank 99 falls in (0.25, 0.5].
    assert bucket_quantile(0.99, cumulative(50, 80, 70, 100, 100, 100)) == pytest.approx(0.25 + 0.25 * 19 / 20)


def test_an_empty_bucket_after_a_full_one_is_lifted_to_the_envelope():
    # A sharded or partial sum can leave 0 in a bucket above a non-zero one (here 0.1 and 0.25 are
    # 0 after 0.05's 3). Prometheus lifts them to 3 instead of dividing by the zero count.
    assert bucket_quantile(0.99, cumulative(3, 0, 0, 4, 4, 4)) == pytest.approx(0.25 + 0.25 * (0.96 / 1))
    assert bucket_quantile(0.5, [(0.05, 3.0), (0.1, 0.0), (math.inf, 3.0)]) == pytest.approx(0.025)


def test_float_noise_between_buckets_is_ignored_in_either_direction():
    # Deltas below 1e-12 of the counts' sum are noise (almost.Equal): a bucket a hair below its
    # neighbour is not a dip, and one a hair above is no new observations. A real dip is lifted.
    hair = 100 * 1e-13
    assert bucket_quantile(0.99, cumulative(50, 100, 100 - hair, 100 + hair, 100, 100)) == pytest.approx(
        0.05 + 0.05 * (99 - 50) / 50
    )
    # 99.5 then 100 + hair: the first is a dip below 100, lifted; the second is noise over 100.
    assert bucket_quantile(1.0, cumulative(10, 100, 99.5, 100 + hair, 100, 100)) == pytest.approx(0.1)


def test_no_observations_or_no_inf_bucket_is_no_data():
    assert bucket_quantile(0.99, cumulative(0, 0, 0, 0, 0, 0)) is None
    assert bucket_quantile(0.99, [(0.1, 5.0), (0.5, 10.0)]) is None
    assert bucket_quantile(0.99, []) is None


# --- a track's figures -----------------------------------------------------------------------


def scrape(at: float, ok: float, failed: float, buckets: list[float]) -> Scrape:
    route = (("method", "GET"), ("path", "/"))
    return Scrape(
        at=at,
        requests={(*route, ("status_code", "200")): ok, (*route, ("status_code", "500")): failed},
        buckets={(route, le): count for le, count in zip(BOUNDS, buckets)},
    )


def test_an_empty_window_is_no_data_not_zero():
    empty = figures([], end=100, window=60)
    assert (empty.requests, empty.request_rate, empty.error_rate, empty.p99_ms) == (None, None, None, None)
    one_scrape = TargetWindow()
    one_scrape.add(scrape(90, 10, 1, [5, 8, 9, 10, 11, 11]))
    assert figures([one_scrape], end=100, window=60).request_rate is None


def test_an_idle_track_has_a_zero_rate_but_no_error_rate_or_latency():
    target = TargetWindow()
    for t in (50, 60, 70):
        target.add(scrape(t, 10, 1, [5, 8, 9, 10, 11, 11]))
    idle = figures([target], end=75, window=30)
    assert idle.request_rate == 0 and idle.error_rate is None and idle.p99_ms is None


def test_targets_of_a_track_are_summed_by_le_before_the_quantile():
    fast, slow = TargetWindow(), TargetWindow()
    for i, t in enumerate((10, 20, 30)):
        fast.add(scrape(t, 90 * i, 0, [90 * i] * 6))  # 9/s, all under 50 ms
        slow.add(scrape(t, 0, 10 * i, [0, 0, 0, 10 * i, 10 * i, 10 * i]))  # 1/s 5xx, (0.25, 0.5]
    track = figures([fast, slow], end=30, window=20)
    assert track.request_rate == pytest.approx(10)
    assert track.error_rate == pytest.approx(0.1)
    assert track.p99_ms == pytest.approx((0.25 + 0.25 * 0.9) * 1000)


def test_an_old_scrape_leaves_the_window_as_time_moves_on():
    target = TargetWindow()
    for t in (10, 20, 30):
        target.add(scrape(t, 10 * t, 0, [10 * t] * 6))
    target.prune(25)
    assert len(target.requests) == 2 and all(len(s) == 1 for s in target.requests.values())
    target.prune(35)
    assert target.requests == {} and target.buckets == {}


# --- the real PromQL engine on the same samples ----------------------------------------------

STEP = 10  # seconds between scrapes
LE_TEXT = ["0.05", "0.1", "0.25", "0.5", "1", "+Inf"]


@dataclass
class Instance:
    """One synthetic target: cumulative counters per step, None where a scrape was missed."""

    name: str
    ok: list[float | None] = field(default_factory=list)
    failed: list[float | None] = field(default_factory=list)
    buckets: list[list[float] | None] = field(default_factory=list)


def simulate(rng: random.Random, name: str, steps: int, protected: range) -> Instance:
    inst = Instance(name)
    ok, failed = rng.randint(500, 5000), rng.randint(0, 300)
    obs = _observe(rng, [0.0] * 6, ok + failed)
    for step in range(steps):
        if step and rng.random() < 0.06:  # the workload restarted: every counter from zero
            ok, failed, obs = 0, 0, [0.0] * 6
        new_ok, new_failed = rng.randint(0, 40), rng.randint(0, 8)
        ok, failed = ok + new_ok, failed + new_failed
        obs = _observe(rng, obs, new_ok + new_failed)
        missed = step not in protected and step > 0 and rng.random() < 0.12
        inst.ok.append(None if missed else float(ok))
        inst.failed.append(None if missed else float(failed))
        inst.buckets.append(None if missed else list(obs))
    return inst


def _observe(rng: random.Random, cumulative_counts: list[float], n: int) -> list[float]:
    per_bucket = [0] * 6
    for _ in range(n):
        per_bucket[min(int(rng.expovariate(1.0) * 2), 5)] += 1
    running, added = 0, []
    for count in per_bucket:
        running += count
        added.append(running)
    return [count + new for count, new in zip(cumulative_counts, added)]


def promql_values(
    promtool: str, tmp_path, instances: list[Instance], exprs: list[str], at: float
) -> list[float | None]:
    """Evaluate `exprs` at `at` with promtool on the instances' series; None where PromQL has no result."""
    # promtool loads samples as its clock advances by evaluation_interval: keep that fine.
    lines = ["evaluation_interval: 1s", "tests:", f"  - interval: {STEP}s", "    input_series:"]
    for inst in instances:
        for code, values in (("200", inst.ok), ("500", inst.failed)):
            lines += [f"      - series: 'req{{instance=\"{inst.name}\",status_code=\"{code}\"}}'",
                      f"        values: '{_values(values)}'"]  # fmt: skip
        for i, le in enumerate(LE_TEXT):
            column = [None if b is None else b[i] for b in inst.buckets]
            lines += [f"      - series: 'lat_bucket{{instance=\"{inst.name}\",le=\"{le}\"}}'",
                      f"        values: '{_values(column)}'"]  # fmt: skip
    lines.append("    promql_expr_test:")
    for expr in exprs:  # an impossible expectation, so promtool prints what it got
        lines += [f"      - expr: '{expr}'", f"        eval_time: {at:g}s", "        exp_samples:",
                  "          - labels: '{}'", "            value: -424242"]  # fmt: skip
    path = tmp_path / "promql.yml"
    path.write_text("\n".join(lines) + "\n")
    out = subprocess.run([promtool, "test", "rules", str(path)], capture_output=True, text=True, timeout=60)
    got = re.findall(r"got: (nil|\{\} (\S+))", out.stdout + out.stderr)
    assert len(got) == len(exprs), out.stdout + out.stderr
    return [None if whole == "nil" or value == "NaN" else float(value) for whole, value in got]


def _values(values: list[float | None]) -> str:
    return " ".join("_" if v is None else repr(v) for v in values)


def windows_of(instances: list[Instance], end: float) -> list[TargetWindow]:
    windows = []
    for inst in instances:
        window = TargetWindow()
        for step, (ok, failed, buckets) in enumerate(zip(inst.ok, inst.failed, inst.buckets)):
            if ok is None or step * STEP > end:
                continue
            window.add(Scrape(
                at=step * STEP,
                requests={(("status_code", "200"),): ok, (("status_code", "500"),): failed},
                buckets={((), le): count for le, count in zip(BOUNDS, buckets)},
            ))  # fmt: skip
        windows.append(window)
    return windows


@pytest.mark.parametrize("seed", range(6))
def test_figures_equal_promql_on_random_series_with_resets_and_missed_scrapes(seed, tmp_path):
    promtool = require_binary("promtool")
    rng = random.Random(seed)
    steps, window = 40, rng.choice([60, 120, 200])
    # Off the scrape grid: Prometheus 2 closes the range on the left, Prometheus 3 opens it.
    at = (steps - 1) * STEP + rng.choice([1, 3, 7])
    first_in_window = int((at - window) // STEP) + 1
    # Prometheus before 2.52 caps extrapolation to zero differently when the window's first
    # sample is far from its start, so the samples right after the start are never missed.
    protected = range(first_in_window, first_in_window + 2)
    instances = [simulate(rng, f"i{i}", steps, protected) for i in range(rng.randint(1, 3))]
    exprs = [
        f"sum(rate(req[{window}s]))",
        f'sum(rate(req{{status_code=~"5.."}}[{window}s])) / sum(rate(req[{window}s]))',
        f"histogram_quantile(0.99, sum by (le) (rate(lat_bucket[{window}s])))",
        f"histogram_quantile(0.5, sum by (le) (rate(lat_bucket[{window}s])))",
    ]
    rate, error_rate, p99, p50 = promql_values(promtool, tmp_path, instances, exprs, at)

    windows = windows_of(instances, at)
    ours = figures(windows, end=at, window=window)
    median = figures(windows_of(instances, at), end=at, window=window, q=0.5)
    for mine, theirs in [(ours.request_rate, rate), (ours.error_rate, error_rate),
                         (ours.p99_seconds, p99), (median.p99_seconds, p50)]:  # fmt: skip
        assert (mine is None) == (theirs is None)
        if theirs is not None:
            assert mine == pytest.approx(theirs, rel=1e-9, abs=1e-12)


def test_sliding_the_window_keeps_the_reset_bookkeeping_exact():
    rng = random.Random(7)
    value, points = 1000.0, []
    for step in range(300):
        value = rng.uniform(0, 5) if rng.random() < 0.1 else value + rng.uniform(0, 20)
        points.append((step * 1.0, value))
    sliding = CounterSeries()
    for i, (t, v) in enumerate(points):
        sliding.add(t, v)
        start = t - 30.5
        fresh = series_of([p for p in points[: i + 1] if p[0] > start])
        got, expected = sliding.increase(start, t), fresh.increase(start, t)
        assert (got is None and expected is None) or got == pytest.approx(expected, rel=1e-9)
