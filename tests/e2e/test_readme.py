"""The README tells the truth about the parts generated from code."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from swiftdeploy_core.bus.events import EVENT_TYPES

ROOT = Path(__file__).resolve().parents[2]


def test_the_readme_lists_every_event_type_exactly_as_the_catalogue_prints_it():
    readme = (ROOT / "README.md").read_text()
    catalogue = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "event-catalogue")], check=True, capture_output=True, text=True
    ).stdout
    assert catalogue.strip() in readme, "README is stale: run scripts/update-readme"
    for event_type in EVENT_TYPES:
        assert f"| `{event_type}` |" in readme


def test_ci_calls_the_readmes_test_command():
    assert "make test" in (ROOT / ".ci" / "run").read_text()
    assert "make test" in (ROOT / "README.md").read_text()


@pytest.mark.parametrize(("lint", "tests", "expected"), [(0, 0, 0), (2, 0, 2), (0, 2, 2), (2, 2, 2)])
def test_ci_lints_then_tests_and_fails_when_either_fails(tmp_path: Path, lint: int, tests: int, expected: int):
    """.ci/run on a copy whose servers and `make` are stand-ins that record the targets run."""
    (tmp_path / ".ci").mkdir()
    shutil.copy(ROOT / ".ci" / "run", tmp_path / ".ci" / "run")
    bin_dir, scripts = tmp_path / "bin", tmp_path / "scripts"
    bin_dir.mkdir()
    scripts.mkdir()
    for name in ("install-system-deps", "start-servers"):
        _executable(scripts / name, "#!/bin/sh\nexit 0\n")
    _executable(
        bin_dir / "make", f'#!/bin/sh\necho "$1" >> {tmp_path}/ran\n[ "$1" = lint ] && exit {lint}\nexit {tests}\n'
    )
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    result = subprocess.run([str(tmp_path / ".ci" / "run")], env=env, capture_output=True, text=True)
    assert result.returncode == expected, result.stderr
    assert (tmp_path / "ran").read_text().split() == ["lint", "test"]  # a lint failure still runs the tests


def _executable(path: Path, text: str) -> None:
    path.write_text(text)
    path.chmod(0o755)
