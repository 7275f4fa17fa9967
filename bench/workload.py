"""What the request metrics cost: requests/s of `GET /` with the metrics middleware on vs off.

Both arms are the same `python -m workload` (hypercorn, one process, pinned to one core) with the
same settings except WORKLOAD_METRICS; `wrk` (Debian) drives loopback from the other core. Each
round measures both, alternating which goes first, so drift on a shared machine hits both; the
figure is the median of the per-round ratios on / off.

    python bench/workload.py [--rounds 7] [--seconds 3] [--connections 32] [--update-docs]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from tests.docblocks import replace_block  # noqa: E402
from tests.servers import free_port  # noqa: E402

DOCS = ROOT / "docs" / "workload.md"
GOAL = 0.10  # the instrumentation may cost at most 10% of requests/s


def pinned(cpu: int) -> list[str]:
    return ["taskset", "-c", str(cpu)] if shutil.which("taskset") and os.cpu_count() and os.cpu_count() > 1 else []


@dataclass
class Server:
    url: str
    pid: int

    def cpu_seconds(self) -> float:
        """User + system CPU time of the server process so far (scheduling noise does not add to it)."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Run:
    rps: float
    cpu_us_per_request: float


@contextmanager
def workload(metrics: bool) -> Iterator[Server]:
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PORT": str(port), "MODE": "canary", "VERSION": "bench",
           "WORKLOAD_METRICS": "1" if metrics else "0", "WORKLOAD_LOG_LEVEL": "WARNING"}  # fmt: skip
    process = subprocess.Popen([*pinned(1), sys.executable, "-m", "workload"], env=env, cwd=ROOT,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                urllib.request.urlopen(url, timeout=1).read()
                break
            except OSError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise SystemExit("bench: the workload did not start") from None
                time.sleep(0.05)
        yield Server(url, process.pid)
    finally:
        process.terminate()
        process.wait(timeout=10)


def wrk(server: Server, seconds: float, connections: int) -> Run:
    args = [*pinned(0), "wrk", "--threads", "1", "--connections", str(connections),
            "--duration", f"{seconds:g}s", "--timeout", "5s", server.url]  # fmt: skip
    cpu_before = server.cpu_seconds()
    out = subprocess.run(args, capture_output=True, text=True, check=True, timeout=seconds + 30).stdout
    cpu = server.cpu_seconds() - cpu_before
    if "Non-2xx" in out or "Socket errors" in out:
        raise SystemExit(f"bench: wrk saw errors:\n{out}")
    requests = int(re.search(r"(\d+) requests in", out).group(1))
    return Run(float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)), cpu / requests * 1e6)


def measure(rounds: int, seconds: float, connections: int) -> dict[bool, list[Run]]:
    """Both servers stay up; each round runs wrk against each once, in alternating order."""
    results: dict[bool, list[Run]] = {True: [], False: []}
    with workload(True) as with_metrics, workload(False) as without:
        servers = {True: with_metrics, False: without}
        for metrics in (True, False):
            wrk(servers[metrics], 1, connections)  # warm-up
        for round_no in range(rounds):
            for metrics in (True, False) if round_no % 2 == 0 else (False, True):
                results[metrics].append(wrk(servers[metrics], seconds, connections))
            on, off = results[True][-1], results[False][-1]
            print(f"round {round_no + 1}: on {on.rps:6.0f} req/s {on.cpu_us_per_request:5.0f} CPU-us/req, "
                  f"off {off.rps:6.0f} req/s {off.cpu_us_per_request:5.0f} CPU-us/req", file=sys.stderr)  # fmt: skip
    return results


def report(results: dict[bool, list[Run]], seconds: float, connections: int) -> str:
    rps = {arm: [run.rps for run in runs] for arm, runs in results.items()}
    cpu = {arm: statistics.median(run.cpu_us_per_request for run in runs) for arm, runs in results.items()}
    ratio = statistics.median(a / b for a, b in zip(rps[True], rps[False]))
    cost = 1 - ratio
    cpu_cost = cpu[True] / cpu[False] - 1
    verdict = "within" if cost <= GOAL else "OVER"
    return "\n".join([
        f"`GET /`, two hypercorn processes (metrics on, off) pinned to one core, `wrk -t1 -c{connections} "
        f"-d{seconds:g}s` on the other, {len(rps[True])} rounds alternating the order:",
        "",
        "| metrics middleware | requests/s (median) | server CPU per request (median) | requests/s, every round |",
        "| --- | ---: | ---: | --- |",
        f"| off (baseline) | {statistics.median(rps[False]):,.0f} | {cpu[False]:.0f} µs | "
        f"{', '.join(f'{r:,.0f}' for r in rps[False])} |",
        f"| on | {statistics.median(rps[True]):,.0f} | {cpu[True]:.0f} µs | {', '.join(f'{r:,.0f}' for r in rps[True])} |",
        "",
        f"Median of the per-round throughput ratios on/off: **{ratio:.3f}**, a cost of **{cost:.1%}** "
        f"({verdict} the {GOAL:.0%} goal); server CPU per request: **{cpu_cost:+.1%}**.",
    ])  # fmt: skip


def update_docs(table: str) -> None:
    DOCS.write_text(replace_block(DOCS.read_text(), "bench:workload", table))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--seconds", type=float, default=3)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--update-docs", action="store_true", help=f"write the table into {DOCS.name}")
    args = parser.parse_args()
    if not shutil.which("wrk"):
        raise SystemExit("bench: wrk is not installed (Debian package `wrk`)")
    results = measure(args.rounds, args.seconds, args.connections)
    table = report(results, args.seconds, args.connections)
    print(table)
    if args.update_docs:
        update_docs(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
