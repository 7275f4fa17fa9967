"""Both engines give the same answer, reason for reason, on the same policies: the embedded regopy
engine and the OPA REST client (against a server speaking OPA's Data API over real HTTP)."""

from __future__ import annotations

import math

import pytest

from services.gatekeeper.embedded import EmbeddedEngine
from services.gatekeeper.engines import Verdict
from services.gatekeeper.opa import OpaEngine

MISSING_DISK = "disk_free_gb is missing from the input"
MISSING_CPU = "cpu_load is missing from the input"
MISSING_RATE = "error_rate is missing from the input"
MISSING_P99 = "p99_latency_ms is missing from the input"
MISSING_REQUESTS = "requests is missing from the input"


def few(n: str) -> str:
    return f"only {n} requests in the window, below the minimum of 20: too little traffic to judge the canary"


def healthy_canary(**fields):
    return {"error_rate": 0.001, "p99_latency_ms": 120, "requests": 400, **fields}


ALLOW: tuple[str, ...] = ()
# Rows whose answer is inconclusive (some traffic, too little, nothing else wrong): not allowed,
# with the too-little-traffic reason, and `inconclusive` set.
INCONCLUSIVE = {
    "min_requests edge: one short",
    "min_requests edge: a fraction short",
    "a trickle of traffic",
    "a single request",
}
DEEP: list = []
for _ in range(5000):
    DEEP = [DEEP]
