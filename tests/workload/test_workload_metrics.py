"""The workload's /metrics tells the truth: exact names and labels (read back with
prometheus_client's parser), `promtool check metrics` clean, bounded cardinality, and chaos that
shows up in the numbers a canary analysis reads."""

from __future__ import annotations

import asyncio
import math
import subprocess
import uuid
from collections.abc import Iterator

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.servers import WorkloadServer, require_binary
from workload.metrics import BUCKETS, UNMATCHED_PATH

CONTRACT = {
    "http_requests": ("counter", {"method", "path", "status_code"}),
    "http_request_duration_seconds": ("histogram", {"method", "path", "status_code"}),
    "app_uptime_seconds": ("gauge", set()),
    "app_mode": ("gauge", set()),
    "chaos_active": ("gauge", set()),
}


@pytest.fixture(scope="module")
def canary(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkloadServer]:
    server = WorkloadServer(tmp_path_factory.mktemp("canary"), mode="canary").start()
    yield server
    server.stop()


@pytest.fixture
async def http(canary: WorkloadServer) -> aiohttp.ClientSession:
    connector = aiohttp.TCPConnector(limit=20)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as session:
        yield session
        await session.post(f"{canary.url}/chaos", data='{"mode":"recover"}')


async def scrape(session: aiohttp.ClientSession, server: WorkloadServer) -> str:
    async with session.get(f"{server.url}/metrics") as response:
        assert response.status == 200
        return await response.text()


def families(text: str) -> dict:
    return {family.name: family for family in text_string_to_metric_families(text)}


def value(text: str, sample_name: str, **labels: str) -> float:
    """Sum of the samples named `sample_name` whose labels include `labels`."""
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == sample_name and labels.items() <= sample.labels.items()
    )


