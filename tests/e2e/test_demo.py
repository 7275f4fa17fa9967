"""The whole story on this machine: `scripts/demo` (what `make demo` runs), on the process runtime
with the embedded engine, and with OPA deciding on both runtimes (an OPA the control plane runs:
the stand-in `opa` executable as a process, the stand-in OPA image as a container).

The infra policy's CPU threshold is raised in the demo project (--cpu-load-max) because the test
suite itself keeps this 2-core machine busy; every other policy and threshold is the default.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.opa_api import write_opa_executable
from tests.servers import require_binary

ROOT = Path(__file__).resolve().parents[2]
OUTCOMES = (
    "checks passed",
    "promotion blocked",
    "rolled back: all traffic on stable, canary removed",
    "GET / → version 1.1.0, mode stable",
    "the hash chain is valid",
    "every section present",
    "the whole story happened as expected",
)


def run_demo(workdir: Path, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "demo"), "--workdir", str(workdir), "--cpu-load-max", "1000", *args],
        capture_output=True,
        text=True,
        timeout=900,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-4000:]
    for outcome in OUTCOMES:
        assert outcome in output, f"missing {outcome!r}\n{output[-4000:]}"
    assert not (workdir / ".swiftdeploy" / "controlplane.json").exists(), "down left the control plane record"
    return output


def engines_that_decided(workdir: Path) -> set[str]:
    lines = (workdir / "history.jsonl").read_text().splitlines()
    made = [json.loads(line) for line in lines if '"decision.made"' in line]
    assert made, "no decision in the history"
    return {event.get("engine") or event.get("payload", {}).get("engine") for event in made}


@pytest.mark.slow
def test_the_originals_story_happens_end_to_end(tmp_path):
    require_binary("nginx")
    workdir = tmp_path / "demo"
    run_demo(workdir)


@pytest.mark.slow
def test_the_story_with_opa_run_by_the_control_plane_as_a_process(tmp_path):
    require_binary("nginx")
    workdir = tmp_path / "demo"
    output = run_demo(workdir, "--engine", "opa", "--opa-binary", str(write_opa_executable(tmp_path / "bin")))
    assert "gatekeeper (OPA (process))" in output
    assert "policy engine: OPA run by the control plane (process" in output  # validate, all green
    assert engines_that_decided(workdir) == {"opa"}
    assert not (workdir / ".swiftdeploy" / "opa.json").exists()
    assert not (workdir / ".swiftdeploy" / "opa" / "opa.sock").exists(), "down left OPA's socket"


@pytest.mark.slow
@pytest.mark.docker
def test_the_story_with_opa_in_a_container_on_the_docker_runtime(
    tmp_path, workload_image, nginx_image, opa_standin_image
):
    workdir = tmp_path / "demo"
    output = run_demo(workdir, "--runtime", "docker", "--engine", "opa", "--opa-image", opa_standin_image)
    assert "gatekeeper (OPA (container))" in output
    assert "policy engine: OPA run by the control plane (container" in output
    assert engines_that_decided(workdir) == {"opa"}
    left = subprocess.run(["docker", "ps", "-a", "--filter", "name=controlplane-opa", "--format", "{{.Names}}"],
                          capture_output=True, text=True).stdout.split()  # fmt: skip
    assert left == [], f"down left {left}"
