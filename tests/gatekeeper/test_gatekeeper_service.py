"""The gatekeeper service through the real bus (a real redis-server): a decision request gets a
`decision.made` with every field, a denial also a `policy.violation`, failures of the engine are
denials with reasons, and editing data.json changes the next decision with no restart."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import policies
from services.gatekeeper.embedded import EmbeddedEngine
from services.gatekeeper.engines import UnavailableEngine
from services.gatekeeper.opa import OpaEngine
from services.gatekeeper.service import build_spec, decision_id, engine_for
from swiftdeploy_core.bus import streams
from swiftdeploy_core.bus.connection import Bus
from swiftdeploy_core.bus.events import DecisionRequested, Event, Source
from swiftdeploy_core.bus.runner import running
from swiftdeploy_core.settings import Settings
from tests.servers import REPO_ROOT, free_port, run_swiftdeploy

CLI = Source(service="cli", instance="test")
ORIGINAL = (REPO_ROOT / "manifest.yaml").read_text()
HEALTHY_HOST = {"disk_free_gb": 50, "cpu_load": 0.5}
BUSY_HOST = {"disk_free_gb": 50, "cpu_load": 2.5}


def fast_settings(redis_url: str, **extra) -> Settings:
    return Settings(**{"redis_url": redis_url, "block_ms": 100, "shutdown_grace": 2.0, **extra})


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "manifest.yaml").write_text(ORIGINAL)
    policies.write_default_policies(tmp_path)
    return tmp_path


@pytest.fixture
async def bus(redis_url: str):
    bus = await Bus.connect(fast_settings(redis_url))
    yield bus
    await bus.close()


async def ask(bus: Bus, domain: str, document: dict) -> Event:
    request = Event(payload=DecisionRequested(domain=domain, input=document), source=CLI)
    return await bus.request(streams.GATEKEEPER_INBOX, request, expect={"decision.made"}, timeout=5)


async def test_a_request_gets_a_decision_with_every_field(redis_url, bus, project):
    engine = EmbeddedEngine(policies.project_dir(project))
    async with running(build_spec(fast_settings(redis_url), engine), fast_settings(redis_url)):
        reply = await ask(bus, "infra", HEALTHY_HOST)
    made = reply.payload
    assert (made.domain, made.allow, made.reasons, made.input, made.engine) == (
        "infra",
        True,
        [],
        HEALTHY_HOST,
        "embedded",
    )
    assert made.policy_revision == policies.revision(
        {p.name: p.read_bytes() for p in policies.policy_files(project / "policies")}
    )
    assert made.decision_id == decision_id(reply.causation_id)
    assert 0 < made.duration_ms < 1000
    assert reply.source.service == "gatekeeper"


async def test_a_denial_also_emits_a_policy_violation(redis_url, bus, project):
    engine = EmbeddedEngine(policies.project_dir(project))
    async with running(build_spec(fast_settings(redis_url), engine), fast_settings(redis_url)):
        reply = await ask(bus, "infra", BUSY_HOST)
        violation = await anext(
            bus.follow(correlation_id=reply.correlation_id, types={"policy.violation"}, since="0-0")
        )
    assert reply.payload.allow is False
    assert reply.payload.reasons == ["CPU load 2.5 is above the maximum of 2"]
    assert violation.payload.model_dump() == {
        "type": "policy.violation",
        "domain": "infra",
        "reasons": ["CPU load 2.5 is above the maximum of 2"],
        "input": BUSY_HOST,
        "decision_id": reply.payload.decision_id,
    }


async def test_a_trickle_of_canary_traffic_is_inconclusive_and_no_violation(redis_url, bus, project):
    engine = EmbeddedEngine(policies.project_dir(project))
    async with running(build_spec(fast_settings(redis_url), engine), fast_settings(redis_url)):
        reply = await ask(bus, "canary", {"error_rate": 0, "p99_latency_ms": 10, "requests": 7})
        # decision.made and a policy.violation are committed together: both are on the stream now
        entries = await bus.redis.xrange(streams.EVENTS)
        events = [f[b"type"].decode() for _, f in entries if f[b"cid"] == reply.correlation_id.encode()]
    made = reply.payload
    assert (made.allow, made.inconclusive, made.outcome) == (False, True, "inconclusive")
    assert made.reasons == [
        "only 7 requests in the window, below the minimum of 20: too little traffic to judge the canary"
    ]
    assert "decision.made" in events and "policy.violation" not in events  # too little to judge is no violation


async def test_an_unreachable_opa_denies_and_the_gatekeeper_keeps_serving(redis_url, bus):
    url = f"http://127.0.0.1:{free_port()}"
    async with running(build_spec(fast_settings(redis_url), OpaEngine(url, timeout=0.5)), fast_settings(redis_url)):
        first = await ask(bus, "canary", {"error_rate": 0, "p99_latency_ms": 10, "requests": 100})
        second = await ask(bus, "infra", HEALTHY_HOST)
    for reply in (first, second):
        assert reply.payload.allow is False
        assert reply.payload.reasons == [f"policy engine unavailable: connection refused ({url})"]
        assert reply.payload.engine == "opa"


async def test_the_opa_engine_through_the_bus(redis_url, bus, opa_api):
    engine = OpaEngine(opa_api.url, timeout=2, folder=opa_api.folder)
    async with running(build_spec(fast_settings(redis_url), engine), fast_settings(redis_url)):
        reply = await ask(bus, "canary", {"error_rate": 0.52, "p99_latency_ms": 120, "requests": 400})
    assert reply.payload.engine == "opa"
    assert reply.payload.reasons == ["error rate 52% is above the maximum of 1%"]
    assert [path for method, path, _ in opa_api.requests if method == "POST"] == ["/v1/data/canary"]


async def test_many_requests_in_flight_all_get_their_own_answer(redis_url, bus, project):
    engine = EmbeddedEngine(policies.project_dir(project))
    loads = [round(0.1 * i, 1) for i in range(40)]
    async with running(build_spec(fast_settings(redis_url), engine), fast_settings(redis_url)):
        replies = await asyncio.gather(*(ask(bus, "infra", {"disk_free_gb": 50, "cpu_load": load}) for load in loads))
    assert [r.payload.input["cpu_load"] for r in replies] == loads
    assert [r.payload.allow for r in replies] == [load <= 2 for load in loads]


def test_the_manifest_chooses_the_engine_and_the_project_policies(project):
    settings = Settings(manifest=project / "manifest.yaml")
    engine = engine_for(settings)
    assert isinstance(engine, EmbeddedEngine) and engine.folder == project / "policies"

    (project / "manifest.yaml").write_text(
        ORIGINAL + "policy:\n  engine: opa\n  opa_url: http://127.0.0.1:9/\n  timeout: 1.5\n"
    )
    engine = engine_for(settings)
    assert isinstance(engine, OpaEngine) and (engine.url, engine.timeout) == ("http://127.0.0.1:9", 1.5)


async def test_without_a_project_the_packaged_defaults_decide(tmp_path):
    engine = engine_for(Settings(manifest=tmp_path / "manifest.yaml"))
    assert isinstance(engine, EmbeddedEngine) and engine.folder == tmp_path / "policies"
    assert (await engine.evaluate("infra", HEALTHY_HOST)).allow
    assert engine._watch.source == policies.default_dir()
    (tmp_path / "manifest.yaml").write_text(ORIGINAL)  # a project that has not run init yet
    engine = engine_for(Settings(manifest=tmp_path / "manifest.yaml"))
    assert (await engine.evaluate("infra", HEALTHY_HOST)).allow
    assert engine._watch.source == policies.default_dir()


async def test_an_unreadable_manifest_denies_every_decision_with_the_reason(tmp_path):
    (tmp_path / "manifest.yaml").write_text("services: [")
    engine = engine_for(Settings(manifest=tmp_path / "manifest.yaml"))
    assert isinstance(engine, UnavailableEngine)
    verdict = await engine.evaluate("infra", HEALTHY_HOST)
    assert not verdict.allow and verdict.reasons[0].startswith(
        "policy engine not configured: manifest.yaml: invalid YAML"
    )


def test_a_redelivered_request_keeps_its_decision_id():
    assert decision_id("abc") == decision_id("abc") != decision_id("abd")


# --- a real gatekeeper process and the real CLI ---------------------------------------------------


@pytest.fixture
def gatekeeper_process(project, redis_url):
    env = {**os.environ, "REDIS_URL": redis_url, "SWIFTDEPLOY_MANIFEST": str(project / "manifest.yaml"),
           "SWIFTDEPLOY_BLOCK_MS": "100", "PYTHONPATH": str(REPO_ROOT)}  # fmt: skip
    log = open(project / "gatekeeper.log", "w")
    process = subprocess.Popen(
        [sys.executable, "-m", "services.gatekeeper"], cwd=project, env=env, stdout=log, stderr=subprocess.STDOUT
    )
    yield process
    process.terminate()
    assert process.wait(timeout=10) == 0, (project / "gatekeeper.log").read_text()[-2000:]
    log.close()


async def check(project: Path, redis_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(
        run_swiftdeploy,
        "policy",
        "check",
        *args,
        cwd=project,
        env={"REDIS_URL": redis_url, "SWIFTDEPLOY_REQUEST_TIMEOUT": "15"},
    )


async def test_editing_data_json_while_the_gatekeeper_runs_changes_the_next_decision(
    project, redis_url, gatekeeper_process
):
    busy = json.dumps(BUSY_HOST)
    denied = await check(project, redis_url, "infra", "--input", busy)
    assert denied.returncode == 3, denied.stdout + denied.stderr
    assert denied.stdout.startswith("DENY infra (engine embedded, policy revision ")
    assert denied.stdout.splitlines()[1:] == ["  - CPU load 2.5 is above the maximum of 2"]

    data = project / "policies" / "data.json"
    data.write_text(data.read_text().replace('"cpu_load": 2.0', '"cpu_load": 3.0'))
    allowed = await check(project, redis_url, "infra", "--input", busy)
    assert allowed.returncode == 0, allowed.stdout + allowed.stderr
    assert allowed.stdout.startswith("ALLOW infra (engine embedded")
    assert gatekeeper_process.poll() is None  # the same process, never restarted


async def test_policy_check_prints_json_and_reads_a_file(project, redis_url, gatekeeper_process):
    (project / "canary.json").write_text('{"error_rate": 0.52, "p99_latency_ms": NaN, "requests": 3}')
    result = await check(project, redis_url, "canary", "--input-file", "canary.json", "--json")
    assert result.returncode == 3, result.stderr
    made = json.loads(result.stdout)
    assert made["allow"] is False and made["engine"] == "embedded" and made["domain"] == "canary"
    # The input schema denies a mistyped field before any engine is asked: its reason alone.
    assert made["reasons"] == ['p99_latency_ms must be a number (got string "NaN")']


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--input", "{oops"],
            "error: --input is not valid JSON: Expecting property name enclosed in double quotes: line 1 column 2 (char 1)",
        ),
        (["--input", "[1]"], "error: --input must be a JSON object such as '{\"cpu_load\": 1.5}' (got list)"),
        ([], "error: give the input as exactly one of --input '{...}' or --input-file FILE"),
        (["--input-file", "nowhere.json"], "error: nowhere.json: cannot be read (No such file or directory)"),
    ],
)
async def test_bad_input_is_one_line_and_exit_2(project, redis_url, args, message):
    result = await check(project, redis_url, "infra", *args)
    assert (result.returncode, result.stderr.strip(), result.stdout) == (2, message, "")


async def test_policy_check_without_a_control_plane_says_so(project):
    result = await asyncio.to_thread(
        run_swiftdeploy,
        "policy",
        "check",
        "infra",
        "--input",
        "{}",
        cwd=project,
        env={"REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"},
    )
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.startswith("error: Redis at redis://127.0.0.1:") and "is not reachable" in result.stderr
