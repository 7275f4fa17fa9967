"""The canary judged against stable (services/collector/judge.py): the figures match scipy and an
independent computation on the same samples; too few samples give no comparison, with the reason;
an identical canary is rarely denied (false-positive rate measured over 100 seeded runs at real
window sizes, through the real policy); and on real traffic (real nginx, two real workloads, slow
chaos of 0.05 s on the canary, every absolute threshold met) the comparison denies with p < 0.05."""

from __future__ import annotations

import asyncio
import bisect
import math
import random
import statistics
import time
from pathlib import Path

import aiohttp
import pytest
from scipy.stats import mannwhitneyu

import policies
from services.collector.judge import MIN_SAMPLES, compare
from services.collector.router import Sample
from services.collector.scrape import Scraper, Target
from services.collector.targets import Project
from services.collector.tracking import Tracker
from services.gatekeeper.embedded import EmbeddedEngine
from services.gatekeeper.schemas import InputSchemas
from services.gatekeeper.service import Gatekeeper
from services.orchestrator import plans
from swiftdeploy_core.bus.events import DecisionRequested, MetricsSnapshot
from swiftdeploy_core.project.state import TrackState
from tests.servers import WorkloadServer, split_router

# Real window sizes: the default 60 s window at 50 requests/s, the canary at 10% and at 50%.
SIZES = [(300, 2700), (1500, 1500)]
RUNS = 100


def synthetic(rng: random.Random, n: int, extra: float = 0.0, error_rate: float = 0.004) -> list[Sample]:
    """Requests as nginx logs them: lognormal latencies (median ~11 ms), rounded to the millisecond
    (nginx's resolution, so ties are common), a small share of 500s."""
    return [
        Sample(0.0, 500 if rng.random() < error_rate else 200, round(rng.lognormvariate(-4.5, 0.6) + extra, 3))
        for _ in range(n)
    ]


def independent_u_and_p(canary: list[float], stable: list[float]) -> tuple[float, float]:
    """U by counting pairs (a tie counts one half) and the one-sided p-value by the normal
    approximation with the tie and continuity corrections, written out from the textbook."""
    ordered = sorted(stable)
    u = sum(bisect.bisect_left(ordered, x) + 0.5 * (bisect.bisect_right(ordered, x) - bisect.bisect_left(ordered, x))
            for x in canary)  # fmt: skip
    n1, n2 = len(canary), len(stable)
    n = n1 + n2
    counts: dict[float, int] = {}
    for x in [*canary, *stable]:
        counts[x] = counts.get(x, 0) + 1
    ties = sum(t**3 - t for t in counts.values())
    sigma = math.sqrt(n1 * n2 / 12 * ((n + 1) - ties / (n * (n - 1))))
    z = (u - n1 * n2 / 2 - 0.5) / sigma
    return u, 0.5 * math.erfc(z / math.sqrt(2))


def test_u_and_p_match_scipy_and_an_independent_computation_on_the_same_samples():
    rng = random.Random(21)
    for extra in (0.0, 0.002, 0.05):
        canary, stable = synthetic(rng, 300, extra), synthetic(rng, 2700)
        found = compare(canary, stable).latency
        assert found is not None
        c, s = [x.latency for x in canary], [x.latency for x in stable]
        reference = mannwhitneyu(c, s, alternative="greater")
        u, p = independent_u_and_p(c, s)
        print(f"+{extra * 1000:.0f} ms: U {found.u} (scipy {reference.statistic}, by hand {u}), "
              f"p {found.p_value:.6g} (scipy {reference.pvalue:.6g}, by hand {p:.6g})")  # fmt: skip
        assert found.u == reference.statistic == u
        assert found.p_value == pytest.approx(reference.pvalue, rel=1e-12, abs=1e-300)
        assert found.p_value == pytest.approx(p, rel=1e-9, abs=1e-300)
        assert (found.canary_samples, found.stable_samples) == (300, 2700)
        assert found.canary_median_ms == pytest.approx(statistics.median(c) * 1000)
        assert found.ratio == pytest.approx(statistics.median(c) / statistics.median(s))


