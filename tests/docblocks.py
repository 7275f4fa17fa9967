"""Generated blocks in Markdown files: `<!-- name -->` … `<!-- /name -->`, filled by the README
updater and the benchmarks that write their figures into docs/."""

from __future__ import annotations

import re


def replace_block(text: str, name: str, body: str) -> str:
    """`text` with the block `name` holding `body`; SystemExit when the file has no such block."""
    pattern = re.compile(rf"(<!-- {re.escape(name)} -->\n).*?(<!-- /{re.escape(name)} -->)", re.DOTALL)
    if not pattern.search(text):
        raise SystemExit(f"no <!-- {name} --> ... <!-- /{name} --> block to fill")
    return pattern.sub(lambda m: m.group(1) + body.rstrip() + "\n" + m.group(2), text)
