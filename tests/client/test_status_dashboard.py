"""The status dashboard's view and frame, from fixture records (no servers)."""

from __future__ import annotations

from datetime import UTC, datetime

from rich.console import Console

from swiftdeploy_core.bus.events import HostStats, MetricsSnapshot
from swiftdeploy_core.client.dashboard import EventLine, PolicyView, build_view, render, sparkline
from swiftdeploy_core.project.state import Instance, Phase, RolloutState, TrackState

NOW = datetime(2026, 11, 26, 7, 30, 0, tzinfo=UTC)


def canary_rollout() -> RolloutState:
    stable = TrackState(
        track="stable",
        version="1.0.0",
        image="app:1.0.0",
        weight=90,
        instances=[
            Instance(id="1", name="app-stable-1", track="stable", version="1.0.0", url="http://127.0.0.1:41001"),
            Instance(id="2", name="app-stable-2", track="stable", version="1.0.0", url="http://127.0.0.1:41002"),
        ],
    )
    canary = TrackState(
        track="canary",
        version="1.1.0",
        image="app:1.1.0",
        weight=10,
        instances=[
            Instance(id="3", name="app-canary-1", track="canary", version="1.1.0", url="http://127.0.0.1:41003")
        ],
    )
    return RolloutState(
        project="app", phase=Phase.progressing, stable=stable, canary=canary, router_url="http://127.0.0.1:8080"
    )


def snapshot(track: str, error_rate: float | None, p99: float | None, chaos: str = "none") -> MetricsSnapshot:
    return MetricsSnapshot(
        project="app",
        track=track,
        window_seconds=60,
        request_rate=None if p99 is None else 12.5,
        error_rate=error_rate,
        p99_latency_ms=p99,
        requests=750,
        chaos=chaos,
    )


def view_of_a_failing_canary():
    policies = {
        "infra": PolicyView.decided("infra", True, [], "d1", {"disk_free_gb": 40.0, "cpu_load": 0.3}),
        "canary": PolicyView.decided("canary", False, ["error rate 50.00% exceeds 1.00%"], "d2", {}),
    }
    history = [snapshot("canary", rate, 100 + 50 * i) for i, rate in enumerate([0.0, 0.0, 0.2, 0.5])]
    return build_view(
        "app",
        canary_rollout(),
        {"stable": snapshot("stable", 0.001, 120.0), "canary": snapshot("canary", 0.5, 850.0, chaos="error")},
        host=HostStats(disk_free_gb=40.0, cpu_load=0.3, cpu_count=2, memory_available_gb=3.0),
        health={"http://127.0.0.1:41001": True, "http://127.0.0.1:41002": True, "http://127.0.0.1:41003": False},
        policies=policies,
        history=history,
        now=NOW,
        events=[EventLine(timestamp=NOW, type="chaos.injected", summary="error, rate 0.5")],
    )


def test_the_json_carries_mode_chaos_tracks_figures_and_policies() -> None:
    data = view_of_a_failing_canary().to_json()
    assert (data["mode"], data["chaos"], data["phase"]) == ("canary", "error", "progressing")
    # The headline figures are the canary's while one runs.
    assert (data["error_rate"], data["p99_latency_ms"], data["request_rate"]) == (0.5, 850.0, 12.5)
    stable, canary = data["tracks"]
    assert (stable["track"], stable["version"], stable["weight"], stable["replicas"]) == ("stable", "1.0.0", 90, 2)
    assert canary["instances"] == [
        {"url": "http://127.0.0.1:41003", "name": "app-canary-1", "node": "", "healthy": False}
    ]
    assert (stable["error_rate"], stable["p99_latency_ms"]) == (0.001, 120.0)
    assert data["policies"]["canary"] == {
        "status": "FAILING",
        "allow": False,
        "decision_id": "d2",
        "input": {},
        "reasons": ["error rate 50.00% exceeds 1.00%"],
        "policy_revision": None,
        "policy_drift": None,
    }
    assert data["policies"]["infra"]["allow"] is True


def test_without_a_canary_the_headline_is_stables_and_empty_windows_are_null() -> None:
    rollout = canary_rollout().model_copy(update={"canary": None, "phase": Phase.stable})
    data = build_view("app", rollout, {"stable": snapshot("stable", None, None)}, now=NOW).to_json()
    assert (data["mode"], data["chaos"]) == ("stable", "none")
    assert (data["request_rate"], data["error_rate"], data["p99_latency_ms"]) == (None, None, None)


