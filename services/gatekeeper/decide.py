"""Fail-closed mapping from whatever an engine returned to a `Verdict`, and the exact reasons.

Pure functions, shared by both engines so that their answers agree: the domain and input checks
made before asking, and the reading of the answer (`allow` must be a boolean, `deny` a list of
strings, `inconclusive` a boolean when present: not allowed, and not a failure either). Anything
unexpected denies with a reason that says which check failed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from policies import json_safe


class _Undefined:
    """The document a query names does not exist (OPA answers without a `result`)."""

    def __repr__(self) -> str:
        return "UNDEFINED"


UNDEFINED: Any = _Undefined()


@dataclass(frozen=True)
class Verdict:
    """A decision: allow or not, and every reason why not (sorted, so engines compare equal), the
    revision of the policy files it was made with and, when the engine's policies differ from the
    project's files, a line saying so (neither compared: engines hash alike files)."""

    allow: bool
    reasons: tuple[str, ...] = ()
    revision: str = field(default="", compare=False)
    drift: str = field(default="", compare=False)
    # Not allowed, and no failure either: the policy saw too little to judge (its `inconclusive`).
    inconclusive: bool = False

    @classmethod
    def deny(cls, *reasons: str) -> Verdict:
        return cls(False, tuple(sorted(reasons)))


DOMAIN_PATTERN = re.compile(r"^[a-z_][a-z0-9_]*(\.[a-z_][a-z0-9_]*)*$")
MAX_INPUT_DEPTH = 32  # policy inputs are flat; deeper nesting is refused before any engine sees it


def domain_problem(domain: Any) -> str | None:
    """Why `domain` cannot name a policy package, or None."""
    if not isinstance(domain, str) or not DOMAIN_PATTERN.match(domain):
        return f"invalid policy domain {domain!r}: expected a package name such as 'infra' or 'canary'"
    return None


def input_problem(input: Any) -> str | None:
    """Why `input` cannot be a policy input document, or None (the policy judges its fields)."""
    if not isinstance(input, dict):
        return f"policy input must be a JSON object (got {_kind(input)})"
    if _deeper_than(input, MAX_INPUT_DEPTH):
        return f"policy input is nested more than {MAX_INPUT_DEPTH} levels deep"
    return None


def _deeper_than(value: Any, limit: int) -> bool:
    level: list[Any] = [value]
    for _ in range(limit + 1):
        level = [
            item
            for node in level
            for item in (node.values() if isinstance(node, dict) else node)
            if isinstance(item, (dict, list))
        ]
        if not level:
            return False
    return True


def engine_input(input: dict[str, Any]) -> dict[str, Any]:
    """The input as every engine receives it: NaN and infinities spelled out, huge ints as floats."""
    safe: dict[str, Any] = json_safe(input)
    return safe


def verdict(domain: str, document: Any) -> Verdict:
    """Read the document at `data.<domain>`: {"allow": bool, "deny": [reason, ...], "inconclusive": bool}."""
    where = f"data.{domain}"
    if document is UNDEFINED:
        return Verdict.deny(f"policy undefined: {where} has no result")
    if not isinstance(document, dict):
        return Verdict.deny(f"policy result malformed: {where} is {_kind(document)}, not an object with allow and deny")
    if "allow" not in document:
        return Verdict.deny(f"policy result malformed: {where}.allow is missing")
    allow = document["allow"]
    if not isinstance(allow, bool):
        return Verdict.deny(f"policy result malformed: {where}.allow is not a boolean (got {_kind(allow)})")
    deny = document.get("deny", [])
    if not isinstance(deny, list) or not all(isinstance(reason, str) for reason in deny):
        return Verdict.deny(f"policy result malformed: {where}.deny is not a list of strings")
    inconclusive = document.get("inconclusive", False)  # a policy without the rule is never inconclusive
    if not isinstance(inconclusive, bool):
        return Verdict.deny(
            f"policy result malformed: {where}.inconclusive is not a boolean (got {_kind(inconclusive)})"
        )
    if allow and not deny:
        if inconclusive:
            return Verdict.deny(f"policy result malformed: {where} both allows and is inconclusive")
        return Verdict(True, ())
    if not deny:
        return Verdict.deny(f"policy {where} denied without giving a reason")
    # An allow that still lists reasons is treated as a deny, and never as inconclusive.
    return Verdict(False, tuple(sorted(deny)), inconclusive=inconclusive and not allow)


def _kind(value: Any) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", int: "a number", float: "a number"}
    return "null" if value is None else names.get(type(value), type(value).__name__)
