"""`swiftdeploy validate`'s policy checks: the project's policies compile, their Rego unit tests
pass, and the configured policy engine answers.

Registered with `swiftdeploy_core.project.checks` (listed in its CHECK_MODULES). Compiling and testing
Rego here is a pre-flight check, like `opa check` and `opa test`; decisions are still only made by
the gatekeeper.
"""

from __future__ import annotations

import asyncio

import policies
from services.gatekeeper import rego
from services.gatekeeper.embedded import read_folder, run_folder_tests, split_files
from services.gatekeeper.opa import OpaEngine
from swiftdeploy_core.errors import PolicyEngineError
from swiftdeploy_core.project.checks import CheckContext, CheckResult, check, needs_manifest
from swiftdeploy_core.project.manifest import PolicyEngine as EngineName

REQUIRED_DOMAINS = ("infra", "canary")


def _blocked(name: str, context: CheckContext) -> CheckResult | None:
    if blocked := needs_manifest(name, context):
        return blocked
    folder = policies.project_dir(context.loaded_manifest.root)
    if not policies.has_policies(folder):
        return CheckResult(name=name, ok=False, reason=f"no policies in {folder}; run `swiftdeploy init`")
    return None


@check
def policies_compile(context: CheckContext) -> CheckResult:
    name = "policies compile"
    if blocked := _blocked(name, context):
        return blocked
    folder = policies.project_dir(context.loaded_manifest.root)
    try:
        contents = read_folder(folder, include_tests=False)
        compiled = rego.compile_policies(*split_files(contents))
    except (OSError, PolicyEngineError) as exc:
        return CheckResult(name=name, ok=False, reason=str(exc))
    missing = [domain for domain in REQUIRED_DOMAINS if domain not in compiled.entrypoints]
    if missing:
        return CheckResult(name=name, ok=False, reason=f"{folder} has no package {', '.join(missing)}")
    return CheckResult(
        name=name,
        ok=True,
        reason=f"{len(contents)} files in {folder} compile (packages {', '.join(compiled.domains)}; revision {policies.revision(contents)})",
    )


@check
def policy_tests(context: CheckContext) -> CheckResult:
    name = "policy tests"
    if blocked := _blocked(name, context):
        return blocked
    try:
        results = run_folder_tests(policies.project_dir(context.loaded_manifest.root))
    except PolicyEngineError as exc:  # unreadable files included
        return CheckResult(name=name, ok=False, reason=str(exc))
    failed = [result for result in results if not result.passed]
    if failed:
        first = failed[0]
        return CheckResult(
            name=name,
            ok=False,
            reason=f"{len(failed)} of {len(results)} Rego tests fail, first {first.file}::{first.name}: {first.error}",
        )
    return CheckResult(
        name=name, ok=True, reason=f"all {len(results)} Rego tests pass" if results else "no *_test.rego files"
    )


@check
def policy_engine(context: CheckContext) -> CheckResult:
    name = "policy engine"
    if blocked := needs_manifest(name, context):
        return blocked
    spec = context.loaded_manifest.manifest.policy
    if spec.engine is EngineName.embedded:
        return CheckResult(name=name, ok=True, reason="embedded (regopy in the gatekeeper): nothing to reach")
    problem = asyncio.run(_opa_health(spec.opa_url, spec.timeout))
    if problem:
        return CheckResult(name=name, ok=False, reason=f"OPA does not answer GET /health: {problem}")
    return CheckResult(name=name, ok=True, reason=f"OPA at {spec.opa_url} answers GET /health")


async def _opa_health(url: str, timeout: float) -> str | None:
    engine = OpaEngine(url, timeout)
    try:
        return await engine.health()
    finally:
        await engine.close()
