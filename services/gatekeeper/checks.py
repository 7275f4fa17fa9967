"""`swiftdeploy validate`'s policy checks: the project's policies compile, their Rego unit tests
pass, each domain has an input schema that its tests' inputs fit, and the configured policy engine
answers (with OPA: which revision it serves, against the project's files).

Registered with `swiftdeploy_core.project.checks` when imported (`swiftdeploy validate` names this
module in `run_checks(..., modules=...)`). Compiling and testing
Rego here is a pre-flight check, like `opa check` and `opa test`; decisions are still only made by
the gatekeeper.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Mapping
from pathlib import Path

import policies
from services.gatekeeper import rego
from services.gatekeeper.embedded import read_folder, run_folder_tests, split_files
from services.gatekeeper.opa import OpaEngine
from services.gatekeeper.schemas import load_validator
from swiftdeploy_core.errors import PolicyEngineError
from swiftdeploy_core.project import opa as opa_api
from swiftdeploy_core.project.checks import CheckContext, CheckResult, check, needs_manifest
from swiftdeploy_core.project.manifest import OpaRun
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


_PACKAGE = re.compile(r"^package\s+([A-Za-z_][A-Za-z0-9_.]*)", re.MULTILINE)
_WITH_INPUT = re.compile(r"\bwith\s+input\.([A-Za-z_][A-Za-z0-9_]*)\s+as\b")


@check
def input_schemas(context: CheckContext) -> CheckResult:
    name = "input schemas"
    if blocked := _blocked(name, context):
        return blocked
    folder = policies.project_dir(context.loaded_manifest.root)
    properties: dict[str, set[str]] = {}
    for domain in REQUIRED_DOMAINS:
        path = policies.schema_path(folder, domain)
        if not path.exists():
            return CheckResult(
                name=name,
                ok=False,
                reason=f"{path} is missing: every domain declares its input (see docs/gatekeeper.md)",
            )
        try:
            validator = load_validator(path)
        except ValueError as exc:
            return CheckResult(name=name, ok=False, reason=str(exc))
        schema = validator.schema
        assert isinstance(schema, Mapping)  # load_validator accepts only `"type": "object"` schemas
        properties[domain] = set(schema.get("properties", {}))
    problem = _test_inputs_problem(folder, properties)
    if problem:
        return CheckResult(name=name, ok=False, reason=problem)
    return CheckResult(
        name=name,
        ok=True,
        reason=f"{', '.join(REQUIRED_DOMAINS)} declared in {folder / policies.SCHEMA_DIR}; every Rego test's input fits",
    )


def _test_inputs_problem(folder: Path, properties: dict[str, set[str]]) -> str | None:
    """The first input field a `*_test.rego` sets (`with input.<field> as ...`) that its domain's
    schema does not declare: a test of an input the gatekeeper would never let through."""
    for path in sorted(folder.glob(f"*{policies.TEST_SUFFIX}")):
        text = path.read_text(errors="replace")
        package = _PACKAGE.search(text)
        domain = package.group(1).removesuffix("_test") if package else ""
        if domain not in properties:
            continue
        for number, line in enumerate(text.splitlines(), start=1):
            for field in _WITH_INPUT.findall(line.split("#", 1)[0]):  # comments may show examples
                if field not in properties[domain]:
                    return f"{path.name}:{number}: input.{field} is not in the {domain} schema ({', '.join(sorted(properties[domain]))})"
    return None


@check
def policy_engine(context: CheckContext) -> CheckResult:
    name = "policy engine"
    if blocked := needs_manifest(name, context):
        return blocked
    spec = context.loaded_manifest.manifest.policy
    if spec.engine is EngineName.embedded:
        return CheckResult(name=name, ok=True, reason="embedded (regopy in the gatekeeper): nothing to reach")
    url = spec.external_url
    if spec.opa is not OpaRun.external:
        managed = opa_api.read_managed(context.loaded_manifest.root)
        if managed is None:
            return CheckResult(
                name=name,
                ok=False,
                reason=f"OPA ({spec.opa.value}) is run by the control plane: `swiftdeploy up` starts it",
            )
        url = managed.url
    problem, drift = asyncio.run(
        _opa_state(
            url, spec.timeout, policies.project_dir(context.loaded_manifest.root), spec.opa is not OpaRun.external
        )
    )
    if problem:
        return CheckResult(name=name, ok=False, reason=f"OPA does not answer GET /health: {problem}")
    where = (
        f"OPA at {url}" if spec.opa is OpaRun.external else f"OPA run by the control plane ({spec.opa.value}, {url})"
    )
    if drift:
        # An external OPA is the user's to reload: a warning. A managed one is reloaded by the control plane.
        return CheckResult(
            name=name, ok=spec.opa is OpaRun.external, reason=f"{where} answers GET /health; warning: {drift}"
        )
    return CheckResult(
        name=name,
        ok=True,
        reason=f"{where} answers GET /health and serves the project's policies (revision {policies.revision(read_folder(policies.project_dir(context.loaded_manifest.root), include_tests=False))})",
    )


async def _opa_state(url: str, timeout: float, folder: Path, managed: bool) -> tuple[str | None, str]:
    engine = OpaEngine(url, timeout, folder, managed=managed)
    try:
        problem = await engine.health()
        return problem, "" if problem else await engine.refresh_served(force=True)
    finally:
        await engine.close()
