"""Deploy-to-healthy: `swiftdeploy deploy` (docker runtime) vs `docker-compose up -d` of the
generated compose file, on the same images, as a ratio (goal: <= 1.0).

Both arms start the same stable instance and nginx from the same manifest and end when nginx
answers `GET /healthz` with 200 on 127.0.0.1:<nginx.port>. The swiftdeploy arm is the CLI's wall
time (process start, bus round trips, the infra decision, the orchestrator's steps); the compose
arm is docker-compose's wall time plus polling nginx until it answers. OPA is left out of both
(`policy.engine: embedded`). Rounds alternate which arm goes first; each arm's objects are
removed between rounds. The control plane (redis-server, orchestrator, gatekeeper) is started
once, untimed.

    /work/.venv/bin/python bench/deploy.py [--rounds 3] [--update-docs]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from tests.docblocks import replace_block  # noqa: E402
from tests.servers import RedisServer, free_port  # noqa: E402

DOCS = ROOT / "docs" / "orchestrator.md"
PYTHON = sys.executable
GOAL = 1.0


def env(redis_url: str, **extra: str) -> dict[str, str]:
    return {**os.environ, "REDIS_URL": redis_url, "PYTHONPATH": str(ROOT), "SWIFTDEPLOY_LOG_JSON": "false", **extra}


def image(name: str) -> str:
    tag = f"swiftdeploy/{name}:latest"
    if subprocess.run(["docker", "image", "inspect", tag], capture_output=True).returncode != 0:
        raise SystemExit(f"bench: {tag} is missing; run scripts/build-images first")
    return tag


def project_folder(folder: Path, name: str, port: int) -> Path:
    manifest = {
        "services": {"name": name, "image": image("workload"), "port": 3000, "version": "1.0.0"},
        "nginx": {"image": image("nginx"), "port": port, "proxy_timeout": 5},
        "network": {"name": f"{name}-net"},
        "runtime": "docker",
    }
    path = folder / "manifest.yaml"
    path.write_text(yaml.safe_dump(manifest, sort_keys=False))
    subprocess.run([PYTHON, "-m", "swiftdeploy_core", "init", "-m", str(path)], cwd=ROOT, check=True,
                   capture_output=True, env={**os.environ, "PYTHONPATH": str(ROOT)})  # fmt: skip
    data_json = folder / "policies" / "data.json"
    data = json.loads(data_json.read_text())
    data["thresholds"].update(disk_free_gb=0, cpu_load=1000)  # a busy shared machine must not block it
    data_json.write_text(json.dumps(data, indent=2))
    return path


@contextmanager
def control_plane(folder: Path, manifest: Path) -> Iterator[str]:
    redis = RedisServer(shutil.which("redis-server") or "/usr/bin/redis-server", folder / "redis").start()
    url = redis.url
    services = [
        subprocess.Popen(
            [PYTHON, "-m", f"services.{name}"],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=env(url, SWIFTDEPLOY_MANIFEST=str(manifest)),
        )
        for name in ("orchestrator", "gatekeeper")
    ]
    try:
        time.sleep(4)  # both services connect and join their groups
        yield url
    finally:
        for proc in services:
            proc.terminate()
            proc.wait(timeout=15)
        redis.stop()


def wait_healthy(port: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.02)
    raise SystemExit(f"bench: nginx on {port} never became healthy")


def compose_arm(manifest: Path, name: str, port: int) -> float:
    compose = manifest.parent / "generated" / "docker-compose.yml"
    services = [s for s, spec in yaml.safe_load(compose.read_text())["services"].items()
                if (spec.get("labels") or {}).get("swiftdeploy.role") != "policy"]  # fmt: skip
    base = ["docker-compose", "-p", name, "-f", str(compose)]
    started = time.monotonic()
    result = subprocess.run([*base, "up", "-d", *services], capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"bench: docker-compose up failed: {result.stderr.strip()[-500:]}")
    wait_healthy(port)
    elapsed = time.monotonic() - started
    subprocess.run([*base, "down", "-v", "--remove-orphans"], check=True, capture_output=True)
    return elapsed


def swiftdeploy_arm(manifest: Path, redis_url: str, port: int) -> float:
    cli = [PYTHON, "-m", "swiftdeploy_core"]
    started = time.monotonic()
    result = subprocess.run(
        [*cli, "deploy", "-m", str(manifest)], cwd=ROOT, env=env(redis_url), capture_output=True, text=True
    )
    if result.returncode != 0:
        raise SystemExit(f"bench: swiftdeploy deploy failed: {result.stderr.strip().splitlines()[-1:]}")
    wait_healthy(port)
    elapsed = time.monotonic() - started
    subprocess.run(
        [*cli, "teardown", "-m", str(manifest)], cwd=ROOT, env=env(redis_url), check=True, capture_output=True
    )
    return elapsed


def measure(rounds: int) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {"swiftdeploy": [], "compose": []}
    with tempfile.TemporaryDirectory(prefix="sdbench-") as tmp:
        name, port = f"sdbench{os.getpid()}", free_port()
        manifest = project_folder(Path(tmp), name, port)
        with control_plane(Path(tmp), manifest) as redis_url:
            for n in range(rounds):
                arms = [("swiftdeploy", lambda: swiftdeploy_arm(manifest, redis_url, port)),
                        ("compose", lambda: compose_arm(manifest, name, port))]  # fmt: skip
                for arm, run in arms if n % 2 == 0 else reversed(arms):
                    times[arm].append(run())
                    print(f"round {n + 1}: {arm} {times[arm][-1]:.2f}s", file=sys.stderr)
    return times


def table(times: dict[str, list[float]]) -> str:
    ours, theirs = statistics.median(times["swiftdeploy"]), statistics.median(times["compose"])
    rows = [
        "| arm | median deploy-to-healthy | runs (s) |",
        "| --- | --- | --- |",
        f"| `swiftdeploy deploy` (docker runtime, CLI wall time) | {ours:.2f} s | {', '.join(f'{t:.2f}' for t in times['swiftdeploy'])} |",
        f"| `docker-compose up -d` + nginx answering | {theirs:.2f} s | {', '.join(f'{t:.2f}' for t in times['compose'])} |",
        "",
        f"**ratio swiftdeploy / compose = {ours / theirs:.2f}** (goal <= {GOAL:.1f}; {len(times['compose'])} rounds, "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, 2 shared cores)",
    ]
    return "\n".join(rows)


def update_docs(text_table: str) -> None:
    DOCS.write_text(replace_block(DOCS.read_text(), "bench:deploy", text_table))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--update-docs", action="store_true", help=f"write the table into {DOCS.name}")
    args = parser.parse_args()
    for tool in ("docker", "docker-compose", "redis-server"):
        if not shutil.which(tool):
            raise SystemExit(f"bench: {tool} is not installed")
    result = table(measure(args.rounds))
    print(result)
    if args.update_docs:
        update_docs(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
