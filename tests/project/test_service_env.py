"""The service's environment at deploy time: env_file, env, canary.env and secrets, whose values
never reach generated files."""

from __future__ import annotations

from pathlib import Path

import pytest

from swiftdeploy_core.errors import ManifestError, SecretUnavailable
from swiftdeploy_core.project.manifest import load_manifest, validate_manifest
from swiftdeploy_core.project.render import render_all
from swiftdeploy_core.project.service_env import MASK, redact, resolve
from tests.orchestration import write_manifest

SECRET = "s3cr3t-value-4711"


def manifest(tmp_path: Path, **services) -> Path:
    return write_manifest(tmp_path, "ledger", services={"name": "ledger", **services})


def test_env_file_then_env_then_the_canarys_env_and_secrets_from_the_environment_and_files(tmp_path: Path):
    (tmp_path / "ledger.env").write_text("# defaults\nGREETING='from file'\nexport LEVEL=info\n\nA=1\n")
    (tmp_path / "db.secret").write_text(SECRET + "\n")
    path = manifest(
        tmp_path, env={"A": 2}, env_file="ledger.env", secrets=["TOKEN", {"name": "DB", "file": "db.secret"}]
    )
    loaded = load_manifest(path)
    m = loaded.manifest.model_copy(update={"canary": loaded.manifest.canary.model_copy(update={"env": {"A": "3"}})})
    stable = resolve(m, tmp_path, {"TOKEN": "t"})
    assert stable.env == {"GREETING": "from file", "LEVEL": "info", "A": "2"}
    assert stable.values() == {**stable.env, "TOKEN": "t", "DB": SECRET}
    assert resolve(m, tmp_path, {"TOKEN": "t"}, canary=True).env["A"] == "3"
    assert SECRET not in repr(stable) and SECRET not in stable.model_dump_json()


def test_a_missing_secret_or_env_file_is_one_line_naming_its_source_never_a_value(tmp_path: Path):
    m = load_manifest(manifest(tmp_path, secrets=[{"name": "TOKEN", "env": "LEDGER_TOKEN"}])).manifest
    with pytest.raises(SecretUnavailable, match=r"^secret TOKEN: environment variable LEDGER_TOKEN is not set"):
        resolve(m, tmp_path, {})
    m = load_manifest(manifest(tmp_path, secrets=[{"name": "DB", "file": "nope.secret"}])).manifest
    with pytest.raises(SecretUnavailable, match=r"^secret DB: file nope.secret cannot be read \(No such file"):
        resolve(m, tmp_path, {})
    (tmp_path / "bad.env").write_text("JUSTAWORD\n")
    m = load_manifest(manifest(tmp_path, env_file="bad.env")).manifest
    with pytest.raises(SecretUnavailable, match=r"bad.env, line 1: expected KEY=VALUE"):
        resolve(m, tmp_path, {})


@pytest.mark.parametrize(
    ("services", "message"),
    [
        ({"env": {"PORT": "1"}}, "services.env: PORT is set by SwiftDeploy on every instance"),
        ({"secrets": ["MODE"]}, "services.secrets.0: secret MODE: the name is set by SwiftDeploy"),
        ({"secrets": ["A"], "env": {"A": "x"}}, "services: secret A is given twice"),
        (
            {"secrets": [{"name": "A", "env": "B", "file": "c"}]},
            "services.secrets.0: secret A: give env or file, not both",
        ),
        ({"health": {"path": "status"}}, "services.health.path: has an invalid format"),
        ({"health": {"path": "/a b"}}, "services.health.path: has an invalid format"),
        ({"resources": {"memory": "lots"}}, "services.resources.memory: has an invalid format"),
        ({"image": "Not An Image"}, "services.image: 'Not An Image' is not an image reference"),
    ],
)
def test_bad_settings_are_refused_in_one_line_naming_the_field(tmp_path: Path, services: dict, message: str):
    with pytest.raises(ManifestError, match="^manifest.yaml: " + message.replace("(", r"\(")):
        load_manifest(manifest(tmp_path, **services))


def test_the_seeds_manifest_is_valid_as_it_is_with_every_new_key_at_its_default():
    m = load_manifest(Path(__file__).resolve().parents[2] / "manifest.yaml").manifest
    assert (m.services.env, m.services.secrets, m.services.args, m.services.env_file) == ({}, [], [], None)
    assert (m.services.health.path, m.images.pull.value, m.images.credentials) == ("/healthz", "missing", None)


def test_generated_files_name_secrets_by_reference_and_carry_env_health_command_and_limits(tmp_path: Path):
    (tmp_path / "db.secret").write_text(SECRET)
    path = manifest(
        tmp_path, command=["python3", "app.py"], args=["-v"], env={"GREETING": "hi"}, secrets=["TOKEN", {"name": "DB", "file": "db.secret"}],
        health={"path": "/status", "interval": 2, "start_period": 20}, resources={"cpus": 0.5, "memory": "128m"},
    )  # fmt: skip
    files = render_all(load_manifest(path))
    compose = files["docker-compose.yml"].decode()
    for line in ('command: ["python3", "app.py", "-v"]', 'GREETING: "hi"', 'TOKEN: "${TOKEN}"', 'DB: "${DB}"',
                 "http://127.0.0.1:3000/status", "interval: 2s", "start_period: 20s", "cpus: 0.5", 'mem_limit: "128m"'):  # fmt: skip
        assert line in compose, line
    assert "proxy_pass http://$swiftdeploy_upstream/status;" in files["nginx.conf"].decode()
    assert not any(SECRET.encode() in content for content in files.values())


def test_log_lines_a_service_prints_its_secret_into_are_masked():
    assert redact(["token=abc123 ok", "nothing"], ["abc123", ""]) == [f"token={MASK} ok", "nothing"]


def test_a_secret_value_never_enters_a_manifest_error(tmp_path: Path):
    with pytest.raises(ManifestError) as caught:
        validate_manifest({"services": {"name": "x", "image": "i", "port": 1, "version": "1", "env": {"K": [SECRET]}},
                           "nginx": {"image": "n", "port": 2}, "network": {"name": "n"}})  # fmt: skip
    assert "services.env.K" in str(caught.value)
