"""PromQL analysis queries against a real Prometheus, judged by the real canary policy.

A service that is not ours exports its own counters; a real Prometheus scrapes it. The manifest's
`analysis.metrics` name a success ratio (templated with the track's version), a query with no
data, and one with a syntax error. Each interval the collector sends them to Prometheus' HTTP API:
the ratio reaches the policy input with exactly the value the API gives for the same query at the
same time, and the canary policy (regopy) denies the two others with their reasons; with
Prometheus stopped, every metric is denied as unreachable.
"""

from __future__ import annotations

import asyncio
import json
import math
import shutil
from pathlib import Path

import aiohttp

import policies
from services.collector import analysis
from services.collector.scrape import Scraper, Target
from services.collector.targets import Project
from services.collector.tracking import Tracker
from services.gatekeeper.embedded import EmbeddedEngine
from services.orchestrator import plans
from swiftdeploy_core.project.manifest import AnalysisSpec
from swiftdeploy_core.project.state import Instance, TrackState
from tests.servers import REPO_ROOT, NotOursService, PrometheusServer, require_binary

RATIO = 'sum(rate(svc_requests_total{code="200",job="workload",version="{{ version }}"}[{{ window }}])) / sum(rate(svc_requests_total{version="{{ version }}"}[{{ window }}]))'

HEALTHY = {"source": "router", "requests": 200.0, "samples": 200, "error_rate": 0.0, "p99_latency_ms": 10.0}


def example_engine(folder: Path) -> EmbeddedEngine:
    """The packaged policies plus docs/examples/canary_success_ratio.rego, min_success_ratio 0.99."""
    shutil.copytree(policies.default_dir(), folder, ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    shutil.copy(REPO_ROOT / "docs" / "examples" / "canary_success_ratio.rego", folder)
    data = json.loads((folder / "data.json").read_text())
    data["thresholds"]["min_success_ratio"] = 0.99
    (folder / "data.json").write_text(json.dumps(data))
    return EmbeddedEngine(folder)


def spec(url: str) -> AnalysisSpec:
    return AnalysisSpec.model_validate({
        "prometheus": {"url": url},
        "metrics": [
            {"name": "success_ratio", "query": RATIO},
            {"name": "nothing", "query": 'sum(rate(svc_requests_total{code="418"}[1m]))'},
            {"name": "broken", "query": "sum(rate(svc_requests_total[1m]"},
        ],
    })  # fmt: skip


def test_placeholders_are_filled_and_promql_braces_left_alone():
    values = {"track": "canary", "version": "2.0.0", "project": "shop", "window": analysis.window_duration(60)}
    assert analysis.render_query(RATIO, values) == (
        'sum(rate(svc_requests_total{code="200",job="workload",version="2.0.0"}[60s])) / '
        'sum(rate(svc_requests_total{version="2.0.0"}[60s]))'
    )
    assert analysis.window_duration(2.5) == "2500ms"


def test_an_answer_is_one_number_or_says_why_not():
    def vector(*values: str) -> dict:
        result = [{"metric": {"i": str(n)}, "value": [1.0, v]} for n, v in enumerate(values)]
        return {"status": "success", "data": {"resultType": "vector", "result": result}}

    assert analysis.value_of(vector("0.25")).value == 0.25
    assert analysis.value_of({"status": "success", "data": {"resultType": "scalar", "result": [1.0, "3"]}}).value == 3
    assert analysis.value_of(vector("NaN")).reason == "the query's value is NaN (a division by zero, or no traffic?)"
    assert analysis.value_of(vector("1", "2")).reason.startswith("the query returned 2 series")
    assert analysis.value_of(vector()).reason == "no data: the query returned an empty result"
    assert analysis.value_of({"status": "success", "data": {"resultType": "matrix", "result": []}}).reason == (
        "the query returned a matrix, not a single number"
    )
    assert analysis.value_of({"status": "success", "data": {"resultType": "vector", "result": [{}]}}).reason == (
        "Prometheus' vector answer is malformed"
    )


async def test_promql_metrics_reach_the_policy_input_and_missing_values_deny_with_their_reason(tmp_path):
    service = NotOursService({"METRICS": "1", "VERSION": "2.0.0", "FAIL_RATE": "0.25"}, tmp_path / "svc.log").start()
    prom = PrometheusServer(require_binary("prometheus"), tmp_path).start([service.url], {"version": "2.0.0"})
    project = Project("shop", "process", tmp_path, analysis=spec(prom.url))
    targets = [Target(service.url, "shop", "canary", "2.0.0")]
    canary = TrackState(track="canary", version="2.0.0", image="i",
                        instances=[Instance(id="1", name="c", track="canary", version="2.0.0", url=service.url)])  # fmt: skip
    engine = EmbeddedEngine(policies.default_dir())
    try:
        async with aiohttp.ClientSession() as session, Scraper(timeout=0.8) as scraper:
            await prom.scraping(session, 1)
            for _ in range(200):
                async with session.get(f"{service.url}/work") as response:
                    await response.read()
            await asyncio.sleep(2.5)  # scraped twice since
            tracker = Tracker(scraper, window=30)
            report = await tracker.cycle(targets, {"shop": project})
            (snapshot,) = report.snapshots
            values = {"track": "canary", "version": "2.0.0", "project": "shop", "window": "30s"}
            direct = await prom.scalar(session, analysis.render_query(RATIO, values), round(report.at * 1000))
            found = snapshot.metrics
            print(found, direct)
            assert found["success_ratio"].value == direct and 0.6 < direct < 0.9
            assert found["nothing"].value is None and found["nothing"].reason.startswith("no data")
            assert found["broken"].value is None and "bad_data" in found["broken"].reason

            # The service has no http_requests_total: the router would give these; healthy ones here,
            # so that only the custom metrics decide.
            snapshot = snapshot.model_copy(update=HEALTHY)
            data = plans.canary_input(snapshot, canary)
            assert data is not None and data["metrics"]["success_ratio"] == direct
            verdict = await engine.evaluate("canary", data)
            assert not verdict.allow
            reasons = [r for r in verdict.reasons if r.startswith("metric ")]
            assert reasons == sorted([f"metric broken has no value: {found['broken'].reason}",
                                      f"metric nothing has no value: {found['nothing'].reason}"])  # fmt: skip

            # The documented example policy judges the custom metric itself.
            example = await example_engine(tmp_path / "policies").evaluate("canary", data)
            shown = math.floor(round(direct * 100 * 1_000_000) / 10_000) / 100  # as lib.down rounds
            assert f"success ratio {shown:g}% is below the minimum of 99%" in example.reasons

            prom.stop()
            (snapshot,) = (await tracker.cycle(targets, {"shop": project})).snapshots
            snapshot = snapshot.model_copy(update=HEALTHY)
            assert all(m.value is None and "unreachable" in (m.reason or "") for m in snapshot.metrics.values())
            verdict = await engine.evaluate("canary", plans.canary_input(snapshot, canary) or {})
            assert any(r.startswith("metric success_ratio has no value: Prometheus at") for r in verdict.reasons)
    finally:
        prom.stop()
        service.stop()