def buckets(text: str, **labels: str) -> dict[float, float]:
    out: dict[float, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "http_request_duration_seconds_bucket" and labels.items() <= sample.labels.items():
                bound = float(sample.labels["le"])
                out[bound] = out.get(bound, 0) + sample.value
    return out


def quantile(q: float, before: dict[float, float], after: dict[float, float]) -> float:
    """Prometheus' histogram_quantile over the increase between two scrapes."""
    increase = sorted((bound, after[bound] - before.get(bound, 0)) for bound in after)
    rank = q * increase[-1][1]
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in increase:
        if count >= rank:
            if math.isinf(bound):
                return lower_bound
            return lower_bound + (bound - lower_bound) * (rank - lower_count) / (count - lower_count)
        lower_bound, lower_count = bound, count
    raise AssertionError("unreachable")


async def get(session: aiohttp.ClientSession, url: str) -> int:
    async with session.get(url) as response:
        await response.read()
        return response.status


async def test_metric_names_types_and_labels_are_exactly_the_contract(http, canary):
    await get(http, f"{canary.url}/")
    await http.post(f"{canary.url}/chaos", data="nope")
    found = families(await scrape(http, canary))
    assert set(found) == set(CONTRACT)
    for name, (kind, label_names) in CONTRACT.items():
        assert found[name].type == kind, name
        for sample in found[name].samples:
            assert set(sample.labels) - {"le"} == label_names, sample
    assert {s.name for s in found["http_requests"].samples} == {"http_requests_total"}
    bounds = {float(s.labels["le"]) for s in found["http_request_duration_seconds"].samples if "le" in s.labels}
    assert bounds == {*BUCKETS, math.inf}
    text = await scrape(http, canary)
    assert value(text, "http_requests_total", method="GET", path="/", status_code="200") >= 1
    assert value(text, "http_requests_total", method="POST", path="/chaos", status_code="400") >= 1


async def test_buckets_are_fine_between_a_tenth_of_a_second_and_one_and_reach_ten():
    between = [b for b in BUCKETS if 0.1 <= b <= 1.0]
    assert len(between) >= 10 and 0.5 in between and BUCKETS[-1] == 10.0


async def test_promtool_finds_nothing_to_complain_about(http, canary):
    promtool = require_binary("promtool")
    for path in ("/", "/healthz", f"/{uuid.uuid4().hex}"):
        await get(http, f"{canary.url}{path}")
    await http.post(f"{canary.url}/chaos", data='{"mode":"error","rate":0.3}')
    result = subprocess.run(
        [promtool, "check", "metrics"], input=await scrape(http, canary), capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == "" and result.stderr.strip() == ""


async def test_random_urls_and_methods_collapse_into_one_series(http, canary):
    for _ in range(30):
        await get(http, f"{canary.url}/{uuid.uuid4().hex}/{uuid.uuid4().hex}")
    async with http.request("BREW", f"{canary.url}/") as response:
        await response.read()
    text = await scrape(http, canary)
    paths = {s.labels["path"] for s in families(text)["http_requests"].samples}
    assert paths <= {"/", "/healthz", "/metrics", "/chaos", UNMATCHED_PATH}
    assert value(text, "http_requests_total", path=UNMATCHED_PATH, status_code="404") >= 30
    methods = {s.labels["method"] for s in families(text)["http_requests"].samples}
    assert "BREW" not in methods and "OTHER" in methods


async def test_gauges_report_mode_uptime_and_each_chaos_state(http, canary, make_workload):
    text = await scrape(http, canary)
    assert value(text, "app_mode") == 1 and value(text, "app_uptime_seconds") > 0
    for body, code in (
        ('{"mode":"slow","duration":0.01}', 1),
        ('{"mode":"error","rate":0.1}', 2),
        ('{"mode":"recover"}', 0),
    ):
        await http.post(f"{canary.url}/chaos", data=body)
        assert value(await scrape(http, canary), "chaos_active") == code, body
    stable = make_workload(mode="stable")
    assert value(await scrape(http, stable), "app_mode") == 0


async def test_error_chaos_at_half_fails_half_of_two_thousand_requests(http, canary):
    before = await scrape(http, canary)
    assert (await http.post(f"{canary.url}/chaos", data='{"mode":"error","rate":0.5}')).status == 200
    statuses = await asyncio.gather(*(get(http, f"{canary.url}/") for _ in range(2000)))
    share = sum(status >= 500 for status in statuses) / len(statuses)
    assert 0.45 <= share <= 0.55, share
    after = await scrape(http, canary)
    served = {code: value(after, "http_requests_total", path="/", status_code=code)
              - value(before, "http_requests_total", path="/", status_code=code) for code in ("200", "500")}  # fmt: skip
    assert served == {"200": statuses.count(200), "500": statuses.count(500)}


async def test_one_second_of_slow_chaos_moves_p99_past_the_one_second_bucket(http, canary):
    for _ in range(50):
        await get(http, f"{canary.url}/")
    before = buckets(await scrape(http, canary), path="/")
    assert (await http.post(f"{canary.url}/chaos", data='{"mode":"slow","duration":1}')).status == 200
    assert set(await asyncio.gather(*(get(http, f"{canary.url}/") for _ in range(10)))) == {200}
    after = buckets(await scrape(http, canary), path="/")
    assert after[1.0] == before[1.0]  # none of the slowed requests fits in le="1.0"
    assert quantile(0.99, before, after) > 1.0


async def test_instrumentation_can_be_switched_off(http, make_workload):
    plain = make_workload(metrics=False)
    for _ in range(5):
        assert await get(http, f"{plain.url}/") == 200
    found = families(await scrape(http, plain))
    assert found["http_requests"].samples == []
    assert value(await scrape(http, plain), "app_mode") == 1


async def test_two_apps_in_one_process_keep_separate_registries_and_leave_the_global_one_alone():
    from prometheus_client import REGISTRY

    from workload import create_app
    from workload.settings import WorkloadSettings

    global_names = {m.name for m in REGISTRY.collect()}
    first, second = (create_app(WorkloadSettings(mode=m)) for m in ("canary", "stable"))
    await first.test_client().get("/")
    texts = [await (await app.test_client().get("/metrics")).get_data(as_text=True) for app in (first, second)]
    assert value(texts[0], "http_requests_total", path="/") == 1
    assert value(texts[1], "http_requests_total", path="/") == 0
    assert (value(texts[0], "app_mode"), value(texts[1], "app_mode")) == (1, 0)
    assert {m.name for m in REGISTRY.collect()} == global_names
