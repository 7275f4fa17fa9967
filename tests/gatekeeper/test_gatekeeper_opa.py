"""The OPA engine over real HTTP: every way OPA can fail to answer denies with the exact reason,
and none of them raises."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from services.gatekeeper.engines import Verdict
from services.gatekeeper.opa import OpaEngine
from tests.servers import free_port

HEALTHY = {"disk_free_gb": 50, "cpu_load": 0.5}


@pytest.fixture
async def opa(opa_api):
    engine = OpaEngine(opa_api.url, timeout=0.3, folder=opa_api.folder)
    yield engine
    await engine.close()


async def test_a_defined_result_is_read_from_result_allow_and_deny(opa, opa_api):
    assert await opa.evaluate("infra", HEALTHY) == Verdict(True, ())
    denied = await opa.evaluate("infra", {"disk_free_gb": 8.5, "cpu_load": 1})
    assert denied == Verdict(False, ("disk free 8.5 GB is below the minimum of 10 GB",))
    method, path, body = opa_api.requests[-1]
    assert (method, path) == ("POST", "/v1/data/infra")
    assert json.loads(body) == {"input": {"disk_free_gb": 8.5, "cpu_load": 1}}


async def test_a_dotted_domain_becomes_a_url_path(opa, opa_api):
    await opa.evaluate("swiftdeploy.canary", {})
    assert opa_api.requests[-1][1] == "/v1/data/swiftdeploy/canary"


async def test_an_undefined_document_has_no_result_key(opa, opa_api):
    opa_api.respond = (200, "{}")
    assert await opa.evaluate("canary", {}) == Verdict(False, ("policy undefined: data.canary has no result",))


async def test_a_400_with_opas_error_body(opa, opa_api):
    opa_api.respond = (
        400,
        json.dumps({"code": "invalid_parameter", "message": "body contains malformed input document: EOF"}),
    )
    verdict = await opa.evaluate("canary", {})
    assert verdict == Verdict(
        False,
        (
            f"policy engine error: HTTP 400 invalid_parameter: body contains malformed input document: EOF ({opa_api.url})",
        ),
    )


async def test_a_500_with_opas_error_body(opa, opa_api):
    opa_api.respond = (
        500,
        json.dumps(
            {
                "code": "internal_error",
                "message": "eval_conflict_error: complete rules must not produce multiple outputs",
            }
        ),
    )
    verdict = await opa.evaluate("canary", {})
    assert verdict.reasons == (
        f"policy engine error: HTTP 500 internal_error: eval_conflict_error: complete rules must not produce multiple outputs ({opa_api.url})",
    )
    assert verdict.allow is False


async def test_a_500_without_a_json_body(opa, opa_api):
    opa_api.respond = (502, "<html>bad gateway</html>")
    assert await opa.evaluate("infra", HEALTHY) == Verdict(False, (f"policy engine error: HTTP 502 ({opa_api.url})",))


async def test_malformed_json(opa, opa_api):
    opa_api.respond = (200, '{"result": {"allow": tru')
    verdict = await opa.evaluate("infra", HEALTHY)
    assert not verdict.allow
    assert verdict.reasons[0].startswith("policy engine returned malformed JSON: ")
    assert verdict.reasons[0].endswith(f"({opa_api.url})")


async def test_json_that_is_not_an_object(opa, opa_api):
    opa_api.respond = (200, "[true]")
    assert await opa.evaluate("infra", HEALTHY) == Verdict(
        False, (f"policy engine returned malformed JSON: not an object ({opa_api.url})",)
    )


@pytest.mark.parametrize(
    ("result", "reason"),
    [
        ({"deny": []}, "policy result malformed: data.infra.allow is missing"),
        ({"allow": "true", "deny": []}, "policy result malformed: data.infra.allow is not a boolean (got a string)"),
        ({"allow": 1, "deny": []}, "policy result malformed: data.infra.allow is not a boolean (got a number)"),
        ({"allow": None}, "policy result malformed: data.infra.allow is not a boolean (got null)"),
        ({"allow": True, "deny": "no"}, "policy result malformed: data.infra.deny is not a list of strings"),
        ({"allow": False, "deny": [1]}, "policy result malformed: data.infra.deny is not a list of strings"),
        ({"allow": False}, "policy data.infra denied without giving a reason"),
        (True, "policy result malformed: data.infra is a boolean, not an object with allow and deny"),
        ({"allow": True, "deny": ["still listed"]}, "still listed"),
    ],
)
async def test_a_result_without_a_boolean_allow_denies(opa, opa_api, result, reason):
    opa_api.respond = (200, json.dumps({"result": result}))
    assert await opa.evaluate("infra", HEALTHY) == Verdict(False, (reason,))


async def test_connection_refused():
    url = f"http://127.0.0.1:{free_port()}"
    engine = OpaEngine(url, timeout=1)
    try:
        verdict = await engine.evaluate("canary", {"error_rate": 0})
        assert verdict == Verdict(False, (f"policy engine unavailable: connection refused ({url})",))
        assert await engine.health() == f"policy engine unavailable: connection refused ({url})"
    finally:
        await engine.close()


async def test_a_server_that_hangs_past_the_timeout(opa, opa_api):
    opa_api.hang = True
    started = time.monotonic()
    verdict = await opa.evaluate("infra", HEALTHY)
    assert verdict == Verdict(False, (f"policy engine unavailable: no answer within 0.3s ({opa_api.url})",))
    assert 0.25 < time.monotonic() - started < 2


async def test_the_engine_keeps_serving_after_failures(opa, opa_api):
    opa_api.respond = (500, "{}")
    assert not (await opa.evaluate("infra", HEALTHY)).allow
    opa_api.respond = None
    assert (await opa.evaluate("infra", HEALTHY)).allow


async def test_health_reads_get_health(opa, opa_api):
    assert await opa.health() is None
    assert opa_api.requests[-1][:2] == ("GET", "/health")
    opa_api.respond = (500, json.dumps({"code": "internal_error", "message": "not ready"}))
    assert await opa.health() == f"policy engine error: HTTP 500 internal_error: not ready ({opa_api.url})"


async def test_connections_are_pooled(opa, opa_api):
    await asyncio.gather(*(opa.evaluate("infra", HEALTHY) for _ in range(5)))
    for _ in range(20):
        await opa.evaluate("infra", HEALTHY)
    connector = opa._session.connector
    assert connector.limit == 32
    assert len(opa_api.peers) <= 5  # sequential requests reuse the pooled connections
