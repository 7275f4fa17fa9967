"""Scraping: fetch many targets' /metrics concurrently, each bounded by its own timeout.

A scrape is stamped with the time it started (as Prometheus stamps it) and parsed with
prometheus_client's text parser into the few counters the figures need. One slow or hung
target only costs its own timeout; the others finish, and are parsed, on their own.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from dataclasses import dataclass

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from services.collector.window import BucketKey, Labels, Scrape, labels_of
from swiftdeploy_core.events import Track

REQUESTS = "http_requests_total"
BUCKETS = "http_request_duration_seconds_bucket"
CHAOS = "chaos_active"
MAX_BODY_BYTES = 4_000_000  # a /metrics body larger than this is refused, not parsed


@dataclass(frozen=True)
class Target:
    """One instance to scrape, and where its figures belong."""

    url: str  # the instance's base URL, e.g. http://127.0.0.1:41234
    project: str
    track: Track = "stable"
    version: str | None = None

    @property
    def metrics_url(self) -> str:
        base = self.url.rstrip("/")
        return base if base.endswith("/metrics") else f"{base}/metrics"


@dataclass(frozen=True)
class Outcome:
    """The result of one scrape: a parsed `scrape`, or the `error` that stopped it."""

    target: Target
    at: float
    duration: float
    scrape: Scrape | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.scrape is not None


def parse(text: str, at: float) -> Scrape:
    """Keep the request counters, the latency buckets and the chaos gauge of one exposition."""
    requests: dict[Labels, float] = {}
    buckets: dict[BucketKey, float] = {}
    chaos: int | None = None
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == REQUESTS:
                requests[labels_of(sample.labels)] = sample.value
            elif sample.name == BUCKETS:
                buckets[(labels_of(sample.labels), float(sample.labels["le"]))] = sample.value
            elif sample.name == CHAOS:
                chaos = int(sample.value)
    return Scrape(at=at, requests=requests, buckets=buckets, chaos=chaos)


class Scraper:
    """Concurrent scrapes over one shared HTTP session (keep-alive to every target)."""

    def __init__(self, timeout: float, session: aiohttp.ClientSession | None = None) -> None:
        self.timeout = timeout
        self._session = session
        self._owns_session = session is None

    async def __aenter__(self) -> "Scraper":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=300)
            self._session = aiohttp.ClientSession(connector=connector)
        return self._session

    async def close(self) -> None:
        if self._session is not None and self._owns_session:
            await self._session.close()
        self._session = None

    async def scrape(self, target: Target) -> Outcome:
        at, started = time.time(), time.perf_counter()
        try:
            async with asyncio.timeout(self.timeout):
                text = await self._fetch(target)
            scrape = parse(text, at)
        except TimeoutError:
            return self._failed(target, at, started, f"no answer within {self.timeout:g}s")
        except aiohttp.ClientError as exc:
            return self._failed(target, at, started, _describe(exc))
        except ValueError as exc:  # the parser's complaint about a malformed exposition
            return self._failed(target, at, started, f"unparsable /metrics: {exc}")
        return Outcome(target, at, time.perf_counter() - started, scrape=scrape)

    async def scrape_all(self, targets: Iterable[Target]) -> list[Outcome]:
        return list(await asyncio.gather(*(self.scrape(target) for target in targets)))

    async def _fetch(self, target: Target) -> str:
        async with self.session.get(target.metrics_url) as response:
            if response.status != 200:
                raise aiohttp.ClientResponseError(
                    response.request_info, (), status=response.status, message=response.reason or ""
                )
            body = await response.content.read(MAX_BODY_BYTES + 1)
            if len(body) > MAX_BODY_BYTES:
                raise ValueError(f"body larger than {MAX_BODY_BYTES} bytes")
            return body.decode(response.charset or "utf-8", "replace")

    @staticmethod
    def _failed(target: Target, at: float, started: float, error: str) -> Outcome:
        return Outcome(target, at, time.perf_counter() - started, error=error)


def _describe(exc: aiohttp.ClientError) -> str:
    if isinstance(exc, aiohttp.ClientResponseError):
        return f"HTTP {exc.status} {exc.message}".strip()
    if isinstance(exc, aiohttp.ClientConnectorError):
        return f"cannot connect: {exc.os_error.strerror or exc.os_error}"
    return f"{type(exc).__name__}: {exc}"
