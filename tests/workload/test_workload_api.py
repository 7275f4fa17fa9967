"""A user drives the real workload (hypercorn on a loopback port) over HTTP: every endpoint,
every chaos mode and its bounds, and every kind of malformed chaos request."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime

import aiohttp
import pytest

from tests.servers import REPO_ROOT, WorkloadServer


@pytest.fixture(scope="module")
def canary(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkloadServer]:
    server = WorkloadServer(tmp_path_factory.mktemp("canary"), mode="canary", version="2.0.0").start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def stable(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkloadServer]:
    server = WorkloadServer(tmp_path_factory.mktemp("stable"), mode="stable", version="1.0.0").start()
    yield server
    server.stop()


@pytest.fixture
async def http(canary: WorkloadServer) -> aiohttp.ClientSession:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        yield session
        await session.post(f"{canary.url}/chaos", data='{"mode":"recover"}')


async def call(session: aiohttp.ClientSession, method: str, url: str, **kwargs) -> tuple[int, dict]:
    async with session.request(method, url, **kwargs) as response:
        return response.status, await response.json(content_type=None)


async def chaos(session: aiohttp.ClientSession, server: WorkloadServer, body: str | bytes, **kw) -> tuple[int, dict]:
    return await call(session, "POST", f"{server.url}/chaos", data=body, **kw)


# --- the endpoints ----------------------------------------------------------------------------


async def test_root_welcomes_with_mode_version_and_a_utc_timestamp(http, canary, stable):
    status, body = await call(http, "GET", f"{canary.url}/")
    assert status == 200
    assert body["message"] == "Welcome to SwiftDeploy"
    assert (body["mode"], body["version"]) == ("canary", "2.0.0")
    assert datetime.fromisoformat(body["timestamp"].replace("Z", "+00:00")).utcoffset().total_seconds() == 0
    _, body = await call(http, "GET", f"{stable.url}/")
    assert (body["mode"], body["version"]) == ("stable", "1.0.0")


async def test_healthz_reports_ok_and_a_growing_uptime(http, canary):
    status, first = await call(http, "GET", f"{canary.url}/healthz")
    await asyncio.sleep(0.05)
    _, second = await call(http, "GET", f"{canary.url}/healthz")
    assert status == 200 and first["status"] == "ok"
    assert 0 < first["uptime_seconds"] < second["uptime_seconds"]


async def test_unknown_paths_and_methods_answer_json_errors(http, canary):
    status, body = await call(http, "GET", f"{canary.url}/no/such/page")
    assert status == 404 and "error" in body
    status, body = await call(http, "GET", f"{canary.url}/chaos")
    assert status == 405 and "error" in body


async def test_metrics_are_prometheus_text(http, canary):
    async with http.get(f"{canary.url}/metrics") as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        assert "app_mode 1.0" in await response.text()


# --- chaos in stable ----------------------------------------------------------------------------


@pytest.mark.parametrize("body", ['{"mode":"slow","duration":3}', '{"mode":"recover"}', "not json"])
async def test_stable_refuses_chaos_with_a_reason(http, stable, body):
    status, answer = await chaos(http, stable, body)
    assert status == 403
    assert "canary" in answer["error"] and "stable" in answer["error"]
    assert (await call(http, "GET", f"{stable.url}/"))[0] == 200


# --- chaos modes and bounds --------------------------------------------------------------------


async def test_slow_chaos_delays_application_traffic_but_not_health_metrics_or_chaos(http, canary):
    assert await chaos(http, canary, '{"mode":"slow","duration":0.4}') == (
        200, {"chaos": {"mode": "slow", "duration": 0.4}},
    )  # fmt: skip
    for path, delayed in (("/", True), ("/missing", True), ("/healthz", False), ("/metrics", False)):
        started = time.monotonic()
        async with http.get(f"{canary.url}{path}") as response:
            await response.read()
        assert (time.monotonic() - started >= 0.4) is delayed, path
    started = time.monotonic()
    assert (await chaos(http, canary, '{"mode":"recover"}'))[0] == 200
    assert time.monotonic() - started < 0.4


async def test_error_chaos_at_rate_one_fails_every_application_request_only(http, canary):
    assert await chaos(http, canary, '{"mode":"error","rate":1}') == (200, {"chaos": {"mode": "error", "rate": 1.0}})
    for _ in range(20):
        assert await call(http, "GET", f"{canary.url}/") == (500, {"error": "injected by error chaos"})
    for path in ("/healthz", "/metrics"):
        async with http.get(f"{canary.url}{path}") as response:
            assert response.status == 200
    assert await chaos(http, canary, '{"mode":"recover"}') == (200, {"chaos": {"mode": "none"}})
    assert (await call(http, "GET", f"{canary.url}/"))[0] == 200


async def test_error_chaos_at_rate_zero_fails_nothing(http, canary):
    assert (await chaos(http, canary, '{"mode":"error","rate":0}'))[0] == 200
    statuses = [(await call(http, "GET", f"{canary.url}/"))[0] for _ in range(50)]
    assert set(statuses) == {200}


@pytest.mark.parametrize(
    "body",
    [
        '{"mode":"slow","duration":30}',  # the upper bound is allowed
        '{"mode":"slow","duration":0.001}',
        '{"mode":"error","rate":0}',
        '{"mode":"error","rate":1.0}',
        '{"mode":"error","rate":0.5}',
        '{"mode":"recover"}',
    ],
)
async def test_chaos_accepts_values_at_its_bounds(http, canary, body):
    status, answer = await chaos(http, canary, body)
    assert status == 200
    assert answer["chaos"]["mode"] == {"recover": "none"}.get(json.loads(body)["mode"], json.loads(body)["mode"])


async def test_chaos_body_is_json_whatever_the_content_type(http, canary):
    for content_type in ("application/x-www-form-urlencoded", "text/plain", "application/json", None):
        headers = {"Content-Type": content_type} if content_type else {}
        status, _ = await chaos(http, canary, b'{"mode":"error","rate":0.25}', headers=headers)
        assert status == 200, content_type


MALFORMED = {
    "empty body": b"",
    "not json": b"mode=slow&duration=3",
    "truncated json": b'{"mode":"slow",',
    "a json list": b'[{"mode":"recover"}]',
    "a json string": b'"recover"',
    "json null": b"null",
    "no mode": b'{"duration":3}',
    "unknown mode": b'{"mode":"explode"}',
    "mode of the wrong type": b'{"mode":1}',
    "slow without duration": b'{"mode":"slow"}',
    "duration zero": b'{"mode":"slow","duration":0}',
    "duration negative": b'{"mode":"slow","duration":-1}',
    "duration over 30": b'{"mode":"slow","duration":30.5}',
    "duration as a string": b'{"mode":"slow","duration":"3"}',
    "duration as a boolean": b'{"mode":"slow","duration":true}',
    "duration NaN": b'{"mode":"slow","duration":NaN}',
    "duration Infinity": b'{"mode":"slow","duration":Infinity}',
    "error without rate": b'{"mode":"error"}',
    "rate above one": b'{"mode":"error","rate":1.5}',
    "rate below zero": b'{"mode":"error","rate":-0.1}',
    "rate as a string": b'{"mode":"error","rate":"0.5"}',
    "rate null": b'{"mode":"error","rate":null}',
    "extra field": b'{"mode":"recover","force":true}',
    "rate on slow": b'{"mode":"slow","duration":1,"rate":0.5}',
    "duplicate key": b'{"mode":"recover","mode":"slow"}',
    "not utf-8": b'{"mode":"\xff"}',
    "huge number": b'{"mode":"slow","duration":1e999}',
    "deep nesting": b'{"mode":' + b"[" * 450 + b"]" * 450 + b"}",
    "oversized body": b'{"mode":"recover","pad":"' + b"x" * 5000 + b'"}',
}


@pytest.mark.parametrize("body", MALFORMED.values(), ids=MALFORMED.keys())
async def test_malformed_chaos_bodies_get_a_400_with_a_json_error(http, canary, body):
    status, answer = await chaos(http, canary, body)
    assert status == 400, answer
    assert isinstance(answer["error"], str) and answer["error"] and "\n" not in answer["error"]
    assert (await call(http, "GET", f"{canary.url}/healthz"))[0] == 200  # nothing changed, nothing broke


async def test_a_bad_chaos_request_leaves_the_current_chaos_alone(http, canary):
    await chaos(http, canary, '{"mode":"error","rate":1}')
    assert (await chaos(http, canary, '{"mode":"error","rate":2}'))[0] == 400
    assert (await call(http, "GET", f"{canary.url}/"))[0] == 500


async def test_every_chaos_change_is_logged(http, canary):
    await chaos(http, canary, '{"mode":"slow","duration":0.01}')
    await chaos(http, canary, '{"mode":"recover"}')
    await asyncio.sleep(0.1)
    log = canary.log()
    assert 'chaos changed: {"mode": "none"} -> {"mode": "slow", "duration": 0.01}' in log
    assert 'chaos changed: {"mode": "slow", "duration": 0.01} -> {"mode": "none"}' in log


# --- the entrypoint ------------------------------------------------------------------------------


def test_a_bad_setting_is_one_line_and_exit_code_two():
    env = {"PYTHONPATH": str(REPO_ROOT), "MODE": "blue", "PATH": "/usr/bin:/bin"}
    result = subprocess.run([sys.executable, "-m", "workload"], env=env, capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == ["workload: MODE: Input should be 'stable' or 'canary' (got 'blue')"]


def test_a_taken_port_is_one_line_and_exit_code_one(canary):
    env = {"PYTHONPATH": str(REPO_ROOT), "PORT": str(canary.port), "PATH": "/usr/bin:/bin"}
    result = subprocess.run([sys.executable, "-m", "workload"], env=env, capture_output=True, text=True, timeout=30)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        f"workload: cannot serve on 127.0.0.1:{canary.port}: Address already in use"
    )


async def test_sigterm_stops_the_server_cleanly_even_with_a_slow_request_in_flight(make_workload):
    server = make_workload(mode="canary")
    async with aiohttp.ClientSession() as session:
        await chaos(session, server, '{"mode":"slow","duration":30}')
        in_flight = asyncio.create_task(session.get(f"{server.url}/"))
        await asyncio.sleep(0.3)
        started = time.monotonic()
        server.process.terminate()
        code = await asyncio.to_thread(server.process.wait, 10)
        in_flight.cancel()
    assert code == 0
    assert time.monotonic() - started < 8  # the 3 s grace, not the 30 s of chaos
