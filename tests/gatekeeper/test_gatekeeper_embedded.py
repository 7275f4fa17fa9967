"""The embedded engine: compiled once, recompiled when a policy or data file changes (no restart),
and failing closed, with the file and line, while the files are broken."""

from __future__ import annotations

import json
import shutil

import pytest

import policies
from services.gatekeeper.embedded import EmbeddedEngine
from services.gatekeeper.engines import Verdict

SLIGHTLY_LOADED = {"disk_free_gb": 50, "cpu_load": 2.5}


@pytest.fixture
def folder(tmp_path):
    folder = tmp_path / "policies"
    folder.mkdir()
    for path in policies.policy_files(policies.default_dir(), include_tests=True):
        shutil.copy(path, folder / path.name)
    return folder


def set_threshold(folder, name, value):
    data = json.loads((folder / "data.json").read_text())
    data["thresholds"][name] = value
    (folder / "data.json").write_text(json.dumps(data))


async def test_editing_data_json_changes_the_next_decision_without_a_restart(folder):
    engine = EmbeddedEngine(folder)
    set_threshold(folder, "cpu_load", 2)
    assert await engine.evaluate("infra", SLIGHTLY_LOADED) == Verdict(
        False, ("CPU load 2.5 is above the maximum of 2",)
    )
    before = engine.revision()

    set_threshold(folder, "cpu_load", 3)
    assert await engine.evaluate("infra", SLIGHTLY_LOADED) == Verdict(True, ())
    assert engine.revision() != before

    set_threshold(folder, "cpu_load", 2)  # same size, likely the same mtime tick: caught by content
    assert await engine.evaluate("infra", SLIGHTLY_LOADED) == Verdict(
        False, ("CPU load 2.5 is above the maximum of 2",)
    )
    assert engine.revision() == before


async def test_an_unchanged_folder_is_not_recompiled(folder, monkeypatch):
    engine = EmbeddedEngine(folder)
    await engine.evaluate("infra", SLIGHTLY_LOADED)
    compiled = engine._compiled
    monkeypatch.setattr("services.gatekeeper.folder.RACY_NS", 0)
    engine._watch._racy = False
    for _ in range(3):
        await engine.evaluate("infra", SLIGHTLY_LOADED)
    assert engine._compiled is compiled


async def test_a_broken_policy_denies_with_its_file_and_line_until_fixed(folder):
    engine = EmbeddedEngine(folder)
    good = (folder / "infra.rego").read_text()
    (folder / "infra.rego").write_text(good.replace("allow if count(deny) == 0", "allow if count(deny) == "))
    verdict = await engine.evaluate("infra", {"disk_free_gb": 50, "cpu_load": 1})
    assert not verdict.allow
    assert verdict.reasons[0].startswith("policy files invalid: infra.rego:")
    assert (await engine.health()).startswith("policy files invalid: infra.rego:")

    (folder / "infra.rego").write_text(good)
    assert (await engine.evaluate("infra", {"disk_free_gb": 50, "cpu_load": 1})).allow
    assert await engine.health() is None


async def test_broken_data_json_denies(folder):
    engine = EmbeddedEngine(folder)
    (folder / "data.json").write_text('{"thresholds": {')
    verdict = await engine.evaluate("infra", {"disk_free_gb": 50, "cpu_load": 1})
    assert not verdict.allow
    assert verdict.reasons[0].startswith("policy files invalid: data.json:")


async def test_a_threshold_removed_from_data_json_denies(folder):
    engine = EmbeddedEngine(folder)
    data = json.loads((folder / "data.json").read_text())
    del data["thresholds"]["min_requests"]
    (folder / "data.json").write_text(json.dumps(data))
    verdict = await engine.evaluate("canary", {"error_rate": 0, "p99_latency_ms": 10, "requests": 400})
    assert verdict == Verdict(
        False, ("threshold data.thresholds.min_requests is missing or not a usable number (fix policies/data.json)",)
    )


async def test_a_new_policy_file_adds_a_domain(folder):
    engine = EmbeddedEngine(folder)
    assert (await engine.evaluate("quota", {})).reasons == ("policy undefined: data.quota has no result",)
    (folder / "quota.rego").write_text(
        'package quota\n\ndefault allow := false\n\nallow if input.n < 3\n\ndeny contains "too many" if not allow\n'
    )
    assert (await engine.evaluate("quota", {"n": 1})).allow
    assert await engine.evaluate("quota", {"n": 5}) == Verdict(False, ("too many",))


async def test_a_missing_folder_denies_and_reports_unhealthy(tmp_path):
    engine = EmbeddedEngine(tmp_path / "nowhere")
    assert await engine.evaluate("infra", {}) == Verdict(False, ("policy files invalid: no Rego package found",))
    assert await engine.health() == "policy files invalid: no Rego package found"


async def test_test_files_are_not_loaded_for_decisions(folder):
    (folder / "infra_test.rego").write_text("this is not rego at all")
    engine = EmbeddedEngine(folder)
    assert (await engine.evaluate("infra", {"disk_free_gb": 50, "cpu_load": 1})).allow


async def test_policies_written_after_start_replace_the_packaged_defaults(tmp_path):
    engine = EmbeddedEngine(tmp_path / "policies", fallback=policies.default_dir())
    busy_host = {"disk_free_gb": 50, "cpu_load": 5}
    assert not (await engine.evaluate("infra", busy_host)).allow  # defaults: cpu_load <= 2
    policies.write_default_policies(tmp_path)
    data = tmp_path / "policies" / "data.json"
    data.write_text(data.read_text().replace('"cpu_load": 2.0', '"cpu_load": 8'))
    assert (await engine.evaluate("infra", busy_host)).allow  # the project's own thresholds now
