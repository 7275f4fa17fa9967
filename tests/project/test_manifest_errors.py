"""A user who writes a bad manifest gets one line naming what is wrong, a non-zero exit and no
traceback. At least one case of every kind runs `swiftdeploy init` in its own subprocess (run
concurrently once per module; each test reads its own result); the variations run the loader in
this process, which is what the CLI prints."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from swiftdeploy_core.errors import ManifestError
from swiftdeploy_core.project.manifest import load_manifest
from tests.servers import REPO_ROOT, run_swiftdeploy

ORIGINAL = (REPO_ROOT / "manifest.yaml").read_text()


def replaced(old: str, new: str) -> Callable[[Path], Path]:
    """A manifest that is the original with one piece of text changed."""

    def write(folder: Path) -> Path:
        assert old in ORIGINAL, old
        path = folder / "manifest.yaml"
        path.write_text(ORIGINAL.replace(old, new, 1))
        return path

    return write


def raw(content: bytes) -> Callable[[Path], Path]:
    def write(folder: Path) -> Path:
        path = folder / "manifest.yaml"
        path.write_bytes(content)
        return path

    return write


def a_directory(folder: Path) -> Path:
    (folder / "manifest.yaml").mkdir()
    return folder / "manifest.yaml"


def nothing(folder: Path) -> Path:
    return folder / "manifest.yaml"


def unreadable(folder: Path) -> Path:
    path = folder / "manifest.yaml"
    path.write_text(ORIGINAL)
    path.chmod(0o000)
    return path


@dataclass(frozen=True)
class Case:
    id: str
    make: Callable[[Path], Path]
    expect: tuple[str, ...]  # substrings of the one error line (the field, the problem)
    cli: bool = True  # False: a variation checked through the loader in-process (faster)


CASES = [
    Case("port-as-string", replaced("port: 3000", 'port: "3000"'), ("services.port", "whole number")),
    Case("port-too-high", replaced("port: 3000", "port: 70000"), ("services.port", "between 1 and 65535", "70000")),
    Case("port-zero", replaced("port: 8080", "port: 0"), ("nginx.port", "between 1 and 65535"), cli=False),
    Case("timeout-negative", replaced("proxy_timeout: 30", "proxy_timeout: -5"), ("nginx.proxy_timeout", "-5"), cli=False),
    Case("version-as-float", replaced('version: "1.0.0"', "version: 1.0"), ("services.version", "quote it")),
    Case("mode-unknown", replaced("mode: stable", "mode: blue"), ("services.mode", "'stable'", "blue")),
    Case("driver-unknown", replaced("driver_type: bridge", "driver_type: host"), ("network.driver_type", "host"), cli=False),
    Case("missing-section", replaced("network:\n  name: swiftdeploy-net\n  driver_type: bridge\n", ""), ("network", "is required")),
    Case("missing-field", replaced("  image: swift-deploy-1-node:latest\n", ""), ("services.image", "is required"), cli=False),
    Case("section-is-scalar", replaced("nginx:\n  image: nginx:latest\n  port: 8080\n  proxy_timeout: 30\n", "nginx: yes\n"), ("nginx", "mapping")),
    Case("unknown-key", replaced("  port: 3000", "  prot: 3000"), ("services.prot", "did you mean 'port'")),
    Case("unknown-section", replaced("nginx:", "ngnix:"), ("ngnix", "did you mean 'nginx'")),
    Case("runtime-unknown", replaced("services:", "runtime: kubernetes\nservices:"), ("runtime", "'docker'", "kubernetes"), cli=False),
    Case("steps-not-increasing", replaced("services:", "canary:\n  steps: [50, 25]\nservices:"), ("canary.steps", "increasing")),
    Case("step-out-of-range", replaced("services:", "canary:\n  steps: [10, 150]\nservices:"), ("canary.steps.1", "at most 100", "150"), cli=False),
    Case("collector-window", replaced("services:", "collector:\n  interval: 10\n  window: 5\nservices:"), ("collector", "window"), cli=False),
    Case("opa-url", replaced("services:", "policy:\n  opa_url: ftp://opa\nservices:"), ("policy.opa_url", "ftp://opa"), cli=False),
    Case("bad-yaml", replaced("  port: 8080", "  port: [8080"), ("invalid YAML", "line", "column")),
    Case("tab-indent", replaced("  port: 8080", "\tport: 8080"), ("invalid YAML", "line 10, column 1"), cli=False),
    Case("duplicate-key", replaced("  port: 8080", "  port: 8080\n  port: 9090"), ("duplicate key 'port'", "line 11, column 3")),
    Case("top-level-list", raw(b"- services\n- nginx\n"), ("top level", "mapping")),
    Case("empty-file", raw(b""), ("empty",)),
    Case("only-comments", raw(b"# nothing here\n"), ("no YAML document",), cli=False),
    Case("non-utf8", raw(ORIGINAL.encode().replace(b"app", b"\xff\xfeapp", 1)), ("not UTF-8", "offset")),
    Case("nul-byte", raw(ORIGINAL.encode().replace(b"app", b"a\x00pp", 1)), ("invalid YAML", "not allowed"), cli=False),
    Case("ten-megabytes", raw(ORIGINAL.encode() + b"#" * 10_000_000), ("too large", "MB")),
    Case("a-directory", a_directory, ("is a directory",)),
    Case("no-such-file", nothing, ("no such file",), cli=False),
    Case("unreadable", unreadable, ("permission denied",)),
    Case("alias-bomb", raw(b"a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
                          b"c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]\n"
                          b"services: {name: app, image: i, port: 1, version: '1', command: [*d, *d, *d]}\n"),
         ("unknown key",), cli=False),
]  # fmt: skip


def _drop_file_read_override() -> list[str]:
    """As root, a chmod 000 file is still readable; run the CLI without that capability."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    assert setpriv, "setpriv (util-linux) is needed to test an unreadable file as root"
    return [setpriv, "--bounding-set=-dac_override,-dac_read_search"]


