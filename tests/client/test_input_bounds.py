"""Every user input is bounded before it is parsed: whatever a manifest or a policy input holds,
the CLI answers with one line and exit 2 (bad input) or 3 (denied), never a traceback.

The two inputs that used to print tracebacks (a 5,000-digit `port:`, a `--input` nested hundreds
of levels) go through the real `swiftdeploy` process; the fuzz runs the real CLI app in this
process (`run_app`, the function `swiftdeploy` calls) against a real gatekeeper process, so
each example costs milliseconds instead of a Python start-up."""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import policies
from swiftdeploy_core.client.cli import app
from swiftdeploy_core.client.cli.errors import run_app
from swiftdeploy_core.errors import ManifestError
from swiftdeploy_core.project.manifest import parse_manifest_text, validate_manifest
from tests.servers import REPO_ROOT, run_swiftdeploy

ORIGINAL = (REPO_ROOT / "manifest.yaml").read_text()
POLICY_FIELDS = {"cpu_load", "disk_free_gb", "error_rate", "p99_latency_ms", "requests"}


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in result.stderr + result.stdout, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def test_a_port_of_5000_digits_is_one_line_naming_the_field(tmp_path: Path) -> None:
    (tmp_path / "manifest.yaml").write_text(ORIGINAL.replace("port: 3000", "port: " + "9" * 5000, 1))
    for command in (["init"], ["deploy"]):
        result = run_swiftdeploy(*command, cwd=tmp_path, env={"REDIS_URL": "redis://127.0.0.1:1/0"})
        assert result.returncode == 2, result.stderr
        line = one_line_error(result)
        assert "services.port: a number of 5000 digits is too large (at most 20" in line


def test_a_symlink_loop_manifest_is_named_as_a_loop(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").symlink_to(tmp_path / "b.yaml")
    (tmp_path / "b.yaml").symlink_to(tmp_path / "a.yaml")
    result = run_swiftdeploy("init", "--manifest", "a.yaml", cwd=tmp_path)
    assert result.returncode == 2
    assert one_line_error(result) == "error: a.yaml: is a symbolic link loop (it never reaches a file)"


def test_a_manifest_nested_too_deep_names_the_field(tmp_path: Path) -> None:
    (tmp_path / "manifest.yaml").write_text(ORIGINAL + "extra: " + "[" * 3000 + "]" * 3000 + "\n")
    result = run_swiftdeploy("init", cwd=tmp_path)
    assert result.returncode == 2
    assert "manifest.yaml: extra.0.0.….0.0: nested more than 32 levels deep (line " in one_line_error(result)


@pytest.mark.parametrize("depth", [33, 200, 400, 600, 5000])
def test_a_policy_input_nested_deep_is_refused_before_it_is_sent(tmp_path: Path, depth: int) -> None:
    document = '{"a":' * depth + "1" + "}" * depth
    started = time.monotonic()
    result = run_swiftdeploy("policy", "check", "infra", "--input", document, cwd=tmp_path,
                             env={"REDIS_URL": "redis://127.0.0.1:1/0"})  # fmt: skip
    assert result.returncode == 2
    assert one_line_error(result) == "error: --input is nested more than 32 levels deep (at offset 160)"
    assert time.monotonic() - started < 5  # no wait on a gatekeeper


def test_a_policy_input_with_a_huge_integer_is_refused(tmp_path: Path) -> None:
    (tmp_path / "in.json").write_text('{"cpu_load": ' + "7" * 5000 + "}")
    result = run_swiftdeploy("policy", "check", "infra", "--input-file", "in.json", cwd=tmp_path)
    assert result.returncode == 2
    assert one_line_error(result) == "error: in.json holds a number of 5000 digits at offset 13 (at most 20)"


# --- the fuzz -------------------------------------------------------------------------------------

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**40), max_value=10**40),
    st.floats(allow_nan=False),
    st.text(max_size=12),
)
keys = st.text(max_size=8).filter(lambda k: k not in POLICY_FIELDS)
documents = st.recursive(
    scalars,
    lambda children: st.one_of(st.lists(children, max_size=4), st.dictionaries(keys, children, max_size=5)),
    max_leaves=30,
)
deep = st.integers(1, 80).map(lambda n: {"x": json.loads("[" * n + "]" * n)})


def cli(*argv: str) -> tuple[int, str]:
    """The real CLI app in this process: (exit code, stdout + stderr). Any exception is a traceback."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        code = run_app(app, list(argv))
    return code, out.getvalue()


def assert_one_line(code: int, output: str, codes: set[int]) -> None:
    assert code in codes, output
    assert "Traceback" not in output
    assert len(output.strip().splitlines()) == 1 or code == 3, output


@pytest.fixture
def gatekeeper(redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A real gatekeeper process on the test's Redis; the CLI in this process finds it by REDIS_URL."""
    (tmp_path / "manifest.yaml").write_text(ORIGINAL)
    policies.write_default_policies(tmp_path)
    env = {**os.environ, "REDIS_URL": redis_url, "SWIFTDEPLOY_MANIFEST": str(tmp_path / "manifest.yaml"),
           "PYTHONPATH": str(REPO_ROOT), "SWIFTDEPLOY_INSTANCE": "fuzz-gatekeeper"}  # fmt: skip
    with (tmp_path / "gatekeeper.log").open("ab") as log:
        process = subprocess.Popen([sys.executable, "-m", "services.gatekeeper"], env=env, stdout=log,
                                   stderr=subprocess.STDOUT, cwd=REPO_ROOT)  # fmt: skip
    monkeypatch.setenv("REDIS_URL", redis_url)
    monkeypatch.setenv("SWIFTDEPLOY_MANIFEST", str(tmp_path / "manifest.yaml"))
    try:
        deadline = time.monotonic() + 20
        while cli("policy", "check", "infra", "--input", "{}", "--timeout", "1")[0] != 3:
            assert time.monotonic() < deadline and process.poll() is None, (tmp_path / "gatekeeper.log").read_text()
        yield tmp_path
    finally:
        process.terminate()
        process.wait(10)


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(document=st.one_of(documents, deep, st.dictionaries(keys, documents, max_size=4)))
def test_fuzzed_policy_inputs_are_denied_or_refused_in_one_line(gatekeeper: Path, document: object) -> None:
    text = json.dumps(document)
    code, output = cli("policy", "check", "canary", "--input", text, "--timeout", "5")
    assert_one_line(code, output, {2, 3})
    if code == 3:
        assert output.startswith("DENY canary"), output


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.one_of(documents, st.dictionaries(st.sampled_from(["services", "nginx", "network", "policy"]), documents)))
def test_fuzzed_manifests_are_one_line_and_exit_2(tmp_path: Path, document: object) -> None:
    raw = yaml.safe_dump(document, allow_unicode=True)
    with contextlib.suppress(ManifestError):
        validate_manifest(parse_manifest_text(raw.encode()))
        assume(False)  # a valid manifest: not what this test is about
    (tmp_path / "fuzz.yaml").write_text(raw, encoding="utf-8")
    code, output = cli("init", "--manifest", str(tmp_path / "fuzz.yaml"))
    assert_one_line(code, output, {2})
    assert output.startswith("error: ")
