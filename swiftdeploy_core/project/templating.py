"""The one jinja2 environment for the packaged templates (nginx.conf, docker-compose.yml, OPA)."""

from __future__ import annotations

import json
from functools import cache

import jinja2


@cache
def environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("swiftdeploy_core.project", "templates"),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,
    )
    # A YAML double-quoted scalar (JSON strings are valid YAML), for any value from the manifest.
    env.filters["q"] = lambda value: json.dumps(str(value), ensure_ascii=False)
    # The same for docker-compose, where `$` starts an interpolation unless doubled.
    env.filters["cq"] = lambda value: json.dumps(str(value).replace("$", "$$"), ensure_ascii=False)
    return env
