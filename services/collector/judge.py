"""The canary judged against stable over the same window, from the router's per-request samples.

Per metric, with scipy (a maintained statistics library) doing the statistics:

    latency  Mann-Whitney U, alternative "greater" (the canary slower), scipy's default method
             (asymptotic with tie and continuity corrections at these sizes); effect size: the
             ratio of the medians
    errors   two proportions, one-sided (the canary's 5xx share higher): the pooled z statistic
             for the size of the difference, and the p-value of Fisher's exact test on the 2x2
             counts. The z-test's own p (norm.sf(z)) is anti-conservative when few errors are
             expected: with 0.4% errors on 300 canary vs 2700 stable requests it denied 8 of 100
             identical canaries; Fisher's exact test keeps it under 5% at any count.

Fewer than MIN_SAMPLES requests on either side: no comparison (None) and the reason. The verdict
stays in Rego (`canary.rego`): this only measures.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence

from scipy.stats import fisher_exact, mannwhitneyu  # type: ignore[import-untyped]  # scipy ships no stubs

from services.collector.router import Sample
from swiftdeploy_core.bus.events import Comparison, ErrorComparison, LatencyComparison

MIN_SAMPLES = 50  # per side: Kayenta's advice, and where the normal approximations hold


def compare(canary: Sequence[Sample], stable: Sequence[Sample]) -> Comparison:
    """Both comparisons, or the reason each could not be made."""
    nc, ns = len(canary), len(stable)
    if nc < MIN_SAMPLES or ns < MIN_SAMPLES:
        reason = (
            f"too few requests to compare: {nc} canary and {ns} stable in the window "
            f"(at least {MIN_SAMPLES} each needed)"
        )
        return Comparison(reasons={"latency": reason, "errors": reason})
    return Comparison(
        latency=latency([s.latency for s in canary], [s.latency for s in stable]),
        errors=errors(sum(1 for s in canary if s.status >= 500), nc, sum(1 for s in stable if s.status >= 500), ns),
    )


def latency(canary: Sequence[float], stable: Sequence[float]) -> LatencyComparison:
    """Mann-Whitney U of the canary's latencies (seconds) against stable's."""
    result = mannwhitneyu(canary, stable, alternative="greater")
    canary_median, stable_median = statistics.median(canary), statistics.median(stable)
    return LatencyComparison(
        u=float(result.statistic),
        p_value=_p(float(result.pvalue)),
        canary_median_ms=canary_median * 1000.0,
        stable_median_ms=stable_median * 1000.0,
        ratio=canary_median / stable_median if stable_median > 0 else None,
        canary_samples=len(canary),
        stable_samples=len(stable),
    )


def errors(canary_errors: int, canary_n: int, stable_errors: int, stable_n: int) -> ErrorComparison:
    """Is the canary's error rate higher than stable's? z: the pooled two-proportion statistic;
    p: Fisher's exact test, one-sided. With no errors (or only errors) on both sides there is no
    difference to see: z 0, p 1."""
    pc, ps = canary_errors / canary_n, stable_errors / stable_n
    pooled = (canary_errors + stable_errors) / (canary_n + stable_n)
    spread = math.sqrt(pooled * (1 - pooled) * (1 / canary_n + 1 / stable_n))
    z = (pc - ps) / spread if spread > 0 else 0.0
    return ErrorComparison(
        z=z,
        p_value=_fisher(canary_errors, canary_n, stable_errors, stable_n) if spread > 0 else 1.0,
        canary_error_rate=pc,
        stable_error_rate=ps,
        canary_samples=canary_n,
        stable_samples=stable_n,
    )


def _fisher(canary_errors: int, canary_n: int, stable_errors: int, stable_n: int) -> float:
    table = [[canary_errors, canary_n - canary_errors], [stable_errors, stable_n - stable_errors]]
    return _p(float(fisher_exact(table, alternative="greater").pvalue))


def _p(value: float) -> float:
    """A p-value the policy can read: NaN (degenerate input) reads as no evidence."""
    return 1.0 if math.isnan(value) else min(1.0, max(0.0, value))
