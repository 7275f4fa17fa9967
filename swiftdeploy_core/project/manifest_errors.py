"""Manifest problems as one-line messages: `field.path: what is wrong (got value)`.

Pydantic's errors are rephrased for people editing YAML (ranges, "quote it", did-you-mean for
unknown keys), and every value shown is bounded, even for huge or alias-built structures.
"""

from __future__ import annotations

import difflib
import math
import reprlib
from typing import Any

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails


def describe_errors(exc: ValidationError, root: type[BaseModel]) -> list[str]:
    """Turn pydantic's errors into `field.path: problem (got value)` lines, unknown keys first."""
    lines: list[tuple[int, str]] = []
    for err in exc.errors():
        field = ".".join(_key(part) for part in err["loc"]) or "(top level)"
        lines.append((0 if err["type"] == "extra_forbidden" else 1, f"{field}: {_explain(err, root)}"))
    return [line for _, line in sorted(lines, key=lambda pair: pair[0])]


def _key(part: Any) -> str:
    """One step of a field path; a key with spaces, dots or control characters is quoted."""
    text = str(part)
    plain = text and text.isprintable() and not any(c in text for c in " .'\"")
    return text if plain and len(text) <= 40 else show(text)


_RANGE_WORDS = {
    "greater_than_equal": "at least",
    "less_than_equal": "at most",
    "greater_than": "greater than",
    "less_than": "less than",
}


def _explain(err: ErrorDetails, root: type[BaseModel]) -> str:
    kind, ctx, got = err["type"], err.get("ctx") or {}, err.get("input")
    loc = err["loc"]
    if kind == "extra_forbidden":
        allowed = _allowed_keys(root, loc[:-1])
        close = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
        hint = f"; did you mean '{close[0]}'?" if close else f"; allowed keys: {', '.join(allowed)}"
        return f"unknown key{hint}"
    if kind == "missing":
        return "is required"
    if kind in _RANGE_WORDS:
        low, high = _bounds(root, loc)
        if low is not None and high is not None:
            return f"must be between {num(low)} and {num(high)} (got {show(got)})"
        bound = next(iter(ctx.values()), "?")
        return f"must be {_RANGE_WORDS[kind]} {num(bound)} (got {show(got)})"
    if kind in ("int_type", "int_parsing", "int_from_float"):
        return f"must be a whole number (got {show(got)})"
    if kind in ("float_type", "float_parsing", "finite_number"):
        return f"must be a number (got {show(got)})"
    if kind == "string_type":
        return f"must be a string (got {show(got)}; quote it)"
    if kind in ("enum", "literal_error"):
        expected = ctx.get("expected", "")
        return f"must be one of {expected} (got {show(got)})"
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return f"must be a mapping of fields (got {kind_of(got)})"
    if kind == "list_type":
        return f"must be a list (got {kind_of(got)})"
    if kind == "string_pattern_mismatch":
        return f"has an invalid format (got {show(got)}; expected pattern {ctx.get('pattern')})"
    if kind in ("string_too_short", "too_short"):
        return "must not be empty"
    if kind in ("string_too_long", "too_long"):
        return f"is too long (got {show(got)})"
    if kind == "value_error":
        return str(ctx.get("error", err["msg"]))
    return f"{err['msg']} (got {show(got)})"


def _section_model(root: type[BaseModel], loc: tuple[int | str, ...]) -> type[BaseModel] | None:
    model: type[BaseModel] | None = root
    for part in loc:
        if model is None or not isinstance(part, str) or part not in model.model_fields:
            return None
        annotation = model.model_fields[part].annotation
        model = annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None
    return model


def _allowed_keys(root: type[BaseModel], loc: tuple[int | str, ...]) -> list[str]:
    model = _section_model(root, tuple(loc))
    return sorted(model.model_fields) if model else []


def _bounds(root: type[BaseModel], loc: tuple[int | str, ...]) -> tuple[Any, Any]:
    model = _section_model(root, tuple(p for p in loc[:-1] if isinstance(p, str)))
    field_name = next((p for p in reversed(loc) if isinstance(p, str)), None)
    if model is None or field_name not in model.model_fields:
        return None, None
    low = high = None
    for meta in model.model_fields[field_name].metadata:
        low = getattr(meta, "ge", None) if getattr(meta, "ge", None) is not None else low
        low = getattr(meta, "gt", None) if getattr(meta, "gt", None) is not None else low
        high = getattr(meta, "le", None) if getattr(meta, "le", None) is not None else high
        high = getattr(meta, "lt", None) if getattr(meta, "lt", None) is not None else high
    return low, high


def num(value: Any) -> str:
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return str(int(value))
    return str(value)


_SHORT = reprlib.Repr()
_SHORT.maxlevel, _SHORT.maxstring, _SHORT.maxother, _SHORT.maxlist, _SHORT.maxdict = 2, 50, 50, 4, 4


def show(value: Any) -> str:
    """A short, one-line rendering of a bad value (bounded even for huge or aliased structures)."""
    try:
        text = _SHORT.repr(value) if isinstance(value, (str, list, dict, tuple, set, bytes)) else str(value)
    except ValueError:  # e.g. an integer with more digits than Python will print
        text = f"a {type(value).__name__} too large to show"
    text = " ".join(text.split())
    return text if len(text) <= 60 else text[:57] + "..."


def codepoint(character: Any) -> str:
    code = character if isinstance(character, int) else ord(character[:1] or "\0")
    return f"U+{code:04X}"


def kind_of(value: Any) -> str:
    names = {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean", int: "a number", float: "a number"}
    return names.get(type(value), type(value).__name__) if value is not None else "nothing"
