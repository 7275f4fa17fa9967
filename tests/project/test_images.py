"""Image references, Docker config credentials and pull failures as one line (pure; the real
registry stories are in tests/orchestrator/test_orchestrator_registry.py)."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from swiftdeploy_core.errors import ManifestError
from swiftdeploy_core.project.images import (
    ImageRef,
    auth_for,
    docker_config_file,
    load_auths,
    parse_reference,
    pull_cause,
    pull_error,
)

DIGEST = "sha256:" + "c" * 64


@pytest.mark.parametrize(
    ("reference", "expected"),
    [
        ("nginx:latest", ImageRef(registry="docker.io", repository="nginx", tag="latest")),
        ("swift-deploy-1-node:latest", ImageRef(registry="docker.io", repository="swift-deploy-1-node", tag="latest")),
        ("swiftdeploy/nginx", ImageRef(registry="docker.io", repository="swiftdeploy/nginx")),
        ("docker.io/library/nginx:1", ImageRef(registry="docker.io", repository="nginx", tag="1")),
        ("127.0.0.1:5000/team/ledger:1", ImageRef(registry="127.0.0.1:5000", repository="127.0.0.1:5000/team/ledger", tag="1")),
        ("localhost/x", ImageRef(registry="localhost", repository="localhost/x")),
        (f"ghcr.io/o/r@{DIGEST}", ImageRef(registry="ghcr.io", repository="ghcr.io/o/r", digest=DIGEST)),
    ],
)  # fmt: skip
def test_references_are_read_as_docker_reads_them(reference: str, expected: ImageRef):
    assert parse_reference(reference) == expected


@pytest.mark.parametrize("reference", ["Bad Image", "UPPER/case", "a:b:c", "x@sha256:short", "/leading"])
def test_what_docker_would_refuse_is_refused(reference: str):
    with pytest.raises(ValueError, match="is not an image reference"):
        parse_reference(reference)


def test_credentials_come_from_the_manifests_file_then_docker_config_then_home(tmp_path: Path):
    assert docker_config_file(tmp_path / "creds.json", "/cfg", tmp_path) == tmp_path / "creds.json"
    assert docker_config_file(None, "/cfg", tmp_path) == Path("/cfg/config.json")
    assert docker_config_file(None, None, tmp_path) == tmp_path / ".docker" / "config.json"


def test_auths_are_read_by_registry_host_and_a_missing_file_is_no_credentials(tmp_path: Path):
    token = base64.b64encode(b"team:pw").decode()
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"auths": {"127.0.0.1:5000": {"auth": token},
                                            "https://index.docker.io/v1/": {"auth": token}}, "credsStore": "x"}))  # fmt: skip
    auths = load_auths(config)
    assert auth_for("127.0.0.1:5000", auths) == token and auth_for("docker.io", auths) == token
    assert auth_for("ghcr.io", auths) is None
    assert load_auths(tmp_path / "absent.json") == {}


def test_a_malformed_credentials_file_is_one_line(tmp_path: Path):
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"auths": {"r.example": {"auth": "bm90LWEtcGFpcg=="}}}))  # "not-a-pair"
    with pytest.raises(ManifestError, match=r"auths\.r\.example\.auth is not base64 of user:password"):
        load_auths(config)
    config.write_text("{")
    with pytest.raises(ManifestError, match="cannot be read as a Docker config"):
        load_auths(config)


@pytest.mark.parametrize(
    ("message", "cause"),
    [
        ("manifest for 127.0.0.1:5000/a:nope not found: manifest unknown: manifest unknown", "not found"),
        ('Head "http://127.0.0.1:5000/v2/a/manifests/1": no basic auth credentials', "unauthorized"),
        ("unauthorized: authentication required", "unauthorized"),
        ('Get "http://127.0.0.1:1/v2/": dial tcp 127.0.0.1:1: connect: connection refused', "unreachable"),
        ("lookup registry-1.docker.io: no such host", "unreachable"),
    ],
)
def test_a_pull_failure_names_its_cause(message: str, cause: str):
    assert pull_cause(message) == cause
    line = pull_error("127.0.0.1:5000/a:1", message)
    assert line.startswith(f"cannot pull image '127.0.0.1:5000/a:1' from 127.0.0.1:5000: {cause} (")
    assert "\n" not in line
