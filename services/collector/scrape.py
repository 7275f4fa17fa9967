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
from swiftdeploy_core.bus.events import MetricSource, Track

REQUESTS = "http_requests_total"
BUCKETS = "http_request_duration_seconds_bucket"
CHAOS = "chaos_active"
MAX_BODY_BYTES = 4_000_000  # a /metrics body larger than this is refused, not parsed
STATUS_LABEL, PATH_LABEL = "status_code", "path"


@dataclass(frozen=True)
class MetricNames:
    """Which families of a service's /metrics the figures read (`services.app_metrics`).

    A service's own label names are renamed to the seed's (`status_code`, `path`) as lines are
    parsed, so the window's maths reads one vocabulary.
    """

    requests: str = REQUESTS  # a counter with a status label (5xx are errors)
    latency: str = BUCKETS.removesuffix("_bucket")  # a histogram (its _bucket series)
    status_label: str = STATUS_LABEL
    path_label: str = PATH_LABEL  # control-plane paths (/metrics, /healthz, /chaos) never count

    @property
    def buckets(self) -> str:
        return f"{self.latency}_bucket"

    @property
    def wanted(self) -> tuple[str, ...]:
        """Line prefixes worth parsing (the sample name is checked after)."""
        return (self.requests, self.buckets, CHAOS)

    def canonical(self, name: str) -> str:
        """The seed's name for one of these families' sample names."""
        return REQUESTS if name == self.requests else BUCKETS if name == self.buckets else name

    def relabel(self, labels: dict[str, str]) -> dict[str, str]:
        renames = {self.status_label: STATUS_LABEL, self.path_label: PATH_LABEL}
        return {renames.get(k, k): v for k, v in labels.items()}


SEED_NAMES = MetricNames()


@dataclass(frozen=True)
class Target:
    """One instance to scrape, and where its figures belong."""

    url: str  # the instance's base URL, e.g. http://127.0.0.1:41234
    project: str
    track: Track = "stable"
    version: str | None = None
    # "router": the figures come from nginx's log; the scrape only says whether the instance
    # answers (any HTTP answer, even a 404 from a service without /metrics) and reads its chaos gauge.
    source: MetricSource = "app"
    names: MetricNames = SEED_NAMES
    instance: str | None = None  # the container id or pid behind the URL (a new one may reuse the URL)

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


Entry = tuple[str, Labels, float | None, float]  # (sample name, labels without le, le, value)


class LineCache:
    """prometheus_client's parser, fed only the sample lines the figures need and not already
    parsed in the target's previous scrape.

    Parsing is nearly all of the collector's CPU, and an idle route's lines (its buckets, its
    rare 5xx counter) repeat from one scrape to the next. A sample line parses the same wherever
    it stands (the HELP/TYPE comments only name families), so an identical line is taken from
    the previous scrape's results and only new lines go through `text_string_to_metric_families`,
    one sample per line.
    """

    __slots__ = ("_previous", "names")

    def __init__(self, names: MetricNames = SEED_NAMES) -> None:
        self._previous: dict[str, Entry] = {}
        self.names = names

    def parse(self, text: str, at: float) -> Scrape:
        entries: dict[str, Entry] = {}
        missed: list[str] = []
        previous, wanted, names = self._previous, self.names.wanted, self.names
        for line in text.split("\n"):
            line = line.strip()
            if not line.startswith(wanted):
                continue
            entry = previous.get(line)
            if entry is None:
                missed.append(line)
            else:
                entries[line] = entry
        if missed:
            samples = [s for family in text_string_to_metric_families("\n".join(missed)) for s in family.samples]
            if len(samples) != len(missed):
                raise ValueError(f"{len(missed)} sample lines gave {len(samples)} samples")
            for line, sample in zip(missed, samples):
                labels = sample.labels if names is SEED_NAMES else names.relabel(sample.labels)
                entries[line] = _entry(names.canonical(sample.name), labels, sample.value)
        self._previous = entries
        return _scrape(at, entries.values())


def parse(text: str, at: float) -> Scrape:
    """Keep the request counters, the latency buckets and the chaos gauge of one exposition."""
    return LineCache().parse(text, at)


def _entry(name: str, labels: dict[str, str], value: float) -> Entry:
    le = float(labels["le"]) if name == BUCKETS else None
    return name, labels_of(labels), le, value


# Requests the control plane itself makes (scrapes, health probes, chaos injections) are not
# application traffic: counted, they would dilute the error rate and P99 and let a canary that
# served no user reach the policy's minimum request count on scrapes alone.
OPERATIONAL_PATHS = frozenset({"/metrics", "/healthz", "/chaos"})


def _operational(labels: Labels) -> bool:
    return any(name == "path" and value in OPERATIONAL_PATHS for name, value in labels)


def _scrape(at: float, entries: Iterable[Entry]) -> Scrape:
    requests: dict[Labels, float] = {}
    buckets: dict[BucketKey, float] = {}
    chaos: int | None = None
    for name, labels, le, value in entries:
        if name in (REQUESTS, BUCKETS) and _operational(labels):
            continue
        if name == REQUESTS:
            requests[labels] = value
        elif name == BUCKETS and le is not None:
            buckets[(labels, le)] = value
        elif name == CHAOS:
            chaos = int(value)
    return Scrape(at=at, requests=requests, buckets=buckets, chaos=chaos)


class Scraper:
    """Concurrent scrapes over one shared HTTP session (keep-alive to every target)."""

    def __init__(self, timeout: float, session: aiohttp.ClientSession | None = None) -> None:
        self.timeout = timeout
        self._session = session
        self._owns_session = session is None
        self._caches: dict[str, LineCache] = {}

    async def __aenter__(self) -> Scraper:
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
            scrape = self._cache(target).parse(text, at)
        except TimeoutError:
            return self._failed(target, at, started, f"no answer within {self.timeout:g}s")
        except aiohttp.ClientResponseError as exc:
            if target.source == "router":  # it answered: up, with no figures of its own
                return Outcome(target, at, time.perf_counter() - started, scrape=Scrape(at=at))
            return self._failed(target, at, started, _describe(exc))
        except aiohttp.ClientError as exc:
            return self._failed(target, at, started, _describe(exc))
        except ValueError as exc:  # the parser's complaint about a malformed exposition
            if target.source == "router":  # answered with something that is not Prometheus text
                return Outcome(target, at, time.perf_counter() - started, scrape=Scrape(at=at))
            return self._failed(target, at, started, f"unparsable /metrics: {exc}")
        return Outcome(target, at, time.perf_counter() - started, scrape=scrape)

    def _cache(self, target: Target) -> LineCache:
        cache = self._caches.get(target.url)
        if cache is None or cache.names != target.names:
            cache = self._caches[target.url] = LineCache(target.names)
        return cache

    async def scrape_all(self, targets: Iterable[Target]) -> list[Outcome]:
        targets = list(targets)
        wanted = {target.url for target in targets}
        for url in [url for url in self._caches if url not in wanted]:
            del self._caches[url]  # a target that left forgets its lines
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
