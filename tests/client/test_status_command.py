"""`swiftdeploy status` against a real Redis: records in, one JSON object / frame / live dashboard out.

The gatekeeper here is a stand-in on the real bus (it answers decision.requested with the
policies' thresholds); the instances are real HTTP servers answering /healthz.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator

from aiohttp import web

from swiftdeploy_core.bus import streams
from swiftdeploy_core.bus.events import DecisionMade, Event, HostStats, MetricsSnapshot, Source
from swiftdeploy_core.client.cli.common import connected
from swiftdeploy_core.project.state import Instance, Phase, RolloutState, TrackState
from tests.eventually import eventually
from tests.projects import ROOT, Project, wait_until
from tests.servers import free_port, missing

GATEKEEPER = Source(service="gatekeeper", instance="stand-in")


def decide(domain: str, figures: dict) -> tuple[bool, list[str]]:
    if domain == "infra":
        reasons = [f"disk free {figures['disk_free_gb']} GB is below 10 GB"] if figures["disk_free_gb"] < 10 else []
        reasons += [f"CPU load {figures['cpu_load']} exceeds 2.0"] if figures["cpu_load"] > 2.0 else []
    else:
        reasons = (
            [f"error rate {figures['error_rate'] * 100:.2f}% exceeds 1.00%"] if figures["error_rate"] > 0.01 else []
        )
        reasons += [f"P99 {figures['p99_latency_ms']:.0f} ms exceeds 500 ms"] if figures["p99_latency_ms"] > 500 else []
    return not reasons, reasons


@contextlib.asynccontextmanager
async def stand_in_gatekeeper(project: Project) -> AsyncIterator[list[Event]]:
    """Answers every decision.requested on the gatekeeper's inbox; yields the requests it saw."""
    seen: list[Event] = []

    async def serve(since: str) -> None:
        async with connected(project.settings()) as bus:
            async for request in bus.follow(stream=streams.GATEKEEPER_INBOX, types={"decision.requested"}, since=since):
                seen.append(request)
                allow, reasons = decide(request.payload.domain, request.payload.input)
                made = DecisionMade(
                    domain=request.payload.domain,
                    allow=allow,
                    reasons=reasons,
                    input=request.payload.input,
                    engine="stand-in",
                    decision_id=f"d-{len(seen)}",
                    policy_revision="r1",
                    duration_ms=0.1,
                )
                await bus.publish(streams.EVENTS, request.caused(made, GATEKEEPER))

    async with connected(project.settings()) as bus:
        since = await bus.cursor(streams.GATEKEEPER_INBOX)
    task = asyncio.create_task(serve(since))
    try:
        yield seen
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@contextlib.asynccontextmanager
async def healthy_instance() -> AsyncIterator[str]:
    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


async def store_canary_rollout(project: Project, healthy_url: str, canary_error_rate: float) -> None:
    dead_url = f"http://127.0.0.1:{free_port()}"  # nothing listens: unhealthy
    rollout = RolloutState(
        project="app",
        phase=Phase.progressing,
        runtime="process",
        router_url="http://127.0.0.1:8080",
        stable=TrackState(
            track="stable",
            version="1.0.0",
            image="app:1.0.0",
            weight=75,
            instances=[Instance(id="1", name="app-stable-1", track="stable", version="1.0.0", url=healthy_url)],
        ),
        canary=TrackState(
            track="canary",
            version="1.1.0",
            image="app:1.1.0",
            weight=25,
            instances=[Instance(id="2", name="app-canary-1", track="canary", version="1.1.0", url=dead_url)],
        ),
    )
    snapshots = {
        "stable": MetricsSnapshot(
            project="app",
            track="stable",
            version="1.0.0",
            window_seconds=60,
            request_rate=9.0,
            error_rate=0.0,
            p99_latency_ms=40.0,
            requests=540,
        ),
        "canary": MetricsSnapshot(
            project="app",
            track="canary",
            version="1.1.0",
            window_seconds=60,
            request_rate=3.0,
            error_rate=canary_error_rate,
            p99_latency_ms=120.0,
            requests=180,
            chaos="error" if canary_error_rate else "none",
        ),
    }
    host = HostStats(disk_free_gb=55.5, cpu_load=0.4, cpu_count=2, memory_available_gb=2.0)
    async with connected(project.settings()) as bus:
        await bus.redis.set(streams.rollout_key("app"), rollout.model_dump_json())
        for track, snapshot in snapshots.items():
            await bus.redis.set(streams.latest_snapshot_key("app", track), snapshot.model_dump_json())
            await bus.publish(streams.METRICS, Event(payload=snapshot, source=GATEKEEPER))
        await bus.redis.set(streams.host_stats_key("app"), host.model_dump_json())


