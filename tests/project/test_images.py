"""Image references, Docker config credentials and pull failures as one line (pure; the real
registry stories are in tests/orchestrator/test_orchestrator_registry.py)."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

import pytest

from swiftdeploy_core.errors import ConfigError, ManifestError
from swiftdeploy_core.project.images import (
    ImageRef,
    docker_config_file,
    load_credentials,
    parse_reference,
    pull_cause,
    pull_error,
)
from tests.servers import credential_helper

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
                                            "https://index.docker.io/v1/": {"auth": token}}}))  # fmt: skip
    credentials = load_credentials(config)
    assert credentials.for_registry("127.0.0.1:5000") == token and credentials.for_registry("docker.io") == token
    assert credentials.for_registry("ghcr.io") is None
    assert load_credentials(tmp_path / "absent.json").for_registry("docker.io") is None


def test_credential_helpers_are_asked_as_the_docker_cli_asks_them(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    # A team's laptop keeps Hub credentials in its desktop keychain (credsStore) and its cloud
    # registry's in that cloud's helper (credHelpers); `auths` entries are then only markers.
    bin_dir = tmp_path / "bin"
    credential_helper(bin_dir, "desktop", {"https://index.docker.io/v1/": ("hubuser", "hub-secret")})
    credential_helper(bin_dir, "cloud", {"registry.example:5000": ("<token>", "refresh-token")})
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"auths": {"registry.example:5000": {}, "other.example": {"auth": base64.b64encode(b"a:b").decode()}},
                                  "credsStore": "desktop", "credHelpers": {"registry.example:5000": "cloud"}}))  # fmt: skip
    credentials = load_credentials(config)
    assert credentials.for_registry("docker.io") == {"username": "hubuser", "password": "hub-secret"}
    assert credentials.for_registry("registry.example:5000") == {"identitytoken": "refresh-token"}
    assert credentials.for_registry("other.example") is None  # the store has none: anonymous, as docker does


def test_a_credential_helper_that_cannot_answer_is_one_line_without_its_output(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    bin_dir = tmp_path / "bin"
    broken = bin_dir / "docker-credential-broken"
    bin_dir.mkdir()
    broken.write_text("#!/bin/sh\necho 'not json, maybe a secret'\n")
    broken.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"credHelpers": {"ghcr.io": "absent", "quay.io": "broken"}}))
    credentials = load_credentials(config)
    with pytest.raises(ConfigError) as absent:
        credentials.for_registry("ghcr.io")
    assert str(absent.value) == (
        f"credential helper docker-credential-absent for ghcr.io (named in {config}): not found on PATH; "
        "install it, or remove it from the config"
    )
    with pytest.raises(ConfigError, match=r"its answer is not the helper protocol's \{Username, Secret\} JSON") as bad:
        credentials.for_registry("quay.io")
    assert "maybe a secret" not in str(bad.value)


def test_a_malformed_credentials_file_is_one_line(tmp_path: Path):
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"auths": {"r.example": {"auth": "bm90LWEtcGFpcg=="}}}))  # "not-a-pair"
    with pytest.raises(ManifestError, match=r"auths\.r\.example\.auth is not base64 of user:password"):
        load_credentials(config)
    config.write_text("{")
    with pytest.raises(ManifestError, match="cannot be read as a Docker config"):
        load_credentials(config)


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
