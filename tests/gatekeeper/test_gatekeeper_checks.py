"""`swiftdeploy init` writes the default policies once; `swiftdeploy validate` checks that they
compile, that their Rego tests pass, and that a configured OPA answers /health."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

import policies
from services.gatekeeper.checks import policies_compile, policy_engine, policy_tests
from swiftdeploy_core.project.checks import CheckContext
from swiftdeploy_core.project.manifest import load_manifest
from swiftdeploy_core.settings import Settings
from tests.servers import REPO_ROOT, free_port, run_swiftdeploy

ORIGINAL = (REPO_ROOT / "manifest.yaml").read_text()


def project(folder: Path, policy: str = "") -> CheckContext:
    (folder / "manifest.yaml").write_text(ORIGINAL + policy)
    context = CheckContext(manifest_path=folder / "manifest.yaml", settings=Settings())
    context.loaded = load_manifest(folder / "manifest.yaml")
    return context


def test_init_writes_the_default_policies_and_never_overwrites_them(tmp_path):
    (tmp_path / "manifest.yaml").write_text(ORIGINAL)
    first = run_swiftdeploy("init", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    for name in policies.DEFAULT_FILES:
        assert f"wrote policies/{name}" in first.stdout
        assert (tmp_path / "policies" / name).read_bytes() == policies.default_files()[name]

    (tmp_path / "policies" / "data.json").write_text('{"thresholds": {"cpu_load": 4}}')
    second = run_swiftdeploy("init", cwd=tmp_path)
    assert second.returncode == 0 and "policies/" not in second.stdout
    assert (tmp_path / "policies" / "data.json").read_text() == '{"thresholds": {"cpu_load": 4}}'


def test_fresh_default_policies_pass_every_policy_check(tmp_path):
    context = project(tmp_path)
    policies.write_default_policies(tmp_path)
    compiled = policies_compile(context)
    assert compiled.ok and "packages canary, infra, lib" in compiled.reason, compiled.reason
    tests = policy_tests(context)
    assert tests.ok and tests.reason.startswith("all ") and tests.reason.endswith(" Rego tests pass")
    assert policy_engine(context).reason == "embedded (regopy in the gatekeeper): nothing to reach"


def test_no_policies_folder_says_to_run_init(tmp_path):
    context = project(tmp_path)
    result = policies_compile(context)
    assert not result.ok and result.reason == f"no policies in {tmp_path / 'policies'}; run `swiftdeploy init`"
    assert not policy_tests(context).ok


def test_a_policy_that_does_not_compile_is_named_with_file_and_line(tmp_path):
    context = project(tmp_path)
    policies.write_default_policies(tmp_path)
    canary = tmp_path / "policies" / "canary.rego"
    canary.write_text(canary.read_text().replace("allow if count(deny) == 0", "allow if {"))
    result = policies_compile(context)
    assert not result.ok and result.reason.startswith("policy files invalid: canary.rego:"), result.reason


def test_a_policy_without_the_canary_package_fails(tmp_path):
    context = project(tmp_path)
    policies.write_default_policies(tmp_path)
    (tmp_path / "policies" / "canary.rego").unlink()
    (tmp_path / "policies" / "canary_test.rego").unlink()
    result = policies_compile(context)
    assert result.reason == f"{tmp_path / 'policies'} has no package canary" and not result.ok


def test_a_failing_rego_test_fails_the_check_and_is_named(tmp_path):
    context = project(tmp_path)
    policies.write_default_policies(tmp_path)
    infra = tmp_path / "policies" / "infra.rego"
    infra.write_text(infra.read_text().replace('" is above the maximum of "', '" exceeds "'))
    result = policy_tests(context)
    assert not result.ok
    assert "Rego tests fail, first infra_test.rego::test_high_cpu_is_denied_with_value_and_maximum" in result.reason


def test_tuning_thresholds_in_data_json_keeps_the_rego_tests_passing(tmp_path):
    context = project(tmp_path)
    policies.write_default_policies(tmp_path)
    data = tmp_path / "policies" / "data.json"
    data.write_text(data.read_text().replace('"cpu_load": 2.0', '"cpu_load": 5'))
    assert policy_tests(context).ok


async def test_a_configured_opa_must_answer_health(tmp_path, opa_api):
    (tmp_path / "up").mkdir()
    up = project(tmp_path / "up", f"policy:\n  engine: opa\n  opa_url: {opa_api.url}\n")
    policies.write_default_policies(tmp_path / "up")  # the files the stand-in OPA serves
    result = await asyncio.to_thread(policy_engine, up)
    revision = policies.revision({p.name: p.read_bytes() for p in policies.policy_files(tmp_path / "up" / "policies")})
    assert result.ok, result.reason
    assert (
        result.reason
        == f"OPA at {opa_api.url} answers GET /health and serves the project's policies (revision {revision})"
    )

    url = f"http://127.0.0.1:{free_port()}"
    down = project(tmp_path, f"policy:\n  engine: opa\n  opa_url: {url}\n")
    result = await asyncio.to_thread(policy_engine, down)
    assert not result.ok
    assert result.reason == f"OPA does not answer GET /health: policy engine unavailable: connection refused ({url})"


async def test_an_external_opa_serving_other_policies_is_a_warning_line(tmp_path, opa_api):
    context = project(tmp_path, f"policy:\n  engine: opa\n  opa_url: {opa_api.url}\n")
    policies.write_default_policies(tmp_path)
    data = tmp_path / "policies" / "data.json"
    data.write_text(data.read_text().replace('"cpu_load": 2.0', '"cpu_load": 5'))  # OPA still serves 2.0
    result = await asyncio.to_thread(policy_engine, context)
    files = policies.revision({p.name: p.read_bytes() for p in policies.policy_files(tmp_path / "policies")})
    served = policies.revision({p.name: p.read_bytes() for p in policies.policy_files(opa_api.folder)})
    assert result.ok  # an OPA the user runs is the user's to reload: a warning, not a failure
    assert result.reason == (
        f"OPA at {opa_api.url} answers GET /health; warning: OPA serves policy revision {served}, "
        f"but the project's policies/ is revision {files}: restart it, or run it with --watch"
    )


@pytest.mark.parametrize("status", [500, 503])
async def test_an_unhealthy_opa_fails(tmp_path, opa_api, status):
    opa_api.respond = (status, '{"code": "internal_error", "message": "bundles not activated"}')
    context = project(tmp_path, f"policy:\n  engine: opa\n  opa_url: {opa_api.url}\n")
    result = await asyncio.to_thread(policy_engine, context)
    assert not result.ok and f"HTTP {status} internal_error: bundles not activated" in result.reason