TABLE = [
    # --- infra: thresholds (disk free >= 10 GB, CPU load <= 2.0) -------------------------------
    ("healthy host", "infra", {"disk_free_gb": 50, "cpu_load": 0.5}, ALLOW),
    ("exactly at both thresholds", "infra", {"disk_free_gb": 10, "cpu_load": 2.0}, ALLOW),
    ("thresholds as int and float", "infra", {"disk_free_gb": 10.0, "cpu_load": 2}, ALLOW),
    ("disk just over the minimum", "infra", {"disk_free_gb": 10.01, "cpu_load": 1}, ALLOW),
    (
        "disk just under the minimum",
        "infra",
        {"disk_free_gb": 9.99, "cpu_load": 1},
        ("disk free 9.99 GB is below the minimum of 10 GB",),
    ),
    (
        "disk a hair under never prints as 10",
        "infra",
        {"disk_free_gb": 9.9999, "cpu_load": 1},
        ("disk free 9.99 GB is below the minimum of 10 GB",),
    ),
    (
        "the seed's example",
        "infra",
        {"disk_free_gb": 8.5, "cpu_load": 2.4},
        ("CPU load 2.4 is above the maximum of 2", "disk free 8.5 GB is below the minimum of 10 GB"),
    ),
    ("no disk left", "infra", {"disk_free_gb": 0, "cpu_load": 0}, ("disk free 0 GB is below the minimum of 10 GB",)),
    ("cpu just under the maximum", "infra", {"disk_free_gb": 50, "cpu_load": 1.99}, ALLOW),
    (
        "cpu just over the maximum",
        "infra",
        {"disk_free_gb": 50, "cpu_load": 2.01},
        ("CPU load 2.01 is above the maximum of 2",),
    ),
    (
        "cpu a hair over never prints as 2",
        "infra",
        {"disk_free_gb": 50, "cpu_load": 2.0001},
        ("CPU load 2.01 is above the maximum of 2",),
    ),
    ("idle cpu", "infra", {"disk_free_gb": 50, "cpu_load": 0}, ALLOW),
    ("extra fields are ignored", "infra", {"disk_free_gb": 50, "cpu_load": 1, "host": "web-1", "cores": 8}, ALLOW),
    # --- infra: inputs the policy must refuse ------------------------------------------------
    ("empty input", "infra", {}, (MISSING_CPU, MISSING_DISK)),
    ("cpu missing", "infra", {"disk_free_gb": 50}, (MISSING_CPU,)),
    (
        "disk as a string",
        "infra",
        {"disk_free_gb": "lots", "cpu_load": 1},
        ('disk_free_gb must be a number (got string "lots")',),
    ),
    (
        "disk as a numeric string",
        "infra",
        {"disk_free_gb": "50", "cpu_load": 1},
        ('disk_free_gb must be a number (got string "50")',),
    ),
    (
        "cpu as a boolean",
        "infra",
        {"disk_free_gb": 50, "cpu_load": False},
        ("cpu_load must be a number (got boolean)",),
    ),
    ("cpu null", "infra", {"disk_free_gb": 50, "cpu_load": None}, ("cpu_load must be a number (got null)",)),
    ("cpu NaN", "infra", {"disk_free_gb": 50, "cpu_load": math.nan}, ('cpu_load must be a number (got string "NaN")',)),
    (
        "disk infinite",
        "infra",
        {"disk_free_gb": math.inf, "cpu_load": 1},
        ('disk_free_gb must be a number (got string "Infinity")',),
    ),
    ("disk negative", "infra", {"disk_free_gb": -5, "cpu_load": 1}, ("disk_free_gb must not be negative (got -5)",)),
    (
        "cpu slightly negative",
        "infra",
        {"disk_free_gb": 50, "cpu_load": -0.001},
        ("cpu_load must not be negative (got -0.01)",),
    ),
    (
        "disk absurdly large",
        "infra",
        {"disk_free_gb": 1e13, "cpu_load": 1},
        ("disk_free_gb is out of range (magnitude above 1000000000000)",),
    ),
    (
        "cpu a huge integer",
        "infra",
        {"disk_free_gb": 50, "cpu_load": 2**70},
        ("cpu_load is out of range (magnitude above 1000000000000)",),
    ),
    ("disk a list", "infra", {"disk_free_gb": [50], "cpu_load": 1}, ("disk_free_gb must be a number (got array)",)),
    (
        "cpu an object",
        "infra",
        {"disk_free_gb": 50, "cpu_load": {"1m": 0.5}},
        ("cpu_load must be a number (got object)",),
    ),
    # --- canary: thresholds (error rate <= 1%, P99 <= 500 ms, requests >= 20) -----------------
    ("healthy canary", "canary", healthy_canary(), ALLOW),
    ("exactly at every threshold", "canary", {"error_rate": 0.01, "p99_latency_ms": 500, "requests": 20}, ALLOW),
    ("error rate just under", "canary", healthy_canary(error_rate=0.0099), ALLOW),
    (
        "error rate just over",
        "canary",
        healthy_canary(error_rate=0.0101),
        ("error rate 1.01% is above the maximum of 1%",),
    ),
    (
        "error rate a hair over never prints as 1%",
        "canary",
        healthy_canary(error_rate=0.010001),
        ("error rate 1.01% is above the maximum of 1%",),
    ),
    (
        "error rate with float noise",
        "canary",
        healthy_canary(error_rate=0.29),
        ("error rate 29% is above the maximum of 1%",),
    ),
    ("every request failing", "canary", healthy_canary(error_rate=1), ("error rate 100% is above the maximum of 1%",)),
    ("no errors at all", "canary", healthy_canary(error_rate=0), ALLOW),
    ("p99 just under", "canary", healthy_canary(p99_latency_ms=499.99), ALLOW),
    (
        "p99 just over",
        "canary",
        healthy_canary(p99_latency_ms=500.01),
        ("P99 latency 500.01 ms is above the maximum of 500 ms",),
    ),
    (
        "p99 rounds up",
        "canary",
        healthy_canary(p99_latency_ms=612.341),
        ("P99 latency 612.35 ms is above the maximum of 500 ms",),
    ),
    ("min_requests edge: one short", "canary", healthy_canary(requests=19), (few("19"),)),
    ("min_requests edge: a fraction short", "canary", healthy_canary(requests=19.999), (few("19.99"),)),
    ("min_requests edge: exactly enough", "canary", healthy_canary(requests=20), ALLOW),
    ("a trickle of traffic", "canary", healthy_canary(requests=7.77), (few("7.77"),)),
    ("a single request", "canary", healthy_canary(requests=1), (few("1"),)),
    (
        "a trickle with errors is denied, not inconclusive",
        "canary",
        healthy_canary(requests=5, error_rate=0.2),
        ("error rate 20% is above the maximum of 1%", few("5")),
    ),
    ("requests as a float count", "canary", healthy_canary(requests=400.0), ALLOW),
    ("zero traffic", "canary", {"error_rate": 0, "p99_latency_ms": 0, "requests": 0}, (few("0"),)),
    (
        "zero traffic as the collector reports it",
        "canary",
        {"error_rate": None, "p99_latency_ms": None, "requests": 0},
        (few("0"), "error_rate must be a number (got null)", "p99_latency_ms must be a number (got null)"),
    ),
    (
        "chaos: everything bad",
        "canary",
        {"error_rate": 0.52, "p99_latency_ms": 3000.5, "requests": 4},
        ("P99 latency 3000.5 ms is above the maximum of 500 ms", "error rate 52% is above the maximum of 1%", few("4")),
    ),
    ("extra fields are ignored", "canary", healthy_canary(version="2.0.0", track="canary"), ALLOW),
    # --- canary: inputs the policy must refuse -----------------------------------------------
    ("empty input", "canary", {}, (MISSING_RATE, MISSING_P99, MISSING_REQUESTS)),
    ("only an error rate", "canary", {"error_rate": 0}, (MISSING_P99, MISSING_REQUESTS)),
    (
        "error rate as a percentage string",
        "canary",
        healthy_canary(error_rate="1%"),
        ('error_rate must be a number (got string "1%")',),
    ),
    (
        "error rate above one is not a fraction",
        "canary",
        healthy_canary(error_rate=1.5),
        ("error_rate must be a fraction between 0 and 1 (got 1.5)",),
    ),
    ("error rate negative", "canary", healthy_canary(error_rate=-0.5), ("error_rate must not be negative (got -0.5)",)),
    (
        "p99 NaN",
        "canary",
        healthy_canary(p99_latency_ms=math.nan),
        ('p99_latency_ms must be a number (got string "NaN")',),
    ),
    (
        "p99 -infinity",
        "canary",
        healthy_canary(p99_latency_ms=-math.inf),
        ('p99_latency_ms must be a number (got string "-Infinity")',),
    ),
    ("requests negative", "canary", healthy_canary(requests=-1), ("requests must not be negative (got -1)",)),
    ("requests a boolean", "canary", healthy_canary(requests=True), ("requests must be a number (got boolean)",)),
    (
        "a long string is cut",
        "canary",
        healthy_canary(error_rate="x" * 100),
        (f'error_rate must be a number (got string "{"x" * 40}")',),
    ),
    # --- the request itself --------------------------------------------------------------------
    ("an undefined domain", "nope", {}, ("policy undefined: data.nope has no result",)),
    ("a package that is not a policy", "lib", {}, ("policy result malformed: data.lib.allow is missing",)),
    (
        "a domain that is not a package name",
        "../infra",
        {},
        ("invalid policy domain '../infra': expected a package name such as 'infra' or 'canary'",),
    ),
    ("an input that is not an object", "infra", [1, 2], ("policy input must be a JSON object (got a list)",)),
    (
        "an input nested absurdly deep",
        "infra",
        {"disk_free_gb": 50, "cpu_load": DEEP},
        ("policy input is nested more than 32 levels deep",),
    ),
]


