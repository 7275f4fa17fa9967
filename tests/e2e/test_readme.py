"""The README tells the truth about the parts generated from code."""

import subprocess
import sys
from pathlib import Path

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
