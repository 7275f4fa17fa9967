"""`status` shows the canary's comparison against stable, and asks the canary policy with it (as
the orchestrator's analyses do)."""

from __future__ import annotations

import io

from rich.console import Console

import policies
from services.collector.judge import compare
from services.collector.router import Sample
from services.gatekeeper.schemas import InputSchemas
from swiftdeploy_core.bus.events import MetricsSnapshot
from swiftdeploy_core.client.dashboard import build_view, render
from swiftdeploy_core.client.status_probe import policy_inputs
from swiftdeploy_core.project.state import Instance, Phase, RolloutState, TrackState


def test_status_shows_the_comparison_and_the_canary_decision_is_asked_with_it() -> None:
    stable = [Sample(0.0, 200, 0.002) for _ in range(300)]
    slow = [Sample(0.0, 200, 0.053) for _ in range(300)]
    snapshot = MetricsSnapshot(project="shop", track="canary", version="2.0.0", window_seconds=60, source="router",
                               error_rate=0.0, p99_latency_ms=61, requests=300, samples=300,
                               comparison=compare(slow, stable))  # fmt: skip
    track = lambda name, weight: TrackState(  # noqa: E731
        track=name, version="2.0.0" if name == "canary" else "1.0.0", image="i", weight=weight,
        instances=[Instance(id=name, name=name, track=name, version="v", url=f"http://127.0.0.1:1/{name}")],
    )  # fmt: skip
    rollout = RolloutState(project="shop", runtime="process", phase=Phase.progressing, stable=track("stable", 50),
                           canary=track("canary", 50))  # fmt: skip
    view = build_view("shop", rollout, {"canary": snapshot})
    assert view.comparison == snapshot.comparison
    assert view.to_json()["comparison"]["latency"]["canary_median_ms"] == 53.0
    out = io.StringIO()
    Console(file=out, width=200).print(render(view))
    assert "vs stable  latency median 53 vs 2 ms (x26.50, p " in out.getvalue()

    document = policy_inputs(None, snapshot)["canary"]
    assert isinstance(document, dict) and document["comparison"]["latency"]["stable_samples"] == 300
    assert InputSchemas(policies.default_dir()).problems("canary", document) == []