@pytest.fixture
async def engines(opa_api):
    embedded = EmbeddedEngine(opa_api.folder)
    opa = OpaEngine(opa_api.url, timeout=5, folder=opa_api.folder)
    yield embedded, opa
    await opa.close()


def test_the_table_is_big_enough():
    assert len(TABLE) >= 40
    assert len({(row[1], row[0]) for row in TABLE}) == len(TABLE)


async def test_both_engines_agree_on_every_row(engines, opa_api):
    embedded, opa = engines
    mismatches = []
    for name, domain, input, reasons in TABLE:
        expected = Verdict(allow=not reasons, reasons=tuple(sorted(reasons)), inconclusive=name in INCONCLUSIVE)
        got_embedded = await embedded.evaluate(domain, input)
        got_opa = await opa.evaluate(domain, input)
        if not (got_embedded == got_opa == expected):
            mismatches.append(
                f"{domain} / {name}:\n  expected {expected}\n  embedded {got_embedded}\n  opa      {got_opa}"
            )
    assert not mismatches, "\n".join(mismatches)
    asked = [path for method, path, _ in opa_api.requests if method == "POST"]
    assert len(asked) == len(TABLE) - 3  # all but the three requests refused before any engine is asked


async def test_both_engines_report_the_same_revision(engines):
    embedded, opa = engines
    by_embedded = await embedded.evaluate("infra", {})
    by_opa = await opa.evaluate("infra", {})  # the revision OPA says it serves
    assert by_embedded.revision == by_opa.revision == embedded.revision() == opa.revision() != ""
    assert by_opa.drift == ""
