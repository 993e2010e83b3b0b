"""The log contract's fast check (flywheel_trainer.conversation.ContractCheck) that write_traffic, write_conversations
and curate's reader use: the verdict of validate_record on every record, the same bytes and the same errors, in a
quarter of the time (bench/sim_speed.py measures it)."""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from flywheel_sim import GOOD_STYLE, ScriptedPolicy, World, simulate_traffic, write_traffic
from flywheel_sim.traffic import TrafficResult
from flywheel_trainer.conversation import (
    contract_holds,
    load_conversations_lenient,
    validate_record,
    write_conversations,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st


@pytest.fixture(scope="module")
def records(world: World) -> list[dict[str, Any]]:
    policies = {"control": ScriptedPolicy(world, name="gen0"),
                "treatment": ScriptedPolicy(world, name="gen1", style=GOOD_STYLE, compliance=1.0)}
    result = simulate_traffic(world, policies, days=2, pre_days=1, seed=4, max_people=80, traffic_percent=50,
                              experiment="gen1")
    assert len(result.records) > 20 and any(len(r["messages"]) > 3 for r in result.records)
    return result.records


GOLDEN = {
    "conversations.jsonl": "c80672926767cd0e4c013aa2053f6522250a7d765d385f6c49f9a548f5945750",
    "events.jsonl": "584f65f026048e454e8fb0704b152aec30e2b64d3f7db4346081044bfc0ee2d2",
    "sessions.jsonl": "38670a0cbdc45b1d0a0964a6cd5a8cb09c048766330641b207ff2b4371db6f44",
}
"""SHA-256 of the files simulate_traffic wrote for the `records` fixture's run at 08551f1 (before the fast
contract check). A deliberate change to the simulator's draws, the grammar or the log contract changes them:
recompute them then (print the digests of this test's files) and say why in the commit."""


def test_same_files_as_before_the_fast_check(world: World, tmp_path: Path) -> None:
    policies = {"control": ScriptedPolicy(world, name="gen0"),
                "treatment": ScriptedPolicy(world, name="gen1", style=GOOD_STYLE, compliance=1.0)}
    simulate_traffic(world, policies, days=2, pre_days=1, seed=4, max_people=80, traffic_percent=50,
                     experiment="gen1", out=tmp_path)
    assert {name: hashlib.sha256((tmp_path / name).read_bytes()).hexdigest() for name in GOLDEN} == GOLDEN


def _trainer_verdict(records: list[dict[str, Any]]) -> bool:
    return not any(validate_record(record) for record in records)


def test_writes_the_bytes_of_the_trainers_writer(records: list[dict[str, Any]], tmp_path: Path) -> None:
    write_conversations(records, tmp_path / "trainer.jsonl")
    write_traffic(TrafficResult(records=records, events=[], sessions=[]), tmp_path / "sim")
    assert (tmp_path / "sim" / "conversations.jsonl").read_bytes() == (tmp_path / "trainer.jsonl").read_bytes()


@pytest.mark.parametrize("count", [0, 1])
def test_no_records_and_one_record(records: list[dict[str, Any]], tmp_path: Path, count: int) -> None:
    chosen = records[:count]
    assert contract_holds(chosen)
    write_conversations(chosen, tmp_path / "trainer.jsonl")
    write_traffic(TrafficResult(records=chosen, events=[], sessions=[]), tmp_path / "sim")
    assert (tmp_path / "sim" / "conversations.jsonl").read_bytes() == (tmp_path / "trainer.jsonl").read_bytes()


def test_a_broken_record_raises_the_trainers_error(records: list[dict[str, Any]], tmp_path: Path) -> None:
    broken = copy.deepcopy(records[:5])
    broken[3]["messages"][1]["role"] = "robot"
    with pytest.raises(ValueError) as trainer:
        write_conversations(broken, tmp_path / "trainer.jsonl")
    with pytest.raises(ValueError) as sim:
        write_traffic(TrafficResult(records=broken, events=[], sessions=[]), tmp_path / "sim")
    assert str(sim.value) == str(trainer.value) and "record 4" in str(sim.value)
    assert not (tmp_path / "sim" / "conversations.jsonl").exists()


def test_curates_reader_names_every_broken_row_as_validate_record_does(
        records: list[dict[str, Any]], tmp_path: Path) -> None:
    """A log with broken rows between valid ones that share their characters and messages: the reader keeps the
    valid rows and reports each broken one with validate_record's problems (the memo never hides one)."""
    rows = copy.deepcopy(records[:8])
    rows[2]["messages"][0]["content"] = 7
    rows[5]["character"]["instructions"] = "lowercase"
    log = tmp_path / "log.jsonl"
    log.write_text("".join(json.dumps(row) + "\n" for row in rows))
    dataset, bad = load_conversations_lenient(log)
    assert len(dataset) == 6
    assert [(error.row, error.errors) for error in bad] == [
        (3, tuple(validate_record(rows[2]))), (6, tuple(validate_record(rows[5])))]
    assert all(error.errors for error in bad)


def test_a_value_seen_before_is_not_trusted_in_another_type(records: list[dict[str, Any]]) -> None:
    """The memo keys distinguish a tuple from a list and True from 1: the contract does."""
    first, second = copy.deepcopy(records[0]), copy.deepcopy(records[0])
    second["character"]["instructions"] = tuple(second["character"]["instructions"])
    assert contract_holds([first]) and not contract_holds([first, second])
    assert _trainer_verdict([first, second]) is False
    system = dict(first["messages"][0])
    third = copy.deepcopy(first)
    third["messages"][0] = {**system, "content": True}
    assert not contract_holds([first, third]) and not _trainer_verdict([third])


_PATHS = st.sampled_from([
    ("character", "id"), ("character", "instructions"), ("character", "name"), ("character",), ("user_id",),
    ("source",), ("arm",), ("day",), ("session",), ("messages",), ("messages", 0), ("messages", 0, "role"),
    ("messages", 1, "content"), ("messages", -1, "signals"), ("messages", -1, "signals", "thumb"),
    ("messages", -1, "rejected"), ("conversation_id",), ("generation",),
])
_VALUES = st.one_of(st.none(), st.booleans(), st.integers(-2, 3), st.floats(allow_nan=False, width=16),
                    st.sampled_from(["", "user", "assistant", "control", "up", "sideways", "x"]),
                    st.just([]), st.just({}), st.just(("a",)), st.just(["a"]), st.just({"kind": "lowercase"}))
_EDITS = st.lists(st.tuples(st.integers(0, 10_000), _PATHS, st.one_of(_VALUES, st.just("<delete>"))), max_size=4)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(edits=_EDITS)
def test_the_verdict_is_the_trainers_validate_record(records: list[dict[str, Any]], edits: list[Any]) -> None:
    """Records edited at random places (values deleted, replaced by other types, enums and lengths broken):
    contract_holds says True exactly when validate_record finds no problem in any record."""
    edited = copy.deepcopy(records[:12])
    for which, path, value in edits:
        node: Any = edited[which % len(edited)]
        try:
            for step in path[:-1]:
                node = node[step]
            if value == "<delete>":
                del node[path[-1]]
            else:
                node[path[-1]] = value
        except (KeyError, IndexError, TypeError):
            continue  # the path is not there in this record
    assert contract_holds(edited) is _trainer_verdict(edited)