def test_nothing_deployed_is_an_empty_stable_view() -> None:
    data = build_view("app", None, {}, now=NOW).to_json()
    assert (data["phase"], data["mode"], data["tracks"], data["error_rate"]) == ("empty", "stable", [], None)


def frame_text(view) -> str:
    console = Console(record=True, width=140, color_system=None)
    console.print(render(view))
    return console.export_text()


def test_a_frame_shows_tracks_health_policies_events_and_sparklines() -> None:
    text = frame_text(view_of_a_failing_canary())
    assert "mode CANARY" in text and "chaos error" in text
    assert "✓ 2/2 healthy" in text and "✗ 0/1 healthy" in text
    assert "✓ PASSING" in text and "✗ FAILING" in text and "error rate 50.00% exceeds 1.00%" in text
    assert "50.00%" in text and "850 ms" in text and "12.5/s" in text
    assert "chaos.injected" in text
    assert sparkline([0.0, 0.0, 0.2, 0.5]) in text


def test_each_track_shows_where_its_figures_came_from() -> None:
    snapshots = {
        "stable": snapshot("stable", 0.0, 120.0).model_copy(update={"source": "router", "samples": 750}),
        "canary": snapshot("canary", 0.5, 850.0).model_copy(update={"source": "app", "samples": 30}),
    }
    view = build_view("app", canary_rollout(), snapshots, now=NOW)
    stable, canary = view.to_json()["tracks"]
    assert (stable["source"], stable["samples"], canary["source"]) == ("router", 750, "app")
    text = frame_text(view)
    assert "router · 750 samples" in text and "app · 30 samples" in text


def test_an_unanswered_policy_shows_unknown_never_passing() -> None:
    view = build_view(
        "app",
        None,
        {},
        policies={"infra": PolicyView.unknown("infra", "the gatekeeper did not answer within 2s")},
        now=NOW,
    )
    text = frame_text(view)
    assert "? UNKNOWN" in text and "PASSING" not in text
    assert view.to_json()["policies"]["infra"]["allow"] is None


def test_sparkline_scales_between_min_and_max() -> None:
    assert sparkline([]) == ""
    assert sparkline([1.0, 1.0]) == "▁▁"
    assert sparkline([0.0, 0.5, 1.0]) == "▁▅█"
    assert len(sparkline([float(i) for i in range(100)], width=30)) == 30


def test_the_view_says_which_step_and_the_pause_it_waits_at() -> None:
    from swiftdeploy_core.project.state import Pause

    steps = {"canary": {"steps": [10, {"pause": 60}, 25, {"pause": {}}, 50]}}
    rollout = canary_rollout().model_copy(update={"manifest": steps, "step": 1})
    assert build_view("app", rollout, {}, now=NOW).step == "step 2 of 5"
    timed = rollout.model_copy(update={"pause": Pause(step=1, until=datetime(2026, 11, 26, 7, 31, 0, tzinfo=UTC))})
    view = build_view("app", timed, {}, now=NOW)
    assert view.step == "step 2 of 5, paused until 07:31:00 UTC" and view.to_json()["step"] == view.step
    opened = rollout.model_copy(update={"step": 3, "pause": Pause(step=3)})
    assert build_view("app", opened, {}, now=NOW).step == "step 4 of 5, paused until `promote canary --continue`"
    console = Console(width=140, record=True)
    console.print(render(view))
    assert "paused until 07:31:00 UTC" in console.export_text()


def test_an_opa_serving_other_policies_is_a_warning_under_the_policies() -> None:
    drift = "OPA serves policy revision aaaa, but the project's policies/ is revision bbbb: restart it, or run it with --watch"
    view = build_view(
        "app",
        None,
        {},
        policies={"infra": PolicyView.decided("infra", True, [], "d1", {}, "aaaa", drift)},
        now=NOW,
    )
    assert "warning: OPA serves policy revision aaaa, but the project's policies/ is revision bbbb" in frame_text(view)
    assert view.to_json()["policies"]["infra"]["policy_drift"] == drift