def fisher_greater(a: int, n1: int, b: int, n2: int) -> float:
    """One-sided Fisher exact p by hand: P(X >= a) for X hypergeometric (a + b errors among n1 + n2)."""
    k, n = a + b, n1 + n2
    return sum(math.comb(n1, x) * math.comb(n2, k - x) for x in range(a, min(k, n1) + 1)) / math.comb(n, k)


def test_the_error_comparison_is_the_pooled_z_statistic_and_fishers_exact_p():
    canary = [Sample(0.0, 500 if i < 15 else 200, 0.01) for i in range(300)]  # 5%
    stable = [Sample(0.0, 500 if i < 27 else 200, 0.01) for i in range(2700)]  # 1%
    errors = compare(canary, stable).errors
    assert errors is not None
    pooled = 42 / 3000
    z = (15 / 300 - 27 / 2700) / math.sqrt(pooled * (1 - pooled) * (1 / 300 + 1 / 2700))
    assert errors.z == pytest.approx(z, rel=1e-12)
    assert errors.p_value == pytest.approx(fisher_greater(15, 300, 27, 2700), rel=1e-9)
    assert errors.p_value < 0.05
    clean = compare(stable[27:327], stable[27:]).errors  # no errors anywhere: nothing to see
    assert clean is not None and (clean.z, clean.p_value) == (0.0, 1.0)


def test_too_few_samples_on_either_side_is_no_comparison_with_the_reason():
    rng = random.Random(1)
    for nc, ns in ((MIN_SAMPLES - 1, 2700), (300, MIN_SAMPLES - 1)):
        found = compare(synthetic(rng, nc), synthetic(rng, ns))
        assert (found.latency, found.errors) == (None, None)
        assert (
            found.reasons["latency"]
            == found.reasons["errors"]
            == (f"too few requests to compare: {nc} canary and {ns} stable in the window (at least 50 each needed)")
        )
    assert compare(synthetic(rng, MIN_SAMPLES), synthetic(rng, MIN_SAMPLES)).latency is not None


async def decide(gatekeeper: Gatekeeper, canary: list[Sample], stable: list[Sample]) -> tuple[bool, list[str]]:
    """The real policy's verdict on the canary input the orchestrator would send."""
    ordered = sorted(s.latency for s in canary)
    snapshot = MetricsSnapshot(
        project="p", track="canary", version="2.0.0", window_seconds=60, source="router", samples=len(canary),
        requests=float(len(canary)), error_rate=sum(s.status >= 500 for s in canary) / len(canary),
        p99_latency_ms=ordered[math.ceil(0.99 * len(ordered)) - 1] * 1000, comparison=compare(canary, stable),
    )  # fmt: skip
    track = TrackState(track="canary", version="2.0.0", image="img", weight=10, instances=[])
    document = plans.canary_input(snapshot, track)
    assert document is not None
    made = await gatekeeper.decide(DecisionRequested(domain="canary", input=document), "fpr")
    return made.allow, made.reasons


