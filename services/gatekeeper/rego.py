"""A thin, safe layer over regopy (rego-cpp): compile policy modules, query them, run their tests.

regopy 1.5 has sharp edges that this module keeps from the rest of the code:
- `str()` of a failed `Output` segfaults, and `Output()` raises JSONDecodeError when an "ok"
  output holds an error instead of a result, so outputs are read through its C API here;
- errors are S-expressions (and printed on stdout unless the interpreter's log level is NONE):
  `describe_error` turns them into `file:line:column: message`;
- `with input as {...}` fails to compile (policy tests use `with input.<field> as ...`).
Queries go through a bundle built once with one entrypoint per package: about ten times faster
than an ad hoc query.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from regopy import Bundle, Input, Interpreter, LogLevel
from regopy import rego_shared as capi

from services.gatekeeper.decide import UNDEFINED
from swiftdeploy_core.errors import PolicyEngineError

PACKAGE = re.compile(r"^\s*package\s+([A-Za-z_][\w.]*)", re.MULTILINE)
TEST_RULE = re.compile(r"^(test_\w+)\b", re.MULTILINE)
_DATA_FILE = re.compile(r"^data\d+\.json$")
_ERROR = re.compile(r"\(error \d+:([^|\s]*)\|(\d+)\|\d+\s*\(errormsg (\d+):", re.DOTALL)


def new_interpreter() -> Interpreter:
    interpreter = Interpreter()
    interpreter.log_level = LogLevel.NONE
    return interpreter


def describe_error(raw: str, sources: dict[str, str]) -> str:
    """The first error in regopy's S-expression as `file:line:column: message` (raw if unparsable)."""
    match = _ERROR.search(raw)
    if not match:
        return " ".join(raw.split())[:300]
    name, offset, length = match.group(1), int(match.group(2)), int(match.group(3))
    name = "data.json" if _DATA_FILE.match(name) else name  # regopy numbers the data documents
    message = raw[match.end() : match.end() + length]
    source = sources.get(name)
    if source is None:
        return f"{name}: {message}"
    line = source.count("\n", 0, offset) + 1
    column = offset - (source.rfind("\n", 0, offset) + 1) + 1
    return f"{name}:{line}:{column}: {message}"


def _node_error(node: Any) -> str:
    """The S-expression of the first error in a result or bundle node ("" when there is none)."""
    try:
        kind = capi.rego_node_type(node)
        if kind == capi.NodeKind.ErrorSeq and capi.rego_node_size(node) > 0:
            node, kind = capi.rego_node_get(node, 0), capi.NodeKind.Error
        return capi.rego_node_json(node) if kind == capi.NodeKind.Error else ""
    except Exception:
        return ""


def sources_of(modules: dict[str, str], data_json: str | None) -> dict[str, str]:
    """Every file's text by name, for turning error offsets into lines."""
    return {**modules, **({"data.json": data_json} if data_json is not None else {})}


def load(modules: dict[str, str], data_json: str | None) -> Interpreter:
    """An interpreter holding `modules` and the data document; PolicyEngineError if one is invalid."""
    interpreter = new_interpreter()
    try:
        for name, text in modules.items():
            interpreter.add_module(name, text)
        if data_json is not None:
            interpreter.add_data_json(data_json)
    except Exception as exc:
        raise PolicyEngineError(
            f"policy files invalid: {describe_error(str(exc), sources_of(modules, data_json))}"
        ) from exc
    return interpreter


def build(modules: dict[str, str], data_json: str | None, entrypoints: list[str]) -> Bundle:
    """Compile `modules` and data into a bundle with these entrypoints (`pkg/rule` or `pkg`)."""
    builder = load(modules, data_json)
    sources = sources_of(modules, data_json)
    try:
        bundle = builder.build(None, entrypoints)
        ok = bundle.ok()
    except Exception as exc:
        raise PolicyEngineError(f"policy files invalid: {describe_error(str(exc), sources)}") from exc
    if not ok:
        raise PolicyEngineError(f"policy files invalid: {_bundle_error(builder, bundle, sources)}")
    return bundle


