"""The rollout as a mermaid gantt chart: how long each version served, each canary weight held,
and where chaos, blocks and rollbacks happened."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

Entry = dict[str, Any]
DATE_FORMAT = "YYYY-MM-DD HH:mm:ss.SSS"


@dataclass
class Span:
    section: str
    name: str
    start: str
    end: str | None = None
    tag: str = ""


def _when(timestamp: str) -> str:
    """`2026-11-26T07:03:16.123Z` → `2026-11-26 07:03:16.123` (the chart's dateFormat)."""
    return timestamp.replace("T", " ").rstrip("Z")


def _name(text: str) -> str:
    """Task names may not hold mermaid's separators."""
    return re.sub(r"[:;#\n\r]", " ", text).strip() or "?"


class _Chart:
    def __init__(self) -> None:
        self.spans: list[Span] = []
        self.open: dict[str, Span] = {}

    def begin(self, key: str, span: Span) -> None:
        self.finish(key, span.start)
        self.open[key] = span
        self.spans.append(span)

    def finish(self, key: str, when: str) -> None:
        span = self.open.pop(key, None)
        if span is not None:
            span.end = when

    def mark(self, name: str, when: str, tag: str = "") -> None:
        self.spans.append(Span("events", name, when, when, f"{tag}milestone"))

    def close_all(self, when: str) -> None:
        for key in list(self.open):
            self.finish(key, when)


def _chaos_name(entry: Entry) -> str:
    mode = entry.get("chaos_mode", "?")
    detail = f" rate {entry['rate']}" if entry.get("rate") is not None else ""
    detail += f" {entry['duration']}s" if entry.get("duration") is not None else ""
    return f"chaos {mode}{detail}"


def _apply(chart: _Chart, entry: Entry) -> None:
    kind, when = entry.get("type"), entry["timestamp"]
    if kind == "deploy.started":
        chart.begin("deploy", Span("deploy", f"deploy {entry.get('version')}", when))
    elif kind in ("deploy.completed", "deploy.failed", "deploy.blocked"):
        chart.finish("deploy", when)
        if kind == "deploy.completed":
            chart.begin("stable", Span("stable", f"stable {entry.get('version')}", when, tag="done"))
        else:
            chart.mark(kind.replace(".", " "), when, "crit, ")
    elif kind == "canary.started":
        chart.begin("canary", Span("canary", f"canary {entry.get('version')}", when, tag="active"))
        chart.begin("weight", Span("canary", f"{entry.get('weight')}% of traffic", when))
    elif kind == "canary.weight_changed":
        name = f"{entry.get('weight')}% of traffic"
        if "weight" not in chart.open or chart.open["weight"].name != name:
            chart.begin("weight", Span("canary", name, when))
    elif kind == "promotion.completed":
        chart.finish("canary", when)
        chart.finish("weight", when)
        chart.begin("stable", Span("stable", f"stable {entry.get('version')}", when, tag="done"))
        chart.mark("promoted", when)
    elif kind == "rollback.completed":
        chart.finish("canary", when)
        chart.finish("weight", when)
        chart.mark("automatic rollback" if entry.get("automatic") else "rollback", when, "crit, ")
    elif kind == "promotion.blocked":
        chart.mark("promotion blocked", when, "crit, ")
    elif kind == "chaos.injected":
        chart.mark(_chaos_name(entry), when)
    elif kind == "teardown.completed":
        chart.close_all(when)


def rollout_gantt(entries: list[Entry], title: str = "Rollout") -> list[str]:
    """The chart's lines (inside a ```mermaid fence), or [] when nothing was rolled out."""
    chart = _Chart()
    for entry in entries:
        if "timestamp" in entry:
            _apply(chart, entry)
    if not chart.spans:
        return []
    chart.close_all(entries[-1]["timestamp"])
    lines = ["gantt", f"    title {_name(title)}", f"    dateFormat {DATE_FORMAT}", "    axisFormat %H:%M:%S"]
    for section in ("deploy", "stable", "canary", "events"):
        spans = [s for s in chart.spans if s.section == section]
        if spans:
            lines.append(f"    section {section}")
        for number, span in enumerate(spans, start=1):
            tag = f"{span.tag}, " if span.tag else ""
            end = _when(span.end or span.start)
            if span.tag.endswith("milestone"):
                end = "0s"
            lines.append(f"    {_name(span.name)} :{tag}{section[0]}{number}, {_when(span.start)}, {end}")
    return lines
