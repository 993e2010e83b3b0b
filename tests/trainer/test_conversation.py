"""The conversation-log contract: schema, validation with JSON paths, JSONL/Parquet loading, chat prompts."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from flywheel_trainer.conversation import (
    CONVERSATION_SCHEMA,
    ConversationLoadError,
    label_response,
    load_conversations,
    load_conversations_lenient,
    normalize_record,
    preference_pairs,
    schema_json,
    system_prompt,
    to_chat,
    validate_record,
    write_conversations,
)
from hypothesis import given, settings
from hypothesis import strategies as st

REPO = Path(__file__).resolve().parents[2]


def make_record(conversation_id: str = "c1", **overrides: Any) -> dict[str, Any]:
    record: dict[str, Any] = {
        "conversation_id": conversation_id,
        "character": {
            "id": "nova",
            "name": "Captain Nova",
            "persona": "A cheerful starship captain who loves the stars.",
            "instructions": [
                {"kind": "max_words", "value": 40},
                {"kind": "no_emoji", "value": None},
                {"kind": "include_word", "value": "stars"},
            ],
        },
        "user_id": "u1",
        "source": "user",
        "arm": "control",
        "generation": "gen1",
        "day": 0,
        "session": 2,
        "messages": [
            {"role": "user", "content": "Hi captain!"},
            {
                "role": "assistant",
                "content": "Ahoy, cadet! The stars are out.",
                "signals": {"continued": True, "thumb": None, "regenerated": True},
                "rejected": ["Hello.", "Greetings, human."],
            },
            {"role": "user", "content": "Where are we going?"},
            {"role": "assistant", "content": "To the stars, of course.", "signals": {"thumb": "up"}},
            {"role": "user", "content": "Bye."},
            {"role": "assistant", "content": "Fly safe.", "flagged": True},
        ],
    }
    record.update(overrides)
    return record


def test_good_records_are_valid() -> None:
    assert validate_record(make_record()) == []
    minimal = make_record(messages=[{"role": "user", "content": "hi"}])
    del minimal["arm"]
    minimal["character"]["instructions"] = []
    assert validate_record(minimal) == []
    assert validate_record(make_record(arm=None, source="internal", metadata={"seed": 3})) == []


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda r: r.pop("user_id"), "$: 'user_id' is a required property"),
        (lambda r: r.update(day=-1), "$.day: -1 is less than the minimum of 0"),
        (lambda r: r.update(session="2"), "$.session: '2' is not of type 'integer'"),
        (lambda r: r.update(source="bot"), "$.source: 'bot' is not one of"),
        (lambda r: r.update(arm="both"), "$.arm: 'both' is not one of"),
        (lambda r: r.update(sesion=2), "$: Additional properties are not allowed ('sesion' was unexpected)"),
        (lambda r: r.update(messages=[]), "$.messages: [] should be non-empty"),
        (lambda r: r["messages"][2].update(role="bot"), "$.messages[2].role: 'bot' is not one of"),
        (lambda r: r["messages"][0].pop("content"), "$.messages[0]: 'content' is a required property"),
        (lambda r: r["messages"][0].update(signals={"continued": True}), "$.messages[0].signals:"),
        (lambda r: r["messages"][1]["signals"].update(thumb="up!"), "$.messages[1].signals.thumb: 'up!'"),
        (lambda r: r["messages"][1].update(rejected="Hi."), "$.messages[1].rejected: 'Hi.' is not of type"),
        (
            lambda r: r["character"]["instructions"][0].update(value="40"),
            "$.character.instructions[0].value: '40' is not of type 'integer'",
        ),
        (
            lambda r: r["character"]["instructions"][1].update(value=3),
            "$.character.instructions[1].value: 3 is not of type 'null'",
        ),
        (
            lambda r: r["character"]["instructions"].append({"kind": "shout"}),
            "$.character.instructions[3].kind: 'shout' is not one of",
        ),
        (lambda r: r["character"].pop("persona"), "$.character: 'persona' is a required property"),
    ],
)
def test_bad_records_are_rejected_naming_the_path(mutate: Any, expected: str) -> None:
    record = make_record()
    mutate(record)
    errors = validate_record(record)
    assert any(error.startswith(expected) for error in errors), errors


def test_docs_schema_file_is_the_generated_schema() -> None:
    path = REPO / "docs" / "conversation.schema.json"
    assert path.read_text(encoding="utf-8") == schema_json(), (
        "docs/conversation.schema.json is stale: run "
        "`python -m flywheel_trainer.conversation > docs/conversation.schema.json`"
    )
    assert CONVERSATION_SCHEMA["$schema"] == "https://json-schema.org/draft/2020-12/schema"


def _records() -> list[dict[str, Any]]:
    second = make_record("c2", arm=None, metadata={"persona_seed": 7, "tags": ["a"]})
    second["character"]["instructions"] = [{"kind": "start_with", "value": "Ahoy"}]
    return [make_record("c1"), second]


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_round_trip(tmp_path: Path, suffix: str) -> None:
    records = _records()
    path = write_conversations(records, tmp_path / f"logs{suffix}")
    dataset = load_conversations(path)
    assert [dict(row) for row in dataset] == [normalize_record(r) for r in records]
    assert dataset[0]["character"]["instructions"][0] == {"kind": "max_words", "value": 40}
    assert dataset[1]["metadata"] == {"persona_seed": 7, "tags": ["a"]}
    assert all(validate_record(dict(row)) == [] for row in dataset)


def test_normalize_fills_defaults() -> None:
    normal = normalize_record(make_record())
    assert normal["messages"][0]["signals"] is None
    assert normal["messages"][3]["signals"] == {"continued": False, "thumb": "up", "regenerated": False}
    assert normal["messages"][5]["flagged"] is True and normal["messages"][5]["rejected"] == []
    assert normal["character"]["instructions"][1] == {"kind": "no_emoji", "value": None}


def test_directory_mixes_formats_in_sorted_order(tmp_path: Path) -> None:
    write_conversations([make_record("b")], tmp_path / "day1" / "b.parquet")
    write_conversations([make_record("a")], tmp_path / "a.jsonl")
    (tmp_path / "notes.txt").write_text("ignored")
    dataset = load_conversations(tmp_path)
    assert dataset["conversation_id"] == ["a", "b"]


def test_invalid_record_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "logs.jsonl"
    bad = make_record("c2", day=-3)
    path.write_text(json.dumps(make_record()) + "\n\n" + json.dumps(bad) + "\n")
    with pytest.raises(ConversationLoadError, match=r"logs\.jsonl:3: \$\.day: -3 is less than"):
        load_conversations(path)
    dataset, errors = load_conversations_lenient(path)
    assert len(dataset) == 1 and [(e.row, e.file) for e in errors] == [(3, str(path))]


def test_unreadable_files_raise_naming_the_file(tmp_path: Path) -> None:
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"conversation_id": \n')
    with pytest.raises(ConversationLoadError, match=r"broken\.jsonl:1: not valid JSON"):
        load_conversations(broken)
    parquet = tmp_path / "bad.parquet"
    parquet.write_bytes(b"not parquet at all")
    with pytest.raises(ConversationLoadError, match=r"bad\.parquet: cannot read"):
        load_conversations(parquet)
    with pytest.raises(FileNotFoundError, match="missing"):
        load_conversations(tmp_path / "missing")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ConversationLoadError, match=r"no \.jsonl"):
        load_conversations(empty)


def test_write_refuses_invalid_records(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"record 1 .*\$\.day"):
        write_conversations([make_record(day=-1)], tmp_path / "x.jsonl")


def test_system_prompt_describes_persona_and_instructions() -> None:
    prompt = system_prompt(make_record()["character"])
    assert prompt.startswith("You are Captain Nova. A cheerful starship captain")
    assert '- Answer in at most 40 words.\n- Do not use emojis.\n- Include the word "stars".' in prompt
    bare = system_prompt({"name": "Bo", "persona": "", "instructions": []})
    assert bare == "You are Bo."


def test_to_chat() -> None:
    record = make_record()
    chat = to_chat(record, 3)
    assert [m["role"] for m in chat] == ["system", "user", "assistant", "user"]
    assert chat[0]["content"] == system_prompt(record["character"])
    assert set(chat[1]) == {"role", "content"}
    assert len(to_chat(record)) == len(record["messages"]) + 1
    logged = make_record(messages=[{"role": "system", "content": "Be Nova."}, *record["messages"]])
    assert to_chat(logged, 2) == [{"role": "system", "content": "Be Nova."}, record["messages"][0]]
    with pytest.raises(IndexError, match="upto_turn=99"):
        to_chat(record, 99)


def test_labels_and_preference_pairs() -> None:
    record = make_record()
    messages = record["messages"]
    assert [label_response(m) for m in messages] == [None, "chosen", None, "chosen", None, None]
    disliked = {"role": "assistant", "content": "x", "signals": {"continued": True, "thumb": "down"}}
    assert label_response(disliked) == "rejected"
    assert label_response({"role": "assistant", "content": "left"}) == "rejected"
    pairs = preference_pairs(record)
    assert [(p["turn"], p["chosen"], p["rejected"]) for p in pairs] == [
        (1, messages[1]["content"], "Hello."),
        (1, messages[1]["content"], "Greetings, human."),
    ]
    assert pairs[0]["prompt"] == to_chat(record, 1)


@settings(max_examples=30, deadline=None)
@given(
    day=st.integers(0, 10_000),
    thumbs=st.lists(st.sampled_from(["up", "down", None]), min_size=1, max_size=4),
    text=st.text(max_size=30),
)
def test_generated_records_validate_and_normalize_idempotently(day: int, thumbs: list, text: str) -> None:
    messages: list[dict[str, Any]] = []
    for thumb in thumbs:
        messages.append({"role": "user", "content": text})
        messages.append({"role": "assistant", "content": text[::-1], "signals": {"thumb": thumb}})
    record = make_record(day=day, messages=messages)
    assert validate_record(record) == []
    normal = normalize_record(record)
    assert validate_record(normal) == []
    assert normalize_record(copy.deepcopy(normal)) == normal


def test_docs_example_is_a_valid_record() -> None:
    text = (REPO / "docs" / "data.md").read_text(encoding="utf-8")
    example = json.loads(text.split("```json\n", 1)[1].split("```", 1)[0])
    assert validate_record(example) == []
    assert [label_response(m) for m in example["messages"]] == [None, "chosen", None, "chosen"]
    assert len(preference_pairs(example)) == 1


_ENVELOPE_KEYS = ["conversation_id", "character", "user_id", "source", "arm", "generation", "day", "session"]
_ENVELOPE_KEYS += ["messages", "metadata", "extra"]
_ENVELOPE_VALUES = [None, True, False, -1, 0, 1, 1.0, 2.5, "", "x", "user", "internal", "control", "treatment"]
_ENVELOPE_VALUES += [[], ["x"], [{"role": "user", "content": "Hi"}], ("x",), {}, {"k": 1}, "<delete>"]


def _edited(index: int, edits: list[tuple[str, Any]]) -> dict[str, Any]:
    record = make_record(f"c{index}", user_id=f"u{index}")
    for key, value in edits:
        if value == "<delete>":
            record.pop(key, None)
        else:
            record[key] = value
    return record


def test_each_envelope_edit_gets_the_contracts_verdict_after_a_valid_record() -> None:
    """ContractCheck keys its envelope memo by shape (the ids, the character and the messages stood in for): after
    a valid record's shape is in the memo, every single envelope edit (a type, an empty string, a negative or
    float number, an enum, a missing or unknown key) still gets validate_record's verdict on the record itself."""
    from flywheel_trainer.conversation import ContractCheck

    for key in _ENVELOPE_KEYS:
        for value in _ENVELOPE_VALUES:
            check = ContractCheck()
            assert check.holds(_edited(0, []))
            record = _edited(1, [(key, value)])
            assert check.holds(record) == (not validate_record(record)), (key, value)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(st.tuples(st.sampled_from(_ENVELOPE_KEYS), st.sampled_from(_ENVELOPE_VALUES)), max_size=3)))