def _read_output(interpreter: Interpreter, impl: Any, sources: dict[str, str]) -> Any:
    """The value of a query: its first expression, or UNDEFINED; PolicyEngineError on an error."""
    try:
        if not capi.rego_output_ok(impl):
            raw = _node_error(capi.rego_output_node(impl)) or capi.rego_get_error(interpreter._impl)
            raise PolicyEngineError(f"policy evaluation failed: {describe_error(raw, sources)}")
        text = capi.rego_output_string(impl)
    finally:
        capi.rego_free_output(impl)
    if text == "undefined":
        return UNDEFINED
    try:
        expressions = json.loads(text).get("expressions") or []
    except (ValueError, AttributeError):
        raise PolicyEngineError(f"policy evaluation failed: {describe_error(text, sources)}") from None
    return expressions[0] if expressions else UNDEFINED


def _bundle_error(builder: Interpreter, bundle: Bundle, sources: dict[str, str]) -> str:
    raw = _node_error(capi.rego_bundle_node(bundle._impl)) or capi.rego_get_error(builder._impl)
    return describe_error(raw, sources) if raw else "the bundle did not compile (no detail given)"


@dataclass(frozen=True)
class CompiledPolicies:
    """Policy modules and data compiled once into a bundle; queried by package (`infra`, `canary`)."""

    bundle: Bundle
    runner: Interpreter
    entrypoints: dict[str, str]  # domain ("infra", "a.b") -> bundle entrypoint ("infra", "a/b")
    sources: dict[str, str]

    @property
    def domains(self) -> list[str]:
        return sorted(self.entrypoints)

    def query(self, domain: str, input: dict[str, Any]) -> Any:
        """The document at data.<domain> for `input`, or UNDEFINED."""
        entrypoint = self.entrypoints.get(domain)
        if entrypoint is None:
            return UNDEFINED
        try:
            self.runner.set_input(Input(input))
            impl = capi.rego_bundle_query_entrypoint(self.runner._impl, self.bundle._impl, entrypoint)
        except Exception as exc:
            raise PolicyEngineError(f"policy evaluation failed: {describe_error(str(exc), self.sources)}") from exc
        return _read_output(self.runner, impl, self.sources)


def compile_policies(modules: dict[str, str], data_json: str | None) -> CompiledPolicies:
    """Compile policy modules (no tests) and data; PolicyEngineError names the first problem."""
    packages = {package for text in modules.values() for package in PACKAGE.findall(text)}
    entrypoints = {package: package.replace(".", "/") for package in packages}
    if not entrypoints:
        raise PolicyEngineError("policy files invalid: no Rego package found")
    bundle = build(modules, data_json, sorted(entrypoints.values()))
    return CompiledPolicies(bundle, new_interpreter(), entrypoints, sources_of(modules, data_json))


@dataclass(frozen=True)
class RegoTest:
    """One `test_` rule of a `*_test.rego` file and how it went."""

    file: str
    name: str
    passed: bool
    error: str | None = None


def run_tests(modules: dict[str, str], data_json: str | None) -> list[RegoTest]:
    """Run every `test_` rule of the `*_test.rego` modules, as `opa test` would: true passes.

    All tests are compiled into one bundle (one entrypoint each): an ad hoc query recompiles
    every module and costs a third of a second here, the bundle a few milliseconds per test.
    """
    tests = []  # (file, package, rule)
    for file, text in sorted(modules.items()):
        if file.endswith("_test.rego"):
            package = next(iter(PACKAGE.findall(text)), "")
            tests += [(file, package, name) for name in dict.fromkeys(TEST_RULE.findall(text))]
    if not tests:
        return []
    bundle = build(modules, data_json, [f"{package.replace('.', '/')}/{name}" for _, package, name in tests])
    sources = sources_of(modules, data_json)
    runner = new_interpreter()
    return [_run_test(runner, bundle, sources, file, package, name) for file, package, name in tests]


def _run_test(
    runner: Interpreter, bundle: Bundle, sources: dict[str, str], file: str, package: str, name: str
) -> RegoTest:
    entrypoint = f"{package.replace('.', '/')}/{name}"
    try:
        value = _read_output(runner, capi.rego_bundle_query_entrypoint(runner._impl, bundle._impl, entrypoint), sources)
    except PolicyEngineError as exc:
        return RegoTest(file, name, False, str(exc))
    except Exception as exc:
        return RegoTest(file, name, False, describe_error(str(exc), sources))
    if value is True:
        return RegoTest(file, name, True)
    return RegoTest(
        file, name, False, "undefined (a condition failed)" if value is UNDEFINED else f"returned {value!r}"
    )
