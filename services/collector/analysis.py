"""PromQL analysis queries (`analysis.metrics`): each evaluated against the team's Prometheus.

Every interval, for every track of a project with queries, each query is filled in for the track
(`{{ track }}`, `{{ version }}`, `{{ project }}`, `{{ window }}` as a PromQL duration such as
`60s`) and sent to `<analysis.prometheus.url>/api/v1/query` at the snapshot's evaluation time.
One number comes back, or a `CustomMetric` with no value and the reason: no data, more than one
series, NaN or infinite, the query's error as Prometheus states it, or Prometheus unreachable.
The canary policy denies on a metric without a value (fail closed).
"""

from __future__ import annotations

import asyncio
import math
import re
from typing import Any

import aiohttp

from swiftdeploy_core.bus.events import CustomMetric
from swiftdeploy_core.project.manifest import AnalysisQuery

PLACEHOLDER = re.compile(r"\{\{\s*(track|version|project|window)\s*\}\}")


def render_query(query: str, values: dict[str, str]) -> str:
    """`query` with its `{{ name }}` placeholders replaced (PromQL's own braces are left alone)."""
    return PLACEHOLDER.sub(lambda match: values[match.group(1)], query)


def window_duration(seconds: float) -> str:
    """A PromQL duration for the window, in whole milliseconds when it is not whole seconds."""
    return f"{seconds:g}s" if float(seconds).is_integer() else f"{round(seconds * 1000)}ms"


async def evaluate(
    session: aiohttp.ClientSession, url: str, queries: list[AnalysisQuery], values: dict[str, str],
    at: float, timeout: float,
) -> dict[str, CustomMetric]:  # fmt: skip
    """Every query's value at `at` (unix seconds), by name; concurrent, each bounded by `timeout`."""
    results = await asyncio.gather(
        *(query_value(session, url, render_query(q.query, values), at, timeout) for q in queries)
    )
    return {q.name: result for q, result in zip(queries, results)}


async def query_value(session: aiohttp.ClientSession, url: str, expr: str, at: float, timeout: float) -> CustomMetric:
    endpoint = f"{url.rstrip('/')}/api/v1/query"
    try:
        async with asyncio.timeout(timeout):
            async with session.post(endpoint, data={"query": expr, "time": f"{at:.3f}"}) as response:
                body = await response.json(content_type=None)
    except TimeoutError:
        return missing(f"Prometheus at {url} did not answer within {timeout:g}s")
    except aiohttp.ClientConnectorError as exc:
        return missing(f"Prometheus at {url} is unreachable: {exc.os_error.strerror or exc.os_error}")
    except (aiohttp.ClientError, ValueError) as exc:
        return missing(f"Prometheus at {url} gave no usable answer: {type(exc).__name__}: {exc}")
    return value_of(body)


def missing(reason: str) -> CustomMetric:
    """No value, and why. Double quotes and backslashes become single quotes and slashes: the
    reason reaches the policy's deny messages, and regopy 1.5 does not escape them in its output
    (Prometheus' own errors quote the parameter: `invalid parameter "query"`)."""
    return CustomMetric(reason=reason.replace('"', "'").replace("\\", "/"))


def value_of(body: Any) -> CustomMetric:
    """The single number in a `/api/v1/query` answer, or why there is none."""
    if not isinstance(body, dict):
        return missing("Prometheus' answer is not a JSON object")
    if body.get("status") != "success":
        return missing(f"query failed: {body.get('errorType', 'error')}: {body.get('error', 'unknown')}")
    data = body.get("data") or {}
    kind, result = data.get("resultType"), data.get("result")
    if kind not in ("scalar", "vector") or not isinstance(result, list):
        return missing(f"the query returned a {kind}, not a single number")
    if kind == "vector" and not result:
        return missing("no data: the query returned an empty result")
    if kind == "vector" and len(result) > 1:
        return missing(f"the query returned {len(result)} series; aggregate it to one (sum, max...)")
    try:
        raw = result[1] if kind == "scalar" else result[0]["value"][1]
        value = float(raw)
    except (IndexError, KeyError, TypeError, ValueError):
        return missing(f"Prometheus' {kind} answer is malformed")
    if math.isnan(value) or math.isinf(value):
        return missing(f"the query's value is {raw} (a division by zero, or no traffic?)")
    return CustomMetric(value=value)
