"""An absent, extra or mistyped input field never allows, whatever the engine: the gatekeeper checks
every input against its domain's JSON Schema (policies/schemas/<domain>.json) before any engine is
asked, and denies naming the field. Behind it, the policies themselves deny an absent field too,
under both engines (embedded regopy; OPA's REST API over HTTP and over a unix socket), so a policy
is safe even when asked directly. `swiftdeploy policy check` exits 3 on each of these inputs.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
from pathlib import Path

import pytest

import policies
from services.gatekeeper.embedded import EmbeddedEngine
from services.gatekeeper.opa import OpaEngine
from services.gatekeeper.schemas import InputSchemas
from services.gatekeeper.service import Gatekeeper
from swiftdeploy_core.bus.events import DecisionRequested
from tests.opa_api import OpaApiServer
from tests.servers import REPO_ROOT, run_swiftdeploy

HEALTHY = {
    "infra": {"disk_free_gb": 50, "cpu_load": 0.5},
    "canary": {"error_rate": 0.001, "p99_latency_ms": 120, "requests": 400},
}
# Optional canary fields: where the figures came from and the analysis queries (issue 17), the
# comparison against stable (issue 21).
OPTIONAL = {"canary": ["source", "window_seconds", "samples", "metrics", "metric_reasons", "comparison"], "infra": []}
WRONG = ["lots", True, None, [1], {"value": 1}]  # a string, a boolean, null, a list, an object
KIND = {str: 'string "lots"', bool: "boolean", type(None): "null", list: "array", dict: "object"}


def cases() -> list[tuple[str, str, dict, str]]:
    """(id, domain, input, the reason that must be among the denial's reasons)."""
    rows = []
    for domain, healthy in HEALTHY.items():
        rows.append((f"{domain}-empty", domain, {}, f"{next(iter(healthy))} is missing from the input"))
        for index, field in enumerate(healthy):
            partial = {k: v for k, v in healthy.items() if k != field}
            rows.append((f"{domain}-without-{field}", domain, partial, f"{field} is missing from the input"))
            wrong = WRONG[index % len(WRONG)]
            mistyped = {**healthy, field: wrong}
            reason = f"{field} must be a number (got {KIND[type(wrong)]})"
            rows.append((f"{domain}-{field}-as-{KIND[type(wrong)].split()[0]}", domain, mistyped, reason))
        takes = ", ".join([*healthy, *OPTIONAL[domain]])
        extra = {**healthy, "host": "web-1"}
        rows.append(
            (f"{domain}-extra", domain, extra, f"host is not an input of the {domain} policy (it takes {takes})")
        )
    return rows


CASES = cases()
IDS = [row[0] for row in CASES]


def test_every_field_of_both_domains_is_covered():
    for domain, healthy in HEALTHY.items():
        schema = json.loads((policies.default_dir() / "schemas" / f"{domain}.json").read_text())
        assert list(schema["properties"]) == [*healthy, *OPTIONAL[domain]]  # the cases follow the shipped schemas
        assert schema["required"] == list(healthy) and schema["additionalProperties"] is False
    assert len(CASES) == 2 * 2 + 5 * 2  # per domain: {} and an extra field; per field: missing, mistyped


def test_what_the_orchestrator_sends_fits_the_schemas():
    from services.orchestrator import plans
    from swiftdeploy_core.project.host import INFRA_FIELDS

    schemas = InputSchemas(policies.default_dir())
    assert schemas.problems("infra", dict.fromkeys(INFRA_FIELDS, 1.0)) == []
    assert schemas.problems("canary", plans.promotion_input(None)) == [
        "error_rate must be a number (got null)",  # no figures yet: denied, saying why
        "p99_latency_ms must be a number (got null)",
    ]


def test_a_canary_input_with_its_comparison_against_stable_fits_the_schema():
    from services.collector.judge import compare
    from services.collector.router import Sample
    from services.orchestrator import plans
    from swiftdeploy_core.bus.events import MetricsSnapshot

    schemas = InputSchemas(policies.default_dir())
    few = [Sample(0.0, 200, 0.01)] * 10
    many = [Sample(0.0, 500 if i % 50 == 0 else 200, 0.001 * (i % 40)) for i in range(400)]
    for comparison in (compare(many, many), compare(few, many)):
        snapshot = MetricsSnapshot(project="p", track="canary", window_seconds=60, error_rate=0.0, requests=400,
                                   p99_latency_ms=40, source="router", samples=400, comparison=comparison)  # fmt: skip
        document = plans.promotion_input(snapshot)
        assert set(document["comparison"]) == {"latency", "errors", "reasons"}
        assert schemas.problems("canary", document) == []
    assert schemas.problems("canary", {**HEALTHY["canary"], "comparison": {"latency": {"p_value": "low"}}}) != []


@pytest.mark.parametrize(("case", "domain", "document", "reason"), CASES, ids=IDS)
def test_the_schema_names_the_field(case, domain, document, reason):
    problems = InputSchemas(policies.default_dir()).problems(domain, document)
    assert reason in problems, problems


@pytest.mark.parametrize("wrong", WRONG, ids=lambda value: KIND[type(value)].split()[0])
def test_every_field_of_every_wrong_type_is_named(wrong):
    schemas = InputSchemas(policies.default_dir())
    for domain, healthy in HEALTHY.items():
        for field in healthy:
            assert schemas.problems(domain, {**healthy, field: wrong}) == [
                f"{field} must be a number (got {KIND[type(wrong)]})"
            ]


def test_an_empty_input_names_every_missing_field():
    schemas = InputSchemas(policies.default_dir())
    assert schemas.problems("canary", {}) == [
        "error_rate is missing from the input",
        "p99_latency_ms is missing from the input",
        "requests is missing from the input",
    ]
    assert schemas.problems("infra", HEALTHY["infra"]) == []


# --- both engines behind the gatekeeper ------------------------------------------------------------


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    target = tmp_path / "policies"
    shutil.copytree(policies.default_dir(), target, ignore=shutil.ignore_patterns("__pycache__", "*.py"))
    return target


@pytest.fixture(params=["embedded", "opa-http", "opa-unix"])
async def engine(request, folder: Path, tmp_path: Path):
    """Each engine on the same policies; the OPA ones with the stand-in server that served them."""
    if request.param == "embedded":
        yield EmbeddedEngine(folder), None
        return
    private = tmp_path / "opa"
    private.mkdir(mode=0o700)
    unix = private / "opa.sock" if request.param == "opa-unix" else None
    server = await OpaApiServer(folder, unix_socket=unix).start()
    opa = OpaEngine(server.url, timeout=5, folder=folder)
    yield opa, server
    await opa.close()
    await server.stop()


@pytest.mark.parametrize(("case", "domain", "document", "reason"), CASES, ids=IDS)
async def test_the_gatekeeper_denies_before_any_engine_is_asked(engine, folder, case, domain, document, reason):
    chosen, server = engine
    gatekeeper = Gatekeeper(chosen, InputSchemas(folder))
    made = await gatekeeper.decide(DecisionRequested(domain=domain, input=document), "1-0")
    assert made.allow is False and reason in made.reasons, made.reasons
    if server is not None:
        assert [path for method, path, _ in server.requests if method == "POST"] == []  # never asked


async def test_a_healthy_input_passes_the_schema_and_the_engine_decides(engine, folder):
    chosen, server = engine
    gatekeeper = Gatekeeper(chosen, InputSchemas(folder))
    for domain, healthy in HEALTHY.items():
        made = await gatekeeper.decide(DecisionRequested(domain=domain, input=healthy), "1-0")
        assert made.allow is True and made.reasons == [], made.reasons
        assert made.engine == chosen.name and made.policy_revision == policies.revision(
            {p.name: p.read_bytes() for p in policies.policy_files(folder)}
        )
    if server is not None:
        assert [path for method, path, _ in server.requests if method == "POST"] == [
            "/v1/data/infra",
            "/v1/data/canary",
        ]


ABSENT = [(row[1], row[2], row[3]) for row in CASES if "missing from the input" in row[3]]


@pytest.mark.parametrize(("domain", "document", "reason"), ABSENT, ids=[r[0] for r in CASES if "missing" in r[3]])
async def test_the_policies_alone_deny_an_absent_field_under_both_engines(engine, domain, document, reason):
    """No schema in front: the engine itself, as OPA would be queried directly."""
    chosen, _server = engine
    verdict = await chosen.evaluate(domain, document)
    assert verdict.allow is False and reason in verdict.reasons, verdict.reasons


async def test_a_domain_without_a_schema_denies_saying_which_file(folder):
    (folder / "schemas" / "infra.json").unlink()
    made = await Gatekeeper(EmbeddedEngine(folder), InputSchemas(folder)).decide(
        DecisionRequested(domain="infra", input=HEALTHY["infra"]), "1-0"
    )
    assert made.allow is False
    assert made.reasons == [
        "no input schema for this domain: policies/schemas/infra.json is missing "
        "(the packaged defaults are in policies/schemas/ of the swiftdeploy package)"
    ]


async def test_a_broken_schema_denies_and_an_edited_one_is_used_at_once(folder):
    gatekeeper = Gatekeeper(EmbeddedEngine(folder), InputSchemas(folder))
    schema_file = folder / "schemas" / "infra.json"
    schema_file.write_text('{"type": "object", "properties": {"cpu_load": {"type": "nonsense"}}}')
    made = await gatekeeper.decide(DecisionRequested(domain="infra", input=HEALTHY["infra"]), "1-0")
    assert not made.allow and made.reasons[0].startswith(
        "input schema policies/schemas/infra.json is not a valid JSON Schema: "
    )
    schema = json.loads((policies.default_dir() / "schemas" / "infra.json").read_text())
    schema["properties"]["cores"] = {"type": "integer"}
    schema_file.write_text(json.dumps(schema))
    made = await gatekeeper.decide(DecisionRequested(domain="infra", input={**HEALTHY["infra"], "cores": "8"}), "1-1")
    assert made.reasons == ['cores must be an integer (got string "8")']


# --- `swiftdeploy policy check` exits 3 on each, against a real gatekeeper process ------------------


@pytest.fixture(params=["embedded", "opa-unix"])
async def gatekeeper_project(request, tmp_path: Path, redis_url: str):
    """A project whose gatekeeper process uses the embedded engine, or OPA over a unix socket."""
    import os
    import sys

    root = tmp_path / "project"
    root.mkdir()
    manifest = (REPO_ROOT / "manifest.yaml").read_text()
    policies.write_default_policies(root)
    server = None
    env = {**os.environ, "REDIS_URL": redis_url, "SWIFTDEPLOY_MANIFEST": str(root / "manifest.yaml"),
           "SWIFTDEPLOY_BLOCK_MS": "100", "PYTHONPATH": str(REPO_ROOT)}  # fmt: skip
    if request.param == "opa-unix":
        private = tmp_path / "opa"
        private.mkdir(mode=0o700)
        server = await OpaApiServer(root / "policies", unix_socket=private / "opa.sock").start()
        manifest += f"policy:\n  engine: opa\n  opa_url: {server.url}\n"
    (root / "manifest.yaml").write_text(manifest)
    log = open(tmp_path / "gatekeeper.log", "w")
    process = subprocess.Popen([sys.executable, "-m", "services.gatekeeper"], cwd=root, env=env, stdout=log,
                               stderr=subprocess.STDOUT)  # fmt: skip
    yield root, request.param
    process.terminate()
    process.wait(timeout=10)
    log.close()
    if server is not None:
        await server.stop()


async def test_policy_check_exits_3_naming_the_field_on_every_case(gatekeeper_project, redis_url):
    root, engine = gatekeeper_project

    def check(domain: str, document: dict) -> subprocess.CompletedProcess[str]:
        return run_swiftdeploy("policy", "check", domain, "--input", json.dumps(document), cwd=root,
                               env={"REDIS_URL": redis_url, "SWIFTDEPLOY_REQUEST_TIMEOUT": "15"})  # fmt: skip

    failures = []
    for case, domain, document, reason in CASES:
        result = await asyncio.to_thread(check, domain, document)
        if result.returncode != 3 or f"  - {reason}" not in result.stdout.splitlines():
            failures.append(f"{case}: exit {result.returncode}\n{result.stdout}{result.stderr}")
        elif not result.stdout.startswith(f"DENY {domain} (engine {engine.split('-')[0]}"):
            failures.append(f"{case}: {result.stdout.splitlines()[0]}")
    assert not failures, "\n".join(failures)
    healthy = await asyncio.to_thread(check, "infra", {"disk_free_gb": 1e6, "cpu_load": 0})
    assert healthy.returncode == 0, healthy.stdout + healthy.stderr
