"""The default policies: shipped with the package, written into a project once, never overwritten,
and their Rego unit tests pass when run through the embedded engine."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import pytest

import policies
from services.gatekeeper.embedded import run_folder_tests
from swiftdeploy_core.errors import PolicyEngineError

REGO_TESTS = run_folder_tests(policies.default_dir())


def test_the_default_policies_ship_with_the_package():
    files = policies.default_files()
    assert set(files) == set(policies.DEFAULT_FILES)
    assert b"package infra" in files["infra.rego"]
    assert b"package canary" in files["canary.rego"]


def test_thresholds_live_only_in_data_json():
    import json

    thresholds = json.loads(policies.default_files()["data.json"])["thresholds"]
    assert thresholds == {
        "disk_free_gb": 10,
        "cpu_load": 2.0,
        "error_rate": 0.01,
        "p99_latency_ms": 500,
        "min_requests": 20,
        "comparison_p_value": 0.05,
        "comparison_latency_tolerance": 0.1,
        "comparison_latency_min_ms": 5,
        "comparison_error_rate_tolerance": 0.005,
    }
    for name in ("infra.rego", "canary.rego"):
        text = policies.default_files()[name].decode()
        for number in ("10", "2.0", "0.01", "500", "20", "0.05", "0.1", "0.005"):
            assert f" {number}\n" not in text and f" {number} " not in text, f"{name} hard-codes {number}"


def test_policies_are_rego_v1_and_deny_by_default():
    for name in ("infra.rego", "canary.rego"):
        text = policies.default_files()[name].decode()
        assert "default allow := false" in text
        assert "allow if count(deny) == 0" in text
        assert "deny contains" in text
        assert "sprintf" not in text  # floats print differently in OPA and regopy: see lib.rego


def test_there_are_rego_unit_tests_for_both_policies():
    files = {test.file for test in REGO_TESTS}
    assert files == {"infra_test.rego", "canary_test.rego"}
    assert len(REGO_TESTS) >= 20


@pytest.mark.parametrize("rego_test", REGO_TESTS, ids=lambda t: f"{t.file}::{t.name}")
def test_rego_unit_test_passes(rego_test):
    assert rego_test.passed, f"{rego_test.file}::{rego_test.name}: {rego_test.error}"


def test_a_failing_rego_test_is_reported_as_failing(tmp_path):
    folder = _copy_defaults(tmp_path)
    (folder / "extra_test.rego").write_text(
        "package extra_test\n\nimport data.infra\n\n"
        "test_wrong_on_purpose if {\n\tinfra.allow with input.disk_free_gb as 1 with input.cpu_load as 1\n}\n"
    )
    results = {test.name: test for test in run_folder_tests(folder)}
    assert not results["test_wrong_on_purpose"].passed
    assert "undefined" in results["test_wrong_on_purpose"].error
    assert results["test_a_healthy_host_may_deploy"].passed


def test_a_policy_that_does_not_parse_is_named_with_its_line(tmp_path):
    folder = _copy_defaults(tmp_path)
    (folder / "infra.rego").write_text("package infra\n\nallow if {\n")
    with pytest.raises(PolicyEngineError, match=r"^policy files invalid: infra\.rego:3:10: "):
        run_folder_tests(folder)


def test_init_writes_the_defaults_into_an_empty_project(tmp_path):
    written = policies.write_default_policies(tmp_path)
    folder = tmp_path / "policies"
    expected = [*policies.DEFAULT_FILES, *(f"schemas/{name}" for name in policies.DEFAULT_SCHEMAS)]
    assert sorted(path.relative_to(folder).as_posix() for path in written) == sorted(expected)
    for name, content in policies.default_files().items():
        assert (folder / name).read_bytes() == content
    for name, content in policies.default_schemas().items():
        assert (folder / "schemas" / name).read_bytes() == content


def test_init_never_touches_a_folder_that_has_policies(tmp_path):
    folder = tmp_path / "policies"
    folder.mkdir()
    (folder / "data.json").write_text('{"thresholds": {"cpu_load": 8}}')
    assert policies.write_default_policies(tmp_path) == []
    assert sorted(p.name for p in folder.iterdir()) == ["data.json"]
    assert (folder / "data.json").read_text() == '{"thresholds": {"cpu_load": 8}}'


def test_init_twice_writes_nothing_the_second_time(tmp_path):
    assert policies.write_default_policies(tmp_path)
    (tmp_path / "policies" / "data.json").write_text("{}")
    assert policies.write_default_policies(tmp_path) == []
    assert (tmp_path / "policies" / "data.json").read_text() == "{}"


def test_a_folder_with_only_unrelated_files_gets_the_defaults_beside_them(tmp_path):
    folder = tmp_path / "policies"
    folder.mkdir()
    (folder / "README.md").write_text("mine")
    written = policies.write_default_policies(tmp_path)
    assert len(written) == len(policies.DEFAULT_FILES) + len(policies.DEFAULT_SCHEMAS)
    assert (folder / "README.md").read_text() == "mine"


def test_the_revision_names_the_exact_files():
    files = policies.default_files()
    assert policies.revision(files) == policies.revision(dict(reversed(files.items())))
    assert policies.revision(files) != policies.revision({**files, "data.json": b"{}"})
    assert policies.revision(files) != policies.revision({**files, "extra.rego": b""})


def test_json_safe_spells_out_what_json_cannot_carry():
    assert policies.json_safe({"a": math.nan, "b": [math.inf, -math.inf], "c": 2**70, "d": 5, "e": True}) == {
        "a": "NaN",
        "b": ["Infinity", "-Infinity"],
        "c": float(2**70),
        "d": 5,
        "e": True,
    }


def _copy_defaults(tmp_path: Path) -> Path:
    folder = tmp_path / "policies"
    folder.mkdir()
    for path in policies.policy_files(policies.default_dir(), include_tests=True):
        shutil.copy(path, folder / path.name)
    return folder