class Outcomes(dict):
    """Each case's CompletedProcess by id; `root` holds one folder per case."""

    root: Path


@pytest.fixture(scope="module")
def outcomes() -> Iterator[Outcomes]:
    """Run every case through the real CLI, four at a time."""
    root = Path(tempfile.mkdtemp(prefix="swiftdeploy-bad-manifests-"))

    def run(case: Case) -> subprocess.CompletedProcess[str]:
        folder = root / case.id
        folder.mkdir()
        path = case.make(folder)
        prefix = _drop_file_read_override() if case.id == "unreadable" else None
        return run_swiftdeploy("init", "--manifest", str(path), cwd=folder, prefix=prefix)

    with ThreadPoolExecutor(max_workers=4) as pool:
        results = Outcomes(zip((c.id for c in CLI_CASES), pool.map(run, CLI_CASES)))
    results.root = root
    yield results
    shutil.rmtree(root, ignore_errors=True)


CLI_CASES = [case for case in CASES if case.cli]
LOADER_CASES = [case for case in CASES if not case.cli]


def test_at_least_fifteen_bad_manifests_go_through_the_real_cli():
    assert len(CLI_CASES) >= 15


@pytest.mark.parametrize("case", CLI_CASES, ids=[c.id for c in CLI_CASES])
def test_a_bad_manifest_gets_one_line_naming_the_problem(case: Case, outcomes):
    result = outcomes[case.id]
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr + result.stdout
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    for expected in case.expect:
        assert expected in lines[0], (expected, lines[0])
    assert len(lines[0]) < 400


@pytest.mark.parametrize("case", CLI_CASES, ids=[c.id for c in CLI_CASES])
def test_a_bad_manifest_generates_nothing(case: Case, outcomes):
    assert outcomes[case.id].stdout == ""
    assert not (outcomes.root / case.id / "generated").exists()


@pytest.mark.parametrize("case", LOADER_CASES, ids=[c.id for c in LOADER_CASES])
def test_the_loader_names_the_problem_in_one_line(case: Case, tmp_path: Path):
    with pytest.raises(ManifestError) as caught:
        load_manifest(case.make(tmp_path))
    message = str(caught.value)
    assert "\n" not in message and len(message) < 400
    for expected in case.expect:
        assert expected in message, (expected, message)


def test_a_literal_webhook_secret_is_refused_without_echoing_it(tmp_path: Path) -> None:
    path = tmp_path / "manifest.yaml"
    path.write_text(
        "services: {name: app, image: x, port: 3000, version: '1', mode: stable}\n"
        "nginx: {image: nginx, port: 8080, proxy_timeout: 30}\nnetwork: {name: n, driver_type: bridge}\n"
        "notifications: [{url: 'http://127.0.0.1:9/x', events: ['rollback.*'], secret: hunter2}]\n"
    )
    with pytest.raises(ManifestError) as caught:
        load_manifest(path)
    message = str(caught.value)
    assert "notifications.0.secret: must be an environment reference like ${WEBHOOK_SECRET}" in message
    assert "hunter2" not in message
    path.write_text(path.read_text().replace("hunter2", "'${HOOK_SECRET}'"))
    assert load_manifest(path).manifest.notifications[0].secret == "${HOOK_SECRET}"