async def cli(project: Project, *args: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "swiftdeploy_core",
        *args,
        "--manifest",
        str(project.manifest),
        cwd=project.root,
        env=project.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    return process.returncode, out.decode(), err.decode()


async def test_status_once_json_carries_mode_chaos_figures_tracks_and_decided_policies(project: Project) -> None:
    project.start_auditor("aud-1")
    async with healthy_instance() as url, stand_in_gatekeeper(project) as requests:
        await store_canary_rollout(project, url, canary_error_rate=0.04)
        code, out, err = await cli(project, "status", "--once", "--json")
    assert code == 0, err
    data = json.loads(out)
    assert (data["mode"], data["chaos"], data["phase"]) == ("canary", "error", "progressing")
    assert (data["request_rate"], data["error_rate"], data["p99_latency_ms"]) == (3.0, 0.04, 120.0)  # the canary's
    stable, canary = data["tracks"]
    assert (stable["track"], stable["version"], stable["weight"]) == ("stable", "1.0.0", 75)
    assert stable["instances"] == [{"url": url, "name": "app-stable-1", "node": "", "healthy": True}]
    assert canary["instances"][0]["healthy"] is False
    assert (canary["request_rate"], canary["error_rate"], canary["p99_latency_ms"]) == (3.0, 0.04, 120.0)
    assert data["policies"]["infra"]["allow"] is True and data["policies"]["infra"]["reasons"] == []
    assert data["policies"]["canary"] == {
        **data["policies"]["canary"],
        "allow": False,
        "status": "FAILING",
        "reasons": ["error rate 4.00% exceeds 1.00%"],
    }
    assert {r.payload.domain for r in requests} == {"infra", "canary"}
    assert requests[0].payload.input.keys() in (
        {"disk_free_gb", "cpu_load"},
        {"error_rate", "p99_latency_ms", "requests"},
    )
    # The refresh is in the history, with the decisions' correlation id.
    wait_until(lambda: "status.checked" in project.history.read_text() if project.history.exists() else False)
    checked = next(json.loads(line) for line in project.history.read_text().splitlines() if '"status.checked"' in line)
    assert checked["correlation_id"] == requests[0].correlation_id and checked["error_rate"] == 0.04


async def test_the_real_gatekeeper_decides_and_the_report_keeps_status_decisions_apart(project: Project) -> None:
    project.start_auditor("aud-1")
    project.start_service("gatekeeper", "gk-1")
    async with healthy_instance() as url:
        await store_canary_rollout(project, url, canary_error_rate=0.04)
        code, out, err = await cli(project, "status", "--json", "--policy-timeout", "10")
    assert code == 0, err
    policies = json.loads(out)["policies"]
    assert (policies["infra"]["status"], policies["infra"]["allow"]) == ("PASSING", True), project.log_of("gk-1")
    assert (policies["canary"]["status"], policies["canary"]["allow"]) == ("FAILING", False)
    assert any("error rate" in reason for reason in policies["canary"]["reasons"])
    # The gatekeeper's decisions and violation for this refresh are in the history...
    wait_until(
        lambda: (
            sorted(history_types(project)) == ["decision.made", "decision.made", "policy.violation", "status.checked"]
        ),
        what="the refresh in the history",
    )
    code, _, err = await cli(project, "audit", "--out", "report.md")
    assert code == 0, err
    markdown = (project.root / "report.md").read_text()
    # ...but they observed, they did not gate: no violation rows, and the count says why.
    assert "_No policy violations in this period._" in markdown
    assert "_2 decisions asked by `swiftdeploy status` refreshes are not counted above._" in markdown


async def test_without_a_gatekeeper_policies_are_unknown_never_passing(project: Project) -> None:
    async with healthy_instance() as url:
        await store_canary_rollout(project, url, canary_error_rate=0.0)
        code, out, err = await cli(project, "status", "--json", "--policy-timeout", "0.5")
    assert code == 0, err
    policies = json.loads(out)["policies"]
    for name in ("infra", "canary"):
        assert policies[name]["status"] == "UNKNOWN" and policies[name]["allow"] is None
        assert policies[name]["reasons"] == ["the gatekeeper did not answer within 0.5s"]


async def test_nothing_deployed_shows_an_empty_stable_view_with_null_figures(project: Project) -> None:
    code, out, err = await cli(project, "status", "--json", "--policy-timeout", "0.3")
    assert code == 0, err
    data = json.loads(out)
    assert (data["mode"], data["tracks"], data["error_rate"], data["p99_latency_ms"]) == ("stable", [], None, None)
    assert data["policies"]["infra"]["reasons"] == ["no host stats from the collector yet"]


async def test_status_once_prints_one_frame(project: Project) -> None:
    async with healthy_instance() as url, stand_in_gatekeeper(project):
        await store_canary_rollout(project, url, canary_error_rate=0.04)
        code, out, err = await cli(project, "status", "--once")
    assert code == 0, err
    assert "mode CANARY" in out and "✗ FAILING" in out and "✓ PASSING" in out and "✓ 1/1 healthy" in out


def test_status_without_a_control_plane_says_what_to_do(project: Project) -> None:
    project.env["REDIS_URL"] = "redis://127.0.0.1:1/0"
    done = project.cli("status", "--once")
    assert done.returncode == 1 and done.stderr.startswith(
        "error: the control plane is not running: run swiftdeploy up"
    )


def history_types(project: Project) -> list[str]:
    if not project.history.exists():
        return []
    return [json.loads(line)["type"] for line in project.history.read_text().splitlines()]


def tmux(*args: str) -> str:
    return subprocess.run(["tmux", *args], capture_output=True, text=True, check=True).stdout


async def test_the_live_dashboard_refreshes_in_a_real_terminal(project: Project) -> None:
    if shutil.which("tmux") is None:
        missing("the tmux binary")
    project.start_auditor("aud-1")
    session = f"swiftdeploy-auditor-test-{free_port()}"
    env = " ".join(f"{k}={v}" for k, v in project.env.items() if k in ("REDIS_URL", "PYTHONPATH", "PATH"))
    command = (
        f"cd {ROOT} && env {env} TERM=xterm-256color {sys.executable} -m swiftdeploy_core status "
        f"--interval 1 --manifest {project.manifest}"
    )
    async with healthy_instance() as url, stand_in_gatekeeper(project):
        await store_canary_rollout(project, url, canary_error_rate=0.0)
        tmux("new-session", "-d", "-s", session, "-x", "150", "-y", "50", command)
        try:
            first = await wait_for_screen(session, "✓ PASSING")
            assert "mode CANARY" in first and "✓ 1/1 healthy" in first and "✗ 0/1 healthy" in first
            # The canary starts failing: the next refresh shows it.
            await store_canary_rollout(project, url, canary_error_rate=0.5)
            second = await wait_for_screen(session, "✗ FAILING")
            assert "error rate 50.00% exceeds 1.00%" in second and "chaos error" in second
            assert checked_at(first) != checked_at(second)
            tmux("send-keys", "-t", session, "C-c")
            await wait_for_exit(session)
        finally:
            subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True)
    checks = [line for line in project.history.read_text().splitlines() if '"status.checked"' in line]
    assert len(checks) >= 2  # every refresh is recorded


async def wait_for_screen(session: str, text: str, timeout: float = 20.0) -> str:
    screen = ""

    def shown() -> str | None:
        nonlocal screen
        screen = tmux("capture-pane", "-p", "-t", session)
        return screen if text in screen else None

    return await eventually(shown, lambda: f"{text!r} on the screen, which was:\n{screen}", timeout, interval=0.2)


async def wait_for_exit(session: str, timeout: float = 10.0) -> None:
    def gone() -> bool:
        return subprocess.run(["tmux", "has-session", "-t", session], capture_output=True).returncode != 0

    await eventually(gone, "the dashboard to exit on Ctrl-C", timeout, interval=0.2)


def checked_at(screen: str) -> str:
    return screen.split("checked ", 1)[1][:8]
