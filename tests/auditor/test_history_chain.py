"""The history's hash chain: a valid file verifies; deleting, reordering or editing a line names it."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from services.auditor.chain import (
    GENESIS,
    encode_line,
    history_entry,
    iso_utc,
    line_digest,
    read_entries,
    verify,
)
from swiftdeploy_core.bus.events import ChaosInjected, DecisionMade, DeployRequested, Event, Source

SOURCE = Source(service="test", instance="t1")


def write_history(path: Path, count: int) -> list[bytes]:
    prev, lines = GENESIS, []
    for index in range(count):
        line = encode_line(
            {
                "timestamp": f"2026-01-01T00:00:{index:02d}.000Z",
                "type": "deploy.step",
                "mode": "stable",
                "step": f"s{index}",
                "event_id": f"e{index}",
            },
            prev,
        )
        lines.append(line)
        prev = line_digest(line)
    path.write_bytes(b"".join(lines))
    return lines


def test_a_freshly_written_history_verifies(tmp_path: Path) -> None:
    path = tmp_path / "history.jsonl"
    lines = write_history(path, 5)
    result = verify(path, head=line_digest(lines[-1]))
    assert result.ok and result.lines == 5
    assert "valid (5 lines)" in result.describe()


def test_every_line_is_one_json_object_with_prev_and_its_own_hash(tmp_path: Path) -> None:
    path = tmp_path / "history.jsonl"
    lines = write_history(path, 2)
    first, second = (json.loads(line) for line in lines)
    assert first["prev"] == GENESIS
    assert second["prev"] == line_digest(lines[0])
    assert len(first["hash"]) == 64 and lines[0].endswith(b'"}\n')


def test_an_empty_or_missing_history_is_valid(tmp_path: Path) -> None:
    assert verify(tmp_path / "absent.jsonl").ok
    (tmp_path / "empty.jsonl").write_bytes(b"")
    assert verify(tmp_path / "empty.jsonl").lines == 0


def test_deleting_a_line_names_the_line_that_took_its_place(tmp_path: Path) -> None:
    path = tmp_path / "history.jsonl"
    lines = write_history(path, 6)
    path.write_bytes(b"".join(lines[:3] + lines[4:]))
    result = verify(path)
    assert not result.ok and result.first_bad_line == 4
    assert "deleted, inserted or reordered" in result.describe()


def test_deleting_the_first_line_is_caught_on_line_one(tmp_path: Path) -> None:
    path = tmp_path / "history.jsonl"
    lines = write_history(path, 3)
    path.write_bytes(b"".join(lines[1:]))
    result = verify(path)
    assert (result.ok, result.first_bad_line) == (False, 1)
    assert "does not start here" in result.problem


def test_reordering_two_lines_names_the_first_moved_line(tmp_path: Path) -> None:
    path = tmp_path / "history.jsonl"
    lines = write_history(path, 6)
    lines[2], lines[3] = lines[3], lines[2]
    path.write_bytes(b"".join(lines))
    assert verify(path).first_bad_line == 3


def test_editing_a_figure_names_the_edited_line_itself(tmp_path: Path) -> None:
    path = tmp_path / "history.jsonl"
    lines = write_history(path, 6)
    lines[4] = lines[4].replace(b'"step":"s4"', b'"step":"s9"')
    path.write_bytes(b"".join(lines))
    result = verify(path)
    assert result.first_bad_line == 5 and "edited" in result.problem


def test_editing_a_line_into_invalid_json_names_it(tmp_path: Path) -> None:
    path = tmp_path / "history.jsonl"
    lines = write_history(path, 3)
    lines[1] = lines[1][:20] + b"\n"
    path.write_bytes(b"".join(lines))
    assert verify(path).first_bad_line == 2


def test_cutting_the_end_is_caught_when_the_auditor_remembers_its_last_line(tmp_path: Path) -> None:
    path = tmp_path / "history.jsonl"
    lines = write_history(path, 4)
    path.write_bytes(b"".join(lines[:3]))
    assert verify(path).ok  # the chain alone cannot see a cut tail
    result = verify(path, head=line_digest(lines[-1]))
    assert (result.ok, result.first_bad_line) == (False, 4) and "the end was cut" in result.problem


def test_a_torn_last_line_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "history.jsonl"
    lines = write_history(path, 2)
    path.write_bytes(lines[0] + lines[1][:-10])
    assert verify(path).first_bad_line == 2 and "torn" in verify(path).problem


def test_a_repeated_event_id_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "history.jsonl"
    first = encode_line({"type": "x", "event_id": "same"}, GENESIS)
    second = encode_line({"type": "x", "event_id": "same"}, line_digest(first))
    path.write_bytes(first + second)
    assert verify(path).first_bad_line == 2 and "repeats event same" in verify(path).problem


def test_an_entry_carries_timestamp_type_mode_figures_and_ids() -> None:
    decision = DecisionMade(
        domain="canary",
        allow=False,
        reasons=["error rate 4.00% > 1.00%"],
        input={"error_rate": 0.04, "p99_latency_ms": 120.0, "requests": 80},
        engine="embedded",
        decision_id="d1",
        policy_revision="r1",
        duration_ms=1.5,
    )
    event = Event(payload=decision, source=SOURCE, timestamp=datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC))
    entry = history_entry(event, "canary")
    assert entry["timestamp"] == "2026-01-02T03:04:05.000Z"
    assert (entry["type"], entry["mode"], entry["allow"]) == ("decision.made", "canary", False)
    assert entry["input"]["error_rate"] == 0.04 and entry["reasons"] == ["error rate 4.00% > 1.00%"]
    assert entry["event_id"] == event.id and entry["source"] == "test/t1"
    assert list(entry)[:3] == ["timestamp", "type", "mode"] and "payload_type" not in entry


def test_a_chaos_mode_does_not_overwrite_the_serving_mode() -> None:
    event = Event(payload=ChaosInjected(mode="error", rate=0.5), source=SOURCE)
    entry = history_entry(event, "canary")
    assert (entry["mode"], entry["chaos_mode"], entry["rate"]) == ("canary", "error", 0.5)


def test_a_deploy_keeps_the_manifest_digest_not_the_whole_manifest() -> None:
    event = Event(payload=DeployRequested(manifest={"services": {}}, manifest_sha256="abc", root="/x"), source=SOURCE)
    entry = history_entry(event, "stable")
    assert "manifest" not in entry and entry["manifest_sha256"] == "abc"


def test_read_entries_filters_by_since(tmp_path: Path) -> None:
    path = tmp_path / "history.jsonl"
    write_history(path, 5)
    since = datetime(2026, 1, 1, 0, 0, 3, tzinfo=UTC)
    assert [e["step"] for e in read_entries(path, since)] == ["s3", "s4"]
    assert iso_utc(since) == "2026-01-01T00:00:03.000Z"


@settings(max_examples=60, deadline=None)
@given(count=st.integers(3, 12), data=st.data())
def test_any_single_deletion_swap_or_edit_is_named_where_it_happened(tmp_path_factory, count: int, data) -> None:
    path = tmp_path_factory.mktemp("chain") / "history.jsonl"
    lines = write_history(path, count)
    kind = data.draw(st.sampled_from(["delete", "swap", "edit"]))
    at = data.draw(st.integers(0, count - 2))  # the last line's deletion needs the head: tested above
    if kind == "delete":
        changed = lines[:at] + lines[at + 1 :]
    elif kind == "swap":
        changed = [*lines[:at], lines[at + 1], lines[at], *lines[at + 2 :]]
    else:
        byte = data.draw(st.integers(1, len(lines[at]) - 80))  # inside the content, before prev/hash
        flipped = bytes([lines[at][byte] ^ 0x01])
        changed = [*lines[:at], lines[at][:byte] + flipped + lines[at][byte + 1 :], *lines[at + 1 :]]
    path.write_bytes(b"".join(changed))
    result = verify(path, head=line_digest(lines[-1]))
    assert not result.ok and result.first_bad_line == at + 1
