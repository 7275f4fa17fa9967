"""Bounds every input is checked against before it is parsed: nesting depth and integer size.

A parser given a document nested a thousand levels deep, or an integer of 5,000 digits, fails
in its own way (RecursionError, "Exceeds the limit (4300 digits)", a serializer error) far from
the field that caused it. These checks run first, on the raw text, and raise `InputTooLarge`
(a ValueError) with one line that says where and what the limit is.

- User input (a manifest, `policy check --input`, a decision's input at the gatekeeper):
  `INPUT_MAX_DEPTH` levels, `INPUT_MAX_DIGITS` digits in an integer.
- Any event read from the bus: `EVENT_MAX_DEPTH` (looser: an event carries a user's document
  inside its envelope). Its integers are not scanned on this hot path: the envelope's JSON
  parser refuses numbers out of range itself ("number out of range", a ValueError), and the
  gatekeeper bounds a decision's input with the user-input limits.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from typing import Any

INPUT_MAX_DEPTH = 32
INPUT_MAX_DIGITS = 20
EVENT_MAX_DEPTH = 64

_JSON_TOKENS = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{}]|[-+]?[0-9][0-9.eE+-]*')
_OPENERS = frozenset("[{")


@functools.cache
def _digit_run(max_digits: int) -> re.Pattern[bytes]:
    return re.compile(rb"[0-9]{%d}" % (max_digits + 1))


class InputTooLarge(ValueError):
    """A document is nested too deeply or holds a number too long to parse safely."""


def check_json_text(text: str | bytes, max_depth: int, max_digits: int | None, what: str = "the document") -> None:
    """Raise `InputTooLarge` when the JSON `text` nests deeper than `max_depth` or holds an
    integer of more than `max_digits` digits (None: not checked). Strings are skipped; nothing
    is parsed.

    Cheap for the common case: when the text has fewer brackets than the depth and no digit
    run longer than the limit, nothing is tokenized at all."""
    raw = text.encode() if isinstance(text, str) else text
    few_brackets = raw.count(b"{") + raw.count(b"[") <= max_depth
    if few_brackets and (max_digits is None or _digit_run(max_digits).search(raw) is None):
        return
    text = raw.decode("utf-8", "replace")
    depth = 0
    for match in _JSON_TOKENS.finditer(text):
        token = match.group()
        first = token[0]
        if first in _OPENERS:
            depth += 1
            if depth > max_depth:
                raise InputTooLarge(f"{what} is nested more than {max_depth} levels deep (at offset {match.start()})")
        elif first in "]}":
            depth -= 1
        elif first != '"' and not any(c in token for c in ".eE"):  # an integer (floats parse safely)
            digits = len(token.lstrip("+-"))
            if max_digits is not None and digits > max_digits:
                raise InputTooLarge(
                    f"{what} holds a number of {digits} digits at offset {match.start()} (at most {max_digits})"
                )


def check_value(value: Any, max_depth: int, max_digits: int, where: str = "input") -> None:
    """The same bounds on an already-built value (a dict from YAML, a payload field): raise
    `InputTooLarge` naming the path of the first field that is too deep or too long."""
    stack: list[tuple[Any, str, int]] = [(value, where, 1)]
    seen: set[int] = set()  # YAML aliases can share (or loop back to) a container
    while stack:
        item, path, depth = stack.pop()
        if len(path) > 80:
            path = f"{path[:40]}…{path[-30:]}"
        if isinstance(item, bool):
            continue
        if isinstance(item, int):
            if abs(item) >= 10**max_digits:
                raise InputTooLarge(f"{path}: a whole number of more than {max_digits} digits is too large")
            continue
        if not isinstance(item, Mapping | list | tuple):
            continue
        if depth > max_depth:
            raise InputTooLarge(f"{path}: nested more than {max_depth} levels deep")
        if id(item) in seen:
            continue
        seen.add(id(item))
        children = item.items() if isinstance(item, Mapping) else enumerate(item)
        stack.extend((child, f"{path}.{key}" if isinstance(item, Mapping) else f"{path}[{key}]", depth + 1)
                     for key, child in children)  # fmt: skip
