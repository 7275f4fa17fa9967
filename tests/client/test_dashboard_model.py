"""The web dashboard's live model, pure: events in, the browsers' updates out."""

from __future__ import annotations

from swiftdeploy_core.bus.events import (
    CanaryAnalysis,
    DecisionMade,
    Event,
    MetricsSnapshot,
    Payload,
    Pong,
    RollbackCompleted,
    Source,
)
from swiftdeploy_core.client.web.model import LiveModel, phase_label, rollout_view
from swiftdeploy_core.project.state import Instance, Phase, RolloutState, TrackState

SOURCE = Source(service="test", instance="t-1")


def event(payload: Payload) -> Event:
    return Event(payload=payload, source=SOURCE)  # type: ignore[arg-type]


def test_a_metrics_snapshot_of_this_project_is_a_chart_point_and_another_projects_is_nothing() -> None:
    model = LiveModel("app")
    mine = MetricsSnapshot(project="app", track="canary", window_seconds=4, request_rate=5.0, error_rate=0.5)
    update = model.apply(event(mine))
    assert update is not None and update["kind"] == "metric" and update["track"] == "canary"
    assert (update["point"]["rate"], update["point"]["error"]) == (5.0, 0.5)
    assert model.apply(event(mine.model_copy(update={"project": "other"}))) is None
    assert len(model.snapshot()["points"]["canary"]) == 1


def test_decisions_keep_their_reasons_and_engine_and_a_rollback_labels_the_stable_phase() -> None:
    model = LiveModel("app")
    reasons = ["error rate 50% is above the maximum of 1%"]
    made = DecisionMade(
        domain="canary", allow=False, reasons=reasons, input={}, engine="embedded",
        decision_id="d-1", policy_revision="r1", duration_ms=1.0,
    )  # fmt: skip
    update = model.apply(event(made))
    assert update is not None and update["kind"] == "event" and update["decision"]["engine"] == "embedded"
    assert update["decision"]["reasons"] == reasons
    analysis = model.apply(event(CanaryAnalysis(step=0, weight=20, allow=False, reasons=reasons)))
    assert analysis is not None and analysis["decision"]["domain"] == "canary analysis (step 0, 20%)"
    assert model.apply(event(Pong(service="x", instance="y"))) is None

    model.set_rollout(rollout_view(RolloutState(project="app", phase=Phase.stable), {}))
    back = model.apply(event(RollbackCompleted(version="1.0.0", reasons=reasons, automatic=True)))
    assert back is not None and back["phase_label"] == "stable (rolled back)"
    assert back["event"]["type"] == "rollback.completed"
    assert phase_label("progressing", "rolled back") == "progressing"


def test_the_rollout_view_has_the_steps_weight_and_each_instances_health() -> None:
    instance = Instance(id="1", name="app-canary-1", track="canary", version="2.0.0", url="http://127.0.0.1:9")
    record = RolloutState(
        project="app", phase=Phase.progressing, step=0, manifest={"canary": {"steps": [20, 60]}},
        stable=TrackState(track="stable", version="1.0.0", image="i", weight=80),
        canary=TrackState(track="canary", version="2.0.0", image="i", weight=20, instances=[instance]),
    )  # fmt: skip
    view = rollout_view(record, {"http://127.0.0.1:9": False})
    assert (view["phase"], view["steps"], view["step"], view["weight"]) == ("progressing", [20, 60], 0, 20)
    assert view["tracks"][1]["instances"] == [{"name": "app-canary-1", "url": "http://127.0.0.1:9", "healthy": False}]
    model = LiveModel("app")
    first = model.set_rollout(view)
    assert first is not None and first["kind"] == "state"
    assert model.set_rollout(view) is None  # unchanged: nothing to send


def test_a_paused_canary_can_be_continued_from_the_dashboard(tmp_path) -> None:
    from swiftdeploy_core.client.cli import app  # noqa: F401 - the CLI first, as `swiftdeploy dashboard` loads it
    from swiftdeploy_core.client.web.server import ACTIONS
    from swiftdeploy_core.project.manifest import load_manifest
    from tests.orchestration import write_manifest

    payload, ends = ACTIONS["continue"](load_manifest(write_manifest(tmp_path, "app")))
    assert (payload.type, getattr(payload, "resume", None), list(ends)) == (
        "canary.requested",
        True,
        ["canary.resumed"],
    )