@pytest.fixture
async def gatekeeper(tmp_path: Path):
    """The default policies with absolute thresholds no synthetic canary reaches: only the
    comparison can deny."""
    import json
    import shutil

    folder = tmp_path / "policies"
    shutil.copytree(policies.default_dir(), folder, ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    data = json.loads((folder / "data.json").read_text())
    data["thresholds"].update(error_rate=0.5, p99_latency_ms=10_000)
    (folder / "data.json").write_text(json.dumps(data))
    engine = EmbeddedEngine(folder)
    yield Gatekeeper(engine, InputSchemas(folder))
    await engine.close()


async def test_an_identical_canary_passes_at_least_95_of_100_seeded_runs(gatekeeper):
    for nc, ns in SIZES:
        denied, slower_denied, low_p = 0, 0, 0
        for seed in range(RUNS):
            rng = random.Random(seed)
            stable = synthetic(rng, ns)
            canary = synthetic(rng, nc)
            allow, _ = await decide(gatekeeper, canary, stable)
            denied += not allow
            latency = compare(canary, stable).latency
            low_p += latency is not None and latency.p_value < 0.05
            slow_allow, _ = await decide(gatekeeper, synthetic(rng, nc, extra=0.05), stable)
            slower_denied += not slow_allow
        print(f"{nc} canary vs {ns} stable requests, {RUNS} seeded runs: identical canary denied {denied} "
              f"(false-positive rate {denied / RUNS:.0%}; Mann-Whitney p < 0.05 in {low_p}), "
              f"canary 50 ms slower denied {slower_denied}")  # fmt: skip
        assert denied <= 5
        assert slower_denied == RUNS


# --- real traffic ---------------------------------------------------------------------------------

WINDOW = 20.0
RATE = 40  # requests per second through nginx
TRAFFIC_SECONDS = 14


async def paced(session: aiohttp.ClientSession, url: str) -> None:
    start, tasks = time.monotonic(), []
    for n in range(RATE * TRAFFIC_SECONDS):
        await asyncio.sleep(max(0.0, start + n / RATE - time.monotonic()))
        tasks.append(asyncio.create_task(session.get(f"{url}/?n={n}").__aenter__()))
    for response in await asyncio.gather(*tasks):
        await response.read()
        response.release()


async def test_on_real_traffic_a_canary_slowed_by_50_ms_is_denied_by_the_comparison(tmp_path, gatekeeper):
    stable = WorkloadServer(tmp_path / "stable", mode="stable", version="1.0.0").start()
    canary = WorkloadServer(tmp_path / "canary", mode="canary", version="2.0.0").start()
    plan, router = split_router(tmp_path / "nginx", stable.port, canary.port, canary_weight=50)
    project = Project("p", "process", tmp_path, source="router", router_log=Path(plan.access_log))
    targets = [
        Target(stable.url, "p", "stable", "1.0.0", "router"),
        Target(canary.url, "p", "canary", "2.0.0", "router"),
    ]
    try:
        async with aiohttp.ClientSession() as session, Scraper(timeout=0.8) as scraper:
            async with session.post(f"{canary.url}/chaos", json={"mode": "slow", "duration": 0.05}) as answer:
                assert answer.status == 200, await answer.text()
            tracker = Tracker(scraper, window=WINDOW)
            watched = (await tracker.cycle(targets, {"p": project})).at
            await asyncio.sleep(1)
            await paced(session, plan.url)
            await asyncio.sleep(max(1.0, watched + WINDOW + 0.5 - time.time()))
            report = await tracker.cycle(targets, {"p": project})
    finally:
        router.stop()
        stable.stop()
        canary.stop()
    snapshot = next(s for s in report.snapshots if s.track == "canary")
    comparison = snapshot.comparison
    assert comparison is not None and comparison.latency is not None, snapshot
    latency = comparison.latency
    print(f"real traffic: canary median {latency.canary_median_ms:.1f} ms vs stable {latency.stable_median_ms:.1f} ms, "
          f"U {latency.u}, p {latency.p_value:.3g}, {latency.canary_samples} vs {latency.stable_samples} requests; "
          f"canary P99 {snapshot.p99_latency_ms} ms, error rate {snapshot.error_rate}")  # fmt: skip
    assert latency.p_value < 0.05 and latency.canary_samples >= MIN_SAMPLES and latency.stable_samples >= MIN_SAMPLES
    assert snapshot.p99_latency_ms is not None and snapshot.p99_latency_ms < 500 and snapshot.error_rate == 0

    engine = EmbeddedEngine(policies.default_dir())  # the shipped thresholds: every absolute one is met
    track = TrackState(track="canary", version="2.0.0", image="img", weight=50, instances=[])
    document = plans.canary_input(snapshot.model_copy(update={"targets": []}), track)
    assert document is not None
    try:
        made = await Gatekeeper(engine, InputSchemas(policies.default_dir())).decide(
            DecisionRequested(domain="canary", input=document), "real"
        )
    finally:
        await engine.close()
    print(made.reasons)
    assert made.allow is False
    assert len(made.reasons) == 1 and made.reasons[0].startswith("canary latency is significantly worse than stable")