def test_envelopes_checked_once_per_shape_get_the_contracts_verdict(edits: list[list[tuple[str, Any]]]) -> None:
    """One ContractCheck over records whose ids always differ and whose other envelope values are edited at
    random, several at once: each verdict is validate_record's on the record itself."""
    from flywheel_trainer.conversation import ContractCheck

    check = ContractCheck()
    for index, record_edits in enumerate([[], *edits[:10]]):  # a valid record first: its shape is in the memo
        record = _edited(index, record_edits)
        assert check.holds(record) == (not validate_record(record)), record


def _plain_repr_walking_every_value(value: object) -> str | None:
    """_plain_repr before it skipped dicts of scalars: every value pushed and popped."""
    stack = [value]
    while stack:
        item = stack.pop()
        kind = type(item)
        if kind is dict:
            if any(type(key) is not str for key in item):
                return None
            stack.extend(item.values())
        elif kind is list:
            stack.extend(item)
        elif kind not in (str, int, float, bool, type(None)):
            return None
    return repr(value)


_LEAVES = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=3) | st.just(b"x") | st.just(())
_KEYS = st.text(max_size=2) | st.integers(0, 2) | st.just(True)
_NESTED = st.recursive(_LEAVES, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_KEYS, inner, max_size=3))


@settings(max_examples=300, deadline=None)
@given(_NESTED)
def test_plain_repr_is_the_walk_over_every_value(value: object) -> None:
    from flywheel_trainer.conversation import _plain_repr

    assert _plain_repr(value) == _plain_repr_walking_every_value(value)
