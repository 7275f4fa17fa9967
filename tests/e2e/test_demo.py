"""The whole story on this machine: `scripts/demo` (what `make demo` runs) on the process runtime.

The infra policy's CPU threshold is raised in the demo project (--cpu-load-max) because the test
suite itself keeps this 2-core machine busy; every other policy and threshold is the default.
"""

import subprocess
import sys
from pathlib import Path

import pytest

from tests.servers import require_binary

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_the_originals_story_happens_end_to_end(tmp_path):
    require_binary("nginx")
    workdir = tmp_path / "demo"
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "demo"), "--workdir", str(workdir), "--cpu-load-max", "1000"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-4000:]
    for outcome in (
        "checks passed",
        "promotion blocked",
        "rolled back: all traffic on stable, canary removed",
        "GET / → version 1.1.0, mode stable",
        "the hash chain is valid",
        "every section present",
        "the whole story happened as expected",
    ):
        assert outcome in output, f"missing {outcome!r}\n{output[-4000:]}"
    assert not (workdir / ".swiftdeploy" / "controlplane.json").exists(), "down left the control plane record"
