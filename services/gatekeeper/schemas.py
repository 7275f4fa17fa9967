"""Input schemas: each domain's input, declared as a JSON Schema beside its policy, checked by the
gatekeeper before any engine sees the input.

`policies/schemas/<domain>.json` (OPA's own convention: `opa check --schema policies/schemas`)
says which fields a domain's input has and their types. An absent, extra or mistyped field is a
deny whose reason names it, so a policy with a presence bug (and an engine that reads it its own
way) can never allow a partial input. The reasons use the policies' words (`cpu_load is missing
from the input`, `cpu_load must be a number (got string "lots")`), so a decision reads the same
whichever layer caught the problem. Ranges stay the policy's to judge.

A schema file is re-read when its stat changes (one stat per decision); a domain without a schema,
or with a schema that is not valid JSON Schema, denies every decision, saying which file.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
from jsonschema.exceptions import SchemaError, ValidationError
from jsonschema.protocols import Validator

import policies

_ARTICLES = {"array": "a list", "object": "an object", "integer": "an integer", "null": "null"}


@dataclass(frozen=True)
class _Loaded:
    stat: tuple[int, int, int]  # mtime_ns, size, inode
    validator: Validator | None
    problem: str | None  # why the file cannot be used, when it cannot


class InputSchemas:
    """The input schemas of one policy folder (or of `fallback` while that folder has no policies)."""

    def __init__(self, folder: Path, fallback: Path | None = None) -> None:
        self.folder = folder
        self.fallback = fallback
        self._loaded: dict[Path, _Loaded] = {}

    def problems(self, domain: str, input: dict[str, Any]) -> list[str]:
        """Why `input` does not fit `domain`'s schema: one reason per field, [] when it fits.

        `domain` must already be a valid package name (see `decide.domain_problem`)."""
        path = policies.schema_path(self.folder, domain)
        loaded = self._load(path)
        if loaded.validator is None and self.fallback is not None and not policies.has_policies(self.folder):
            loaded = self._load(policies.schema_path(self.fallback, domain))  # a project without policies yet
        if loaded.validator is None:
            return [loaded.problem or f"no input schema for domain {domain}"]
        if loaded.validator.is_valid(input):  # the common case: one pass, no error objects
            return []
        reasons: list[str] = []
        for error in loaded.validator.iter_errors(input):
            for reason in _reasons(error, domain):
                if reason not in reasons:
                    reasons.append(reason)
        return sorted(reasons)

    def _load(self, path: Path) -> _Loaded:
        try:
            st = os.stat(path)
        except FileNotFoundError:
            shown = _shown(path)
            return _Loaded(
                (0, 0, 0),
                None,
                f"no input schema for this domain: {shown} is missing (the packaged defaults are in policies/schemas/ of the swiftdeploy package)",
            )
        except OSError as exc:
            return _Loaded((0, 0, 0), None, f"input schema {_shown(path)} unreadable: {exc.strerror}")
        key = (st.st_mtime_ns, st.st_size, st.st_ino)
        cached = self._loaded.get(path)
        if cached is not None and cached.stat == key:
            return cached
        loaded = _Loaded(key, *_compile(path))
        self._loaded[path] = loaded
        return loaded


def load_validator(path: Path) -> Validator:
    """The validator for one schema file; ValueError with one line when it is not usable."""
    validator, problem = _compile(path)
    if validator is None:
        raise ValueError(problem)
    return validator


def _compile(path: Path) -> tuple[Validator | None, str | None]:
    shown = _shown(path)
    try:
        schema = json.loads(path.read_bytes())
    except OSError as exc:
        return None, f"input schema {shown} unreadable: {exc.strerror}"
    except ValueError as exc:
        return None, f"input schema {shown} is not JSON: {exc}"
    try:
        cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
        cls.check_schema(schema)
    except SchemaError as exc:
        return None, f"input schema {shown} is not a valid JSON Schema: {exc.message}"
    if not isinstance(schema, dict) or schema.get("type") != "object":
        return None, f'input schema {shown} must describe an object ("type": "object")'
    return cls(schema), None


def _reasons(error: ValidationError, domain: str) -> list[str]:
    """One error of jsonschema in the policies' words, naming the field."""
    where = ".".join(str(part) for part in error.absolute_path)
    instance = error.instance
    value = error.validator_value  # a checked schema: "required" is a list, "type" a name or a list
    if error.validator == "required" and isinstance(instance, dict) and isinstance(value, list):
        return [f"{_field(where, name)} is missing from the input" for name in value if name not in instance]
    # the error's schema is the (sub)schema holding the keyword: an object for additionalProperties
    if error.validator == "additionalProperties" and isinstance(instance, dict) and isinstance(error.schema, Mapping):
        known = set(error.schema.get("properties", {}))
        extra = sorted(name for name in instance if name not in known)
        takes = ", ".join(error.schema.get("properties", {})) or "no fields"
        return [f"{_field(where, name)} is not an input of the {domain} policy (it takes {takes})" for name in extra]
    if error.validator == "type":
        wanted: list[str] = value if isinstance(value, list) else [str(value)]
        kinds = " or ".join(_ARTICLES.get(kind, f"a {kind}") for kind in wanted)
        return [f"{where or 'the input'} must be {kinds} (got {describe(instance)})"]
    return [f"{where or 'the input'}: {error.message}"]


def _field(where: str, name: str) -> str:
    return f"{where}.{name}" if where else name


def describe(value: Any) -> str:
    """A value's kind as the policies name it (Rego's type_name, a string with its first 40 characters)."""
    if isinstance(value, str):
        return f'string "{value[:40]}"'
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    return "array" if isinstance(value, list) else "object" if isinstance(value, dict) else type(value).__name__


def _shown(path: Path) -> str:
    """`policies/schemas/infra.json`: the path as a user finds it in the project."""
    parts = path.parts
    return "/".join(parts[-3:]) if len(parts) >= 3 else str(path)
